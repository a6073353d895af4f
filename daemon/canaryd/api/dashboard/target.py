"""``/targets/{name}``: one target's rollout, its plan, checks, decisions and earlier rollouts.

The reason a rollout was rolled back or paused opens the page, in the colour of its phase:
it is what an operator arriving from an alert wants first. Then the summary (image, weights
asked and measured, stage and time left), the stage plan with the current stage marked, every
check's latest value against its threshold with the engine's verdict and its chart over the
rollout, the alerts firing, every decision with its reason (newest first) and the target's
earlier rollouts.

The actions (``_actions``) sit beside ``#live``, not in it, so that a refresh never clears
what the operator is typing; they are ``hidden`` until the script shows them, because without
it they could do nothing (the token goes in a header, which a plain form cannot send).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from canaryd.api.dashboard.charts import check_chart
from canaryd.api.dashboard.facts import CheckHistory, Detail, Health, health, time_left
from canaryd.api.dashboard.index import weights
from canaryd.api.dashboard.markup import DASH, attr, number, page, span, target_href, text, when
from canaryd.core.model import Phase, Rollout
from canaryd.ports import DecisionRecord

_STOPPED = frozenset({Phase.ROLLING_BACK, Phase.ROLLED_BACK, Phase.FAILED})
SHOWN_DECISIONS = 200  # newest first; the API's /history has them all


def _banner(r: Rollout) -> str:
    """The rollback, failure or pause reason, first and prominent."""
    if r.rollback_reason is not None:
        verb = "Rolling back" if r.phase is Phase.ROLLING_BACK else "Rolled back"
        return f'<p class="banner bad" id="reason">{verb}: {text(r.rollback_reason)}</p>'
    if r.phase is Phase.FAILED:
        return f'<p class="banner bad" id="reason">Failed: {text(r.message or "")}</p>'
    if r.phase is Phase.PAUSED and r.stage_passed:
        return (
            '<p class="banner watch" id="reason">Waiting for promote: the stage passed and '
            "its gate is manual</p>"
        )
    if r.phase is Phase.PAUSED:
        why = r.pause_reason or "no reason given"
        return f'<p class="banner watch" id="reason">Paused: {text(why)}</p>'
    if r.phase is Phase.SUCCEEDED:
        return f'<p class="banner ok" id="reason">Succeeded: stable runs {text(r.image)}</p>'
    return ""


def _no_timer(r: Rollout) -> str:
    """Why no stage timer runs, where the time left would be."""
    if r.phase is Phase.PAUSED:
        return "stopped while paused" if not r.stage_passed else "the stage passed: promote"
    return DASH


def _summary(detail: Detail, r: Rollout) -> str:
    left = time_left(r)
    stage = r.current_stage
    rows = [
        ("Image", f'<span id="image">{text(r.image)}</span>'),
        ("Rollout", f"{text(r.id)} &middot; policy {text(r.policy.name)}"),
        ("Started", when(r.started_at)),
        ("Finished", when(r.finished_at)),
        ("Weight", weights(r.weight, detail.card.measured)),
        (
            "Stage",
            f'<span id="stage">{min(r.stage + 1, len(r.policy.stages))}/'
            f"{len(r.policy.stages)}</span>",
        ),
        (
            "Time left",
            f'<span id="time-left">{span(left)}</span> <small>({span(r.credited)} of '
            f"{span(stage.duration)} credited by passing evaluations)</small>"
            if left is not None
            else _no_timer(r),
        ),
    ]
    if r.trace_id is not None:  # ``tracing:`` on: the id to look the rollout up by in the
        # trace store (Jaeger, Tempo); every decision in the history carries it too
        rows.append(("Trace", f'<code id="trace-id">{text(r.trace_id)}</code>'))
    cells = "".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in rows)
    return f'<table class="summary">{cells}</table>'


def _plan(r: Rollout) -> str:
    rows = []
    for i, s in enumerate(r.policy.stages):
        if i < r.stage or r.phase is Phase.SUCCEEDED:
            state = "done"
        elif i == r.stage and r.phase in _STOPPED:
            state = "stopped here"
        elif i == r.stage:
            state = "current"
        else:
            state = "next"
        checks = ", ".join(text(c) for c in s.checks) or DASH
        rows.append(
            f'<tr class="{state.split()[0]}"><td>{i + 1}</td><td>{s.weight}%</td>'
            f"<td>{span(s.duration)}</td><td>{checks}</td><td>{s.gate}</td><td>{state}</td></tr>"
        )
    return (
        '<h2>Stage plan</h2><table class="plan"><thead><tr><th>#</th><th>Weight</th>'
        "<th>Duration</th><th>Checks</th><th>Gate</th><th></th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _evidence(history: CheckHistory) -> str:
    """A compare check's request and error counts on both sides, once it has them."""
    latest = history.latest
    if latest is None or latest.counts is None:
        return ""
    c = latest.counts
    return (
        f"<br><small>canary {number(c.canary_errors)} errors / {number(c.canary_requests)} "
        f"requests; stable {number(c.stable_errors)} / {number(c.stable_requests)}</small>"
    )


def _check_row(history: CheckHistory) -> str:
    latest, check = history.latest, history.check
    threshold = f"{text(check.op)} {number(check.threshold)}" if check else "not in the policy"
    if latest is None:
        value, verdict, detail = DASH, "none", "not evaluated yet"
    else:
        value, verdict, detail = number(latest.value), str(latest.verdict), latest.detail
    shown = {"successful": "pass", "failed": "fail", "none": DASH}.get(verdict, verdict)
    return (
        f'<tr data-check="{attr(history.name)}"><td>{text(history.name)}</td>'
        f'<td class="value">{value}</td><td>{threshold}</td>'
        f'<td class="verdict {attr(verdict)}" title="{attr(detail)}">{shown}</td>'
        f"<td>{check_chart(history)}{_evidence(history)}</td></tr>"
    )


def _checks(checks: Sequence[CheckHistory]) -> str:
    if not checks:
        return "<h2>Checks</h2><p>This policy's stages name no checks.</p>"
    rows = "".join(_check_row(h) for h in checks)
    return (
        '<h2>Checks</h2><table class="checks"><thead><tr><th>Check</th><th>Latest</th>'
        "<th>Threshold</th><th>Verdict</th><th>Over the rollout</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


def _decisions(decisions: Sequence[DecisionRecord]) -> str:
    newest = list(reversed(decisions))[:SHOWN_DECISIONS]
    rows = "".join(
        f'<tr class="{attr(d["action"])}"><td>{when(d["t"])}</td><td>{d["stage"]}</td>'
        f"<td>{d['weight']}%</td><td>{text(d['action'])}</td><td>{text(d['cause'] or '')}</td>"
        f'<td class="reason">{text(d["reason"])}</td></tr>'
        for d in newest
    )
    more = len(decisions) - len(newest)
    note = f"<p><small>{more} older decisions: see the API's history</small></p>" if more else ""
    return (
        f"<h2>Decisions <small>({len(decisions)})</small></h2>"
        '<table class="decisions"><thead><tr><th>When</th><th>Stage</th><th>Weight</th>'
        "<th>Action</th><th>Cause</th><th>Reason</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>{note}"
    )


def _past(past: Sequence[Rollout]) -> str:
    if not past:
        return "<h2>Earlier rollouts</h2><p>None.</p>"
    rows = "".join(
        f'<tr><td>{text(r.id)}</td><td>{text(r.image)}</td><td class="phase {r.phase}">'
        f"{r.phase}</td><td>{when(r.started_at)}</td><td>{when(r.finished_at)}</td>"
        f'<td class="reason">{text(r.rollback_reason or r.message or "")}</td></tr>'
        for r in past
    )
    return (
        '<h2>Earlier rollouts</h2><table class="past"><thead><tr><th>Rollout</th><th>Image</th>'
        "<th>Phase</th><th>Started</th><th>Finished</th><th>Reason</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


_ACTIONS = (  # (the API path after the target, what the role table calls it, the label)
    ("pause", "pause", "Pause"),
    ("resume", "resume", "Resume"),
    ("promote", "promote", "Promote"),
    ("promote-full", "promote", "Promote fully (to 100%)"),
)


def _actions(roles: Mapping[str, str]) -> str:
    """The token field and the actions, each with the role the API asks for it."""

    def needs(what: str) -> str:
        return f'<small class="role">needs {text(roles.get(what, "?"))}</small>'

    buttons = "".join(
        f'<button type="button" data-action="{key}">{label}</button>{needs(what)}'
        for key, what, label in _ACTIONS
    )
    return (
        '<aside id="actions" hidden><h2>Actions</h2>'
        '<form id="token-form" autocomplete="off"><label>API token '
        '<input type="password" id="token" autocomplete="off" spellcheck="false"></label>'
        '<button type="submit">Use token</button><button type="button" id="forget">Forget'
        '</button> <span id="token-state">no token</span></form>'
        "<p><small>The token stays in this browser tab (sessionStorage) and is sent to this "
        "canaryd only, in the Authorization header; the API refuses what your role may not "
        "do.</small></p>"
        f'<div class="buttons">{buttons}</div>'
        '<form class="inline" data-action="rollback"><input name="reason" maxlength="500" '
        'placeholder="why roll back" aria-label="rollback reason">'
        f'<button type="submit">Roll back</button>{needs("rollback")}</form>'
        '<form class="inline" data-action="weight"><input name="weight" type="number" min="0" '
        'max="100" required placeholder="0-100" aria-label="canary weight">'
        f'<button type="submit">Set weight (pauses)</button>{needs("set-weight")}</form>'
        '<p id="result" role="status" aria-live="polite"></p></aside>'
    )


_NO_SCRIPT = (
    "<noscript><p><small>Actions need JavaScript: the token is sent in a header, never in a "
    "URL. Without it this page reloads itself every few seconds.</small></p></noscript>"
)


def render_target(detail: Detail, *, ready: bool) -> str:
    """The page of ``detail.card.target``."""
    card, r = detail.card, detail.card.rollout
    name = card.target.name
    verdicts = [h.latest.verdict for h in detail.checks if h.latest is not None]
    state, why = health(r, card.last, card.firing, verdicts) if r else (Health.IDLE, "idle")
    phase = str(r.phase) if r else "Idle"
    head = (
        f'<h1><a href="{target_href(name)}">{text(name)}</a> '
        f'<span class="phase {phase}" id="phase">{phase}</span></h1>'
        f'<p class="health {state}"><span class="dot"></span>{text(why)} &middot; '
        f"router {text(card.target.router.kind)} &middot; platform "
        f"{text(card.target.platform.kind)} &middot; policy {text(card.target.policy.name)}</p>"
    )
    if r is None:
        body = f"{head}<p>No rollout yet.</p>"
    else:
        firing = "".join(f"<li>{text(a)}</li>" for a in card.firing)
        alerts = f'<h2>Alerts firing</h2><ul class="alerts">{firing}</ul>' if firing else ""
        body = (
            f"{head}{_banner(r)}{_summary(detail, r)}{_plan(r)}{_checks(detail.checks)}"
            f"{alerts}{_decisions(detail.decisions)}"
        )
    live = f'<main id="live">{body}{_past(detail.past)}{_NO_SCRIPT}</main>'
    layout = f'<div class="layout">{live}{_actions(detail.roles)}</div>'
    return page(f"{name} - canaryd", layout, ready=ready, target=name)
