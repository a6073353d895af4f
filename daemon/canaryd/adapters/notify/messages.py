"""What a notification says: decisions become events, events become request bodies.

Pure functions, no I/O, so every format is tested by value. Which decisions are news
(``events_of``):

=======================  =======================================================================
event                    the decision
=======================  =======================================================================
``rolled-back``          ``rolled-back``: the router applied canary 0%; the reason is the one
                         the rollback was decided for (the alert, the failed check, the operator)
``succeeded``            ``succeeded``: the promotion finished
``paused``               ``pause`` for any cause but a passed stage (an alert, inconclusive
                         analysis, an operator)
``waiting-for-promote``  ``pause`` because a stage with ``gate: manual`` passed: someone must
                         ``promote`` (every stage of the conservative profile)
``failed``               ``failed``: a promotion or rollback is stuck past its deadline and retrying
=======================  =======================================================================

The three formats:

- ``json``: one object naming the target, rollout id, image, event, phase, stage, weight,
  reason, the decision's cause, the time (RFC 3339, UTC) and ``link``, the target's page.
- ``slack``: an incoming webhook's ``text`` (what notifications and old clients show) and
  ``blocks``; text from outside (reasons quote alert names) is escaped as Slack asks
  (``&``, ``<``, ``>``), so a reason cannot forge a link or a mention.
- ``alertmanager``: a list of one alert for ``POST /api/v2/alerts``: labels ``alertname``
  (``CanaryRolledBack``, ...), ``target``, ``event``, ``rollout``, ``source="canaryd"``;
  annotations ``summary``, ``reason``, ``image``, ...; ``generatorURL`` the link; ``endsAt``
  one hour on, so the one-shot event resolves on its own. No ``severity`` label on purpose:
  canaryd's policies act on ``severity`` (critical rolls back, warning pauses), and an
  alert canaryd sends about a target must never be one it acts on if a route sends it back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from canaryd.core.model import Action, ActionKind, Cause, Rollout

ALERT_LIFETIME = 3600.0  # seconds an Alertmanager alert stays active before it resolves

ALERT_NAMES = {
    "rolled-back": "CanaryRolledBack",
    "succeeded": "CanarySucceeded",
    "paused": "CanaryPaused",
    "waiting-for-promote": "CanaryWaitingForPromote",
    "failed": "CanaryFailed",
}
_SAID = {
    "rolled-back": "rolled back",
    "succeeded": "promoted",
    "paused": "paused",
    "waiting-for-promote": "waits for a manual promote",
    "failed": "is stuck",
}


@dataclass(frozen=True, slots=True)
class Notice:
    """One event about one rollout, as every format tells it."""

    event: str
    target: str
    rollout_id: str
    image: str
    phase: str
    stage: int  # 1-based, as people count stages
    weight: int
    reason: str
    cause: str | None
    at: float
    link: str

    @property
    def summary(self) -> str:
        return f"{self.target}: {self.image} {_SAID[self.event]}"


def event_of(state: Rollout, action: Action) -> str | None:
    """The event a decision is, or None when it is not news."""
    kind = action.kind
    if kind is ActionKind.ROLLED_BACK:
        return "rolled-back"
    if kind is ActionKind.SUCCEEDED:
        return "succeeded"
    if kind is ActionKind.FAILED:
        return "failed"
    if kind is ActionKind.PAUSE:
        return "waiting-for-promote" if action.cause is Cause.STAGE_PASSED else "paused"
    return None


def notices(state: Rollout, actions: tuple[Action, ...], now: float, base: str) -> list[Notice]:
    """The news in one committed decision: ``state`` is the rollout after it, ``base`` the
    public URL of canaryd's pages."""
    found: list[Notice] = []
    for action in actions:
        event = event_of(state, action)
        if event is None:
            continue
        reason = action.reason
        if event == "rolled-back" and state.rollback_reason:
            reason = state.rollback_reason  # why, not "router applied canary 0%"
        found.append(
            Notice(
                event=event,
                target=state.target,
                rollout_id=state.id,
                image=state.image,
                phase=str(action.phase or state.phase),
                stage=state.stage + 1,
                weight=state.weight if action.weight is None else action.weight,
                reason=reason,
                cause=None if action.cause is None else str(action.cause),
                at=now,
                link=target_link(base, state.target),
            )
        )
    return found


def target_link(base: str, target: str) -> str:
    return f"{base.rstrip('/')}/targets/{quote(target, safe='')}"


def rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


# --------------------------------------------------------------------------- formats


def json_body(n: Notice) -> dict[str, Any]:
    return {
        "event": n.event,
        "target": n.target,
        "rollout_id": n.rollout_id,
        "image": n.image,
        "phase": n.phase,
        "stage": n.stage,
        "weight": n.weight,
        "reason": n.reason,
        "cause": n.cause,
        "time": rfc3339(n.at),
        "link": n.link,
        "summary": n.summary,
    }


def slack_body(n: Notice) -> dict[str, Any]:
    target = f"<{n.link}|{_slack(n.target)}>"
    headline = f"{target}: `{_slack(n.image)}` {_SAID[n.event]}"
    facts = (
        f"phase *{_slack(n.phase)}* · stage {n.stage} · canary weight {n.weight}% · "
        f"rollout `{_slack(n.rollout_id)}`"
    )
    return {
        "text": f"canaryd: {_slack(n.summary)}: {_slack(n.reason)}",
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": headline}},
            {"type": "section", "text": {"type": "mrkdwn", "text": _slack(n.reason)}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": facts}]},
        ],
    }


def alertmanager_body(n: Notice) -> list[dict[str, Any]]:
    return [
        {
            "labels": {
                "alertname": ALERT_NAMES[n.event],
                "target": n.target,
                "event": n.event,
                "rollout": n.rollout_id,
                "source": "canaryd",
            },
            "annotations": {
                "summary": n.summary,
                "reason": n.reason,
                "image": n.image,
                "phase": n.phase,
                "stage": str(n.stage),
                "weight": str(n.weight),
            },
            "startsAt": rfc3339(n.at),
            "endsAt": rfc3339(n.at + ALERT_LIFETIME),
            "generatorURL": n.link,
        }
    ]


def body(format: str, n: Notice) -> Any:
    """The request body of ``n`` in ``format`` (``json``, ``slack``, ``alertmanager``)."""
    if format == "slack":
        return slack_body(n)
    if format == "alertmanager":
        return alertmanager_body(n)
    return json_body(n)


def _slack(text: str) -> str:
    """Slack's three control characters escaped (api.slack.com: formatting, escaping)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
