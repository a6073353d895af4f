"""Routers: each moves traffic between stable and canary on one kind of proxy or API."""
