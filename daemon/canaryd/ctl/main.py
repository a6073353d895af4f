"""``canaryctl``: the operator's command line.

Offline commands (``simulate``) run here without a daemon. The other commands talk to a running
canaryd over its HTTP API (SPEC §5.1, §5.2) through ``ctl.client``, a stdlib ``urllib`` client,
so that no command pays for importing aiohttp (see ``ctl.client`` for the numbers).

``--url``/``CANARYD_URL``, ``--token``/``CANARYD_TOKEN`` and ``-o table|json`` may be given
before or after the command, and so may ``--cacert``/``--cert``/``--key`` (``ctl.tlsargs``).
Tables are for people; ``-o json`` prints the API's JSON as is.
Every failure is one line on stderr, and each kind has its own exit code (``EXIT_CODES``), so
scripts such as ``deployment/canary/deploy-canary.sh`` can branch on them.

``watch`` redraws one screen a second with ``rich`` when it is installed and stdout is a
terminal (rich is not a dependency); otherwise it prints plain text, and off a terminal (CI
logs) only when something changed. The module is past our usual 400 lines because the commands,
their tables and the watch view read best side by side; the wire side lives in ``ctl.client``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from canaryd import __version__
from canaryd.config.policies import load_policy, resolve
from canaryd.core.durations import format_duration, parse_duration
from canaryd.core.errors import ConfigError
from canaryd.core.timefmt import parse_rfc3339
from canaryd.ctl import audit, history, quiet
from canaryd.ctl.client import (
    DEFAULT_URL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_ROLLED_BACK,
    Client,
    DaemonUnreachable,
    RolloutView,
    checks_of,
    decisions_of,
    rollout_of,
    targets_of,
)
from canaryd.ctl.failures import Handler, Parser, error_of_unreachable, wants_json
from canaryd.ctl.failures import with_client as _api
from canaryd.ctl.text import (
    age,
    bar,
    checks_text,
    decision_line,
    print_json,
    table,
    time_left,
    when,
)
from canaryd.ctl.tlsargs import tls_options
from canaryd.offline import render, replay, simulate

EXIT_CODES = """\
exit codes:
    0  done (watch: the rollout succeeded)
    1  any other error
    2  bad arguments
    3  canaryd cannot be reached (replay: Prometheus cannot be reached)
    4  401: token missing or not accepted
    5  403: the token's role is too low for the command
    6  404: no such target
    7  409: conflict (a rollout is active, its phase does not allow it, a freeze)
    8  422: understood but invalid (a weight out of range, an unknown policy)
    9  503: canaryd not ready yet, or shutting down
   10  watch: the rollout was rolled back, or ended Failed (its verification failed)
  130  interrupted (Ctrl-C)
"""


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
            try:
                epoch = parse_rfc3339(args.epoch)
            except ValueError as exc:
                raise ValueError(f"--epoch: not an RFC 3339 time: {exc}") from None
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


# --------------------------------------------------------------------------- API commands

# The commands that change something: the client call, and the verb for the one-line answer.
ACTIONS: dict[str, tuple[Callable[[Client, argparse.Namespace], Any], str]] = {
    "start": (
        lambda c, a: c.start(a.target, a.image, a.traffic, a.policy, a.supersede),
        "started",
    ),
    "promote": (lambda c, a: c.promote(a.target, a.full), "promoted"),
    "rollback": (lambda c, a: c.rollback(a.target, a.reason), "rolling back"),
    "pause": (lambda c, a: c.pause(a.target), "paused"),
    "resume": (lambda c, a: c.resume(a.target), "resumed"),
    "set-weight": (lambda c, a: c.set_weight(a.target, a.weight), "weight asked"),
    "cleanup": (lambda c, a: c.cleanup(a.target), "cleaned up"),
}


def _act(client: Client, args: argparse.Namespace) -> int:
    call, verb = ACTIONS[args.command]
    return _acted(args, call(client, args), verb)


def _acted(args: argparse.Namespace, doc: Any, verb: str) -> int:
    """One line saying what the command did and where the rollout now stands."""
    if args.output == "json":
        return print_json(doc)
    if isinstance(doc, dict) and doc.get("noop"):  # pause/resume: it already was so
        verb = str(doc.get("noop_reason") or "unchanged")
    rollout = _rollout_or_say(args, doc, verb)
    if rollout is None:
        return EXIT_OK
    print(f"{rollout.target}: {verb} — {_one_line(rollout)}")
    if args.command == "start" and rollout.plan:
        plan = "→".join(str(s.weight) for s in rollout.plan)
        print(f"  policy {rollout.policy}, stages {plan}; follow: canaryctl watch {rollout.target}")
    return EXIT_OK


def _rollout_or_say(args: argparse.Namespace, doc: Any, instead: str) -> RolloutView | None:
    """The answer's rollout; when it has none, None after printing ``<target>: <instead>``."""
    rollout = rollout_of(doc)
    if rollout is None:
        print(f"{args.target}: {instead}")
    return rollout


def _one_line(r: RolloutView) -> str:
    text = f"rollout {r.id} ({r.image}) {r.phase}, stage {r.stage_text}, canary {r.weight}%"
    reason = r.pause_reason if r.phase == "Paused" else r.rollback_reason or r.message
    return f"{text}: {reason}" if reason else text


def _status(client: Client, args: argparse.Namespace) -> int:
    if args.target is None:
        doc = client.targets()
        if args.output == "json":
            return print_json(doc)
        rows = [("TARGET", "PHASE", "STAGE", "WEIGHT", "IMAGE", "POLICY", "ROLLOUT")]
        for row in targets_of(doc):
            r, policy = row.rollout, row.policy or "-"
            if r is None:
                rows.append((row.name, "-", "-", "-", "-", policy, "-"))
            else:
                weight = f"{r.weight}%"
                rows.append((row.name, r.phase, r.stage_text, weight, r.image, policy, r.id))
        print(table(rows))
        return EXIT_OK
    doc = client.target(args.target)
    if args.output == "json":
        return print_json(doc)
    rollout = _rollout_or_say(args, doc, "no rollout yet")
    if rollout is None:
        return EXIT_OK
    decisions = decisions_of(doc)
    alerts = doc.get("alerts") if isinstance(doc, dict) else None
    firing = [str(a.get("name", "?")) for a in alerts or () if isinstance(a, dict)]
    lines = _describe(rollout, checks_of(doc, decisions), firing)
    if decisions:
        lines.append("recent decisions")
        lines += [f"  {decision_line(d)}" for d in decisions[-5:]]
    print("\n".join(lines))
    return EXIT_OK


def _describe(
    r: RolloutView, checks: dict[str, dict[str, Any]], alerts: Sequence[str] = ()
) -> list[str]:
    rows = [
        ("target", r.target),
        ("rollout", r.id),
        ("image", r.image),
        ("policy", r.policy),
        ("phase", _phase_text(r)),
        ("stage", _stage_detail(r)),
        ("weight", f"canary {r.weight}% / stable {r.stable_weight}%  {bar(r.weight)}"),
    ]
    if r.finished_at:
        rows.append(("started", when(r.started_at)))
        rows.append(("finished", f"{when(r.finished_at)} (took {age(r)})"))
    else:
        rows.append(("started", f"{when(r.started_at)} ({age(r)} ago)"))
    if r.phase == "Paused" and r.pause_reason:
        rows.append(("paused", r.pause_reason))
    if r.rollback_reason:
        rows.append(("rollback", r.rollback_reason))
    if r.message:
        rows.append(("message", r.message))
    if checks:
        rows.append(("checks", checks_text(checks)))
    if alerts:
        rows.append(("alerts", "firing: " + ", ".join(alerts)))
    width = max(len(k) for k, _ in rows)
    return [f"{k:<{width}}  {v}" for k, v in rows]


def _phase_text(r: RolloutView) -> str:
    if r.waiting_for_promote:
        return f"{r.phase} (stage passed; waiting for `canaryctl promote {r.target}`)"
    return r.phase


def _stage_detail(r: RolloutView) -> str:
    stage = r.current
    if stage is None:
        return r.stage_text
    checks = ", ".join(stage.checks) or "no checks"
    gate = ", manual gate" if stage.gate == "manual" else ""
    left = time_left(r)
    done = f", {format_duration(r.credited)} passed, {left}" if left else ""
    return (
        f"{r.stage_text}: {stage.weight}% for {format_duration(stage.duration)}{done} "
        f"({checks}{gate})"
    )


# --------------------------------------------------------------------------- watch


@dataclass(frozen=True, slots=True)
class Frame:
    """One screen of ``watch``; ``lines`` minus the clock tell whether anything changed."""

    target: str
    rollout: RolloutView | None
    checks: dict[str, dict[str, Any]]
    decisions: list[dict[str, Any]]
    trouble: str | None = None

    def lines(self, ascii_only: bool = False) -> list[str]:
        r = self.rollout
        if r is None:
            return [f"{self.target}: no rollout yet"]
        out = [
            f"{r.target} · rollout {r.id} · {r.image} · policy {r.policy}",
            f"phase    {_phase_text(r)}",
            f"stage    {_stage_detail(r)}",
            f"weight   canary {r.weight:>3}% {bar(r.weight, 30, ascii_only)} "
            f"{r.stable_weight:>3}% stable",
            f"checks   {checks_text(self.checks, ascii_only) if self.checks else '-'}",
        ]
        reason = r.pause_reason if r.phase == "Paused" else r.rollback_reason or r.message
        if reason:
            out.append(f"reason   {reason}")
        if self.decisions:
            out.append("decisions")
            out += [f"  {decision_line(d)}" for d in self.decisions]
        if self.trouble:
            out.append(f"! {self.trouble} (retrying)")
        if ascii_only:  # a terminal without UTF-8: "·", "→" in reasons... as "?", never a crash
            return [line.encode("ascii", "replace").decode("ascii") for line in out]
        return out


def _watch(client: Client, args: argparse.Namespace) -> int:
    if args.output == "json":
        return _watch_json(client, args)
    show = _rich_view() if (not args.plain and sys.stdout.isatty()) else None
    plain = _PlainView(sys.stdout.isatty())
    frame: Frame | None = None
    try:
        while True:
            frame = _next_frame(client, args.target, frame)
            (show or plain.show)(frame)
            r = frame.rollout
            if args.once or r is None or r.terminal:
                break
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        if show is not None:
            show(None)
    r = frame.rollout if frame else None
    if args.once or r is None:
        return EXIT_OK
    print(f"{r.target}: rollout {r.id} ended {r.phase}")
    return EXIT_OK if r.phase == "Succeeded" else EXIT_ROLLED_BACK


def _watch_json(client: Client, args: argparse.Namespace) -> int:
    """``watch -o json``: the target as the API shows it, one JSON document per line, flushed,
    each time it changed (so ``jq`` or a script reads a stream); a daemon that stops answering
    mid-watch is a line ``{"error": {..., "retrying": true}}``. Exit codes as in text mode."""
    last, rollout, answered = "", None, False
    while True:
        try:
            doc = client.target(args.target)
        except DaemonUnreachable as exc:
            if not answered:
                raise
            line = json.dumps({"error": {**error_of_unreachable(exc), "retrying": True}})
        else:
            answered, rollout = True, rollout_of(doc)
            line = json.dumps(doc)
        if line != last:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
            last = line
        if args.once or rollout is None or rollout.terminal:
            break
        time.sleep(args.interval)
    if args.once or rollout is None:
        return EXIT_OK
    return EXIT_ROLLED_BACK if rollout.phase == "RolledBack" else EXIT_OK


def _next_frame(client: Client, target: str, last: Frame | None) -> Frame:
    """The current state; a daemon that stops answering mid-watch (a restart) is shown, and
    the watch keeps trying, but only once it has answered at least once."""
    try:
        doc = client.target(target)
        rollout = rollout_of(doc)
        decisions = decisions_of(doc)  # the target's view carries its latest decisions
        if rollout is not None and not decisions:
            decisions = decisions_of(client.history(target))
    except DaemonUnreachable as exc:
        if last is None:
            raise
        return Frame(last.target, last.rollout, last.checks, last.decisions, str(exc))
    if rollout is not None:
        decisions = [d for d in decisions if d.get("rollout_id") in (None, rollout.id)]
    return Frame(target, rollout, checks_of(doc, decisions), decisions[-6:])


class _PlainView:
    """Plain text: redraw in place on a terminal; elsewhere print a frame only on change."""

    def __init__(self, tty: bool) -> None:
        self._tty = tty
        self._last: list[str] | None = None
        self._ascii = not (sys.stdout.encoding or "").lower().startswith("utf")

    def show(self, frame: Frame) -> None:
        lines = frame.lines(self._ascii)
        if self._tty:
            sys.stdout.write("\x1b[H\x1b[2J" + f"{datetime.now():%H:%M:%S}  " + "\n".join(lines))
            sys.stdout.write("\n")
        elif lines != self._last:
            print(f"--- {datetime.now():%H:%M:%S}")
            print("\n".join(lines))
        sys.stdout.flush()
        self._last = lines


def _rich_view() -> Callable[[Frame | None], None] | None:
    """A ``rich.live.Live`` screen if rich is installed; None means plain text."""
    try:
        from rich.console import Group
        from rich.live import Live
        from rich.text import Text
    except ImportError:
        return None
    live = Live(Text(""), refresh_per_second=4, transient=False)
    live.start()
    colours = {
        "Succeeded": "bold green",
        "RolledBack": "bold red",
        "Failed": "bold red",
        "Paused": "bold yellow",
        "RollingBack": "red",
    }

    def show(frame: Frame | None) -> None:
        if frame is None:
            live.stop()
            return
        parts = []
        for i, line in enumerate(frame.lines()):
            text = Text(line)
            if i == 0:
                text.stylize("bold")
            elif line.startswith("phase") and frame.rollout:
                text.highlight_words(
                    [frame.rollout.phase], colours.get(frame.rollout.phase, "cyan")
                )
            elif line.startswith("weight"):
                text.highlight_regex("█+", "yellow")
                text.highlight_regex("░+", "green")
            elif line.startswith("!"):
                text.stylize("red")
            parts.append(text)
        live.update(Group(*parts))

    return show


# --------------------------------------------------------------------------- parser


def _connection_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """``--url``, ``--token``, ``--timeout``, ``-o``: before the command (``top``, with their
    defaults) or after it (suppressed defaults, so only what is typed there overrides)."""

    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    parser.add_argument(
        "--url",
        default=default(os.environ.get("CANARYD_URL") or DEFAULT_URL),
        help="canaryd's API (default: $CANARYD_URL or http://127.0.0.1:9870)",
    )
    parser.add_argument(
        "--token",
        default=default(os.environ.get("CANARYD_TOKEN")),
        help="bearer token (default: $CANARYD_TOKEN; prefer the variable, argv is visible)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=default(30.0),
        metavar="SECONDS",
        help="per request (default: 30)",
    )
    tls_options(parser, default)
    if not top:
        parser.add_argument("-o", "--output", choices=("table", "json"), default=argparse.SUPPRESS)


def _add(
    commands: Any, name: str, handler: Handler, help: str, aliases: Sequence[str] = ()
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(name, help=help, aliases=list(aliases))
    _connection_options(parser, top=False)
    parser.set_defaults(handler=_api(handler), command=name)
    return parser


def _percent(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole percentage, got {text!r}") from None


def _add_api_commands(commands: Any) -> None:
    p = _add(commands, "start", _act, "start a rollout of a new image")
    p.add_argument("target")
    p.add_argument("--image", required=True, help="image reference (tag or @sha256: digest)")
    p.add_argument("--traffic", type=_percent, help="initial canary percentage (first stage)")
    p.add_argument("--policy", help="a policy name the config allows (default: the target's)")
    p.add_argument(
        "--supersede",
        action="store_true",
        help="roll back the target's active rollout and start this one (without it: exit 7)",
    )

    p = _add(commands, "status", _status, "one target's rollout, or every target")
    p.add_argument("target", nargs="?")

    p = _add(commands, "promote", _act, "skip the current stage's wait (admin)")
    p.add_argument("target")
    p.add_argument("--full", action="store_true", help="straight to 100%% and promote")

    p = _add(commands, "rollback", _act, "roll back now", aliases=("abort",))
    p.add_argument("target")
    p.add_argument("--reason", help="recorded with the rollback")

    for name, handler, text in (
        ("pause", _act, "hold the rollout at its current stage"),
        ("resume", _act, "continue a paused rollout"),
        ("cleanup", _act, "remove canary artefacts and reset the target's state (admin)"),
    ):
        _add(commands, name, handler, text).add_argument("target")

    p = _add(commands, "history", history.run, "the decisions of the target's rollouts")
    history.add_arguments(p)

    p = _add(commands, "audit", audit.run, "who did what: the audit log, newest first (admin)")
    audit.add_arguments(p)

    p = _add(commands, "set-weight", _act, "set the canary's traffic share")
    p.add_argument("target")
    p.add_argument("weight", type=_percent, metavar="N", help="canary percentage 0..100")

    p = _add(commands, "watch", _watch, "live progress until the rollout ends (Ctrl-C to stop)")
    p.add_argument("target")
    p.add_argument("--interval", type=float, default=1.0, metavar="SECONDS")
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.add_argument("--plain", action="store_true", help="plain text even if rich is installed")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="canaryctl",
        description=__doc__.splitlines()[0],
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"canaryctl {__version__}")
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")
    _connection_options(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sim = commands.add_parser("simulate", help="replay a sample timeline through a policy offline")
    sim.add_argument("--policy", required=True, help="policy name under rules/ or a file path")
    sim.add_argument("--samples", required=True, help="JSON-lines timeline ('-' for stdin)")
    sim.add_argument("--until", help="stop at this virtual time (default: total + deadline)")
    sim.add_argument("--traffic", type=int, help="initial canary percentage (first stage)")
    sim.add_argument("--epoch", help="ISO time that t=0 stands for (for alerts' startsAt)")
    sim.add_argument("-o", "--output", choices=("table", "json"), default=argparse.SUPPRESS)
    sim.set_defaults(handler=_simulate)
    render.register(commands)
    replay.register(commands)

    _add_api_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse and run one command; a closed pipe and Ctrl-C end quietly (``ctl.quiet``)."""

    def run() -> int:
        Parser.json_errors = wants_json(sys.argv[1:] if argv is None else argv)
        args = build_parser().parse_args(argv)
        code: int = args.handler(args)
        return code

    return quiet.run_quietly(run)


if __name__ == "__main__":
    raise SystemExit(main())
