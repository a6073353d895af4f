"""The status page ``/``: every target's phase, stage, image and traffic split, as HTML.

It is open (no token), like ``/metrics``, so it shows only what ``/metrics`` already exposes
(target, phase, stage, weight) plus the image: never a token, a credential or an alert's labels.
Each row is rendered from the API's own ``target_summary``, which keeps that promise checkable
in one place. The page refreshes itself every five seconds and needs no JavaScript.

A module of its own, though small, because it is the one place with markup: the template and its
escaping are reviewed together, away from the routes. ``handlers`` reads the targets and
answers the request; this module only turns them into a page.
"""

from __future__ import annotations

import html
from collections.abc import Iterable

from canaryd import __version__
from canaryd.api.views import TargetInfo, target_summary
from canaryd.core.model import Rollout

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>canaryd</title>
<style>
body{{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}}
table{{border-collapse:collapse;width:100%}}
th,td{{text-align:left;padding:.4em .6em;border-bottom:1px solid #ddd;vertical-align:middle}}
.bar{{display:flex;width:16em;height:1em;border-radius:3px;overflow:hidden;background:#4a7bd0}}
.bar .canary{{background:#f0a030}}
.phase{{font-weight:600}} .Succeeded{{color:#2a8a3a}} .RolledBack,.Failed{{color:#c0392b}}
.RollingBack{{color:#d35400}} .Paused{{color:#8e44ad}} .Progressing,.Promoting{{color:#2c6fbb}}
small{{color:#777}}
</style></head><body>
<h1>canaryd</h1>
<p><small>version {version} &middot; {ready} &middot; canary
<span style="color:#f0a030">&#9632;</span> / stable <span style="color:#4a7bd0">&#9632;</span>
&middot; <a href="/api/v1/openapi.json">API</a> &middot; <a href="/metrics">metrics</a></small></p>
<table><thead><tr><th>Target</th><th>Phase</th><th>Stage</th><th>Image</th><th>Traffic</th>
</tr></thead><tbody>
{rows}
</tbody></table></body></html>
"""

_ROW = (
    '<tr><td>{name}</td><td class="phase {phase}">{phase}</td><td>{stage}</td><td>{image}</td>'
    '<td><div class="bar" title="canary {weight}% / stable {stable}%">'
    '<div class="canary" style="width:{weight}%"></div></div>'
    "<small>canary {weight}% / stable {stable}%</small></td></tr>"
)


def render_status_page(rows: Iterable[tuple[TargetInfo, Rollout | None]], *, ready: bool) -> str:
    """The page for ``rows``, each target with its current rollout (None: idle)."""
    cells = []
    for target, rollout in rows:
        s = target_summary(target, rollout)
        stage = f"{s['stage']}/{s['stages']}" if rollout else "&ndash;"
        cells.append(
            _ROW.format(
                name=html.escape(target.name),
                phase=html.escape(s["phase"] or "Idle"),
                stage=stage,
                image=html.escape(s["image"] or "") or "&ndash;",
                weight=int(s["weight"]),
                stable=int(s["stable_weight"]),
            )
        )
    return _PAGE.format(
        version=html.escape(__version__),
        ready="ready" if ready else "loading state",
        rows="\n".join(cells) or '<tr><td colspan="5">no targets configured</td></tr>',
    )
