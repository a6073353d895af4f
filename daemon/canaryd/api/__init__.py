"""The HTTP surface above the runtime: the API, the Alertmanager webhook, the status page."""
