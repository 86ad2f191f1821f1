"""Running the API: as a process of its own (``hub api``) or a thread of ``hub serve --api``.

The API reads and writes the hub store like any ``hub`` command does (SQLite in WAL mode:
short write transactions, no lock held between requests), so any number of API processes
may run against one store next to one ``hub serve``. Tokens, sessions and the audit log live
in the console store beside it (:func:`~edgefleet.hub.console.access_store.console_db_path`).
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.core.errors import OperationalError
from edgefleet.hub.config import HubConfig
from edgefleet.hub.console.access_store import AccessStore, console_db_path
from edgefleet.hub.console.service import FleetConsole
from edgefleet.hub.errors import HubError, HubUsageError
from edgefleet.hub.store import HubStore

log = logging.getLogger(__name__)


class ApiStartError(HubError, OperationalError):
    """uvicorn could not listen where it was asked to (exit code 1)."""


_LISTEN = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]+)):(?P<port>\d{1,5})$")
#: A dashboard polling every few seconds should not rescan 10,000 devices on every poll.
CACHE_S = 2.0
#: Drift is scored from windows that arrive minutes apart (and the alert monitor runs every
#: minute); a per-device breakdown of a large fleet is expensive, so it is reused this long.
DRIFT_CACHE_S = 60.0
#: How long the first drift request for a model version waits for its drift board to be
#: built before answering ``computing`` (the dashboard says so and polls again).
DRIFT_WAIT_S = 1.0
#: An answer past its lifetime is still given, while a new one is computed, for this many
#: lifetimes more (device rows: 2 s fresh, then 20 s served while refreshed).
STALE_FACTOR = 10.0


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) -> (host, port)."""
    match = _LISTEN.match(text.strip())
    if not match:
        raise HubUsageError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    port = int(match.group("port"))
    if not 0 <= port <= 65535:
        raise HubUsageError(f"--listen {text!r}: port out of range")
    return match.group("v6") or match.group("host"), port


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path

    def __post_init__(self) -> None:
        for p in (self.cert, self.key):
            if not p.is_file():
                raise HubUsageError(f"TLS file {p} does not exist")


def build_app(
    config: HubConfig, store: HubStore, *, secure: bool = False
) -> tuple[Any, FleetConsole]:
    from edgefleet.hub.console.api.app import create_app

    access = AccessStore(console_db_path(config.store.path))
    console = FleetConsole(
        config,
        store,
        access,
        cache_s=CACHE_S,
        drift_cache_s=DRIFT_CACHE_S,
        stale_factor=STALE_FACTOR,
        drift_wait_s=DRIFT_WAIT_S,
    )
    return create_app(console, access, secure_cookies=secure), console


def _uvicorn_config(app: Any, host: str, port: int, tls: TlsFiles | None) -> Any:
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        ssl_certfile=str(tls.cert) if tls else None,
        ssl_keyfile=str(tls.key) if tls else None,
        timeout_graceful_shutdown=5,
    )


def run_api(config: HubConfig, store: HubStore, host: str, port: int, tls: TlsFiles | None) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn handles the signals and drains requests)."""
    import uvicorn

    app, console = build_app(config, store, secure=tls is not None)
    server = uvicorn.Server(_uvicorn_config(app, host, port, tls))
    try:
        server.run()
    except SystemExit as e:  # uvicorn exits when it cannot bind (after logging why)
        if not server.started:
            raise ApiStartError(
                f"the API did not start on {host}:{port} (port in use or not allowed?)"
            ) from e
        raise
    finally:
        console.close()


class ApiThread:
    """The API inside ``hub serve``: a uvicorn server on a thread of its own."""

    def __init__(
        self, config: HubConfig, store: HubStore, host: str, port: int, tls: TlsFiles | None = None
    ) -> None:
        import uvicorn

        app, self.console = build_app(config, store, secure=tls is not None)
        self.server = uvicorn.Server(_uvicorn_config(app, host, port, tls))
        self.thread = threading.Thread(target=self.server.run, name="hub-api", daemon=True)

    def start(self, timeout_s: float = 30.0) -> ApiThread:
        self.thread.start()
        stopped = threading.Event()
        for _ in range(int(timeout_s * 20)):
            if self.server.started or not self.thread.is_alive():
                break
            stopped.wait(0.05)
        if not self.server.started:
            self.stop()
            raise ApiStartError(
                f"the API did not start on {self.server.config.host}:{self.server.config.port}"
                " (port in use or not allowed?)"
            )
        log.info(
            "hub: API and dashboard on %s:%s", self.server.config.host, self.server.config.port
        )
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.console.close()
