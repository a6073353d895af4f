"""The dashboard in a real headless Chromium against a real ``canaryd serve`` (issue 12, point 1).

One stack for the module: a real Prometheus scraping the daemon's own ``/metrics`` as job
``canaryd`` (the trick of ``tests/daemon/test_metrics.py``: the checks are real PromQL over
canaryd's own series, answered by a real Prometheus), and four targets on the ``noop`` router:

* ``canaryd``: a rollout in progress, its two checks (``up >= 1``, ``build_info >= 1``)
  evaluated every second, and an alert firing for it (posted to the webhook);
* ``shop``: a first rollout rolled back by an operator with a hostile reason (markup and a
  script), then a second one (a hostile image name) promoted into a stage whose check
  (``build_info >= 2``) fails, so canaryd rolled it back;
* ``web`` and ``api``: rollouts the tests act on from the page.

Every value the pages must show is compared with what the JSON API answers, read separately.
The screenshots (``support.browser.screenshot``) are written for a person to look at.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from support import procs
from support.browser import (
    By,
    WebDriver,
    chromium,
    console_errors,
    screenshot,
    text_of,
    texts,
    wait_for,
)
from support.procs import free_port
from support.servekit import (
    TOKENS,
    WEBHOOK_TOKEN,
    Serve,
    TargetSpec,
    wait_until,
    write_config,
)

HOSTILE = '<script>window.pwned=1</script><img src=x onerror="window.pwned=2">bad deploy'
HOSTILE_IMAGE = "shop:<b>v2</b><script>window.pwned=3</script>"
LIVE = """name: live
interval: 1s
window: 10s
checks:
  scraped: {query: 'sum by ({{group}}) (up{job=~"{{job}}"})', op: ">=", threshold: 1}
  built: {query: 'sum by ({{group}}) (canaryd_build_info{job=~"{{job}}"})', op: ">=", threshold: 1}
stages:
  - {weight: 20, duration: 10m, checks: [scraped, built]}
  - {weight: 100, duration: 1m}
"""
STRICT = """name: strict
interval: 1s
window: 10s
scale_down_delay: 1s
checks:
  built: {query: 'sum by ({{group}}) (canaryd_build_info{job=~"{{job}}"})', op: ">=", threshold: 2}
stages:
  - {weight: 10, duration: 10m}
  - {weight: 50, duration: 10m, checks: [built]}
"""
MANUAL = """name: manual
interval: 1s
scale_down_delay: 1s
checks:  # named by no stage: these rollouts move only when the tests act
  scraped: {query: 'sum by ({{group}}) (up{job=~"{{job}}"})', op: ">=", threshold: 1}
stages:
  - {weight: 10, duration: 10m}
  - {weight: 40, duration: 10m}
  - {weight: 100, duration: 10m}
"""
WAIT = 30.0  # the longest any one step may take


@dataclass
class Stack:
    serve: Serve
    url: str

    def api(self, target: str) -> dict[str, Any]:
        status, doc = self.serve.call("GET", f"/api/v1/targets/{target}", token=TOKENS["viewer"])
        assert status == 200, (status, doc)
        return dict(doc)

    def history(self, target: str) -> list[dict[str, Any]]:
        path = f"/api/v1/targets/{target}/history"
        status, doc = self.serve.call("GET", path, token=TOKENS["viewer"])
        assert status == 200, (status, doc)
        return list(doc["decisions"])

    def act(self, target: str, what: str, body: dict[str, Any], role: str) -> dict[str, Any]:
        path = f"/api/v1/targets/{target}/{what}"
        status, doc = self.serve.call("POST", path, body, token=TOKENS[role])
        assert status in (200, 201), (what, status, doc, self.serve.tail())
        return dict(doc)

    def phase_becomes(self, target: str, phase: str, rollout: str | None = None) -> dict[str, Any]:
        def read() -> dict[str, Any]:
            return self.api(target)["rollout"] or {}

        return wait_until(
            read,
            lambda r: r.get("phase") == phase and (rollout is None or r.get("id") == rollout),
            WAIT,
            f"{target} to be {phase}",
        )


def _alert(target: str) -> dict[str, Any]:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    alert = {
        "status": "firing",
        "labels": {"alertname": "DiskFilling", "target": target, "severity": "info"},
        "annotations": {},
        "startsAt": now,
        "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": "d15cf111",
    }
    return {"version": "4", "status": "firing", "receiver": "canaryd", "alerts": [alert]}


def _roll_shop_back_twice(stack: Stack) -> None:
    """``shop``: rolled back by an operator (hostile reason), then by a failing check."""
    first = stack.act("shop", "rollouts", {"image": "shop:v1"}, "operator")
    stack.phase_becomes("shop", "Progressing", first["id"])
    stack.act("shop", "rollback", {"reason": HOSTILE}, "operator")
    stack.phase_becomes("shop", "RolledBack", first["id"])

    def start_again() -> tuple[int, Any]:  # 409 until the first canary's scale-down is over
        path = "/api/v1/targets/shop/rollouts"
        return stack.serve.call("POST", path, {"image": HOSTILE_IMAGE}, token=TOKENS["operator"])

    _, second = wait_until(start_again, lambda a: a[0] == 201, WAIT, "a second shop rollout")
    stack.phase_becomes("shop", "Progressing", second["id"])
    stack.act("shop", "promote", {}, "admin")  # into the stage whose check fails
    stack.phase_becomes("shop", "RolledBack", second["id"])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("dashboard")
    port = free_port()
    prometheus = procs.start_prometheus(tmp, {"canaryd": [f"127.0.0.1:{port}"]})
    serve: Serve | None = None
    try:
        for name, text in (("live", LIVE), ("strict", STRICT), ("manual", MANUAL)):
            (tmp / f"{name}.yaml").write_text(text)
        targets = [
            TargetSpec("canaryd", "live.yaml"),
            TargetSpec("shop", "strict.yaml", {"job": "canaryd"}),
            TargetSpec("web", "manual.yaml"),
            TargetSpec("api", "manual.yaml"),
        ]
        config = write_config(tmp, targets, port=port, prometheus_url=prometheus.url)
        serve = Serve(config)
        serve.start()
        stack = Stack(serve, serve.url)
        procs.wait_for_up(prometheus, "canaryd", 1)
        stack.act("canaryd", "rollouts", {"image": "app:v2"}, "operator")
        for target, image in (("web", "web:v3"), ("api", "api:v4")):
            stack.act(target, "rollouts", {"image": image}, "operator")
        _roll_shop_back_twice(stack)
        status, doc = serve.call("POST", "/api/v1/alerts", _alert("canaryd"), token=WEBHOOK_TOKEN)
        assert status == 200, (status, doc)
        wait_until(
            lambda: stack.api("canaryd"),
            lambda v: {"scraped", "built"} <= set(v["checks"]) and bool(v["alerts"]),
            WAIT,
            "canaryd's checks measured and its alert firing",
        )
        yield stack
    finally:
        if serve is not None:
            serve.stop()
        prometheus.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with chromium() as driver:
        yield driver


def _cells(driver: WebDriver, target: str) -> dict[str, str]:
    names = ("name", "health", "phase", "stage", "image", "weight", "last")
    cells = texts(driver, f'tr[data-target="{target}"] > td')
    return dict(zip(names, (c.strip() for c in cells), strict=True))


def _check_row(driver: WebDriver, check: str) -> dict[str, str]:
    names = ("name", "latest", "threshold", "verdict", "chart")
    cells = texts(driver, f'tr[data-check="{check}"] > td')
    return dict(zip(names, (c.strip() for c in cells), strict=True))


def _same(reason: str, shown: str) -> bool:
    """Whether the page shows ``reason`` (the browser folds runs of white space)."""
    return " ".join(reason.split()) in " ".join(shown.split())


# --------------------------------------------------------------------------- reading


def test_the_dashboard_lists_every_target_with_its_phase_stage_weights_and_last_decision(
    stack: Stack, browser: WebDriver
) -> None:
    browser.get(stack.url + "/")
    wait_for(browser, text_of("#updated"), WAIT, "the script to start").startswith("live")
    for target in ("canaryd", "shop", "web", "api"):
        view = stack.api(target)
        rollout = view["rollout"]
        cells = _cells(browser, target)
        assert cells["name"] == target
        assert cells["phase"] == rollout["phase"]
        assert cells["stage"] == f"{rollout['stage']}/{rollout['stages']}"
        assert cells["image"] == rollout["image"]
        weight = rollout["weight"]
        assert f"canary {weight}% / stable {100 - weight}%" in cells["weight"]
        wait_for(  # a decision taken since the page loaded shows with the next refresh
            browser,
            lambda d, t=target: _same(stack.history(t)[-1]["reason"], _cells(d, t)["last"]),
            WAIT,
            f"{target}'s last decision",
        )
    live = _cells(browser, "canaryd")
    assert live["weight"].endswith("router reports 20%")  # the noop router's read-back
    assert "alerts firing: DiskFilling" in live["health"]
    shop = _cells(browser, "shop")
    assert shop["phase"] == "RolledBack" and "built" in shop["health"]
    assert texts(browser, 'tr[data-target="shop"] .health.bad')
    assert browser.execute_script("return window.pwned") is None
    assert not console_errors(browser)
    screenshot(browser, "dashboard-index")


def test_a_targets_page_shows_the_plan_checks_against_thresholds_and_every_decision(
    stack: Stack, browser: WebDriver
) -> None:
    browser.get(stack.url + "/targets/canaryd")
    wait_for(browser, text_of("#updated"), WAIT, "the script to start")
    view = stack.api("canaryd")
    assert text_of("#phase")(browser) == "Progressing"
    assert text_of("#stage")(browser) == "1/2"
    assert text_of("#image")(browser) == "app:v2"
    left = text_of("#time-left")(browser)
    assert left.endswith("s") and left.startswith(("9m", "10m")), left
    current = texts(browser, "table.plan tr.current > td")
    assert current == ["1", "20%", "10m 00s", "scraped, built", "auto", "current"]
    for check, threshold in (("scraped", ">= 1"), ("built", ">= 1")):
        row = _check_row(browser, check)
        assert row["latest"] == f"{view['checks'][check]['value']:.6g}" == "1"
        assert row["threshold"] == threshold and row["verdict"] == "pass"
        dots = texts(browser, f'tr[data-check="{check}"] svg.chart circle.successful')
        assert dots, f"{check}: no points on its chart"
    assert text_of("ul.alerts")(browser) == "DiskFilling"
    reasons = texts(browser, "table.decisions .reason")
    assert reasons[-1] == stack.history("canaryd")[0]["reason"]  # newest first: start is last
    screenshot(browser, "dashboard-target-progressing")


def test_a_rolled_back_targets_page_puts_the_reason_first_and_escapes_hostile_text(
    stack: Stack, browser: WebDriver
) -> None:
    browser.get(stack.url + "/targets/shop")
    wait_for(browser, text_of("#updated"), WAIT, "the script to start")
    rollout = stack.api("shop")["rollout"]
    banner = text_of("#reason")(browser)
    assert banner == f"Rolled back: {rollout['rollback_reason']}"
    assert "built" in banner
    row = _check_row(browser, "built")
    assert (row["latest"], row["threshold"], row["verdict"]) == ("1", ">= 2", "fail")
    assert text_of("#image")(browser) == HOSTILE_IMAGE  # shown as text
    past = text_of("table.past tbody tr")(browser)
    assert "shop:v1" in past and HOSTILE in past
    assert browser.execute_script("return window.pwned") is None
    assert texts(browser, "main img, main b, main script") == []
    source = browser.page_source
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in source
    screenshot(browser, "dashboard-target-rolled-back")


def test_without_javascript_the_pages_still_show_the_values(stack: Stack) -> None:
    with chromium(javascript=False) as driver:
        driver.get(stack.url + "/")
        assert _cells(driver, "canaryd")["phase"] == "Progressing"
        assert _cells(driver, "shop")["phase"] == "RolledBack"
        assert text_of("#updated")(driver) == "server-rendered"
        driver.get(stack.url + "/targets/canaryd")
        assert _check_row(driver, "scraped")["verdict"] == "pass"
        assert texts(driver, "svg.chart circle")
        assert not driver.find_element(By.ID, "actions").is_displayed()
        assert "Actions need JavaScript" in driver.find_element(By.TAG_NAME, "body").text
        screenshot(driver, "dashboard-target-no-javascript")


# --------------------------------------------------------------------------- acting


def _use_token(driver: WebDriver, role: str) -> None:
    field = driver.find_element(By.ID, "token")
    field.clear()
    field.send_keys(TOKENS[role])
    driver.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()
    wait_for(driver, lambda d: text_of("#token-state")(d) == "token set for this tab", 5, "token")
    assert field.get_attribute("value") == ""


def _press(driver: WebDriver, action: str) -> str:
    """Click ``action``'s button and return what the page says once the API answered."""
    driver.execute_script("document.getElementById('result').textContent = ''")
    driver.find_element(By.CSS_SELECTOR, f'button[data-action="{action}"]').click()
    return wait_for(driver, text_of("#result"), WAIT, f"the answer to {action}")


def test_an_operator_acts_from_the_page_and_it_shows_without_a_reload(
    stack: Stack, browser: WebDriver
) -> None:
    browser.get(stack.url + "/targets/web")
    wait_for(browser, text_of("#updated"), WAIT, "the script to start")
    browser.execute_script("window.sameDocument = true")
    _use_token(browser, "operator")

    assert _press(browser, "pause").startswith("pause: done")
    assert stack.api("web")["rollout"]["phase"] == "Paused"
    wait_for(browser, lambda d: text_of("#phase")(d) == "Paused", WAIT, "Paused on the page")
    assert text_of("#reason")(browser).startswith("Paused: ")
    screenshot(browser, "dashboard-target-paused")

    assert _press(browser, "resume").startswith("resume: done")
    wait_for(browser, lambda d: text_of("#phase")(d) == "Progressing", WAIT, "resumed")

    form = browser.find_element(By.CSS_SELECTOR, 'form[data-action="weight"]')
    form.find_element(By.NAME, "weight").send_keys("30")
    form.find_element(By.TAG_NAME, "button").click()
    wait_for(browser, lambda d: "set-weight: done" in text_of("#result")(d), WAIT, "weight")
    assert stack.api("web")["rollout"]["weight"] == 30
    wait_for(browser, lambda d: "canary 30% / stable 70%" in text_of("main")(d), WAIT, "30%")

    refused = _press(browser, "promote")  # an admin's action
    path = "/api/v1/targets/web/promote"
    status, doc = stack.serve.call("POST", path, {}, token=TOKENS["operator"])
    assert status == 403
    assert refused == f"promote: refused, HTTP 403: {doc['error']['message']}"

    form = browser.find_element(By.CSS_SELECTOR, 'form[data-action="rollback"]')
    form.find_element(By.NAME, "reason").send_keys("p99 looks wrong on the page")
    form.find_element(By.TAG_NAME, "button").click()
    wait_for(browser, lambda d: "rollback: done" in text_of("#result")(d), WAIT, "rollback")
    wait_for(browser, lambda d: text_of("#phase")(d) == "RolledBack", WAIT, "RolledBack")
    reason = stack.api("web")["rollout"]["rollback_reason"]
    assert reason.endswith("operator-user: p99 looks wrong on the page")
    assert text_of("#reason")(browser) == f"Rolled back: {reason}"

    assert browser.execute_script("return window.sameDocument") is True  # never reloaded
    assert TOKENS["operator"] not in browser.current_url
    assert TOKENS["operator"] not in stack.serve.tail(10**7)
    status, audit = stack.serve.call("GET", "/api/v1/audit?target=web", token=TOKENS["admin"])
    assert status == 200
    done = {(e["what"], e["who"], e["outcome"]) for e in audit["entries"]}
    for what in ("pause", "resume", "set-weight", "rollback"):
        assert (what, "operator-user", "ok") in done, (what, done)
    assert not console_errors(browser)


def test_an_admin_promotes_from_the_page_stage_by_stage_then_fully(
    stack: Stack, browser: WebDriver
) -> None:
    browser.get(stack.url + "/targets/api")
    wait_for(browser, text_of("#updated"), WAIT, "the script to start")
    _use_token(browser, "admin")
    assert _press(browser, "promote").startswith("promote: done")
    wait_for(browser, lambda d: text_of("#stage")(d) == "2/3", WAIT, "stage 2 on the page")
    assert stack.api("api")["rollout"]["stage"] == 2
    assert _press(browser, "promote-full").startswith("promote-full: done")
    stack.phase_becomes("api", "Succeeded")
    wait_for(browser, lambda d: text_of("#phase")(d) == "Succeeded", WAIT, "Succeeded")
    screenshot(browser, "dashboard-target-succeeded")


def test_a_viewers_press_is_refused_and_the_page_shows_the_apis_refusal(
    stack: Stack, browser: WebDriver
) -> None:
    browser.get(stack.url + "/targets/canaryd")
    wait_for(browser, text_of("#updated"), WAIT, "the script to start")
    _use_token(browser, "viewer")
    shown = _press(browser, "pause")
    status, doc = stack.serve.call("POST", "/api/v1/targets/canaryd/pause", token=TOKENS["viewer"])
    assert status == 403
    assert shown == f"pause: refused, HTTP 403: {doc['error']['message']}"
    assert "needs the operator role" in shown
    assert browser.find_element(By.ID, "result").get_attribute("class") == "refused"
    assert stack.api("canaryd")["rollout"]["phase"] == "Progressing"
    screenshot(browser, "dashboard-target-viewer-refused")
    browser.find_element(By.ID, "forget").click()
    assert browser.execute_script("return sessionStorage.getItem('canaryd.token')") is None
