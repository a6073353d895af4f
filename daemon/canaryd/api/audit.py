"""The HTTP layer's audit rows and its view of whether the store can write.

``server`` decides *what* a request's row says (who, what, the outcome, the detail);
this module writes it, off the event loop, and keeps the two rules that protect the state
from the edge:

* Refusals (401, 403) go through ``refusals.RefusalFolder``: a flood of them writes a
  bounded number of rows whose ``detail.count`` still adds up to every refused request.
  ``run_flushes`` writes the folded counts periodically, and once more when the app stops.
* A target name from the URL that is not configured is not a target: the row's target is
  None and the name is kept in the detail, made safe (``webhook.make_safe``), because
  it is whatever the client typed, lone surrogates included.

A failed audit write never changes the request's answer: it is logged loudly instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Container
from dataclasses import dataclass

import structlog

from canaryd.api.refusals import RefusalFolder
from canaryd.api.webhook import make_safe
from canaryd.core.errors import CanarydError
from canaryd.ports import Clock, StateStore

log = structlog.get_logger("canaryd.http")
REFUSED = (401, 403)


def write_problem(store: StateStore) -> str | None:
    """``store.write_problem()``: None while the store can write (call it in a thread)."""
    return store.write_problem()


@dataclass(frozen=True, slots=True)
class AuditRow:
    """What a row says besides when: a request's, or a group of folded refusals' (no target)."""

    who: str
    what: str
    target: str | None
    outcome: str
    detail: dict[str, object]


class Auditor:
    """Writes the audit rows of HTTP requests, folding refusals."""

    def __init__(
        self,
        store: StateStore,
        clock: Clock,
        targets: Container[str],
        refusals: RefusalFolder | None = None,
    ) -> None:
        self.store, self.clock, self.targets = store, clock, targets
        self.refusals = refusals or RefusalFolder()

    async def request(
        self,
        who: str,
        what: str,
        target: str | None,
        outcome: str,
        status: int,
        detail: dict[str, object],
    ) -> None:
        """The row of one request; a refusal may be folded into a later row instead."""
        if target is not None and target not in self.targets:
            detail["target"] = make_safe(target[:200])
            target = None
        now = self.clock.time()
        if status in REFUSED:
            remote = str(detail.get("remote") or "")
            admitted = self.refusals.admit((remote, who, what, outcome), now)
            if admitted is None:
                return  # folded: counted, and written with the group's next row
            (detail["remote"], *_), detail["count"] = admitted
            log.info("api_refusal_audited", who=who, what=what, status=status, count=admitted[1])
        await self._write(now, AuditRow(who, what, target, outcome, detail))

    async def flush(self, *, everything: bool = False) -> None:
        """Write a row for each group of refusals still folded in memory."""
        now = self.clock.time()
        for (remote, who, what, outcome), count in self.refusals.flush(now, everything=everything):
            detail: dict[str, object] = {"remote": remote, "count": count, "folded": True}
            detail["message"] = f"{count} refused requests folded into this row"
            await self._write(now, AuditRow(who, what, None, outcome, detail))

    async def run_flushes(self) -> None:
        """Flush every ``refusals.every`` seconds until cancelled; then a last, full flush."""
        try:
            while True:
                await asyncio.sleep(self.refusals.every)
                await self.flush()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.flush(everything=True))

    async def _write(self, now: float, row: AuditRow) -> None:
        try:
            await asyncio.to_thread(
                self.store.audit, now, row.who, row.what, row.target, row.outcome, row.detail
            )
        except CanarydError as exc:  # the request's answer stands; the failure is logged loudly
            log.error("audit_failed", who=row.who, what=row.what, target=row.target, error=str(exc))
