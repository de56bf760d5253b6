"""The HAProxy configuration and the tool that points it at a given set of replicas."""
