"""canaryd: progressive delivery judged by Prometheus, rolled back by Alertmanager."""

__version__ = "0.1.0"
