"""``canaryctl audit``: who did what, from ``GET /api/v1/audit`` (admin).

Apart from ``ctl.main`` because it is the one command with filters of its own and a table of
another shape; ``main`` only registers it. ``--since``/``--until`` take what the API takes
(RFC 3339, Unix seconds) and, for people at a terminal, an age such as ``2h`` ("2 hours ago"),
turned into Unix seconds here: the API stays exact, the command stays short to type.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from typing import Any

from canaryd.core.durations import parse_duration
from canaryd.ctl.client import EXIT_OK, Client
from canaryd.ctl.text import print_json, table, when

DEFAULT_LIMIT = 100
MAX_LIMIT = 100_000  # the most rows the daemon keeps (runtime.controller.AUDIT_KEEP)
MAX_DETAIL = 120  # characters of the DETAIL column
FILTERS = ("target", "who", "outcome", "since", "until")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", nargs="?", help="only this target's rows")
    parser.add_argument("--who", metavar="NAME", help="only this caller's rows (a token's name)")
    parser.add_argument("--outcome", metavar="O", help="only this outcome: ok, rejected, ...")
    when = "RFC 3339, Unix seconds, or an age such as 2h"
    parser.add_argument("--since", metavar="T", help=f"rows written at or after T ({when})")
    parser.add_argument("--until", metavar="T", help=f"rows written at or before T ({when})")
    parser.add_argument(
        "--limit",
        type=_limit,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"the newest N rows (default {DEFAULT_LIMIT})",
    )


def run(client: Client, args: argparse.Namespace) -> int:
    query = {name: _moment(name, getattr(args, name)) for name in FILTERS}
    entries, more = client.audit({k: v for k, v in query.items() if v is not None}, args.limit)
    if args.output == "json":
        return print_json({"entries": entries, "next": more})
    if not entries:
        print("no audit rows match")
        return EXIT_OK
    rows: list[tuple[str, ...]] = [("TIME", "SEQ", "WHO", "WHAT", "TARGET", "OUTCOME", "DETAIL")]
    rows += [_row(e) for e in entries if isinstance(e, dict)]
    print(table(rows))
    if more is not None:
        print(
            f"(more rows: raise --limit past {args.limit} or narrow the filters)", file=sys.stderr
        )
    return EXIT_OK


def _row(entry: dict[str, Any]) -> tuple[str, ...]:
    return (
        when(entry.get("t_unix", entry.get("t"))),
        str(entry.get("seq", "")),
        str(entry.get("who", "")),
        str(entry.get("what", "")),
        str(entry.get("target") or "-"),
        str(entry.get("outcome", "")),
        _detail(entry.get("detail")),
    )


def _detail(detail: Any) -> str:
    """The detail in one line: the status first, the message of a refusal, the rest as k=v."""
    if not isinstance(detail, dict):
        return ""
    parts = [str(detail["status"])] if "status" in detail else []
    if detail.get("count", 1) != 1:
        parts.append(f"x{detail['count']}")
    skip = {"status", "remote", "count", "folded", "message"}
    parts += [f"{k}={v}" for k, v in sorted(detail.items()) if k not in skip and v is not None]
    if detail.get("message"):
        parts.append(str(detail["message"]))
    text = " ".join(parts).replace("\n", " ")
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 1] + "…"


def _moment(name: str, value: str | None) -> str | None:
    """``--since``/``--until`` as the API takes them: an age (``2h``) becomes Unix seconds;
    anything else goes as typed, and the API names what is wrong with it."""
    if name not in ("since", "until") or value is None or _NUMBER.fullmatch(value):
        return value
    try:
        age = parse_duration(value)
    except ValueError:
        return value
    return f"{time.time() - age:.3f}"


def _limit(text: str) -> int:
    if text.isdigit() and 1 <= int(text) <= MAX_LIMIT:
        return int(text)
    raise argparse.ArgumentTypeError(f"expected a whole number within 1..{MAX_LIMIT}, got {text!r}")
