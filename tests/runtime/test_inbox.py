"""The inbox and the journal replay share one replay step (``core.alertbook.take_in``): whatever
order Alertmanager's notifications come in, webhook by webhook or read back from the journal
after a restart, they build the same book."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from canaryd.core import alertbook
from canaryd.core.model import Alert
from canaryd.runtime.inbox import Inbox

LABELS = {"alertname": "Freeze", "target": "svc"}
EXPIRY = 3600.0


@st.composite
def notifications(draw: st.DrawFn) -> list[tuple[float, Alert]]:
    """Received time and alert, in arrival order: few fingerprints and few ``startsAt`` values,
    so repeats, late retries, resolutions and re-fires all happen."""
    count = draw(st.integers(min_value=0, max_value=25))
    out = []
    received = 0.0
    for _ in range(count):
        received += draw(st.sampled_from([0.0, 1.0, 600.0, 2000.0]))
        fingerprint = draw(st.sampled_from(["f1", "f2", "f3"]))
        starts = draw(st.sampled_from([10.0, 20.0, 30.0]))
        resolved = draw(st.booleans())
        alert = Alert(
            fingerprint,
            "resolved" if resolved else "firing",
            LABELS,
            starts,
            starts + 5.0 if resolved else None,
        )
        out.append((received, alert))
    return out


@settings(max_examples=200, deadline=None)
@given(notifications())
def test_the_inbox_and_the_journal_replay_build_the_same_book(
    journal: list[tuple[float, Alert]],
) -> None:
    inbox = Inbox({"svc": lambda labels: labels.get("target") == "svc"}, expire_after=EXPIRY)
    news = [new for received, alert in journal for new in inbox.receive([alert], received)]
    now = journal[-1][0] if journal else 0.0
    replayed = alertbook.rebuild(journal, now, EXPIRY)
    recent = {
        fp: e
        for fp, e in inbox.book.items()
        if e.active(now, EXPIRY) or now - e.seen < EXPIRY  # what a replay keeps (prune)
    }
    assert list(recent.items()) == list(replayed.items())  # same entries, same order
    book: dict[str, alertbook.Entry] = {}
    assert alertbook.take_in(book, journal, EXPIRY) == news  # the same news, all at once
    assert book == inbox.book
