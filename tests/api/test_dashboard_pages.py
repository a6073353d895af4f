"""The dashboard's pages without a browser: escaping, headers, assets, and the judgements.

The browser tests (``test_dashboard_browser.py``) show the pages work in Chromium; these hold
the promises that are cheaper and sharper to check on the markup itself: hostile text from
every outside source (an image name, an operator's reason, an alert's name) is escaped
wherever it appears, no alert label but the name reaches a page, every page carries the
Content-Security-Policy, the assets are served (and revalidated) by canaryd with nothing from
elsewhere, and the health, time-left and chart rules hold on their edge cases.
"""

from __future__ import annotations

import asyncio
import re
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from canaryd.api.dashboard import charts
from canaryd.api.dashboard.facts import (
    Card,
    CheckHistory,
    Detail,
    Health,
    Point,
    check_histories,
    health,
    time_left,
)
from canaryd.api.dashboard.markup import CSP
from canaryd.api.dashboard.target import render_target
from canaryd.api.webhook import fingerprint
from canaryd.core.model import Check, Phase, Policy, Rollout, Stage, Verdict
from support.apikit import IDLE, TARGET, Stack, auth, payload, running_stack, webhook_auth

Client = TestClient[Any, Any]
MakeClient = Callable[[web.Application], Awaitable[Client]]
ROOT = Path(__file__).resolve().parents[2]
HOSTILE = '<script>window.pwned=1</script><img src=x onerror="alert(1)">'
LABEL_VALUE = "label-value-the-page-must-not-show"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path) as s:
        yield s


@pytest.fixture
async def client(stack: Stack, aiohttp_client: MakeClient) -> Client:
    return await aiohttp_client(stack.app)


async def _page(client: Client, path: str) -> str:
    response = await client.get(path)
    assert response.status == 200, await response.text()
    assert response.content_type == "text/html"
    assert response.headers["Content-Security-Policy"] == CSP
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    return await response.text()


async def _rolled_back_by_a_hostile_alert(client: Client) -> dict[str, Any]:
    """A rollout of a hostile image, rolled back by a critical alert with a hostile name."""
    image = "shop/checkout:<b>2.0</b>"
    response = await client.post(
        f"/api/v1/targets/{TARGET}/rollouts", json={"image": image}, headers=auth("operator")
    )
    assert response.status == 201, await response.text()
    doc = payload("webhook-firing.json")
    for alert in doc["alerts"]:
        alert["labels"].update(alertname=HOSTILE, severity="critical", team=LABEL_VALUE)
        alert["fingerprint"] = fingerprint(alert["labels"])
    answer = await client.post("/api/v1/alerts", json=doc, headers=webhook_auth())
    assert answer.status == 200, await answer.text()
    for _ in range(200):
        view = await (await client.get(f"/api/v1/targets/{TARGET}", headers=auth("viewer"))).json()
        if view["rollout"]["phase"] == "RolledBack":
            return dict(view)
        await asyncio.sleep(0.05)
    raise AssertionError(f"not rolled back: {view}")


def _no_live_markup(page: str) -> None:
    """Only canaryd's own script tag, no element or handler from outside text."""
    assert re.findall(r"<script[^>]*>", page) == ['<script src="/ui/dashboard.js" defer>']
    for bad in ("<img", "<b>"):
        assert bad not in page, page[max(0, page.index(bad) - 200) : page.index(bad) + 100]
    assert LABEL_VALUE not in page


async def test_hostile_text_is_escaped_on_both_pages_and_alert_labels_stay_off_them(
    client: Client,
) -> None:
    view = await _rolled_back_by_a_hostile_alert(client)
    assert HOSTILE in view["rollout"]["rollback_reason"]
    for path in ("/", f"/targets/{TARGET}"):
        page = await _page(client, path)
        _no_live_markup(page)
        assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in page, path
        assert "shop/checkout:&lt;b&gt;2.0&lt;/b&gt;" in page, path
    page = await _page(client, f"/targets/{TARGET}")
    assert '<p class="banner bad" id="reason">Rolled back: ' in page
    assert '<td class="phase RolledBack">' not in page  # no earlier rollouts yet
    assert "<h2>Earlier rollouts</h2><p>None.</p>" in page


async def test_an_idle_target_has_a_page_and_an_unknown_one_is_a_404(client: Client) -> None:
    page = await _page(client, f"/targets/{IDLE}")
    assert "No rollout yet." in page and 'class="health idle"' in page
    response = await client.get("/targets/nope")
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "not_found"
    index = await _page(client, "/")
    assert f'<a href="/targets/{IDLE}">{IDLE}</a>' in index


async def test_the_assets_are_served_by_canaryd_and_revalidated_by_etag(client: Client) -> None:
    for name, kind in (("dashboard.css", "text/css"), ("dashboard.js", "text/javascript")):
        response = await client.get(f"/ui/{name}")
        assert response.status == 200 and response.content_type == kind
        body = await response.text()
        assert not re.search(r"https?://", body), f"{name} loads something from elsewhere"
        etag = response.headers["ETag"]
        again = await client.get(f"/ui/{name}", headers={"If-None-Match": etag})
        assert again.status == 304 and again.headers["ETag"] == etag
    script = await (await client.get("/ui/dashboard.js")).text()
    assert "innerHTML" not in script and "console." not in script
    assert "sessionStorage" in script and "Authorization" in script


def test_a_non_editable_install_ships_the_assets() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["canaryd"]
    package = ROOT / "daemon" / "canaryd"
    shipped = {p for g in globs for p in package.glob(g)}
    static = set((package / "api" / "dashboard" / "static").iterdir())
    assert static and static <= shipped


# --------------------------------------------------------------------------- the judgements

CHECK = Check("success-rate", "q", ">=", 0.995)
POLICY = Policy("p", (Stage(10, 60.0, ("success-rate",)), Stage(100, 0.0)), {CHECK.name: CHECK})


def _rollout(**fields: Any) -> Rollout:
    return Rollout("r-1", TARGET, "app:v2", POLICY, 0.0, **fields)


def _decision(cause: str, reason: str = "why") -> Any:
    return {"cause": cause, "reason": reason}


@pytest.mark.parametrize(
    ("rollout", "last", "firing", "verdicts", "expected"),
    [
        (None, None, (), (), Health.IDLE),
        (_rollout(phase=Phase.ROLLED_BACK, rollback_reason="x"), None, (), (), Health.BAD),
        (_rollout(phase=Phase.FAILED, message="stuck"), None, (), (), Health.BAD),
        (_rollout(phase=Phase.PROGRESSING), None, (), (Verdict.FAILED,), Health.BAD),
        (_rollout(phase=Phase.PROGRESSING), None, ("HighLatency",), (), Health.WATCH),
        (_rollout(phase=Phase.PAUSED, stage_passed=True), None, (), (), Health.WATCH),
        (_rollout(phase=Phase.PROGRESSING), _decision("no-data"), (), (), Health.WATCH),
        (_rollout(phase=Phase.PROGRESSING), _decision("check-failed"), (), (), Health.WATCH),
        (_rollout(phase=Phase.PROGRESSING), None, (), (Verdict.ERROR,), Health.WATCH),
        (_rollout(phase=Phase.PROGRESSING), None, (), (Verdict.SUCCESSFUL,), Health.OK),
        (_rollout(phase=Phase.SUCCEEDED), _decision("promoted"), (), (), Health.OK),
    ],
)
def test_health_at_a_glance_is_the_worst_thing_known(
    rollout: Rollout | None, last: Any, firing: Any, verdicts: Any, expected: Health
) -> None:
    assert health(rollout, last, firing, verdicts)[0] is expected


def test_time_left_is_the_passing_analysis_the_stage_still_needs() -> None:
    assert time_left(_rollout(phase=Phase.PROGRESSING, credited=15.0)) == 45.0
    assert time_left(_rollout(phase=Phase.PROGRESSING, credited=90.0)) == 0.0
    assert time_left(_rollout(phase=Phase.PAUSED, credited=15.0)) is None
    assert time_left(_rollout(phase=Phase.PROGRESSING, stage_passed=True)) is None


def _measured(t: float, value: float | None, error: str | None = None) -> Any:
    return {
        "seq": int(t),
        "rollout_id": "r-1",
        "t": t,
        "check": CHECK.name,
        "value": value,
        "error": error,
        "canary_requests": None,
        "canary_errors": None,
        "stable_requests": None,
        "stable_errors": None,
    }


def test_each_evaluation_is_judged_by_the_engines_own_assess() -> None:
    rows = [_measured(1, 1.0), _measured(2, 0.99), _measured(3, None), _measured(4, None, "down")]
    (history,) = check_histories(_rollout(), rows)
    verdicts = [p.verdict for p in history.points]
    assert verdicts == [Verdict.SUCCESSFUL, Verdict.FAILED, Verdict.INCONCLUSIVE, Verdict.ERROR]
    assert history.latest is not None and history.latest.detail == "source error: down"


@dataclass(frozen=True)
class _Kind:
    kind: str


@dataclass(frozen=True)
class _Target:
    name: str
    policy: Policy
    router: _Kind = _Kind("noop")
    platform: _Kind = _Kind("none")


def test_a_compare_checks_evidence_is_shown_once_it_has_counts() -> None:
    row = {**_measured(5, 0.005), "canary_requests": 600.0, "canary_errors": 3.0}
    row.update(stable_requests=5400.0, stable_errors=27.0)
    rollout = _rollout(phase=Phase.PROGRESSING, credited=20.0)
    checks = check_histories(rollout, [_measured(1, 1.0), row])
    assert checks[0].latest is not None and checks[0].latest.counts is not None
    card = Card(_Target(TARGET, POLICY), rollout, 10, None)
    page = render_target(Detail(card, [], checks, [], 100.0), ready=True)
    assert "canary 3 errors / 600 requests; stable 27 / 5400" in page
    assert '<span id="time-left">40s</span>' in page
    assert "router reports 10%" in page


def test_the_chart_keeps_the_threshold_apart_from_data_just_above_it() -> None:
    points = tuple(Point(float(t), 1.0, Verdict.SUCCESSFUL, "") for t in range(5))
    svg = charts.check_chart(CheckHistory(CHECK.name, CHECK, points))
    line = re.search(r'class="threshold" [^>]*y1="([\d.]+)"', svg)
    assert line is not None
    threshold_y = float(line.group(1))
    dots = re.findall(r'class="dot successful" cx="[\d.]+" cy="([\d.]+)"', svg)
    dots_y = {float(y) for y in dots}
    assert len(dots_y) == 1
    assert abs(threshold_y - dots_y.pop()) > 20  # pixels, in a plot 62 high
    assert "&gt;= 0.995" in svg


def test_evaluations_without_a_value_are_ticks_not_gaps() -> None:
    points = (Point(0.0, None, Verdict.INCONCLUSIVE, ""), Point(1.0, 1.0, Verdict.SUCCESSFUL, ""))
    svg = charts.check_chart(CheckHistory(CHECK.name, CHECK, points))
    assert svg.count('class="nodata inconclusive"') == 1
    assert svg.count('class="dot successful"') == 1
    empty = charts.check_chart(CheckHistory(HOSTILE, None, ()))
    assert "not evaluated yet" in empty and "<script>" not in empty
