"""Tools that run the engine without a daemon: simulate, replay, render."""
