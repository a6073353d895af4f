"""``canaryctl``: the operator's command line.

Offline commands (``simulate``) run here without a daemon; the commands that talk to a running
canaryd over its HTTP API are added beside them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from canaryd import __version__, simulate
from canaryd.core.durations import parse_duration
from canaryd.core.errors import ConfigError
from canaryd.policies import load_policy, resolve


def _simulate(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(resolve(args.policy))
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    try:
        epoch = 0.0
        if args.epoch:
            from datetime import datetime

            epoch = datetime.fromisoformat(args.epoch.replace("Z", "+00:00")).timestamp()
        if args.samples == "-":
            timeline = simulate.Timeline.parse(sys.stdin, "stdin", epoch)
        else:
            with Path(args.samples).open(encoding="utf-8") as source:
                timeline = simulate.Timeline.parse(source, args.samples, epoch)
        until = parse_duration(args.until) if args.until is not None else None
    except (OSError, ValueError) as exc:
        print(f"canaryctl simulate: {exc}", file=sys.stderr)
        return 2
    final, records = simulate.run(policy, timeline, until=until, traffic=args.traffic)
    if args.output == "json":
        json.dump([r.as_json() for r in records], sys.stdout, indent=None)
        sys.stdout.write("\n")
    else:
        print(simulate.format_table(records, final))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="canaryctl", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"canaryctl {__version__}")
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sim = commands.add_parser("simulate", help="replay a sample timeline through a policy offline")
    sim.add_argument("--policy", required=True, help="policy name under rules/ or a file path")
    sim.add_argument("--samples", required=True, help="JSON-lines timeline ('-' for stdin)")
    sim.add_argument("--until", help="stop at this virtual time (default: total + deadline)")
    sim.add_argument("--traffic", type=int, help="initial canary percentage (first stage)")
    sim.add_argument("--epoch", help="ISO time that t=0 stands for (for alerts' startsAt)")
    sim.add_argument("-o", "--output", choices=("table", "json"), default=argparse.SUPPRESS)
    sim.set_defaults(handler=_simulate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = args.handler
    code: int = handler(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
