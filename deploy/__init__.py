"""Deployment files for rnnstream replicas behind a session-routing load balancer."""
