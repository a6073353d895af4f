"""A small demo service and a bounded load generator, for tests and ``canaryd demo``.

The service exposes the MATRIZ runbook's metrics (SPEC §4) with an error rate and a latency
that can be changed at runtime, so a canary can be made good or bad on demand (SPEC §9).
"""
