"""Hostile text must never wedge a rollout (issue 7, the closing demand; point 1's cause).

Hypothesis sends alert labels, annotations and rollback reasons made of arbitrary Unicode,
lone UTF-16 surrogates (``"\\udc80"``) included, to a real ``canaryd serve`` subprocess with its
real SQLite store, through the Alertmanager webhook and the API. Whatever it sends:

- every request is answered, promptly, and never with a 5xx (bad text is a 4xx, or is made
  safe and accepted);
- the daemon stays alive and ready;
- afterwards a critical alert still rolls a rollout back within 2 s, and the daemon still
  stops cleanly on SIGTERM and starts again on the same state.

The bodies are JSON written with ``ensure_ascii=True``: a lone surrogate cannot be encoded as
UTF-8, so it reaches the server as the six ASCII characters of its escape, ``\\udc80``, exactly
as a hostile sender would write it; JSON allows the escape and Python's decoder turns it back
into the lone surrogate that a UTF-8 database cannot store. Every alphabet is weighted towards
surrogates (hypothesis's own ``characters()`` almost never draws one), the examples are
derandomized and bounded, and the issue's own strings are always tried first. Shrinking is off:
once a daemon is wedged every further example would wait for its answer timeout.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from canaryd.api.webhook import fingerprint
from support.apikit import rfc3339
from support.servekit import TOKENS, WEBHOOK_TOKEN, Serve, TargetSpec, wait_until, write_config

ALERTED = "fuzz-alerted"  # rolled back by the critical alert sent after the fuzzing
ROLLED = "fuzz-rolled"  # rolled out and rolled back again and again with fuzzed reasons
IMAGE = "registry.local/fuzz:2.0"
TERMINAL = ("Succeeded", "RolledBack", "Failed")
ANSWER_TIMEOUT = 5.0  # a healthy daemon answers in milliseconds; no answer means wedged
ROLLBACK_WITHIN = 2.0

# Stages far longer than the test: the rollouts stay Progressing until something rolls them
# back. The one check is never queried (no stage names it): a policy needs at least one.
POLICY = """\
name: fuzz-steady
interval: 250ms
error_backoff: 250ms
scale_down_delay: 100ms
limits: {progress_deadline: 30m}
checks:
  unused: {query: vector(1), threshold: 0}
stages:
  - {weight: 10, duration: 10m}
  - {weight: 100, duration: 10m}
alerts:
  - {name: critical-rollback, match: {severity: critical}, action: rollback}
"""

FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

SURROGATES = st.integers(min_value=0xD800, max_value=0xDFFF).map(chr)
TRICKY = st.sampled_from(["\x00", "\u202e", "\ufeff", "\uffff", "\U0010ffff", '"', "\\", "\n"])
unicode_text = st.text(st.characters() | SURROGATES | TRICKY, max_size=24)


def ascii_json(doc: object) -> bytes:
    """``doc`` as JSON with every non-ASCII character escaped, lone surrogates included."""
    text = json.dumps(doc, ensure_ascii=True)
    return text.encode("ascii")


# --------------------------------------------------------------------------- the daemon


class Daemon:
    """One ``canaryd serve`` with two targets, spoken to over raw HTTP with a bounded wait."""

    def __init__(self, serve: Serve) -> None:
        self.serve = serve
        self.port = int(serve.url.rsplit(":", 1)[1])

    def send(
        self, method: str, path: str, body: bytes | None, headers: Mapping[str, str]
    ) -> tuple[int, str]:
        """One request; fails naming the request if no answer comes within ANSWER_TIMEOUT."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=ANSWER_TIMEOUT)
        try:
            conn.request(method, path, body=body, headers=dict(headers))
            response = conn.getresponse()
            return response.status, response.read().decode(errors="replace")
        except TimeoutError as exc:
            raise AssertionError(
                f"no answer within {ANSWER_TIMEOUT:g}s to {method} {path} {body!r:.300}: "
                f"the daemon is wedged\n{self.serve.tail(3000)}"
            ) from exc
        finally:
            conn.close()

    def api(self, method: str, path: str, doc: object, role: str = "operator") -> tuple[int, str]:
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKENS[role]}"}
        return self.send(method, path, ascii_json(doc), headers)

    def alerts(self, body: bytes) -> tuple[int, str]:
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {WEBHOOK_TOKEN}"}
        return self.send("POST", "/api/v1/alerts", body, headers)

    def phase(self, target: str) -> str | None:
        status, text = self.send("GET", f"/api/v1/targets/{target}", None, self._viewer())
        assert status == 200, (status, text)
        rollout = json.loads(text)["rollout"]
        return None if rollout is None else str(rollout["phase"])

    def start_rollout(self, target: str) -> None:
        status, text = self.api("POST", f"/api/v1/targets/{target}/rollouts", {"image": IMAGE})
        assert status == 201, (status, text, self.serve.tail(3000))

    def ensure_rollout(self, target: str) -> None:
        """A rollout in progress on ``target``: a new one once the last has ended."""
        phase = wait_until(
            lambda: self.phase(target),
            lambda p: p is None or p in TERMINAL or p == "Progressing",
            ROLLBACK_WITHIN,
            f"{target}'s rollout to end or progress (the last rollback was accepted)",
        )
        if phase != "Progressing":
            self.start_rollout(target)

    def assert_alive_and_ready(self) -> None:
        assert self.serve.running, f"canaryd exited:\n{self.serve.tail()}"
        for path in ("/healthz", "/readyz"):
            status, text = self.send("GET", path, None, {})
            assert status == 200, (path, status, text, self.serve.tail(3000))

    def assert_critical_alert_rolls_back(self, target: str) -> None:
        """A clean, critical firing alert about ``target`` ends its rollout RolledBack within
        ROLLBACK_WITHIN seconds of being posted."""
        assert self.phase(target) == "Progressing"
        labels = {"alertname": "CanaryBroken", "severity": "critical", "target": target}
        alert = {
            "status": "firing",
            "labels": labels,
            "annotations": {"summary": "the canary is broken"},
            "startsAt": rfc3339(time.time()),
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus.invalid/graph",
            "fingerprint": fingerprint(labels),
        }
        posted = time.monotonic()
        status, text = self.alerts(ascii_json(_notification([alert])))
        assert status == 200, (status, text, self.serve.tail(3000))
        wait_until(
            lambda: self.phase(target),
            lambda p: p == "RolledBack",
            ROLLBACK_WITHIN - (time.monotonic() - posted),
            f"{target} rolled back by a critical alert after the fuzzing "
            f"(daemon log: {self.serve.tail(1500)!r})",
        )

    def assert_restarts(self) -> None:
        """SIGTERM ends it cleanly and promptly, and it starts again on the same state."""
        code = self.serve.stop(timeout=10)
        assert code == 0, f"canaryd exited {code} on SIGTERM:\n{self.serve.tail()}"
        self.serve.start()
        self.assert_alive_and_ready()

    @staticmethod
    def _viewer() -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKENS['viewer']}"}


@pytest.fixture
def daemon(tmp_path: Any) -> Iterator[Daemon]:
    """A fresh daemon per test, with a rollout in progress on each target."""
    (tmp_path / "policy.yaml").write_text(POLICY)
    targets = [TargetSpec(ALERTED, "policy.yaml"), TargetSpec(ROLLED, "policy.yaml")]
    serve = Serve(write_config(tmp_path, targets))
    try:
        serve.start()
        running = Daemon(serve)
        running.start_rollout(ALERTED)
        running.start_rollout(ROLLED)
        yield running
    finally:
        serve.stop()


# --------------------------------------------------------------------------- payloads


def _notification(alerts: list[dict[str, Any]], group_key: str = "{}:{}") -> dict[str, Any]:
    return {
        "receiver": "canaryd",
        "status": "firing" if any(a["status"] == "firing" for a in alerts) else "resolved",
        "alerts": alerts,
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.invalid",
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": 0,
    }


@st.composite
def fuzzed_alerts(draw: st.DrawFn) -> dict[str, Any]:
    """An alert that no policy rule acts on (never ``severity: critical``), mostly about
    ALERTED, else about a fuzzed, unmanaged target, with fuzzed text in its alert name, extra
    labels and annotations, and its own fingerprint; ``stamped`` adds its times when sent."""
    labels = draw(st.dictionaries(unicode_text, unicode_text, max_size=3))
    labels |= {
        "alertname": draw(unicode_text),
        "severity": draw(st.sampled_from(["warning", "info", "page"])),
        "target": draw(st.sampled_from([ALERTED, ALERTED, ALERTED]) | unicode_text),
    }
    return {
        "status": draw(st.sampled_from(["firing", "firing", "firing", "resolved"])),
        "labels": labels,
        "annotations": draw(st.dictionaries(unicode_text, unicode_text, max_size=3)),
        "generatorURL": draw(unicode_text),
        "fingerprint": draw(st.text("0123456789abcdef", min_size=16, max_size=16)),
    }


# Issue 7's report: a firing alert with a fingerprint and a lone surrogate in its labels (the
# alert name is quoted in the decision that ignores it, so it reaches the store).
ISSUE_ALERT = {
    "status": "firing",
    "labels": {"alertname": "Oops \udc80", "severity": "warning", "target": ALERTED},
    "annotations": {},
    "generatorURL": "",
    "fingerprint": "00000000deadbeef",
}


def stamped(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The alerts as starting now (a rollout ignores alerts that started before it), a
    resolved one ending a second later."""
    now = time.time()
    unset = "0001-01-01T00:00:00Z"  # Alertmanager's zero time: a firing alert has no end
    return [
        alert
        | {
            "startsAt": rfc3339(now),
            "endsAt": rfc3339(now + 1) if alert["status"] == "resolved" else unset,
        }
        for alert in alerts
    ]


# --------------------------------------------------------------------------- the tests

# 4xx for text the edge refuses; 200 for text it accepts (made safe, or stored as it is); 202
# for a rollback accepted but still running when the API's bounded wait ends (core.errors.
# StillRunning), whose end ``ensure_rollout`` then waits for, as it does after a 200.
WEBHOOK_ANSWERS = (200, 400, 413, 422)
ROLLBACK_ANSWERS = (200, 202, 400, 409, 422)


def test_fuzzed_alert_labels_never_stop_a_critical_alert_from_rolling_back(daemon: Daemon):
    @settings(FUZZ, max_examples=100)  # cheap: one POST each
    @example(alerts=[ISSUE_ALERT], group_key="{}:{}")
    @given(alerts=st.lists(fuzzed_alerts(), min_size=1, max_size=3), group_key=unicode_text)
    def post(alerts: list[dict[str, Any]], group_key: str) -> None:
        body = ascii_json(_notification(stamped(alerts), group_key))
        status, text = daemon.alerts(body)
        assert status in WEBHOOK_ANSWERS, (status, text, body[:300])

    post()
    daemon.assert_alive_and_ready()
    daemon.assert_critical_alert_rolls_back(ALERTED)
    daemon.assert_restarts()


def test_fuzzed_rollback_reasons_never_stop_a_rollback(daemon: Daemon):
    @FUZZ
    @example(reason="oops \udc80")
    @given(reason=unicode_text)
    def rollback(reason: str) -> None:
        daemon.ensure_rollout(ROLLED)
        path = f"/api/v1/targets/{ROLLED}/rollback"
        status, text = daemon.api("POST", path, {"reason": reason})
        assert status in ROLLBACK_ANSWERS, (status, text, ascii_json(reason))

    rollback()
    daemon.assert_alive_and_ready()
    daemon.assert_critical_alert_rolls_back(ALERTED)
    # and a plain rollback of the target the fuzzing went to is still taken, promptly
    daemon.ensure_rollout(ROLLED)
    status, text = daemon.api("POST", f"/api/v1/targets/{ROLLED}/rollback", {"reason": "plain"})
    assert status in (200, 202), (status, text)
    wait_until(lambda: daemon.phase(ROLLED), lambda p: p == "RolledBack", ROLLBACK_WITHIN, ROLLED)
    daemon.assert_restarts()
