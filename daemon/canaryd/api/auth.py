"""Who is calling the HTTP API, and what their role allows (SPEC §5.3).

Roles are ordered: ``viewer`` reads, ``operator`` starts, pauses, resumes, rolls back and sets
weights, ``admin`` also promotes and cleans up. Which role a route needs is written at the route,
in ``routes`` (the route table); here is only the order and the check against it (``Identity.may``).

A bearer token is looked up by comparing SHA-256 digests in constant time against every
configured token (plain tokens are hashed once, at start), so neither the token nor its length
leaks through timing, and the token itself is never logged. No or an unknown token raises
``Unauthenticated``, which ``server`` answers with a 401 and ``WWW-Authenticate: Bearer``.
``anonymous_role`` (default none) lets requests without a token act with that role: for a
loopback-only daemon without a tokens file. A wrong token is never taken as anonymous.

Why a module of its own, and so small: the secret-handling rules are easier to review when
nothing else is on the page, and the routes only need ``Authenticator.identify``. It speaks no
HTTP status codes; mapping its refusals to answers stays with the routes.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from canaryd.api.webhook import credentials_of
from canaryd.config.secrets import Token

ROLES = ("viewer", "operator", "admin")
ANONYMOUS = "anonymous"
CHALLENGE = 'Bearer realm="canaryd"'  # the WWW-Authenticate of a refused request


@dataclass(frozen=True, slots=True)
class Identity:
    name: str
    role: str

    def may(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


class Unauthenticated(Exception):
    """No bearer token where one is needed, or one that matches no configured token."""


class Authenticator:
    """Bearer tokens to identities, compared as SHA-256 digests in constant time."""

    def __init__(self, tokens: Sequence[Token], anonymous_role: str | None = None) -> None:
        self._known: list[tuple[bytes, Identity]] = []
        for t in tokens:
            if t.role not in ROLES:
                raise ValueError(f"token {t.name}: unknown role {t.role!r}")
            if t.token is None and t.sha256 is None:
                raise ValueError(f"token {t.name}: needs a token or its sha256")
            self._known.append((bytes.fromhex(t.digest), Identity(t.name, t.role)))
        if anonymous_role is not None and anonymous_role not in ROLES:
            raise ValueError(f"anonymous_role: unknown role {anonymous_role!r}")
        self._anonymous = Identity(ANONYMOUS, anonymous_role) if anonymous_role else None

    def identify(self, authorization: str | None) -> Identity:
        """The caller, or ``Unauthenticated``; a wrong token is never taken as anonymous."""
        presented = credentials_of(authorization, "Bearer")
        if presented is None:
            if self._anonymous is not None and not authorization:
                return self._anonymous
            raise Unauthenticated("a bearer token is required (Authorization: Bearer <token>)")
        digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
        found: Identity | None = None
        for known, identity in self._known:  # no early exit: the same work for every token
            if hmac.compare_digest(digest, known) and found is None:
                found = identity
        if found is None:
            raise Unauthenticated("unknown token")
        return found
