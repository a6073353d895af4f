"""How ``canaryctl`` reports a failure: one line on stderr, or one JSON document on stdout.

A script that asked for ``-o json`` parses stdout; an error printed as text on stderr would
leave it with nothing to parse and only the exit code to go on. So under ``-o json`` every
failure, whether the API refused (``ErrorAnswer``), nothing answered (``DaemonUnreachable``) or
the arguments were wrong (argparse, exit 2), is ``{"error": {...}}`` on stdout, with the same
exit code as in text mode. The error object is the API's own (``code``, ``message`` and what
the API adds: ``suggestions`` for an unknown target, ``rollout`` for a start that conflicts,
``required_role``), plus ``status`` (the HTTP status, null when nothing answered) and
``exit_code``, so a script can branch on either.

Text mode keeps one line per failure, worded for a person (``_explain``); the API's message
already carries what helps (the close target names of a 404, the active rollout of a 409).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from canaryd.api.routes import role_of
from canaryd.ctl.client import Client, DaemonUnreachable, ErrorAnswer
from canaryd.ctl.tlsargs import tls_files

EXIT_USAGE = 2  # argparse's

# The route each command calls (``api.routes``), for the role to name when a 403 does not.
ROUTE_OF = {
    "status": "list_targets",
    "history": "show_history",
    "audit": "audit_log",
    "watch": "show_target",
    "start": "start_rollout",
    "pause": "pause",
    "resume": "resume",
    "rollback": "rollback",
    "abort": "rollback",
    "set-weight": "set_weight",
    "promote": "promote",
    "cleanup": "cleanup",
}

Handler = Callable[[Client, argparse.Namespace], int]


def with_client(handler: Handler) -> Callable[[argparse.Namespace], int]:
    """Run ``handler`` with a client; every failure becomes its report and its exit code."""

    def run(args: argparse.Namespace) -> int:
        client = Client(args.url, args.token or None, args.timeout, tls_files(args))
        try:
            return handler(client, args)
        except DaemonUnreachable as exc:
            return report(args, str(exc), exc.exit_code, error_of_unreachable(exc))
        except ErrorAnswer as exc:
            return report(args, explain(exc, args.command), exc.exit_code, error_of(exc))

    return run


def report(args: argparse.Namespace, text: str, code: int, error: Mapping[str, Any]) -> int:
    """Say what failed: ``canaryctl: <text>`` on stderr, or under ``-o json`` the error
    document on stdout; return the exit code either way."""
    if getattr(args, "output", "table") == "json":
        print_error(error, code)
    else:
        print(f"canaryctl: {text}", file=sys.stderr)
    return code


def print_error(error: Mapping[str, Any], code: int) -> None:
    doc = {"error": {**error, "exit_code": code}}
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def error_of(exc: ErrorAnswer) -> dict[str, Any]:
    """The API's error object as it came, with the HTTP status; a made-up one for an answer
    that was not canaryd's (a proxy's HTML page)."""
    body = exc.body.get("error") if isinstance(exc.body, Mapping) else None
    error = dict(body) if isinstance(body, Mapping) else {}
    error.setdefault("code", exc.code)
    error.setdefault("message", exc.message)
    error["status"] = exc.status or None
    return error


def error_of_unreachable(exc: DaemonUnreachable) -> dict[str, Any]:
    return {"code": "unreachable", "message": str(exc), "url": exc.url, "status": None}


def role_needed(command: str) -> str | None:
    """The role ``command`` needs, read from the API's route table (SPEC §5.3)."""
    handler = ROUTE_OF.get(command)
    return role_of(handler) if handler is not None else None


def explain(exc: ErrorAnswer, command: str) -> str:
    """The one line a person reads for an API refusal."""
    if exc.code == "tls_files":
        return exc.message
    if exc.status == 401:
        return "token missing or not accepted: set --token or CANARYD_TOKEN"
    if exc.status == 403:
        role = exc.required_role or role_needed(command)
        said = role is None or role in exc.message  # the API's message names it already
        needs = "" if said else f" (`{command}` needs role {role} or higher)"
        return f"permission denied: {exc.message}{needs}"
    prefix = {
        404: "not found",
        409: "conflict",
        422: "invalid request",
        413: "request too large",
        503: "canaryd is not ready",
    }.get(exc.status, f"HTTP {exc.status} {exc.code}" if exc.status else "bad answer")
    return f"{prefix}: {exc.message}"


def wants_json(argv: Sequence[str]) -> bool:
    """Whether the command line asks for ``-o json``, read before argparse has (its own
    errors must be JSON too); the last ``-o`` wins, as in argparse."""
    chosen = None
    for i, arg in enumerate(argv):
        if arg in ("-o", "--output") and i + 1 < len(argv):
            chosen = argv[i + 1]
        elif arg.startswith("--output="):
            chosen = arg.partition("=")[2]
        elif arg.startswith("-o") and len(arg) > 2 and not arg.startswith("--"):
            chosen = arg[2:]
    return chosen == "json"


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are ``{"error": ...}`` on stdout under ``-o json`` (exit 2
    as ever); its subcommands' parsers are of this class too (argparse makes them so)."""

    json_errors = False  # set by ``canaryctl``'s ``main`` for this process's command line

    def error(self, message: str) -> NoReturn:
        if not Parser.json_errors:
            super().error(message)
        print_error({"code": "usage", "message": f"{self.prog}: {message}", "status": None}, 2)
        raise SystemExit(EXIT_USAGE)
