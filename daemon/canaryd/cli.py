"""``canaryd``: the daemon's command line (SPEC §5.1).

Every subcommand is one ``_register_*`` function listed in ``SUBCOMMANDS``: it adds its parser
(``_command``) and sets ``run``, a function of the parsed arguments returning the exit code, whose
docstring is the subcommand's ``--help`` description. ``main`` only
parses and dispatches, so ``serve`` and ``demo`` slot in as one more register function each.

Exit codes: 0 success, 2 a bad config (each problem as ``file: key.path: message`` on stderr)
or bad arguments (argparse's own convention), 1 when ``serve`` cannot run for another reason
(the state store cannot be opened, is damaged or is not canaryd's: one line naming the file,
and systemd's ``Restart=on-failure`` retries). A state held by another canaryd is exit 2 too:
two daemons on one state is a deployment mistake a restart does not fix (SPEC §7), and the
unit's ``RestartPreventExitStatus=2`` keeps systemd from retrying it every two seconds.

``serve --listen ADDR`` and ``$CANARYD_LISTEN`` override the config's ``listen`` (the flag beats
the variable, the variable beats the config): a container's image sets the variable to
``0.0.0.0:9870`` because its loopback is unreachable from outside, whatever the mounted config
says. A bad value is exit 2, one line naming the flag or the variable.

``check`` also says what a policy means in time, from the engine's rules (``core.stages``):
a stage passes on credited passing evaluations, so its total is the sum of stage durations; a
breached check is seen at the next evaluation, at most one interval away, and rolls back once it
has failed more than ``failure_limit`` times in the stage; source errors are retried every
``error_backoff`` until ``consecutive_error_limit``; no data holds the stage for
``inconclusive_limit`` evaluations, then ``on_inconclusive``. Per target it adds the breach's
full path (``core.timing``'s model: the window lag at the job's scrape interval, the alert
pipeline read by ``config.pipeline``, the router's apply time) and, per compare check, the canary
requests a doubling of errors takes to be caught at ``--rps``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from canaryd import __version__
from canaryd.config.kinds import Kinds
from canaryd.config.pipeline import Pipeline, read_pipeline
from canaryd.config.reader import shown_path
from canaryd.config.settings import Listen, Settings, SqliteState, Target, parse_listen
from canaryd.core import timing
from canaryd.core.durations import format_duration
from canaryd.core.errors import CanarydError, ConfigError
from canaryd.core.model import AlertAction, AlertRule, Gate, Policy
from canaryd.offline import speed
from canaryd.ports import StateLocked

DEFAULT_CONFIG = "/etc/canaryd/canaryd.yaml"
LISTEN_ENV = "CANARYD_LISTEN"
EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2

Run = Callable[[argparse.Namespace], int]
if TYPE_CHECKING:  # argparse's class is only generic in typeshed, not at run time
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def _command(commands: Subparsers, name: str, run: Run, help: str) -> argparse.ArgumentParser:
    """A subcommand that runs ``run``. Its ``--help`` description is ``run``'s docstring, so
    the text a user reads and the one a developer reads are one (argparse re-wraps it)."""
    description = " ".join((run.__doc__ or "").split())
    parser = commands.add_parser(name, help=help, description=description)
    parser.set_defaults(run=run)
    return parser


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """``-c/--config``, shared by every subcommand that reads the config."""
    parser.add_argument(
        "-c",
        "--config",
        default=os.environ.get("CANARYD_CONFIG", DEFAULT_CONFIG),
        metavar="FILE",
        help="config file (default: $CANARYD_CONFIG or %(default)s)",
    )


def read_config(path: str) -> Settings:
    """``load_config``, its warnings printed to stderr: ``check`` and ``serve`` both show them
    before anything else, so a deprecated key is seen whichever command met it first."""
    settings = load_config(path)
    for warning in settings.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return settings


def report_config_error(error: ConfigError) -> int:
    for problem in error.problems:
        print(problem, file=sys.stderr)
    return EXIT_CONFIG


# --------------------------------------------------------------------------- check


def _register_check(commands: Subparsers) -> None:
    parser = _command(commands, "check", run_check, "validate the config and every policy it names")
    add_config_option(parser)
    parser.add_argument(
        "--prometheus-config",
        metavar="FILE",
        type=Path,
        help="Prometheus config for scrape/evaluation intervals and alert rules "
        "(default: prometheus.yml beside the config, if any)",
    )
    parser.add_argument(
        "--alertmanager-config",
        metavar="FILE",
        type=Path,
        help="Alertmanager config for group_wait (default: alertmanager.yml beside the config)",
    )
    parser.add_argument(
        "--rps",
        type=float,
        default=timing.DEFAULT_RPS,
        help="requests per second to a target, both sides, for the compare checks' sample "
        "sizes (default: %(default)g)",
    )
    parser.add_argument(
        "--error-rate",
        type=float,
        default=timing.DEFAULT_ERROR_RATE,
        help="stable's error share; the canary's is twice it (default: %(default)g)",
    )
    parser.add_argument(
        "--kubeconfig",
        metavar="FILE",
        help="also read each argo-rollouts target's Rollout through this kubeconfig and check "
        "that its steps match the target's stages",
    )


def run_check(args: argparse.Namespace) -> int:
    """Validate the config and every policy it names. Prints per policy the total duration and
    the worst-case time from a breach to rollback (per target: window lag, evaluations, alert
    pipeline, router), and the canary requests each compare check needs to catch a doubling of
    errors; exits 2 with 'file: key.path: message' lines if anything is wrong."""
    if not (args.rps > 0 and 0 < args.error_rate <= 0.5):
        print("check: --rps must be > 0 and --error-rate within (0, 0.5]", file=sys.stderr)
        return EXIT_CONFIG
    try:
        settings = read_config(args.config)
    except ConfigError as exc:
        return report_config_error(exc)
    pipe = read_pipeline(settings.file, args.prometheus_config, args.alertmanager_config)
    traffic = (args.rps, args.error_rate)
    for line in describe_settings(settings, pipe, traffic):
        print(line)
    if getattr(args, "kubeconfig", None):
        problems = on_cluster(settings, args.kubeconfig)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            return 2
    return EXIT_OK


def on_cluster(settings: Settings, kubeconfig: str) -> list[str]:
    """``check --kubeconfig``: each argo-rollouts target's Rollout read through ``kubeconfig``,
    its steps held to the target's stages; a ``file: key: message`` line per one that differs."""
    from canaryd.app import steps_problems

    os.environ["KUBECONFIG"] = kubeconfig  # this process only: check exits right after
    os.environ.pop("KUBERNETES_SERVICE_HOST", None)  # the given kubeconfig, even in a pod
    return [f"{settings.file}: {where}: {why}" for where, why in steps_problems(settings)]


def describe_settings(
    settings: Settings,
    pipe: Pipeline | None = None,
    traffic: tuple[float, float] = (timing.DEFAULT_RPS, timing.DEFAULT_ERROR_RATE),
) -> list[str]:
    state = settings.state
    where = (
        f"sqlite {state.path}"
        if isinstance(state, SqliteState)
        else f"kubernetes (namespace {state.namespace}, lease {state.lease})"
    )
    prom = settings.prometheus
    count = len(settings.targets)
    lines = [
        f"{settings.file}: ok — listen {settings.listen}, state {where}, prometheus {prom.url} "
        f"(timeout {format_duration(prom.timeout)}), {count} target{'s' if count != 1 else ''}"
    ]
    lines += [f"  {describe_target(t)}" for t in settings.targets]
    seen: set[Path] = set()
    for target in settings.targets:
        key = target.policy_file.resolve()
        if key not in seen:
            seen.add(key)
            shown = shown_path(target.policy_file)
            lines += describe_policy(target.policy, shown, prom.timeout)
            if pipe is not None:
                users = [t for t in settings.targets if t.policy_file.resolve() == key]
                lines += speed.describe_speed(target.policy, users, pipe, traffic)
    if pipe is not None:
        lines += [f"  note: {note}" for note in pipe.notes]
    return lines


def describe_target(target: Target) -> str:
    return (
        f"target {target.name}: policy {target.policy.name}, "
        f"platform {_platform(target)}, router {_router(target)}, "
        f"job {target.job}{_cluster(target)}"
    )


def _cluster(target: Target) -> str:
    """The kubeconfig and context a target uses, when named (config.kubeaccess)."""
    parts = [f"context {target.kube.context}"] if target.kube.context else []
    if target.kube.kubeconfig is not None:
        parts.append(f"kubeconfig {shown_path(target.kube.kubeconfig)}")
    return f", cluster {' '.join(parts)}" if parts else ""


def describe_policy(policy: Policy, file: str, query_timeout: float = 0.0) -> list[str]:
    """What ``policy`` means in time: one summary line, then indented details."""
    interval, limits = policy.interval, policy.limits
    weights = "→".join(str(stage.weight) for stage in policy.stages)
    gates = sum(1 for stage in policy.stages if stage.gate is Gate.MANUAL)
    total = format_duration(policy.total_duration)
    if gates:
        total += f" plus {gates} manual approval{'s' if gates != 1 else ''}"
    failing = limits.failure_limit + 1
    by_alert = [rule for rule in policy.alert_rules if rule.action is AlertAction.ROLLBACK]
    alert_text = (
        f"at once by alert (rules: {', '.join(_rule_name(r) for r in by_alert)})"
        if by_alert
        else "no alert rule rolls back"
    )
    lines = [
        f"{policy.name} ({file}): {len(policy.stages)} stages {weights}, total {total}, "
        f"breach→rollback ≤ {format_duration(failing * interval)} by PromQL "
        f"({failing} × {format_duration(interval)} interval; plus the time a breach takes to "
        f"show in a {policy.window} window), {alert_text}"
    ]

    errors = limits.consecutive_error_limit
    outage = interval + (errors - 1) * policy.error_backoff
    hang = outage + errors * query_timeout
    retries = (
        f", then {errors - 1} {'retry' if errors == 2 else 'retries'} "
        f"{format_duration(policy.error_backoff)} apart"
        if errors > 1
        else ""
    )
    lines.append(
        f"  Prometheus down → rollback ≤ {format_duration(outage)} (first error within one "
        f"interval{retries}"
        + (
            f"; ≤ {format_duration(hang)} if every query hangs for its "
            f"{format_duration(query_timeout)} timeout)"
            if query_timeout
            else ")"
        )
    )
    lines.append(
        f"  no data → {limits.on_inconclusive} ≤ "
        f"{format_duration(limits.inconclusive_limit * interval)} "
        f"({limits.inconclusive_limit} × {format_duration(interval)} interval without data; "
        f"the stage timer holds meanwhile)"
    )
    lines.append(
        f"  a stage may overrun its duration by ≤ {format_duration(limits.progress_deadline)} "
        f"(progress_deadline), then rollback; fastest rollout "
        f"{format_duration(fastest_rollout(policy))} (each stage ends on a passing evaluation)"
    )
    if policy.alert_rules:
        lines.append("  alerts: " + "; ".join(_describe_rule(r) for r in policy.alert_rules))
    return lines


def fastest_rollout(policy: Policy) -> float:
    """The earliest promotion: every stage needs whole intervals of credit, and at least one."""
    interval = policy.interval
    return sum(max(1, math.ceil(s.duration / interval - 1e-9)) * interval for s in policy.stages)


def _rule_name(rule: AlertRule) -> str:
    return rule.name or _matcher_text(rule)


def _matcher_text(rule: AlertRule) -> str:
    return ",".join(f'{m.label}{m.op}"{m.value}"' for m in rule.matchers)


def _describe_rule(rule: AlertRule) -> str:
    text = f"{rule.name} {{{_matcher_text(rule)}}} → {rule.action}"
    if rule.action is AlertAction.PAUSE:
        text += f", resume {format_duration(rule.cooldown)} after it resolves"
    elif rule.action is AlertAction.FREEZE:
        text += " (new rollouts refused while it fires)"
    if rule.include_preexisting:
        text += ", even if it fired before the rollout began"
    return text


def _platform(target: Target) -> str:
    return _kinds().platforms[target.platform.kind].describe(target.platform)


def _router(target: Target) -> str:
    return _kinds().routers[target.router.kind].describe(target.router)


def _kinds() -> Kinds:
    """This build's kinds: the composition root's tables, the ones ``serve`` builds from."""
    from canaryd.app import KINDS  # the adapters: imported by the commands that read a config

    return KINDS


def load_config(path: str) -> Settings:
    """The config, read against this build's kinds (``check`` and ``serve`` alike)."""
    from canaryd.app import load_config as load

    return load(path)


# --------------------------------------------------------------------------- serve


def _register_serve(commands: Subparsers) -> None:
    parser = _command(commands, "serve", run_serve, "run the daemon")
    add_config_option(parser)
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="lowest level logged (default: %(default)s)",
    )
    parser.add_argument(
        "--json-logs",
        action="store_true",
        default=None,
        help="log JSON lines even on a terminal (default: JSON only off a terminal)",
    )
    parser.add_argument(
        "--listen",
        metavar="ADDR",
        default=None,
        help=f"host:port for the API, [::]:9870 for IPv6 (default: ${LISTEN_ENV}, "
        "else the config's listen)",
    )


def listen_override(flag: str | None, environ: Mapping[str, str]) -> Listen | None:
    """The address ``serve`` listens on instead of the config's, if any: ``--listen``, else
    ``$CANARYD_LISTEN`` (an empty variable counts as unset, as shells and unit files leave
    them). Raises ``ValueError`` with a message naming the flag or the variable."""
    for source, value in (("--listen", flag), (LISTEN_ENV, environ.get(LISTEN_ENV) or None)):
        if value is not None:
            try:
                return parse_listen(value)
            except ValueError as exc:
                raise ValueError(f"{source}: {exc}") from None
    return None


def run_serve(args: argparse.Namespace) -> int:
    """Run the daemon: load the config (exit 2 naming every problem, as check does), resume
    stored rollouts, serve the HTTP API, stop cleanly on SIGTERM/SIGINT. --listen or
    $CANARYD_LISTEN replace the config's listen address."""
    import asyncio  # only serve needs the event loop, aiohttp and the adapters

    from canaryd import app
    from canaryd.adapters.telemetry import configure_logging

    try:  # a bad address is an argument error: said before the config is even read
        listen = listen_override(args.listen, os.environ)
    except ValueError as exc:
        print(f"canaryd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:  # a config problem reads as check shows it: report_start_failure names each one
        settings = read_config(args.config)
        if listen is not None:
            settings = dataclasses.replace(settings, listen=listen)
        configure_logging(args.log_level, args.json_logs)
        return asyncio.run(app.serve(settings))
    except (CanarydError, BaseExceptionGroup) as exc:
        return report_start_failure(exc)


def report_start_failure(error: BaseException) -> int:
    """What ``serve`` says when it cannot run: one line per canaryd error, no traceback.

    Errors raised inside the supervisor's task group arrive wrapped in an exception group;
    they are unwrapped, so damaged state reads as one line naming the file, as it does when
    found at open. Anything that is not a canaryd error is a bug: re-raised, traceback and all.
    """
    errors = _leaves(error)
    if not all(isinstance(e, CanarydError) for e in errors):
        raise error
    code = EXIT_FAILED
    for exc in errors:
        if isinstance(exc, ConfigError):  # refused while composing (e.g. the state backend)
            code = max(code, report_config_error(exc))
            continue
        if isinstance(exc, StateLocked):  # another canaryd acts on this state
            code = EXIT_CONFIG
        print("canaryd: " + " ".join(str(exc).split()), file=sys.stderr)
    return code


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


# --------------------------------------------------------------------------- demo


def _register_demo(commands: Subparsers) -> None:
    parser = _command(
        commands, "demo", run_demo, "run canaryd's main job on this machine, end to end"
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help="shorten the stages so the whole demo ends in about two minutes",
    )
    parser.add_argument(
        "-o",
        "--output",
        choices=("table", "json"),
        default="table",
        help="json: print the report as JSON on stdout (progress goes to stderr)",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="work directory for configs, logs, state and the report (default: a new temp dir)",
    )


def run_demo(args: argparse.Namespace) -> int:
    """Bring up Prometheus, Alertmanager, nginx and the demo service on 127.0.0.1, roll out a
    good version (promoted) and a bad one (rolled back by canaryd), show the progress live and
    write a report (HTML with charts, and JSON). Needs the Debian packages prometheus,
    prometheus-alertmanager and nginx-light."""
    from canaryd.demo import tour

    return tour.run(args.fast, args.dir, args.output == "json")


# --------------------------------------------------------------------------- dispatch

SUBCOMMANDS: tuple[Callable[[Subparsers], None], ...] = (
    _register_check,
    _register_serve,
    _register_demo,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="canaryd",
        description="Progressive delivery judged by Prometheus, rolled back by Alertmanager.",
    )
    parser.add_argument("--version", action="version", version=f"canaryd {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in SUBCOMMANDS:
        register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse and dispatch; a closed pipe and Ctrl-C end quietly, as in canaryctl
    (``ctl.quiet``: exit 0 and 130). ``serve`` handles SIGINT itself: a clean stop, exit 0."""
    from canaryd.ctl.quiet import run_quietly

    def dispatch() -> int:
        args = build_parser().parse_args(argv)
        run: Run = args.run
        return run(args)

    return run_quietly(dispatch)


if __name__ == "__main__":
    raise SystemExit(main())
