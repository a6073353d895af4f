"""``canaryctl``: the operator's command line over the HTTP API, and its client."""
