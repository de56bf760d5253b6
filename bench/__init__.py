"""Benchmarks: the harness, the transport-floor echo server, the DIY baseline, memory, peers.

Run ``python -m bench.harness`` (or ``make bench``); see docs/benchmarks.md. Nothing in
the product imports from here.
"""
