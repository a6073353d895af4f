"""``/``: every target in one table — health, phase, stage, image, weights, last decision.

The weight is shown twice: asked (the rollout's record, what canaryd set) and measured (what the
router last reported, ``canaryd_router_weight``), because a router that did not apply a stage
is exactly what an operator must see at a glance. Health is ``facts.health`` of the target's
phase, last decision and firing alerts; each row links to the target's own page.
"""

from __future__ import annotations

from collections.abc import Sequence

from canaryd.api.dashboard.charts import weight_bar
from canaryd.api.dashboard.facts import Card, health
from canaryd.api.dashboard.markup import DASH, attr, page, target_href, text, when

_HEAD = (
    "<tr><th>Target</th><th>Health</th><th>Phase</th><th>Stage</th><th>Image</th>"
    "<th>Weight: asked / measured</th><th>Last decision</th></tr>"
)


def weights(asked: int, measured: int | None) -> str:
    """The bar and both numbers in words (the bar alone says nothing to a screen reader)."""
    said = DASH if measured is None else f"{measured}%"
    return (
        f"{weight_bar(asked, measured)}<small>canary {asked}% / stable {100 - asked}%"
        f"</small><small>router reports {said}</small>"
    )


def last_decision(card: Card) -> str:
    d = card.last
    if d is None:
        return DASH
    return (
        f'<span class="action">{text(d["action"])}</span> '
        f'<span class="reason">{text(d["reason"])}</span><br><small>{when(d["t"])}</small>'
    )


def _row(card: Card) -> str:
    r = card.rollout
    state, why = health(r, card.last, card.firing)
    name = card.target.name
    phase = str(r.phase) if r else "Idle"
    stage = f"{min(r.stage + 1, len(r.policy.stages))}/{len(r.policy.stages)}" if r else DASH
    return (
        f'<tr data-target="{attr(name)}"><td><a href="{target_href(name)}">{text(name)}</a></td>'
        f'<td class="health {state}"><span class="dot"></span>{text(why)}</td>'
        f'<td class="phase {phase}">{phase}</td><td class="stage">{stage}</td>'
        f'<td class="image">{text(r.image) if r else DASH}</td>'
        f'<td class="weight">{weights(r.weight if r else 0, card.measured)}</td>'
        f'<td class="last">{last_decision(card)}</td></tr>'
    )


def render_index(cards: Sequence[Card], *, ready: bool) -> str:
    """The page for ``cards``, one row per configured target, in name order."""
    rows = "\n".join(_row(card) for card in cards) or (
        '<tr><td colspan="7">no targets configured</td></tr>'
    )
    body = (
        '<main id="live"><h1>Targets</h1>'
        f'<table class="targets"><thead>{_HEAD}</thead><tbody>\n{rows}\n</tbody></table>'
        '<p class="legend"><small><span class="key canary"></span> canary '
        '<span class="key stable"></span> stable <span class="key measured"></span> '
        "what the router reports</small></p></main>"
    )
    return page("canaryd", body, ready=ready)
