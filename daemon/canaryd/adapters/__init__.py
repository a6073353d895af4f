"""Adapters: I/O only, one module per outside system (Prometheus, Alertmanager, routers, ...)."""
