"""What ``canaryctl render`` and ``canaryctl replay`` share on their command line: the policy
they work on and the target it is about (``--policy``, ``--label``, ``--target``, ``--image``).
One place, so both commands read them alike and say the same things when they are wrong."""

from __future__ import annotations

import sys
from typing import Any

from canaryd.config.policies import load_policy, resolve
from canaryd.core.errors import ConfigError
from canaryd.core.model import Policy


def add_policy_and_target(
    p: Any, label_help: str, policy_required: bool = True, target_help: str | None = None
) -> None:
    """Add ``--policy``, ``--label`` (``label_help`` says what it defaults to), ``--target``
    and ``--image`` to the subcommand parser ``p``."""
    p.add_argument(
        "--policy", required=policy_required, help="policy name under rules/ or a file path"
    )
    p.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=label_help,
    )
    p.add_argument(
        "--target", help=target_help or "the target's name, {{target}} (default: its job)"
    )
    p.add_argument("--image", help="the canary's image, for queries that use {{version}}")


def policy_or_problems(name: str) -> Policy | None:
    """The policy ``--policy`` names (a name under rules/, or a file), or None once each of its
    problems (``file: key.path: message``) is printed to stderr: the caller exits 2."""
    try:
        return load_policy(resolve(name))
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


def parse_labels(texts: list[str]) -> dict[str, str]:
    """``--label NAME=VALUE`` options; ``ValueError`` naming a bad one."""
    labels = {}
    for text in texts:
        name, sep, value = text.partition("=")
        if not sep or not name:
            raise ValueError(f"--label expects NAME=VALUE, got {text!r}")
        labels[name] = value
    return labels
