"""The API's front door: authentication, roles, CSRF and the audit log, before any routing.

A pure ASGI middleware, so it runs before FastAPI reads or validates a body: a viewer gets
403 for a POST whatever it sends, a caller without a valid token 401, and only then does the
route see the request. The rules it applies live in :mod:`edgefleet.hub.console.auth`.

- Bearer tokens (``Authorization: Bearer efc_...``) are for API clients; they need no CSRF
  token, since a browser never attaches them on its own.
- The dashboard exchanges a token once for a session cookie (HttpOnly, SameSite=Strict,
  Secure over HTTPS); a mutating call with that cookie must also send the session's CSRF
  token in ``X-CSRF-Token`` (double submit: a cross-site page can send the cookie but
  cannot read the token).
- Every mutating call by an authenticated caller is written to the audit log with the token
  name, the time, the route and the status, also when it was refused.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any

from edgefleet.hub.console import auth
from edgefleet.hub.console.access_store import AccessStore

log = logging.getLogger(__name__)

SESSION_COOKIE = "edgefleet_session"
CSRF_HEADER = b"x-csrf-token"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _headers(scope: Scope) -> dict[bytes, bytes]:
    return {k.lower(): v for k, v in scope.get("headers", [])}


def session_cookie(headers: dict[bytes, bytes]) -> str | None:
    raw = headers.get(b"cookie")
    if not raw:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw.decode("latin-1"))
    except Exception:  # a malformed Cookie header is no session
        return None
    morsel = jar.get(SESSION_COOKIE)
    return morsel.value if morsel is not None else None


async def _reject(send: Send, status: int, detail: str, extra: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Guard:
    def __init__(self, app: ASGIApp, access: AccessStore, clock: Callable[[], float]) -> None:
        self.app, self.access, self.clock = app, access, clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        needed = auth.required_role(method, path)
        headers = _headers(scope)
        now = self.clock()
        bearer = headers.get(b"authorization")
        principal = auth.authenticate_bearer(
            self.access, bearer.decode("latin-1") if bearer else None, now
        )
        if principal is None and not bearer:
            principal = auth.authenticate_session(self.access, session_cookie(headers), now)
        scope.setdefault("state", {})["principal"] = principal
        if needed == auth.PUBLIC:
            await self.app(scope, receive, send)
            return
        if principal is None:
            await _reject(
                send,
                401,
                "authentication required: a valid, unexpired, unrevoked token",
                [(b"www-authenticate", b"Bearer")],
            )
            return
        mutating = auth.is_mutating(method)
        status = 403
        try:
            if not auth.allows(principal.role, needed):
                await _reject(
                    send, 403, f"role {principal.role} may not do this (needs {needed})", []
                )
                return
            if (
                principal.via == "session"
                and mutating
                and headers.get(CSRF_HEADER, b"").decode("latin-1") != (principal.csrf or "\0")
            ):
                await _reject(send, 403, "missing or wrong X-CSRF-Token for this session", [])
                return
            status = 500

            async def recording_send(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                await send(message)

            await self.app(scope, receive, recording_send)
        finally:
            if mutating:
                self._audit(principal, method, path, status, now)

    def _audit(
        self, principal: auth.Principal, method: str, path: str, status: int, at: float
    ) -> None:
        try:
            self.access.audit(
                at, principal.name, principal.role, method, path, status, action_of(method, path)
            )
        except Exception:  # the answer is sent; a failed audit write must still be seen
            log.exception("audit log write failed for %s %s by %s", method, path, principal.name)


def action_of(method: str, path: str) -> str:
    """A short name for the audit log: ``rollout.pause r-1``, ``device.revoke pi-3``."""
    parts = [p for p in path.split("/") if p][2:]  # drop "api", "v1"
    if not parts:
        return f"{method} {path}"
    resource = parts[0].rstrip("s")
    if len(parts) == 1:
        return f"{resource}.{'create' if method == 'POST' else method.lower()}"
    if len(parts) == 2:
        return f"{resource}.{'remove' if method == 'DELETE' else method.lower()} {parts[1]}"
    return f"{resource}.{parts[2]} {parts[1]}"
