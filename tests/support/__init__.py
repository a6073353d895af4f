"""Helpers shared by the tests: real processes on loopback (``procs``)."""
