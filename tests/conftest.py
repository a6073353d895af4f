"""Shared fixtures: factories for real processes that are always stopped after the test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support import procs

Factory = Callable[..., procs.Proc]


def _owned(start: Callable[..., procs.Proc], tmp: Path) -> Iterator[Factory]:
    started: list[procs.Proc] = []

    def factory(*args: Any, **kwargs: Any) -> procs.Proc:
        proc = start(tmp, *args, **kwargs)
        started.append(proc)
        return proc

    try:
        yield factory
    finally:
        for proc in reversed(started):
            proc.stop()


@pytest.fixture
def demo_service(tmp_path: Path) -> Iterator[Factory]:
    """``demo_service(version=..., deployment=..., error_rate=..., latency=...)`` -> Proc."""

    def start(tmp: Path, **kwargs: Any) -> procs.Proc:
        return procs.start_demo_service(tmp=tmp, **kwargs)

    yield from _owned(start, tmp_path)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Factory]:
    """``prometheus(scrape_targets, rule_files=..., alertmanager_url=...)`` -> Proc."""
    yield from _owned(procs.start_prometheus, tmp_path)


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[Factory]:
    """``alertmanager(webhook_url, bearer_token)`` -> Proc."""
    yield from _owned(procs.start_alertmanager, tmp_path)
