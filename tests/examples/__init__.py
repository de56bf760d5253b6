"""Tests of the example clients in other languages (examples/)."""
