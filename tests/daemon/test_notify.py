"""``notify:`` end to end: a real ``canaryd serve``, a real HTTP receiver, a real Alertmanager.

One stack for the module, one story told once and looked at from each side:

- target ``web`` runs a policy whose first stage has ``gate: manual`` (as every stage of the
  conservative profile): it passes, waits for a promote (``waiting-for-promote``), is promoted
  by an operator and succeeds (``succeeded``);
- target ``api`` runs a long stage: an operator pauses it (``paused``), resumes it and rolls it
  back with a reason (``rolled-back``).

The daemon notifies five channels, all on 127.0.0.1: ``/json`` (every event, with a bearer
token), ``/slack`` (Slack format, two events), ``/flaky`` (answers 500 twice, then 200),
``/hang`` (accepts the request and never answers until the test lets it) and a real
Alertmanager (``alertmanager`` format, ``rolled-back`` only), whose route sends every alert on
to the receiver's ``/am-webhook``: the alert canaryd posted is routed by Alertmanager's own
configuration, which is what the format is for.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from support import procs
from support.receiver import Received, Receiver
from support.servekit import (
    TOKENS,
    Serve,
    TargetSpec,
    metric_sum,
    stored_decisions,
    wait_until,
    write_config,
)

NOTIFY_TOKEN = "notify-receiver-token-0123456789"
AM_TOKEN = "alertmanager-to-receiver-token-0123"
PUBLIC = "https://canaryd.example.test"
ROLLBACK_REASON = "canary answers <b>teapot</b> & more"  # Slack must escape it

GATED = """\
name: gated
interval: 250ms
error_backoff: 250ms
scale_down_delay: 0s
checks:
  unused: {query: vector(1), threshold: 0}
stages:
  - {weight: 20, duration: 500ms, gate: manual}
  - {weight: 100, duration: 500ms}
"""

LONG = """\
name: long
interval: 250ms
error_backoff: 250ms
scale_down_delay: 0s
checks:
  unused: {query: vector(1), threshold: 0}
stages:
  - {weight: 10, duration: 10m}
"""


@dataclass
class Story:
    serve: Serve
    receiver: Receiver
    alertmanager: procs.Proc
    web: dict[str, Any]  # the rollouts as started
    api: dict[str, Any]
    rollback_answered_at: float  # time.time() when the rollback request was answered
    rolled_back_at: float  # time.time() once the API showed RolledBack
    metrics: str


def notify_config(receiver: str, alertmanager: str) -> str:
    return f"""\
public_url: {PUBLIC}/
notify:
  - {{url: {receiver}/json, format: json, bearer_token_file: notify-token}}
  - url: {receiver}/slack
    format: slack
    events: [rolled-back, succeeded]
  - {{url: {receiver}/flaky, events: [waiting-for-promote]}}
  - {{url: {receiver}/hang, format: json}}
  - {{url: {alertmanager}, format: alertmanager, events: [rolled-back]}}
"""


def command(serve: Serve, target: str, verb: str, body: dict[str, Any] | None = None) -> Any:
    role = "admin" if verb == "promote" else "operator"
    status, doc = serve.call(
        "POST", f"/api/v1/targets/{target}/{verb}", body or {}, token=TOKENS[role]
    )
    assert status == 200, (verb, status, doc, serve.tail())
    return doc


def phase_is(serve: Serve, target: str, phase: str, timeout: float = 20) -> dict[str, Any]:
    return wait_until(
        lambda: serve.rollout(target) or {},
        lambda r: r.get("phase") == phase,
        timeout,
        f"{target} to be {phase}",
    )


def events(got: list[Received]) -> list[str]:
    return [r.body["event"] for r in got]


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Story]:
    tmp = tmp_path_factory.mktemp("notify")
    receiver = Receiver(fail_first={"/flaky": 2}, hang={"/hang"}).start()
    alertmanager = procs.start_alertmanager(tmp, f"{receiver.url}/am-webhook", AM_TOKEN)
    serve: Serve | None = None
    try:
        (tmp / "gated.yaml").write_text(GATED)
        (tmp / "long.yaml").write_text(LONG)
        config = write_config(
            tmp, [TargetSpec("web", "gated.yaml"), TargetSpec("api", "long.yaml")]
        )
        (tmp / "notify-token").write_text(NOTIFY_TOKEN + "\n")
        (tmp / "notify-token").chmod(0o600)
        config.write_text(config.read_text() + notify_config(receiver.url, alertmanager.url))
        serve = Serve(config)
        serve.start()

        web = serve.start_rollout("web", "web:v2")
        phase_is(serve, "web", "Paused")  # its manual gate
        receiver.wait_for("/hang", lambda got: len(got) >= 1, 10, "the hanging receiver's 1st")

        api = serve.start_rollout("api", "api:v2")
        phase_is(serve, "api", "Progressing")
        command(serve, "api", "pause")
        command(serve, "api", "resume")
        command(serve, "api", "rollback", {"reason": ROLLBACK_REASON})
        answered = time.time()
        phase_is(serve, "api", "RolledBack")
        rolled_back_at = time.time()

        command(serve, "web", "promote")
        phase_is(serve, "web", "Succeeded")
        receiver.wait_for("/json", lambda got: len(got) >= 4, 15, "four events on /json")
        receiver.wait_for("/slack", lambda got: len(got) >= 2, 15, "two events on /slack")
        receiver.wait_for("/flaky", lambda got: len(got) >= 3, 15, "two 500s and a 200")
        receiver.wait_for("/am-webhook", lambda got: len(got) >= 1, 30, "Alertmanager's post")
        metrics = serve.metrics()
        yield Story(serve, receiver, alertmanager, web, api, answered, rolled_back_at, metrics)
    finally:
        receiver.release()
        if serve is not None:
            serve.stop()
        alertmanager.stop()
        receiver.stop()


def test_every_event_reaches_the_json_receiver_with_its_facts_and_the_token(story: Story) -> None:
    got = story.receiver.at("/json")
    assert sorted(events(got)) == sorted(
        ["waiting-for-promote", "paused", "rolled-back", "succeeded"]
    )
    for r in got:
        assert r.headers["Authorization"] == f"Bearer {NOTIFY_TOKEN}"
        assert r.headers["Content-Type"].startswith("application/json")
    by_event = {r.body["event"]: r.body for r in got}

    gate = by_event["waiting-for-promote"]
    assert gate["target"] == "web" and gate["rollout_id"] == story.web["id"]
    assert gate["image"] == "web:v2" and gate["phase"] == "Paused"
    assert gate["stage"] == 1 and gate["weight"] == 20
    assert "manual promote" in gate["reason"]
    assert gate["link"] == f"{PUBLIC}/targets/web"  # public_url, its trailing / dropped
    assert gate["time"].endswith("+00:00")

    rolled = by_event["rolled-back"]
    assert rolled["target"] == "api" and rolled["rollout_id"] == story.api["id"]
    assert rolled["phase"] == "RolledBack" and rolled["weight"] == 0
    assert ROLLBACK_REASON in rolled["reason"]  # why it rolled back, not "router applied 0%"
    assert rolled["link"] == f"{PUBLIC}/targets/api"

    assert by_event["paused"]["target"] == "api" and by_event["paused"]["phase"] == "Paused"
    done = by_event["succeeded"]
    assert done["target"] == "web" and done["phase"] == "Succeeded" and done["image"] == "web:v2"


def test_the_slack_channel_gets_only_its_events_escaped(story: Story) -> None:
    got = story.receiver.at("/slack")
    assert sorted(r.body["text"].split(":")[1].strip() for r in got) == ["api", "web"], [
        r.body for r in got
    ]
    rolled = next(r.body for r in got if "rolled back" in r.body["text"])
    assert "&lt;b&gt;teapot&lt;/b&gt; &amp; more" in rolled["text"]
    assert "<b>" not in json.dumps(rolled)  # the reason cannot make markup or links
    assert rolled["blocks"][0]["text"]["text"].startswith(f"<{PUBLIC}/targets/api|api>")
    assert "Authorization" not in story.receiver.at("/slack")[0].headers


def test_a_failing_receiver_gets_retries_until_it_answers(story: Story) -> None:
    got = story.receiver.at("/flaky")
    assert [r.status for r in got] == [500, 500, 200]
    assert {json.dumps(r.body, sort_keys=True) for r in got} == {
        json.dumps(got[0].body, sort_keys=True)
    }, "each retry sends the same notification"
    assert got[0].body["event"] == "waiting-for-promote"
    assert got[1].arrived - got[0].arrived >= 0.9, "the first retry waits the backoff (1 s)"
    assert got[2].arrived - got[1].arrived >= 1.9, "the second waits twice as long"
    assert metric_sum(story.metrics, "canaryd_notifications_total") > 0
    retried = [line for line in story.metrics.splitlines() if 'result="retried"' in line]
    assert retried and float(retried[0].split()[-1]) == 2.0, retried


def test_a_hanging_receiver_never_delays_the_rollback(story: Story) -> None:
    hung = story.receiver.at("/hang")
    first = hung[0]
    assert first.body["event"] == "waiting-for-promote"
    assert first.answered is None or first.answered > story.rolled_back_at, (
        "the receiver was still blocking when the rollback landed"
    )
    # the rollback request was answered (its decision durable) while the receiver hung
    assert story.rollback_answered_at < (first.answered or float("inf"))
    decisions = stored_decisions(story.serve.state, story.api["id"])
    landed = [d for d in decisions if d["action"] == "rolled-back"]
    assert landed and landed[0]["t"] > first.arrived
    # the other channels were served meanwhile: each channel has its own sender
    assert "rolled-back" in events(story.receiver.at("/json"))


def test_the_alertmanager_format_is_an_alert_alertmanager_routes_on(story: Story) -> None:
    with urllib.request.urlopen(f"{story.alertmanager.url}/api/v2/alerts", timeout=5) as r:
        alerts = json.load(r)
    ours = [a for a in alerts if a["labels"].get("alertname") == "CanaryRolledBack"]
    assert len(ours) == 1, alerts
    alert = ours[0]
    assert alert["labels"] == {
        "alertname": "CanaryRolledBack",
        "target": "api",
        "event": "rolled-back",
        "rollout": story.api["id"],
        "source": "canaryd",
    }
    assert ROLLBACK_REASON in alert["annotations"]["reason"]
    assert alert["annotations"]["summary"] == "api: api:v2 rolled back"
    assert alert["generatorURL"] == f"{PUBLIC}/targets/api"
    assert alert["status"]["state"] == "active"
    assert alert["endsAt"] > alert["startsAt"]  # a one-shot event: it resolves on its own
    assert "severity" not in alert["labels"]  # never an alert canaryd's own rules act on

    (routed,) = story.receiver.at("/am-webhook")[:1]
    assert routed.headers["Authorization"] == f"Bearer {AM_TOKEN}"  # Alertmanager's credential
    assert routed.body["receiver"] == "canaryd"
    assert routed.body["status"] == "firing"
    (sent,) = routed.body["alerts"]
    assert sent["labels"]["alertname"] == "CanaryRolledBack"
    assert sent["labels"]["rollout"] == story.api["id"]
    assert sent["generatorURL"] == f"{PUBLIC}/targets/api"
