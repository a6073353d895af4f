"""The config's ``auth`` section: API tokens, the webhook credential and the files holding them.

Why a module of its own: these are the only config values that let someone in, so they get
stricter rules than the rest, and ``canaryd check`` and ``canaryd serve`` must apply exactly the
same ones. Both go through the functions here:

- a secret file that the group or others may write is refused (as ssh refuses a writable key):
  whoever can write it can make canaryd accept their credential; one everybody may read is a
  warning;
- an empty or whitespace-only secret file is refused: an empty webhook credential would accept
  ``Authorization: Bearer`` with nothing after it;
- in the tokens file, a token must be at least 16 printable characters without surrounding
  spaces (a header cannot carry those, so such an entry could never be used), a ``sha256`` may
  not be the digest of the empty token, and two entries may not hold the same token (the first
  would silently win, and the audit log would name the wrong caller).

``check`` reads a secret file only if it exists (secrets are often provisioned after the config
is written: a missing one is a warning there); ``serve`` needs every named file. No message
ever contains a secret.
"""

from __future__ import annotations

import hashlib
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from canaryd.config.reader import Reader, join, to_str
from canaryd.core.errors import ConfigError, Problem

ROLES = ("viewer", "operator", "admin")
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_MAX_SECRET_BYTES = 64 * 1024  # a credential, not a data file


@dataclass(frozen=True, slots=True)
class BasicAuth:
    username: str
    password_file: Path


@dataclass(frozen=True, slots=True)
class WebhookAuth:
    """How Alertmanager authenticates (its ``http_config``): one of a bearer token or basic."""

    bearer_token_file: Path | None = None
    basic: BasicAuth | None = None


@dataclass(frozen=True, slots=True)
class Auth:
    tokens_file: Path | None = None
    webhook: WebhookAuth | None = None


@dataclass(frozen=True, slots=True)
class Token:
    """One API credential of the tokens file: the token itself or its SHA-256 (hex)."""

    name: str
    role: str
    token: str | None = field(default=None, repr=False)
    sha256: str | None = field(default=None, repr=False)

    @property
    def digest(self) -> str:
        """The SHA-256 (hex) a presented token is compared against."""
        if self.token is not None:
            return hashlib.sha256(self.token.encode("utf-8")).hexdigest()
        return self.sha256 or ""


# --------------------------------------------------------------------------- the section


class AuthReader:
    """Reads ``auth:`` of the config ``file``: problems into ``r``, warnings kept here.

    ``resolve`` turns a configured path into the file (relative to the config's directory).
    """

    def __init__(self, r: Reader, file: Path, resolve: Callable[[Any], Path]) -> None:
        self.r, self.file, self.resolve = r, file, resolve
        self.warnings: list[Problem] = []

    def read(self, raw: Any) -> Auth:
        where = "auth"
        m = self.r.mapping(raw, where, {"tokens_file", "webhook"}) if raw is not None else {}
        tokens_file = self.secret_file(m, "tokens_file", where, content=False)
        if tokens_file is not None and tokens_file.is_file():
            tokens = Reader(tokens_file)  # named as serve names it, whatever the cwd
            doc = tokens.load()
            if not tokens.problems:
                read_tokens(tokens, doc)
            self.r.problems.extend(tokens.problems)
        raw_webhook = m.get("webhook")
        if raw_webhook is not None and not isinstance(raw_webhook, Mapping):
            self.r.mapping(raw_webhook, join(where, "webhook"))
        webhook = self.webhook(raw_webhook) if isinstance(raw_webhook, Mapping) else None
        return Auth(tokens_file, webhook)

    def webhook(self, raw: Mapping[str, Any]) -> WebhookAuth:
        r, path = self.r, "auth.webhook"
        w = r.mapping(raw, path, {"bearer_token_file", "basic"})
        bearer = self.secret_file(w, "bearer_token_file", path)
        basic = None
        if isinstance(w.get("basic"), Mapping):
            bpath = join(path, "basic")
            b = r.mapping(w["basic"], bpath, {"username", "password_file"})
            username = _required(r, b, "username", bpath)
            password = self.secret_file(b, "password_file", bpath, required=True)
            basic = BasicAuth(username, password or Path())
        elif w.get("basic") is not None:
            r.mapping(w["basic"], join(path, "basic"))
        has_bearer, has_basic = (w.get(k) is not None for k in ("bearer_token_file", "basic"))
        if not has_bearer and not has_basic:
            r.problem(path, "needs one of bearer_token_file or basic")
        elif has_bearer and has_basic:
            r.problem(path, "needs one of bearer_token_file or basic, not both")
        return WebhookAuth(bearer, basic)

    def secret_file(
        self,
        m: Mapping[str, Any],
        key: str,
        where: str,
        required: bool = False,
        content: bool = True,
    ) -> Path | None:
        """A file holding a secret, checked as ``serve`` will use it; missing is only a warning.

        ``content``: the file is one secret (not the tokens file, which is read as YAML).
        """
        if m.get(key) is None:
            if required:
                self.r.problem(join(where, key), "required key is missing")
            return None
        file: Path | None = self.r.field(m, key, where, self.resolve, None)
        if file is None:
            return None
        config_key = join(where, key)
        if not file.exists():
            self.warn(config_key, f"{file} does not exist (yet)")
            return file
        errors, warnings = check_secret_file(file, content=content)
        for message in errors:
            self.r.problem(config_key, message)
        for message in warnings:
            self.warn(config_key, message)
        return file

    def warn(self, key: str, message: str) -> None:
        self.warnings.append(Problem(str(self.file), key, message))


# --------------------------------------------------------------------------- secret files


def file_access(path: Path) -> tuple[str | None, str | None]:
    """(error, warning) about a secret file: not a regular file, or who else may change or read it.

    Follows symlinks (a Kubernetes secret volume is a symlink to a 0644 file: readable, so a
    warning, not an error). ``OSError`` if the file cannot be looked at.
    """
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        return f"{path} is not a regular file", None
    mode = stat.S_IMODE(info.st_mode)
    bits = (("group", stat.S_IWGRP), ("others", stat.S_IWOTH))
    writers = [who for who, bit in bits if mode & bit]
    if writers:
        return (
            f"{path} is writable by {' and '.join(writers)} (mode {mode:04o}): anyone who can "
            f"write it can let themselves in; chmod go-w {path}",
            None,
        )
    if mode & stat.S_IROTH:
        return None, f"{path} is readable by everyone (mode {mode:04o}); chmod o-r {path}"
    return None, None


def read_secret(path: Path) -> str:
    """The secret in ``path`` without surrounding whitespace (the newline an editor leaves).

    ``ValueError`` naming the file (never its content) if it is not a regular file, too big,
    not UTF-8, or empty once stripped; ``OSError`` if it cannot be read.
    """
    if not path.is_file():
        raise ValueError(f"{path} is not a regular file")
    with path.open("rb") as f:
        raw = f.read(_MAX_SECRET_BYTES + 1)
    if len(raw) > _MAX_SECRET_BYTES:
        raise ValueError(f"{path} is larger than {_MAX_SECRET_BYTES} bytes: not a credential")
    try:
        secret = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    if not secret:
        raise ValueError(
            f"{path} is empty (or only whitespace): an empty credential would let in a request "
            "with none; write the secret into it"
        )
    return secret


def check_secret_file(path: Path, *, content: bool) -> tuple[list[str], list[str]]:
    """Everything wrong with an existing secret file: (errors, warnings), as ``check`` says them.

    ``content``: also read it as one secret (the webhook credential files); the tokens file is
    read by ``load_tokens`` instead.
    """
    try:
        error, warning = file_access(path)
        if error is None and content:
            read_secret(path)
    except ValueError as exc:
        return [str(exc)], []
    except OSError as exc:
        return [f"cannot read {path}: {exc.strerror or exc}"], []
    return ([error] if error else []), ([warning] if warning else [])


def secret_for_serve(config: Path, key: str, path: Path) -> str:
    """The secret ``serve`` uses, under the rules ``check`` applied; ``ConfigError`` otherwise."""
    usable_for_serve(config, key, path)
    try:
        return read_secret(path)
    except (OSError, ValueError) as exc:
        raise _config_error(config, key, _reason(path, exc)) from exc


def tokens_for_serve(config: Path, key: str, path: Path) -> tuple[Token, ...]:
    """The tokens file ``serve`` uses, under the rules ``check`` applied; ``ConfigError``."""
    usable_for_serve(config, key, path)
    return load_tokens(path)


def usable_for_serve(config: Path, key: str, path: Path) -> None:
    """``ConfigError`` (config file, key) if ``path`` is missing or others may write it."""
    try:
        error, _ = file_access(path)
    except OSError as exc:
        raise _config_error(config, key, _reason(path, exc)) from exc
    if error:
        raise _config_error(config, key, error)


def _reason(path: Path, exc: Exception) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"{path} does not exist"
    if isinstance(exc, OSError):
        return f"cannot read {path}: {exc.strerror or exc}"
    return str(exc)


def _config_error(config: Path, key: str, message: str) -> ConfigError:
    return ConfigError([Problem(str(config), key, message)])


# --------------------------------------------------------------------------- the tokens file


def load_tokens(path: str | Path) -> tuple[Token, ...]:
    """The API tokens file (SPEC §5.3); ``ConfigError`` if it is unreadable or malformed."""
    r = Reader(path)
    doc = r.load()
    tokens = read_tokens(r, doc) if not r.problems else ()
    r.done()
    return tokens


def read_tokens(r: Reader, doc: Any) -> tuple[Token, ...]:
    tokens: list[Token] = []
    names: set[str] = set()
    holders: dict[str, str] = {}  # digest -> "[i] (name)" of the first entry holding it
    for i, raw in enumerate(r.seq(doc, "")):
        path = join("", i)
        if not isinstance(raw, Mapping):
            r.mapping(raw, path)
            continue
        t = r.mapping(raw, path, {"name", "role", "token", "sha256"})
        name = _required(r, t, "name", path)
        if name and name in names:
            r.problem(join(path, "name"), f"duplicate token name {name!r}")
        names.add(name)
        role = _role(r, t, path)
        secret = _present(r, t, "token", path, _secret)
        digest = _present(r, t, "sha256", path, _sha256)
        if ("token" in t) == ("sha256" in t):
            r.problem(path, "needs exactly one of token or sha256")
        token = Token(name, role, secret, digest)
        if token.digest and token.digest in holders:
            r.problem(
                path,
                f"the same token as {holders[token.digest]}: each token must identify one "
                "entry (value not shown)",
            )
        elif token.digest:
            holders[token.digest] = f"{path} ({name})"
        tokens.append(token)
    return tuple(tokens)


def _required(r: Reader, m: Mapping[str, Any], key: str, where: str) -> str:
    if m.get(key) is None:
        r.problem(join(where, key), "required key is missing")
        return ""
    return r.field(m, key, where, to_str, "")


def _role(r: Reader, m: Mapping[str, Any], where: str) -> str:
    value = m.get("role")
    if value is None:
        r.problem(join(where, "role"), "required key is missing")
        return ""
    if value not in ROLES:
        r.problem(join(where, "role"), f"unknown role {value!r}; valid: {', '.join(ROLES)}")
        return ""
    return str(value)


def _present(r: Reader, m: Mapping[str, Any], key: str, where: str, convert: Any) -> str | None:
    """A key that, once written, must hold a value: ``token:`` with nothing after it is empty."""
    if key not in m:
        return None
    if m[key] is None:
        r.problem(join(where, key), "is empty (value not shown)")
        return None
    result: str | None = r.field(m, key, where, convert, None)
    return result


def _secret(value: Any) -> str:
    if not isinstance(value, str) or len(value) < 16:
        raise ValueError("expected a string of at least 16 characters (value not shown)")
    if value != value.strip() or not value.isprintable():
        raise ValueError(
            "expected printable characters without surrounding spaces, as an "
            "Authorization header carries them (value not shown)"
        )
    return value


def _sha256(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected 64 hexadecimal digits as a string (quote it)")
    if not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise ValueError("expected 64 hexadecimal digits (a SHA-256 of the token)")
    if value.lower() == _EMPTY_SHA256:
        raise ValueError("is the SHA-256 of an empty token, which would accept no token at all")
    return value.lower()
