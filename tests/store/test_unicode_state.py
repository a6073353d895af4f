"""Text no UTF-8 can hold, through a real ``canaryd serve`` into its real store (issue 7, point 1).

JSON can carry lone UTF-16 surrogates (``"\\udc80"``) and Python decodes them as such; SQLite
cannot bind them. An alert label or a rollback reason holding one once made every later commit
of its rollout fail: the worker wedged, a critical alert never rolled back, and a restart
refused the state. Whatever the API answers such text (accepted and stored as U+FFFD, or
refused at the edge), the daemon must still roll back on the next critical alert, and start
again on the state it wrote.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

from support.apikit import reference, rfc3339
from support.servekit import (
    TOKENS,
    WEBHOOK_TOKEN,
    Serve,
    TargetSpec,
    call,
    stored_rollout,
    wait_until,
    write_config,
)

ALERTED, COMMANDED = "alerted", "commanded"
IMAGE = "registry.local/matriz:2.0"
BAD = "oops \udc80 \ud800"
POLICY = """\
name: unicode-quick
interval: 250ms
checks:
  unused: {query: vector(1), threshold: 0}
stages:
  - {weight: 10, duration: 1h}
alerts:
  - {name: critical-rollback, match: {severity: critical}, action: rollback}
"""
ANSWER_TIMEOUT = 10.0  # a request that gets no answer in this time is a wedged daemon


def alert(target: str, fingerprint: str, **labels: str) -> dict[str, Any]:
    """One firing Alertmanager alert about ``target``, started now."""
    doc = copy.deepcopy(reference("webhook-firing.json")["alerts"][0])
    doc["labels"] = {"target": target, **labels}
    doc["fingerprint"] = fingerprint
    doc["startsAt"] = rfc3339(time.time())
    return dict(doc)


def deliver(serve: Serve, *alerts: dict[str, Any]) -> int:
    doc = copy.deepcopy(reference("webhook-firing.json"))
    doc["alerts"] = list(alerts)
    doc["commonLabels"] = {}
    status, _ = call(
        serve.url, "POST", "/api/v1/alerts", doc, token=WEBHOOK_TOKEN, timeout=ANSWER_TIMEOUT
    )
    return status


def phase(serve: Serve, target: str) -> str | None:
    rollout = serve.rollout(target)
    return None if rollout is None else str(rollout["phase"])


def test_lone_surrogates_in_labels_and_reasons_never_wedge_a_rollback(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY)
    targets = [TargetSpec(name, "policy.yaml") for name in (ALERTED, COMMANDED)]
    serve = Serve(write_config(tmp_path, targets))
    serve.start()
    try:
        for target in (ALERTED, COMMANDED):
            serve.start_rollout(target, IMAGE)
        noise = alert(ALERTED, "0123456789abcdef", alertname=f"Noise{BAD}", note=BAD)
        assert deliver(serve, noise) < 500

        status, doc = call(
            serve.url,
            "POST",
            f"/api/v1/targets/{COMMANDED}/rollback",
            {"reason": BAD},
            token=TOKENS["operator"],
            timeout=ANSWER_TIMEOUT,
        )
        assert status < 500, doc
        if status != 200:  # refused at the edge: a plain reason still rolls back at once
            status, doc = call(
                serve.url,
                "POST",
                f"/api/v1/targets/{COMMANDED}/rollback",
                {"reason": "plain"},
                token=TOKENS["operator"],
                timeout=ANSWER_TIMEOUT,
            )
            assert status == 200, doc

        critical = alert(ALERTED, "fedcba9876543210", alertname="Down", severity="critical")
        assert deliver(serve, critical) == 200
        for target in (ALERTED, COMMANDED):
            wait_until(
                lambda t=target: phase(serve, t),  # type: ignore[misc]
                lambda p: p == "RolledBack",
                5,
                f"{target} to roll back\n{serve.tail()}",
            )
        assert serve.stop() == 0, serve.tail()

        serve.start()  # the state it wrote opens again, readable as UTF-8
        for target in (ALERTED, COMMANDED):
            record = stored_rollout(serve.state, target)
            assert record is not None and record["phase"] == "RolledBack"
            json.dumps(record, ensure_ascii=False).encode("utf-8")
        assert phase(serve, ALERTED) == "RolledBack"
    finally:
        serve.stop()
