"""The state store: rollouts, decisions, measurements, audit and alerts, durably."""
