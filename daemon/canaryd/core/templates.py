"""PromQL templates: ``{{name}}`` placeholders filled per target and evaluation.

Only a fixed set of names exists (plus a policy's own ``params``), so a typo such as
``{{jbo}}`` is a config error at load time, not a query that silently matches nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

BUILTIN_VARIABLES = frozenset(
    {"job", "target", "version", "deployment", "window", "interval", "interval_seconds", "group"}
)
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def variables(template: str) -> list[str]:
    """The placeholder names used in ``template``, in order of first use."""
    seen: dict[str, None] = {}
    for match in _PLACEHOLDER.finditer(template):
        seen.setdefault(match.group(1), None)
    return list(seen)


def unknown_variables(template: str, extra: Iterable[str] = ()) -> list[str]:
    allowed = BUILTIN_VARIABLES | frozenset(extra)
    return [name for name in variables(template) if name not in allowed]


def render(template: str, values: Mapping[str, str]) -> str:
    """Fill every placeholder; a missing value raises KeyError naming it."""

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(f"no value for template variable {{{{{name}}}}}")
        return values[name]

    return _PLACEHOLDER.sub(fill, template)
