"""Configuration: the YAML reader, the settings model, router/platform kinds, secrets, policies."""
