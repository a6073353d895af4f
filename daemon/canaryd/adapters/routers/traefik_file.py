"""The ``traefik-file`` router: the split lives in a file of Traefik's file provider.

Traefik's file provider (dynamic configuration) watches a directory and re-reads it on every
change, so canaryd owns one file per target in that directory and applies a weight by
rewriting it; there is no reload command. For target ``web`` with the defaults (``service``:
the target's name, ``stable_service``: ``<service>-stable``, ``canary_service``:
``<service>-canary``) at weight 25 a ``.yml`` / ``.yaml`` file reads::

    # canaryd: target=web weight=25
    # Written by canaryd (router kind traefik-file); a hand edit is overwritten on the next change.
    http:
      services:
        web:
          weighted:
            services:
            - name: web-stable
              weight: 75
            - name: web-canary
              weight: 25
      routers:
        web-canary-pin:
          rule: Header(`X-Canary-Deploy`, `canary`)
          priority: 1000000
          service: web-canary

YAML only, and the path must end in ``.yml`` or ``.yaml``: in a directory Traefik's file
provider loads ``.toml``, ``.yml`` and ``.yaml`` files and skips every other one ("Skipping file,
unsupported extension", checked with Traefik 3.7), so a ``.json`` file would be written and
never read. YAML is a superset of JSON, so tools that want JSON can emit it into a ``.yml``.

What the user provides. The stable and canary services themselves (``loadBalancer`` services
in another file of the same directory, or in another provider: ``web-stable@docker`` is a
valid reference from a file-provider service), and the main router, whose ``service`` is the
weighted one (``web`` from the same directory, ``web@file`` from another provider); TLS and
middlewares stay on that router, which canaryd never touches. ``rule`` (optional) is that
router's match: the pin router's rule is then ``(<rule>) && Header(...)`` so the header pins
only that router's traffic; without it, the header pins every request Traefik receives on the
pin router's entry points (``entry_points``, default: all of them) to this canary. The pin
router has no ``tls`` section, so on an HTTPS entry point it matches nothing (a router without
``tls`` only takes plain HTTP): a pin over HTTPS needs its own router, written by the user.

Weights: Traefik's ``weighted`` service takes integers (the schema says ``number``, the Go
type is ``int``), stable ``100 - w`` and canary ``w``, so they always add up to 100. A side at
0 is left out of the list rather than given weight 0, so no Traefik version has to decide what
a zero weight means; the pin router names the canary at every weight. The priority is far
above the default (a router's priority is the length of its rule) and far below Traefik's
internal routers (``MaxInt - 1000`` and up), so ``X-Canary-Deploy: canary`` wins over the
user's router whatever its rule.

Writing: temp file in the same directory, fsync, ``os.replace``, fsync of the directory. A
rename is atomic, so Traefik, which re-reads the whole directory on any event in it, sees the
old document or the new one, never half of one. The temp file's name ends in ``.tmp``, which
the file provider skips (it loads only ``.toml``, ``.yml`` and ``.yaml`` files from a
directory; https://doc.traefik.io/traefik/providers/file/#directory), so the temp file itself is
never read as configuration either.

Reading back: ``get_weight`` parses the file, takes the canary's weight from it, and returns it
only if the file is, byte for byte, what ``set_weight`` writes for that weight: everything else
(no file, a hand edit, a file for other service names) is ``None``, "cannot tell", and the
worker re-asserts its weight, which rewrites the file. There is no reload to owe, so no
"applied by this process" rule as in the nginx router: Traefik re-reads the file by itself. The
file is what Traefik serves once its provider throttle has passed
(``providers.providersThrottleDuration``, 2 s by default); an invalid file would be refused by
Traefik, but canaryd only ever writes documents that validate against the upstream schema.
``set_weight`` with the file already right does nothing (no write, so no needless reload).

``finalize`` sends all traffic to stable (weight 0) and leaves the file where it is: the user's
main router names the weighted service, and Traefik drops a router whose service is gone.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from canaryd.adapters.routers.files import FileRouter, file_kind, write_atomically
from canaryd.config.kinds import Loader, to_name
from canaryd.config.reader import join, to_str
from canaryd.core.errors import RouterUnavailable

CANARY_HEADER = "X-Canary-Deploy"
PIN_PRIORITY = 1_000_000
SUFFIXES = (".yml", ".yaml")  # what Traefik's file provider loads, less .toml


def header_rule(rule: str | None = None) -> str:
    """The pin router's rule: Traefik v3's ``Header`` matcher, inside the user's ``rule``."""
    pin = f"Header(`{CANARY_HEADER}`, `canary`)"
    return f"({rule}) && {pin}" if rule else pin


def document(
    service: str,
    stable_service: str,
    canary_service: str,
    weight: int,
    *,
    rule: str | None = None,
    entry_points: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The dynamic configuration that sends ``weight`` percent of ``service`` to the canary."""
    if not 0 <= weight <= 100:
        raise ValueError(f"weight must be within 0..100, got {weight}")
    sides = [(stable_service, 100 - weight), (canary_service, weight)]
    pin: dict[str, Any] = {}
    if entry_points:
        pin["entryPoints"] = list(entry_points)
    pin.update(rule=header_rule(rule), priority=PIN_PRIORITY, service=canary_service)
    return {
        "http": {
            "services": {
                service: {
                    "weighted": {
                        "services": [{"name": n, "weight": w} for n, w in sides if w > 0],
                    }
                }
            },
            "routers": {f"{service}-canary-pin": pin},
        }
    }


def render(target: str, doc: dict[str, Any], weight: int) -> str:
    """``doc`` as the file's text: a header comment that names the target, then YAML."""
    return (
        f"# canaryd: target={target} weight={weight}\n"
        "# Written by canaryd (router kind traefik-file); a hand edit is overwritten on the next "
        "change.\n" + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
    )


class TraefikFileProviderRouter(FileRouter):
    kind = "traefik-file"

    def __init__(
        self,
        target: str,
        path: Path,
        *,
        service: str | None = None,
        stable_service: str | None = None,
        canary_service: str | None = None,
        rule: str | None = None,
        entry_points: tuple[str, ...] = (),
    ) -> None:
        super().__init__(target, path)
        if self.path.suffix.lower() not in SUFFIXES:
            raise ValueError(f"{path}: Traefik's file provider loads .yml or .yaml, not this")
        self.service = service or target
        self.stable_service = stable_service or f"{self.service}-stable"
        self.canary_service = canary_service or f"{self.service}-canary"
        self.rule, self.entry_points = rule, tuple(entry_points)

    def document(self, weight: int) -> dict[str, Any]:
        return document(
            self.service,
            self.stable_service,
            self.canary_service,
            weight,
            rule=self.rule,
            entry_points=self.entry_points,
        )

    def render(self, weight: int) -> str:
        return render(self.target, self.document(weight), weight)

    async def set_weight(self, weight: int) -> None:
        wanted = self.render(weight).encode()
        async with self._lock:
            previous = await self._read_before_change()
            if previous == wanted:
                return
            try:
                await asyncio.to_thread(write_atomically, self.path, wanted)
            except OSError as exc:
                raise RouterUnavailable(
                    f"cannot write weight {weight} for {self.target} to {self.path}: {exc}"
                ) from exc

    def _stated(self, content: bytes) -> int | None:
        """The canary's weight as the file states it (absent: 0), or None if it cannot say."""
        try:
            text = content.decode("utf-8")
            doc = yaml.safe_load(text)
            sides = doc["http"]["services"][self.service]["weighted"]["services"]
            weights = [s["weight"] for s in sides if s["name"] == self.canary_service]
        except (UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError):
            return None
        if not weights:
            return 0
        weight = weights[0]
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
            return None
        return weight


# --------------------------------------------------------------------------- the kind

_TRAEFIK_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(?:@[A-Za-z0-9][A-Za-z0-9_-]*)?")


@dataclass(frozen=True, slots=True)
class TraefikFileConfig:
    """``router: {kind: traefik-file, ...}``: a file in Traefik's watched directory."""

    path: Path  # the dynamic-configuration file (.yml or .yaml) in Traefik's watched directory
    service: str | None = None  # name of the weighted service (default: the target's name)
    stable_service: str | None = None  # default "<service>-stable"; may be "name@provider"
    canary_service: str | None = None  # default "<service>-canary"; may be "name@provider"
    rule: str | None = None  # the main router's match; the header pin is ANDed with it
    entry_points: tuple[str, ...] = ()  # the pin router's entry points (default: all)
    kind: Literal["traefik-file"] = field(default="traefik-file", init=False)


def read_config(ld: Loader, m: Mapping[str, Any], where: str) -> TraefikFileConfig:
    """Traefik's file provider loads ``.yml``, ``.yaml`` and ``.toml`` files and skips others
    (a ``.json`` would be written and never read); canaryd writes YAML, so ``.yml``/``.yaml``."""
    r, f = ld.r, ld.r.field
    path = ld.need(m, "path", where, ld.path, Path())
    if path != Path() and path.suffix.lower() not in SUFFIXES:
        r.problem(
            join(where, "path"),
            f"must end in .yml or .yaml, got {path.name!r}: canaryd writes YAML, and Traefik's "
            "file provider skips a file with another suffix (.toml it reads, canaryd does not "
            "write)",
        )
    config = TraefikFileConfig(
        path=path,
        service=f(m, "service", where, to_name, None),
        stable_service=f(m, "stable_service", where, _traefik_ref, None),
        canary_service=f(m, "canary_service", where, _traefik_ref, None),
        rule=f(m, "rule", where, _traefik_rule, None),
        entry_points=f(m, "entry_points", where, _entry_points, ()),
    )
    # The defaults (<service>-stable, <service>-canary) differ; two names given may not.
    if config.stable_service is not None and config.canary_service == config.stable_service:
        r.problem(
            join(where, "canary_service"), f"is the stable service too ({config.stable_service!r})"
        )
    return config


def _traefik_ref(value: Any) -> str:
    """A Traefik service reference: a name, or ``name@provider`` for another provider's."""
    text = to_str(value)
    if not _TRAEFIK_REF.fullmatch(text):
        raise ValueError(
            f"{text!r} is not a Traefik service name (letters, digits, '.', '_', '-', "
            "optionally @provider as in web-stable@docker)"
        )
    return text


def _traefik_rule(value: Any) -> str:
    text = to_str(value)
    if not text.strip() or "\n" in text:
        raise ValueError(f"expected a Traefik rule on one line such as Host(`a.b`), got {text!r}")
    return text


def _entry_points(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"expected a non-empty list of entry point names, got {value!r}")
    return tuple(to_name(v) for v in value)


KIND = file_kind("traefik-file", TraefikFileConfig, read_config, TraefikFileProviderRouter)
