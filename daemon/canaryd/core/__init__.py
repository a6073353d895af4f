"""The pure core: decisions as functions of (state, observations, findings, now).

No asyncio, no clock reads, no I/O and no third-party imports (enforced by import-linter).
"""
