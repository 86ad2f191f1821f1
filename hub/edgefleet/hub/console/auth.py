"""Who may call what: roles, the route table and token issuing. Pure except token creation.

Roles are ordered: ``viewer`` reads everything but the audit log; ``operator`` also publishes
bundles, creates and steers rollouts and acknowledges alerts; ``admin`` also enrolls, re-keys, revokes and
removes devices and reads the audit log.

:func:`required_role` is the one place that says which role a request needs. The API checks
it before it routes or validates anything, so a viewer gets 403 whatever the body, and a
route added without an entry here is closed (admin) rather than open.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from edgefleet.hub.console.access_store import ROLES, AccessStore, TokenRecord
from edgefleet.hub.errors import HubUsageError

TOKEN_PREFIX = "efc_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")

PUBLIC = "public"

# (method or "*", path regex) -> role, first match wins. GET of anything else under
# /api needs a viewer; any other method needs an admin unless listed.
_RULES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("GET", re.compile(r"^/api/v1/health$"), PUBLIC),
    ("POST", re.compile(r"^/api/v1/session$"), PUBLIC),
    ("DELETE", re.compile(r"^/api/v1/session$"), PUBLIC),
    # Answers "not signed in" instead of 401, so the dashboard's first look logs no error.
    ("GET", re.compile(r"^/api/v1/session$"), PUBLIC),
    ("GET", re.compile(r"^/api/v1/audit$"), "admin"),
    ("POST", re.compile(r"^/api/v1/rollouts$"), "operator"),
    ("POST", re.compile(r"^/api/v1/bundles$"), "operator"),
    ("POST", re.compile(r"^/api/v1/rollouts/[^/]+/(pause|resume|abort|rollback)$"), "operator"),
    ("POST", re.compile(r"^/api/v1/alerts/[^/]+/ack$"), "operator"),
    ("POST", re.compile(r"^/api/v1/devices(/.*)?$"), "admin"),
    ("DELETE", re.compile(r"^/api/v1/devices/[^/]+$"), "admin"),
    ("GET", re.compile(r"^/api/.*$"), "viewer"),
    ("*", re.compile(r"^/api/.*$"), "admin"),
)


def required_role(method: str, path: str) -> str:
    """``public`` or the least role that may make this request.

    Paths outside ``/api`` (the dashboard's page and its assets) are public: they hold no
    fleet data, every number on the page comes from the API.
    """
    if not path.startswith("/api/"):
        return PUBLIC
    method = "GET" if method == "HEAD" else method
    for rule_method, pattern, role in _RULES:
        if rule_method in ("*", method) and pattern.match(path):
            return role
    return "admin"  # pragma: no cover (the last rule matches every /api path)


def allows(role: str, needed: str) -> bool:
    if needed == PUBLIC:
        return True
    return ROLES.index(role) >= ROLES.index(needed)


def is_mutating(method: str) -> bool:
    return method not in ("GET", "HEAD", "OPTIONS")


@dataclass(frozen=True)
class Principal:
    """The caller of one request: its token's name and role, and how it authenticated."""

    name: str
    role: str
    via: str  # "bearer" or "session"
    csrf: str | None = None


@dataclass(frozen=True)
class IssuedToken:
    record: TokenRecord
    secret: str  # shown once, never stored


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise HubUsageError(
            f"token name {name!r}: 1-64 letters, digits, '.', '_', '@' or '-', "
            "starting with a letter or digit"
        )
    return name


def create_token(
    access: AccessStore, name: str, role: str, now: float, expires_days: float | None
) -> IssuedToken:
    """A new random token; only its SHA-256 is stored."""
    check_name(name)
    if role not in ROLES:
        raise HubUsageError(f"role must be one of {', '.join(ROLES)}")
    if expires_days is not None and not 0 < expires_days <= 3650:
        raise HubUsageError("expires-days must be between 0 and 3650")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires_at = None if expires_days is None else now + expires_days * 86400.0
    record = access.add_token(name, role, secret, now, expires_at)
    return IssuedToken(record, secret)


def authenticate_bearer(access: AccessStore, header: str | None, now: float) -> Principal | None:
    """The principal of an ``Authorization: Bearer`` header; None if absent or not valid."""
    if not header:
        return None
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        return None
    token = access.token_by_secret(secret.strip())
    if token is None or not token.live(now):
        return None
    return Principal(token.name, token.role, "bearer")


def authenticate_session(access: AccessStore, cookie: str | None, now: float) -> Principal | None:
    if not cookie:
        return None
    session = access.session(cookie)
    if session is None or session.expires_at <= now or not session.token.live(now):
        return None
    return Principal(session.token.name, session.token.role, "session", session.csrf)
