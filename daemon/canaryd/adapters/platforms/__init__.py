"""Platforms: each runs the canary workload and updates the stable one on one kind of host."""
