"""The REST API (``/api/v1``) and the dashboard (``/``) as one FastAPI application.

Every route is a thin call into :class:`~edgefleet.hub.console.service.FleetConsole`; the
guard (:mod:`.guard`) has authenticated and authorised the caller before a route runs. Hub
errors map to HTTP statuses in one place (:data:`STATUS_FOR`); request bodies and query
parameters are validated by pydantic (422 naming the field).
"""

from __future__ import annotations

import secrets
import tempfile
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Body, FastAPI, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from edgefleet.core.errors import (
    EdgefleetError,
    NotFoundError,
    OperationalError,
    StorageError,
    UsageError,
    VerificationError,
)
from edgefleet.hub.console import auth
from edgefleet.hub.console.access_store import AccessStore
from edgefleet.hub.console.api.guard import SESSION_COOKIE, Guard, session_cookie
from edgefleet.hub.console.devices import DEVICE_STATES, MAX_PAGE, DeviceFilter, PageRequest
from edgefleet.hub.console.service import DRIFT_SCOPES, FleetConsole
from edgefleet.hub.enrollment import DEFAULT_STATE_DIR
from edgefleet.hub.errors import PublishRejectedError, RolloutStateError

API_VERSION = "v1"
MAX_UPLOAD_BYTES = 1 << 30  # far above any device profile's bundle budget
SESSION_TTL_S = 12 * 3600.0
_ID = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"

# Most specific first: the first family an error belongs to decides its status.
STATUS_FOR: tuple[tuple[type[BaseException], int], ...] = (
    (NotFoundError, 404),
    (RolloutStateError, 409),
    (UsageError, 400),
    (VerificationError, 400),
    (StorageError, 503),
    (OperationalError, 502),
    (EdgefleetError, 500),
)


class RolloutCreate(BaseModel):
    model: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    version: int = Field(ge=1, le=2**31)
    selector: str = Field(
        min_length=1, max_length=4096, description="all | group=G | tag=K=V | profile=P | ids=A,B"
    )
    phases: str | None = Field(default=None, max_length=256, description="e.g. 1,25%,100%")
    gates: dict[str, str | float] = Field(
        default_factory=dict, description='gate overrides, e.g. {"bake": "10m"}'
    )
    id: str | None = Field(default=None, pattern=_ID)


class Reason(BaseModel):
    reason: str | None = Field(default=None, max_length=500)


class Ack(BaseModel):
    note: str = Field(default="", max_length=500)


class SessionRequest(BaseModel):
    token: str = Field(min_length=1, max_length=256)


class Enroll(BaseModel):
    device: str = Field(pattern=_ID)
    profile: str = Field(min_length=1, max_length=128)
    group: str | None = Field(default=None, max_length=128)
    tags: dict[str, str] = Field(default_factory=dict)
    state_dir: str = Field(default=DEFAULT_STATE_DIR, max_length=4096)
    endpoint_port: int = Field(default=8080, ge=0, le=65535)


class Reissue(BaseModel):
    state_dir: str = Field(default=DEFAULT_STATE_DIR, max_length=4096)
    endpoint_port: int = Field(default=8080, ge=0, le=65535)


def static_dir() -> str:
    return str(resources.files("edgefleet.hub.console") / "static")


def create_app(
    console: FleetConsole,
    access: AccessStore,
    *,
    secure_cookies: bool = False,
    clock: Callable[[], float] | None = None,
) -> FastAPI:
    clock = clock or console.clock
    app = FastAPI(
        title="edgefleet hub API",
        version=API_VERSION,
        description="Fleet console of the edgefleet hub. Bearer token auth; roles viewer, "
        "operator, admin (see docs/console.md).",
        openapi_url="/api/openapi.json",
        docs_url=None,
        redoc_url=None,
    )

    @app.exception_handler(EdgefleetError)
    async def hub_error(_request: Request, exc: EdgefleetError) -> JSONResponse:
        status = next(code for family, code in STATUS_FOR if isinstance(exc, family))
        return JSONResponse({"detail": str(exc)}, status_code=status)

    _session_routes(app, access, clock, secure_cookies)
    _fleet_routes(app, console)
    _bundle_routes(app, console)
    _rollout_routes(app, console)
    _drift_and_alert_routes(app, console, access)
    _dashboard(app, access, clock)
    return app


V1 = f"/api/{API_VERSION}"


def _who(request: Request) -> auth.Principal:
    principal: auth.Principal | None = request.scope.get("state", {}).get("principal")
    assert principal is not None  # the guard let an unauthenticated call through otherwise
    return principal


def _session_routes(
    app: FastAPI, access: AccessStore, clock: Callable[[], float], secure_cookies: bool
) -> None:
    """Health, and the dashboard's session cookie from a bearer token."""

    @app.get(f"{V1}/health", tags=["meta"])
    def health() -> dict[str, Any]:
        return {"status": "ok", "api": API_VERSION}

    @app.post(f"{V1}/session", tags=["session"])
    def login(body: SessionRequest, response: Response) -> dict[str, Any]:
        principal = auth.authenticate_bearer(access, f"Bearer {body.token}", clock())
        if principal is None:
            return JSONResponse({"detail": "invalid, expired or revoked token"}, status_code=401)  # type: ignore[return-value]
        session, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
        now = clock()
        access.add_session(body.token, session, csrf, now, now + SESSION_TTL_S)
        response.set_cookie(
            SESSION_COOKIE,
            session,
            max_age=int(SESSION_TTL_S),
            httponly=True,
            samesite="strict",
            secure=secure_cookies,
            path="/",
        )
        return {"name": principal.name, "role": principal.role, "csrf": csrf}

    @app.get(f"{V1}/session", tags=["session"])
    def whoami(request: Request) -> dict[str, Any]:
        p: auth.Principal | None = request.scope.get("state", {}).get("principal")
        if p is None:
            return {"authenticated": False}
        return {"authenticated": True, "name": p.name, "role": p.role, "via": p.via, "csrf": p.csrf}

    @app.delete(f"{V1}/session", tags=["session"])
    def logout(request: Request, response: Response) -> dict[str, Any]:
        cookie = session_cookie({b"cookie": request.headers.get("cookie", "").encode("latin-1")})
        if cookie:
            access.end_session(cookie)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return {"ok": True}


def _fleet_routes(app: FastAPI, console: FleetConsole) -> None:
    """Overview, devices (enroll, reissue, revoke, remove), groups."""

    @app.get(f"{V1}/overview", tags=["fleet"])
    def overview() -> dict[str, Any]:
        return console.overview()

    @app.get(f"{V1}/devices", tags=["devices"])
    def devices(
        group: str | None = None,
        profile: str | None = None,
        online: bool | None = None,
        state: Annotated[Literal[DEVICE_STATES] | None, Query()] = None,  # type: ignore[valid-type]
        model: str | None = None,
        q: Annotated[str | None, Query(max_length=128)] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, Any]:
        return console.devices(
            DeviceFilter(group, profile, online, state, model, q), PageRequest(limit, offset)
        )

    @app.get(f"{V1}/devices/{{device_id}}", tags=["devices"])
    def device(device_id: str) -> dict[str, Any]:
        return console.device(device_id)

    @app.post(f"{V1}/devices", tags=["devices"], status_code=201)
    def enroll(body: Enroll) -> dict[str, Any]:
        return console.enroll_device(
            body.device,
            body.profile,
            group=body.group,
            tags=[f"{k}={v}" for k, v in body.tags.items()],
            state_dir=body.state_dir,
            endpoint_port=body.endpoint_port,
        )

    @app.post(f"{V1}/devices/{{device_id}}/reissue", tags=["devices"])
    def reissue(device_id: str, body: Annotated[Reissue | None, Body()] = None) -> dict[str, Any]:
        body = body or Reissue()
        return console.reissue_device(
            device_id, state_dir=body.state_dir, endpoint_port=body.endpoint_port
        )

    @app.post(f"{V1}/devices/{{device_id}}/revoke", tags=["devices"])
    def revoke(device_id: str) -> dict[str, Any]:
        return console.revoke_device(device_id)

    @app.delete(f"{V1}/devices/{{device_id}}", tags=["devices"])
    def remove(device_id: str) -> dict[str, Any]:
        return console.remove_device(device_id)

    @app.get(f"{V1}/groups", tags=["fleet"])
    def groups() -> dict[str, Any]:
        return {"items": console.groups()}


def _bundle_routes(app: FastAPI, console: FleetConsole) -> None:
    """Published bundles: list, and upload a signed ``.efb``."""

    @app.get(f"{V1}/bundles", tags=["bundles"])
    def bundles() -> dict[str, Any]:
        return {"items": console.bundles()}

    @app.post(
        f"{V1}/bundles",
        tags=["bundles"],
        status_code=201,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                },
            }
        },
    )
    async def publish(request: Request) -> dict[str, Any]:
        """Upload a signed ``.efb``: verified against the publisher keys, then stored."""
        with tempfile.TemporaryDirectory(prefix="edgefleet-upload-") as tmp:
            path = Path(tmp) / "upload.efb"
            size = 0
            with open(path, "wb") as out:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > MAX_UPLOAD_BYTES:
                        raise HTTPException(413, f"bundle larger than {MAX_UPLOAD_BYTES} bytes")
                    out.write(chunk)
            if size == 0:
                raise HTTPException(422, "empty body: send the .efb file as the request body")
            try:
                return await run_in_threadpool(console.publish_bundle, path)
            except PublishRejectedError as e:
                # Name the upload, not this server's temporary file.
                raise PublishRejectedError(str(e).replace(str(path), "uploaded bundle")) from e


def _rollout_routes(app: FastAPI, console: FleetConsole) -> None:
    """Rollouts: list, create, detail, and the operator actions."""

    @app.get(f"{V1}/rollouts", tags=["rollouts"])
    def rollouts(
        state: Annotated[str | None, Query(max_length=32)] = None,
    ) -> dict[str, Any]:
        return {"items": console.rollouts(state)}

    @app.post(f"{V1}/rollouts", tags=["rollouts"], status_code=201)
    def create_rollout(body: RolloutCreate) -> dict[str, Any]:
        gates = [f"{k}={v}" for k, v in body.gates.items()]
        kwargs: dict[str, Any] = {"gates": gates, "rollout_id": body.id}
        if body.phases:
            kwargs["phases"] = body.phases
        return console.create_rollout(body.model, body.version, body.selector, **kwargs)

    @app.get(f"{V1}/rollouts/{{rollout_id}}", tags=["rollouts"])
    def rollout(rollout_id: str) -> dict[str, Any]:
        return console.rollout(rollout_id)

    def action(name: str) -> None:
        def handler(
            rollout_id: str, body: Annotated[Reason | None, Body()] = None
        ) -> dict[str, Any]:
            return console.rollout_action(rollout_id, name, body.reason if body else None)

        handler.__name__ = f"rollout_{name}"
        app.post(f"{V1}/rollouts/{{rollout_id}}/{name}", tags=["rollouts"], name=f"rollout_{name}")(
            handler
        )

    for name in ("pause", "resume", "abort", "rollback"):
        action(name)


def _drift_and_alert_routes(app: FastAPI, console: FleetConsole, access: AccessStore) -> None:
    """Drift, alerts (and acknowledging them), the audit log."""

    @app.get(f"{V1}/drift", tags=["drift"])
    def drift_models() -> dict[str, Any]:
        return {"items": console.drift_models() or []}

    @app.get(f"{V1}/drift/{{model}}", tags=["drift"])
    def drift(
        model: str,
        version: Annotated[int | None, Query(ge=1)] = None,
        scope: Annotated[Literal[DRIFT_SCOPES], Query()] = "group",  # type: ignore[valid-type]
        since_s: Annotated[float | None, Query(gt=0, le=400 * 86400)] = 86400.0,
        name: Annotated[str | None, Query(max_length=128)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, Any]:
        return console.drift(
            model, version, scope=scope, since_s=since_s, name=name, limit=limit, offset=offset
        )

    @app.get(f"{V1}/alerts", tags=["alerts"])
    def alerts(
        status: Literal["open", "resolved", "all"] = "open",
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, Any]:
        return console.alerts(None if status == "all" else status, limit, offset)

    @app.post(f"{V1}/alerts/{{alert_id}}/ack", tags=["alerts"])
    def acknowledge(
        alert_id: int, request: Request, body: Annotated[Ack | None, Body()] = None
    ) -> dict[str, Any]:
        return console.acknowledge(alert_id, _who(request).name, body.note if body else "")

    @app.get(f"{V1}/audit", tags=["meta"])
    def audit(
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, Any]:
        items, total = access.audit_log(limit, offset)
        return {"items": items, "total": total, "limit": limit, "offset": offset}


def _dashboard(app: FastAPI, access: AccessStore, clock: Callable[[], float]) -> None:
    """The dashboard's files, the security headers, and the guard in front of everything."""
    assets = static_dir()

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(f"{assets}/index.html", headers={"cache-control": "no-cache"})

    app.mount("/static", StaticFiles(directory=assets), name="static")

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        started = time.perf_counter()
        response: Response = await call_next(request)
        # Server time of the request (bench/console.py reads it; browsers show it).
        response.headers["server-timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.2f}"
        response.headers.setdefault(
            "content-security-policy",
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        )
        response.headers.setdefault("x-content-type-options", "nosniff")
        return response

    # Outermost: nothing (not even routing) runs for a caller the guard refuses.
    app.add_middleware(Guard, access=access, clock=clock)
