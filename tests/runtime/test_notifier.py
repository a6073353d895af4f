"""The notifier against a real HTTP receiver on 127.0.0.1, and what each decision says.

The end-to-end story (a real ``canaryd serve``, Alertmanager) is ``tests/daemon/test_notify``;
here the bounds are driven to their edges with small limits: a full outbox, an answer that
never comes, a 4xx. Which decisions are news is checked on the real engine running the shipped
conservative profile to its first manual gate.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from canaryd.adapters.notify import Announcing, Limits, Notifier
from canaryd.adapters.notify.messages import (
    alertmanager_body,
    event_of,
    json_body,
    notices,
    slack_body,
)
from canaryd.adapters.notify.sender import Outbox
from canaryd.adapters.telemetry import Telemetry
from canaryd.config.notify import Channel
from canaryd.config.policies import load_policy
from canaryd.core import stages
from canaryd.core.model import Action, ActionKind, Cause, Measurement, Phase, Rollout
from canaryd.offline.simulate import Timeline, World, settle, waits_for_human
from support.enginekit import make_policy
from support.receiver import Receiver

ROOT = Path(__file__).resolve().parents[2]
BASE = "https://canaryd.example.test"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(fail_first={"/flaky": 1}, hang={"/hang"}, always={"/gone": 404}).start()
    try:
        yield r
    finally:
        r.stop()


class Counted:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, result: str) -> None:
        self.seen.append(result)

    def __getitem__(self, result: str) -> int:
        return self.seen.count(result)


@pytest.fixture
async def running() -> AsyncIterator[list[asyncio.Task[None]]]:
    tasks: list[asyncio.Task[None]] = []
    yield tasks
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def rolled_back(n: int) -> tuple[Rollout, tuple[Action, ...]]:
    state, _ = stages.start(f"r{n}", "web", f"web:v{n}", make_policy(), 0.0)
    state = replace(state, phase=Phase.ROLLED_BACK, rollback_reason="manual rollback")
    done = Action(ActionKind.ROLLED_BACK, "router applied canary 0%", 0, cause=Cause.ROLLED_BACK)
    return state, (done,)


async def until(holds: object, what: str, timeout: float = 10.0) -> None:
    assert callable(holds)
    async with asyncio.timeout(timeout):
        while not holds():
            await asyncio.sleep(0.02)


# --------------------------------------------------------------------------- bounds


async def test_a_full_outbox_drops_the_oldest_and_counts_each(
    receiver: Receiver, running: list[asyncio.Task[None]]
) -> None:
    count = Counted()
    notifier = Notifier(
        [Channel(f"{receiver.url}/hang")],
        count=count,
        base_url=BASE,
        limits=Limits(queue_size=3, timeout=30, attempts=1),
    )
    running.append(asyncio.create_task(notifier.run()))
    notifier.decided(*rolled_back(0), 1.0)
    await until(lambda: len(receiver.at("/hang")) == 1, "the first notice in flight")

    for n in range(1, 11):  # ten more while the receiver hangs: decided() returns at once
        notifier.decided(*rolled_back(n), 1.0)

    (outbox,) = notifier.outboxes
    assert [n.rollout_id for n in outbox.waiting] == ["r8", "r9", "r10"], "the newest kept"
    assert count["dropped"] == 7 and count["sent"] == 0
    receiver.release()
    await until(lambda: count["sent"] == 4, "the one in flight and the three kept")
    assert [r.body["rollout_id"] for r in receiver.at("/hang")] == ["r0", "r8", "r9", "r10"]


async def test_an_answer_that_never_comes_is_timed_out_retried_and_failed(
    receiver: Receiver, running: list[asyncio.Task[None]]
) -> None:
    count = Counted()
    limits = Limits(timeout=0.3, attempts=3, backoff=0.05, backoff_cap=0.1)
    notifier = Notifier(
        [Channel(f"{receiver.url}/hang")], count=count, base_url=BASE, limits=limits
    )
    running.append(asyncio.create_task(notifier.run()))
    notifier.decided(*rolled_back(1), 1.0)
    await until(lambda: count["failed"] == 1, "the notice to fail after three attempts")
    assert count.seen == ["retried", "retried", "failed"]
    assert len(receiver.at("/hang")) == 3


async def test_a_500_is_retried_a_404_is_not(
    receiver: Receiver, running: list[asyncio.Task[None]]
) -> None:
    count = Counted()
    limits = Limits(backoff=0.05)
    channels = [Channel(f"{receiver.url}/flaky"), Channel(f"{receiver.url}/gone")]
    notifier = Notifier(channels, count=count, base_url=BASE, limits=limits)
    running.append(asyncio.create_task(notifier.run()))
    notifier.decided(*rolled_back(1), 1.0)
    await until(lambda: count["sent"] == 1 and count["failed"] == 1, "both channels done")
    assert [r.status for r in receiver.at("/flaky")] == [500, 200]
    assert [r.status for r in receiver.at("/gone")] == [404], "a 4xx is final"
    assert count["retried"] == 1


def test_the_backoff_doubles_up_to_its_cap() -> None:
    limits = Limits(backoff=1.0, backoff_cap=5.0)
    assert [limits.delay(i) for i in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_an_alertmanager_channel_posts_to_its_alerts_api() -> None:
    base = Outbox(Channel("http://am:9093", format="alertmanager"), None)
    given = Outbox(Channel("http://am:9093/api/v2/alerts", format="alertmanager"), None)
    hook = Outbox(Channel("http://hooks/api", format="json"), None)
    assert base.post_url == given.post_url == "http://am:9093/api/v2/alerts"
    assert hook.post_url == "http://hooks/api"


def test_a_channel_is_named_in_logs_without_its_path() -> None:
    secret = "https://hooks.slack.com/services/T000/B000/very-secret"
    assert Outbox(Channel(secret), None, 2).name == "notify[2] https://hooks.slack.com/…"


def test_the_notifications_counter_is_in_the_daemons_registry_from_the_start() -> None:
    telemetry = Telemetry()
    announcing = Announcing(telemetry, Notifier([], count=telemetry.notified, base_url=BASE))
    state, actions = rolled_back(1)
    announcing.decided(state, actions, (Measurement("x", 1.0),), 1.0)  # no channel: no news
    for result in ("sent", "retried", "failed", "dropped"):
        assert (
            telemetry.registry.get_sample_value("canaryd_notifications_total", {"result": result})
            == 0.0
        )
    telemetry.notified("sent")
    assert (
        telemetry.registry.get_sample_value("canaryd_notifications_total", {"result": "sent"})
        == 1.0
    )


# --------------------------------------------------------------------------- what is news


def test_the_conservative_profile_s_first_gate_is_waiting_for_promote() -> None:
    """The shipped profile on the real engine, every check passing: the first stage passes and
    the rollout waits at its manual gate; that decision, and only it, is news."""
    policy = load_policy(ROOT / "rules" / "matriz-conservative.yaml")
    lines = [json.dumps({"t": 0, "requests": 50})] + [
        json.dumps({"t": 0, "check": name, "value": value})
        for name, value in (("success-rate", 0.999), ("latency-p95", 0.1), ("error-rate", 0.0))
    ]
    both = {"canary": {"requests": 5, "errors": 0}, "stable": {"requests": 45, "errors": 0}}
    fast = {"canary": {"buckets": {"0.1": 5, "+Inf": 5}}}
    fast["stable"] = {"buckets": {"0.1": 45, "+Inf": 45}}
    lines += [  # the compare checks: canary and stable alike (counts per second)
        json.dumps({"t": 0, "check": "errors-vs-stable", "per_second": True, **both}),
        json.dumps({"t": 0, "check": "latency-vs-stable", "per_second": True, **fast}),
    ]
    timeline = Timeline.parse(lines)
    decided: list[tuple[Rollout, tuple[Action, ...]]] = []
    state, _ = stages.start("c1", "shop", "shop:v2", policy, 0.0)
    world, now = World(), 0.0
    while not waits_for_human(state) and now < 3600:
        state = settle(state, world, timeline, now, lambda s, a, t, m: decided.append((s, a)))
        now = stages.next_wakeup(state) or now + 60
    news = [n for s, actions in decided for n in notices(s, actions, now, BASE)]
    assert [n.event for n in news] == ["waiting-for-promote"]
    (gate,) = news
    assert gate.phase == "Paused" and gate.stage == 1 and gate.weight == 10
    assert gate.reason == "stage 1 passed; waiting for a manual promote"
    assert gate.link == f"{BASE}/targets/shop"


@pytest.mark.parametrize(
    ("kind", "cause", "event"),
    [
        (ActionKind.ROLLED_BACK, Cause.ROLLED_BACK, "rolled-back"),
        (ActionKind.SUCCEEDED, Cause.PROMOTED, "succeeded"),
        (ActionKind.FAILED, Cause.STUCK, "failed"),
        (ActionKind.PAUSE, Cause.MANUAL_PAUSE, "paused"),
        (ActionKind.PAUSE, Cause.ALERT, "paused"),
        (ActionKind.PAUSE, Cause.INCONCLUSIVE, "paused"),
        (ActionKind.PAUSE, Cause.STAGE_PASSED, "waiting-for-promote"),
        (ActionKind.ROLLBACK, Cause.ALERT, None),  # news once it is done: rolled-back
        (ActionKind.HOLD, Cause.CHECK_FAILED, None),
        (ActionKind.START, Cause.STARTED, None),
        (ActionKind.RESUME, Cause.MANUAL_RESUME, None),
    ],
)
def test_which_decisions_are_news(kind: ActionKind, cause: Cause, event: str | None) -> None:
    state, _ = rolled_back(1)
    assert event_of(state, Action(kind, "why", cause=cause)) == event


def test_a_rollback_notice_gives_the_rollbacks_reason() -> None:
    state, actions = rolled_back(3)
    state = replace(state, rollback_reason="alert HighErrors firing")
    (notice,) = notices(state, actions, 1700000000.0, BASE + "/")
    body = json_body(notice)
    assert body == {
        "event": "rolled-back",
        "target": "web",
        "rollout_id": "r3",
        "image": "web:v3",
        "phase": "RolledBack",
        "stage": 1,
        "weight": 0,
        "reason": "alert HighErrors firing",
        "cause": "rolled-back",
        "time": "2023-11-14T22:13:20.000+00:00",
        "link": f"{BASE}/targets/web",
        "summary": "web: web:v3 rolled back",
    }
    (alert,) = alertmanager_body(notice)
    assert alert["labels"]["alertname"] == "CanaryRolledBack"
    assert alert["endsAt"] == "2023-11-14T23:13:20.000+00:00"


def test_slack_text_from_outside_cannot_make_links_or_mentions() -> None:
    state, actions = rolled_back(1)
    hostile = "<!channel> see <https://evil.example|here> & cry"
    state = replace(state, rollback_reason=hostile)
    (notice,) = notices(state, actions, 0.0, BASE)
    text = json.dumps(slack_body(notice))
    assert "<!channel>" not in text and "<https://evil" not in text
    assert "&lt;!channel&gt; see &lt;https://evil.example|here&gt; &amp; cry" in text
