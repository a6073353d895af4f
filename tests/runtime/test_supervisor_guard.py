"""Guarded long-lived tasks: named; one that ends (raises or returns) is logged and restarted
with backoff, or the daemon stops with a clear error (``ServiceFailed``) when it cannot go on.
Real tasks on a real event loop; the backoffs are milliseconds so no test waits long."""

from __future__ import annotations

import asyncio

import pytest

from canaryd.cli import report_start_failure
from canaryd.runtime.supervisor import Guard, ServiceFailed, Supervisor

QUICK = Guard(backoff=0.001, max_backoff=0.002)


class Log:
    def __init__(self) -> None:
        self.ends: list[tuple[str, str | None]] = []
        self.hooks: list[str] = []

    def crashed(self, name: str, error: BaseException | None) -> None:
        self.ends.append((name, None if error is None else str(error)))

    async def before(self) -> None:
        self.hooks.append("before_stop")

    async def after(self) -> None:
        self.hooks.append("after_stop")


async def test_a_service_that_raises_or_returns_is_logged_and_restarted() -> None:
    log = Log()
    sup = Supervisor(on_crash=log.crashed)
    runs = 0
    steady = asyncio.Event()
    names: list[str] = []

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        names.append(asyncio.current_task().get_name())  # type: ignore[union-attr]
        if runs == 1:
            raise RuntimeError("first run fails")
        if runs == 2:
            return  # an eternal service that returns is an end too
        steady.set()
        await asyncio.Event().wait()

    async def start() -> None:
        sup.keep("flaky", flaky, QUICK)

    async def stop_when_steady() -> None:
        await asyncio.wait_for(steady.wait(), 5)
        sup.stop()

    async with asyncio.timeout(10):
        await asyncio.gather(sup.run(start, log.before, log.after), stop_when_steady())
    assert runs == 3
    assert names == ["flaky"] * 3
    assert log.ends == [("flaky", "first run fails"), ("flaky", None)]
    assert log.hooks == ["before_stop", "after_stop"]
    assert sup.failure is None


async def test_a_service_that_may_not_be_restarted_stops_the_daemon_with_its_name() -> None:
    log = Log()
    sup = Supervisor(on_crash=log.crashed)

    async def pinger() -> None:
        return

    async def start() -> None:
        sup.keep("watchdog", pinger, Guard(restart=False))

    async with asyncio.timeout(10):
        with pytest.raises(ServiceFailed, match="task 'watchdog' ended \\(returned\\)"):
            await sup.run(start, log.before, log.after)
    assert log.ends == [("watchdog", None)]
    assert log.hooks == ["before_stop", "after_stop"]  # an ordered stop all the same


async def test_a_service_that_keeps_ending_stops_the_daemon() -> None:
    log = Log()
    sup = Supervisor(on_crash=log.crashed)
    other_cancelled = asyncio.Event()

    async def broken() -> None:
        raise OSError("disk gone")

    async def other() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            other_cancelled.set()

    async def start() -> None:
        sup.spawn(other(), name="worker")
        sup.keep("state-watch", broken, Guard(backoff=0.001, max_backoff=0.002, limit=2))

    async with asyncio.timeout(10):
        with pytest.raises(ServiceFailed, match="'state-watch' ended 3 times") as caught:
            await sup.run(start, log.before, log.after)
    assert "disk gone" in str(caught.value)
    assert len(log.ends) == 3
    assert other_cancelled.is_set()


async def test_unnamed_tasks_are_named_after_their_coroutine() -> None:
    sup = Supervisor(on_crash=Log().crashed)
    seen: list[str] = []

    async def recorder() -> None:
        seen.append(asyncio.current_task().get_name())  # type: ignore[union-attr]
        sup.stop()

    async def start() -> None:
        sup.spawn(recorder())

    async def nothing() -> None:
        return None

    async with asyncio.timeout(10):
        await sup.run(start, nothing, nothing)
    assert seen == [recorder.__qualname__]


def test_serve_reports_a_failed_service_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    failure = ServiceFailed("task 'evaluator' ended 6 times within 60s (last: returned)")
    assert report_start_failure(ExceptionGroup("stopped", [failure])) == 1
    err = capsys.readouterr().err
    assert "task 'evaluator' ended 6 times" in err
    assert "Traceback" not in err
