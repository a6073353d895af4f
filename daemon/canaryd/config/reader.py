"""Reading untrusted YAML into typed values while collecting every problem, not just the first.

A loader walks the parsed document with a ``Reader``; each accessor records a ``Problem``
(``file: key.path: message``) and returns a placeholder instead of raising, so one run of
``canaryd check`` names all the mistakes in a file. ``Reader.done()`` raises ``ConfigError``
if anything was recorded.

Every YAML file canaryd reads (config, tokens file, policies) is parsed with ``StrictLoader``: a
``SafeLoader`` that refuses a mapping key given twice. Plain YAML keeps the last one silently,
so ``job: web`` followed by ``job: web-canary`` would quietly judge the wrong series.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from canaryd.core.durations import parse_duration
from canaryd.core.errors import ConfigError, Problem

T = TypeVar("T")
_MISSING: Any = object()


def shown_path(path: Path) -> str:
    """A path as a person wants to read it: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


class Reader:
    def __init__(self, file: str | Path) -> None:
        self.file = str(file)
        self.problems: list[Problem] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(Problem(self.file, path or "(top)", message))

    def done(self) -> None:
        if self.problems:
            raise ConfigError(self.problems)

    def load(self) -> Any:
        """Parse the file as YAML; a problem (and None) if it cannot be read or parsed."""
        try:
            text = Path(self.file).read_text(encoding="utf-8")
        except OSError as exc:
            self.problem("", f"cannot read: {exc.strerror or exc}")
            return None
        try:
            return yaml.load(text, Loader=StrictLoader)  # a SafeLoader subclass
        except DuplicateKeys as exc:
            for d in exc.duplicates:
                self.problem(d.path, d.message)
            return None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            self.problem("", f"not valid YAML{where}: {getattr(exc, 'problem', exc)}")
            return None

    def mapping(
        self, value: Any, path: str, allowed: Iterable[str] | None = None
    ) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            self.problem(path, f"expected a mapping, got {_kind(value)}")
            return {}
        if allowed is not None:
            known = set(allowed)
            for key in value:
                if key not in known:
                    hint = _closest(str(key), known)
                    self.problem(
                        join(path, str(key)),
                        "unknown key" + (f" (did you mean {hint!r}?)" if hint else ""),
                    )
        return {str(k): v for k, v in value.items()}

    def seq(self, value: Any, path: str) -> list[Any]:
        if not isinstance(value, list):
            self.problem(path, f"expected a list, got {_kind(value)}")
            return []
        return value

    def field(
        self,
        m: Mapping[str, Any],
        key: str,
        path: str,
        convert: Callable[[Any], T],
        default: T = _MISSING,
    ) -> T:
        """``m[key]`` converted; a missing required key or a failed conversion is a problem."""
        where = join(path, key)
        if key not in m or m[key] is None:
            if default is _MISSING:
                self.problem(where, "required key is missing")
            return default if default is not _MISSING else _placeholder(convert)
        try:
            return convert(m[key])
        except (TypeError, ValueError) as exc:
            self.problem(where, str(exc))
            return default if default is not _MISSING else _placeholder(convert)


# ---- YAML without silently repeated keys


@dataclass(frozen=True, slots=True)
class Duplicate:
    """A mapping key given a second time: where (key path) and on which lines (1-based)."""

    path: str
    line: int
    first_line: int

    @property
    def message(self) -> str:
        return (
            f"duplicate key (line {self.line}; first on line {self.first_line}): "
            "YAML would silently keep the last"
        )


class DuplicateKeys(yaml.YAMLError):
    """A document with repeated mapping keys; ``duplicates`` names every one of them."""

    def __init__(self, duplicates: list[Duplicate]) -> None:
        super().__init__("; ".join(f"{d.path}: {d.message}" for d in duplicates))
        self.duplicates = duplicates


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a document in which a mapping repeats a key.

    The whole node tree is checked before anything is constructed, so one error names every
    repeated key with its path. Aliases are walked once (a shared anchor is one node), which
    keeps the walk linear even for a "billion laughs" document.
    """

    def construct_document(self, node: yaml.Node) -> Any:
        duplicates = list(_duplicates(node, "", set()))
        if duplicates:
            raise DuplicateKeys(duplicates)
        return super().construct_document(node)


def _duplicates(node: yaml.Node, path: str, seen: set[int]) -> Iterator[Duplicate]:
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _duplicates(item, join(path, i), seen)
    elif isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            if key.tag == "tag:yaml.org,2002:merge":  # "<<: *anchor" merges, it is no key
                yield from _duplicates(value, path, seen)
                continue
            name = str(key.value) if isinstance(key, yaml.ScalarNode) else "?"
            where = join(path, name)
            if isinstance(key, yaml.ScalarNode):
                line = key.start_mark.line + 1
                if (key.tag, key.value) in first:
                    yield Duplicate(where, line, first[(key.tag, key.value)])
                first.setdefault((key.tag, key.value), line)
            yield from _duplicates(value, where, seen)


def _placeholder(convert: Callable[[Any], Any]) -> Any:
    placeholders: dict[Callable[[Any], Any], Any] = {
        to_int: 0,
        to_float: 0.0,
        to_str: "",
        to_bool: False,
        duration: 0.0,
    }
    return placeholders.get(convert)


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def _closest(key: str, known: set[str]) -> str | None:
    import difflib

    found = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
    return found[0] if found else None


# ---- converters: raise ValueError with a message fit for a person


def to_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {_kind(value)} {value!r}")
    return value


def to_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {_kind(value)} {value!r}")
    return float(value)


def to_str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {_kind(value)} {value!r}")
    return value


def to_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_kind(value)} {value!r}")
    return value


def duration(value: Any) -> float:
    return parse_duration(value)


def one_of(*choices: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}; got {value!r}")
        return str(value)

    return convert
