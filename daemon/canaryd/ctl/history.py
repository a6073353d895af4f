"""``canaryctl history TARGET [--rollout ID] [--limit N]``: a target's decisions as a table.

Apart from ``ctl.main`` for the same reason as ``ctl.audit``: a command with filters of its own.
The filters are the API's (``GET .../history?rollout=ID&limit=N``), not applied here, so a
script reading ``-o json`` gets exactly the rows the table shows, and a target with years of
rollouts is not sent whole to be cut down on the client.
"""

from __future__ import annotations

import argparse

from canaryd.ctl.client import EXIT_OK, Client, decisions_of
from canaryd.ctl.text import print_json, table, when

MAX_LIMIT = 100_000  # what the API takes (``api.routes.LIMIT``)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target")
    parser.add_argument("--rollout", metavar="ID", help="only this rollout's decisions")
    parser.add_argument(
        "--limit", type=_limit, metavar="N", help="only the newest N decisions (oldest first)"
    )


def run(client: Client, args: argparse.Namespace) -> int:
    doc = client.history(args.target, rollout=args.rollout, limit=args.limit)
    if args.output == "json":
        return print_json(doc)
    decisions = decisions_of(doc)
    if not decisions:
        print(f"{args.target}: no history yet")
        return EXIT_OK
    rows = [("TIME", "ROLLOUT", "PHASE", "STAGE", "WEIGHT", "ACTION", "REASON")]
    for d in decisions:
        rows.append(
            (
                when(d.get("t_unix", d.get("t"))),
                str(d.get("rollout_id", "")),
                str(d.get("phase", "")),
                str(d.get("stage", "")),
                f"{d.get('weight', '')}%",
                str(d.get("action", "")),
                str(d.get("reason", "")),
            )
        )
    print(table(rows))
    return EXIT_OK


def _limit(text: str) -> int:
    if text.isdigit() and 1 <= int(text) <= MAX_LIMIT:
        return int(text)
    raise argparse.ArgumentTypeError(f"expected a whole number within 1..{MAX_LIMIT}, got {text!r}")
