"""``GET /api/v1/audit`` against a real ``canaryd serve`` (issue 12, point 3).

One daemon per module; the fixture makes real requests (starts, a refused pause, pause,
resume, a promotion, a rollback), each of which the daemon audits, and the tests read the log
back through the API: newest first, every filter, paging by ``seq`` cursor, the admin role,
and a 422 naming each bad parameter.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from canaryd.api.auditquery import read_query
from canaryd.api.edge import AUDIT_OUTCOMES
from canaryd.core.timefmt import parse_rfc3339
from support.servekit import TOKENS, Serve, TargetSpec, write_config

CHECKLESS = (
    "checks:\n  unused: {query: vector(1), threshold: 0}\n"
    "stages:\n  - {weight: 50, duration: 1h}\n  - {weight: 100, duration: 0s}\n"
)
OPERATOR, ADMIN, VIEWER = "operator-user", "admin-user", "viewer-user"
# (who, what, target, outcome) of the requests the fixture makes, oldest first.
MADE = [
    (OPERATOR, "start", "shop", "ok"),
    (VIEWER, "pause", "shop", "forbidden"),
    (OPERATOR, "pause", "shop", "ok"),
    (OPERATOR, "resume", "shop", "ok"),
    (OPERATOR, "start", "blog", "ok"),
    (ADMIN, "promote", "blog", "ok"),
    (OPERATOR, "rollback", "shop", "ok"),
    (OPERATOR, "rollback", "shop", "rejected"),  # already rolled back: 409
]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    directory = tmp_path_factory.mktemp("audit")
    (directory / "policy.yaml").write_text(CHECKLESS)
    targets = [TargetSpec("shop", "policy.yaml"), TargetSpec("blog", "policy.yaml")]
    serve = Serve(write_config(directory, targets))
    try:
        serve.start()
        _make_requests(serve)
        yield serve
    finally:
        serve.stop()


def _make_requests(serve: Serve) -> None:
    def post(target: str, action: str, role: str, body: dict[str, Any], want: int) -> None:
        path = f"/api/v1/targets/{target}/{action}"
        status, doc = serve.call("POST", path, body, token=TOKENS[role])
        assert status == want, (path, status, doc, serve.tail())

    post("shop", "rollouts", "operator", {"image": "shop:2"}, 201)
    post("shop", "pause", "viewer", {}, 403)
    post("shop", "pause", "operator", {}, 200)
    post("shop", "resume", "operator", {}, 200)
    post("blog", "rollouts", "operator", {"image": "blog:2"}, 201)
    post("blog", "promote", "admin", {"full": True}, 200)
    post("shop", "rollback", "operator", {"reason": "p95 doubled"}, 200)
    deadline = time.monotonic() + 15
    while (serve.rollout("shop") or {}).get("phase") != "RolledBack":
        assert time.monotonic() < deadline, serve.tail()
        time.sleep(0.05)
    post("shop", "rollback", "operator", {"reason": "again"}, 409)


def audit(serve: Serve, query: str = "", role: str = "admin") -> tuple[int, Any]:
    return serve.call("GET", f"/api/v1/audit{query}", token=TOKENS.get(role))


def page(serve: Serve, query: str = "") -> dict[str, Any]:
    status, doc = audit(serve, query)
    assert status == 200, (query, doc)
    assert set(doc) == {"entries", "next"}, doc
    return dict(doc)


def rows(entries: list[dict[str, Any]]) -> list[tuple[str, str, str | None, str]]:
    return [(e["who"], e["what"], e["target"], e["outcome"]) for e in entries]


def quoted(value: str) -> str:
    return urllib.parse.quote(value, safe="")


# --------------------------------------------------------------------------- what it shows


def test_every_audited_request_is_there_newest_first_with_its_detail(daemon: Serve) -> None:
    doc = page(daemon)
    entries = doc["entries"]
    assert rows(entries) == MADE[::-1]
    assert doc["next"] is None
    seqs = [e["seq"] for e in entries]
    assert seqs == sorted(seqs, reverse=True) and len(set(seqs)) == len(seqs)
    times = [e["t_unix"] for e in entries]
    assert times == sorted(times, reverse=True) and abs(times[0] - time.time()) < 300
    for entry in entries:  # the documented time is RFC 3339 in UTC; the same moment as t_unix
        assert entry["t"].endswith("Z") and abs(parse_rfc3339(entry["t"]) - entry["t_unix"]) < 1e-3
    refused_again, rollback = entries[0]["detail"], entries[1]["detail"]
    assert rollback["status"] == 200 and rollback["reason"] == "p95 doubled"
    assert rollback["remote"] == "127.0.0.1" and rollback["rollout"].startswith("shop-")
    assert refused_again["status"] == 409 and "message" in refused_again
    forbidden = entries[-2]["detail"]
    assert forbidden["status"] == 403 and "admin" not in forbidden["message"]
    assert all(t not in repr(entries) for t in TOKENS.values())  # names, never tokens


def test_reading_the_log_is_not_itself_audited(daemon: Serve) -> None:
    before = page(daemon)["entries"]
    assert audit(daemon, role="operator")[0] == 403
    assert page(daemon)["entries"] == before


# --------------------------------------------------------------------------- filters


def test_each_filter_keeps_only_its_rows(daemon: Serve) -> None:
    def made(keep: Any) -> list[tuple[str, str, str | None, str]]:
        return [row for row in MADE[::-1] if keep(row)]

    assert rows(page(daemon, "?target=blog")["entries"]) == made(lambda r: r[2] == "blog")
    assert rows(page(daemon, f"?who={VIEWER}")["entries"]) == made(lambda r: r[0] == VIEWER)
    assert rows(page(daemon, "?outcome=rejected")["entries"]) == made(lambda r: r[3] == "rejected")
    both = page(daemon, f"?target=shop&who={OPERATOR}&outcome=ok")["entries"]
    assert rows(both) == made(lambda r: r[:1] == (OPERATOR,) and r[2:] == ("shop", "ok"))
    assert page(daemon, "?target=nowhere")["entries"] == []


def test_since_and_until_take_rfc3339_or_unix_seconds_and_are_inclusive(daemon: Serve) -> None:
    entries = page(daemon)["entries"]
    third_newest, oldest = entries[2]["t_unix"], entries[-1]["t_unix"]
    since = datetime.fromtimestamp(third_newest - 0.001, UTC).isoformat()  # 2026-...+00:00
    newest_three = page(daemon, f"?since={quoted(since)}")["entries"]
    assert rows(newest_three) == rows(entries[:3])
    assert rows(page(daemon, f"?since={third_newest!r}")["entries"]) == rows(entries[:3])
    assert rows(page(daemon, f"?until={oldest!r}")["entries"]) == rows(entries[-1:])
    zulu = datetime.fromtimestamp(oldest + 3600, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    window = page(daemon, f"?since={oldest!r}&until={quoted(zulu)}")["entries"]
    assert rows(window) == rows(entries)
    assert page(daemon, "?until=1000000000")["entries"] == []  # 2001


# --------------------------------------------------------------------------- paging


def test_pages_follow_next_back_in_time_and_after_pages_forward(daemon: Serve) -> None:
    everything = page(daemon)["entries"]
    seen: list[dict[str, Any]] = []
    first = page(daemon, "?limit=3&target=shop")
    link: str | None = "?limit=3&target=shop"
    pages = 0
    while link is not None:
        doc = first if pages == 0 else page(daemon, link.removeprefix("/api/v1/audit"))
        assert len(doc["entries"]) <= 3
        seen += doc["entries"]
        link = doc["next"]
        pages += 1
        if link is not None:  # the filters are kept; the cursor is the page's oldest row
            assert link.startswith("/api/v1/audit?") and "target=shop" in link
            assert f"before={doc['entries'][-1]['seq']}" in link
    shop = [e for e in everything if e["target"] == "shop"]
    assert seen == shop and pages == 2  # 6 rows of shop: two full pages, no empty third

    oldest_seq = everything[-1]["seq"]
    forward = page(daemon, f"?after={oldest_seq}&limit=2")
    assert [e["seq"] for e in forward["entries"]] == [oldest_seq + 2, oldest_seq + 1]
    assert forward["next"] == f"/api/v1/audit?limit=2&after={oldest_seq + 2}"
    newest_seq = everything[0]["seq"]
    assert page(daemon, f"?after={newest_seq}")["entries"] == []
    between = page(daemon, f"?after={oldest_seq}&before={oldest_seq + 3}")["entries"]
    assert [e["seq"] for e in between] == [oldest_seq + 2, oldest_seq + 1]


def test_a_page_is_100_rows_unless_asked_and_at_most_1000(daemon: Serve) -> None:
    assert read_query([], AUDIT_OUTCOMES).limit == 100
    assert read_query([("limit", "1000")], AUDIT_OUTCOMES).limit == 1000
    assert len(page(daemon, "?limit=1000")["entries"]) == len(MADE)
    one = page(daemon, "?limit=1")
    assert len(one["entries"]) == 1
    assert one["next"] == f"/api/v1/audit?limit=1&before={one['entries'][0]['seq']}"


# --------------------------------------------------------------------------- refusals


def test_only_an_admin_may_read_the_audit_log(daemon: Serve) -> None:
    for role in ("viewer", "operator"):
        status, doc = audit(daemon, role=role)
        assert status == 403, doc
        assert doc["error"]["required_role"] == "admin"
        assert f"needs the admin role; {role}-user is {role}" in doc["error"]["message"]
    status, doc = audit(daemon, role="nobody")
    assert status == 401 and doc["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ("?limit=0", "limit: expected an integer within 1..1000"),
        ("?limit=1001", "limit: expected an integer within 1..1000"),
        ("?limit=ten", "limit: expected an integer within 1..1000"),
        ("?before=-1", "before: expected an integer"),
        ("?after=99999999999999999999", "after: expected an integer"),
        ("?since=yesterday", "since: expected RFC 3339"),
        ("?until=2026-05-01", "until: expected RFC 3339"),
        ("?since=nan", "since: expected RFC 3339"),
        ("?since=2000&until=1000", "until: is before since"),
        ("?actor=bob", "actor: unknown query parameter; known: target, who, outcome"),
        ("?target=a&target=b", "target: given more than once"),
        ("?who=", "who: expected a non-empty value"),
        ("?outcome=okay", "outcome: expected one of abandoned, accepted, error"),
    ],
)
def test_a_bad_parameter_is_422_naming_it(daemon: Serve, query: str, names: str) -> None:
    status, doc = audit(daemon, query)
    assert status == 422, (query, doc)
    assert doc["error"]["code"] == "invalid"
    assert doc["error"]["message"].startswith(names), doc


def test_the_openapi_document_describes_the_route_and_its_parameters(daemon: Serve) -> None:
    status, doc = daemon.call("GET", "/api/v1/openapi.json", token=None)
    assert status == 200
    operation = doc["paths"]["/api/v1/audit"]["get"]
    assert operation["x-canaryd-role"] == "admin" and "x-canaryd-audit" not in operation
    assert [p["name"] for p in operation["parameters"]] == [
        "target", "who", "outcome", "since", "until", "limit", "before", "after"
    ]  # fmt: skip
    assert set(operation["responses"]) == {"200", "401", "403", "422"}
    schema = doc["components"]["schemas"]["AuditLog"]
    assert schema["required"] == ["entries", "next"]
