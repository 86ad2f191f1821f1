"""``edgefleet hub api`` (the REST API and dashboard) and ``edgefleet hub openapi``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from edgefleet.hub.commands.common import config_option, hub_store
from edgefleet.hub.errors import HubUsageError

if TYPE_CHECKING:
    from edgefleet.hub.config import HubConfig
    from edgefleet.hub.console.api.server import ApiThread, TlsFiles
    from edgefleet.hub.store import HubStore


def tls_options(f: Any) -> Any:
    f = click.option(
        "--key",
        "key_file",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="TLS private key (PEM).",
    )(f)
    return click.option(
        "--cert",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="TLS certificate (PEM); with --key the API speaks HTTPS only.",
    )(f)


def parse_listen(text: str) -> tuple[str, int]:
    from edgefleet.hub.console.api.server import parse_listen as parse

    return parse(text)


def tls_files(cert: Path | None, key: Path | None) -> TlsFiles | None:
    from edgefleet.hub.console.api.server import TlsFiles

    if (cert is None) != (key is None):
        raise HubUsageError("--cert and --key go together")
    return None if cert is None or key is None else TlsFiles(cert, key)


@click.command()
@click.option(
    "--listen", default="127.0.0.1:8080", show_default=True, help="HOST:PORT to listen on."
)
@tls_options
@config_option
def api(listen: str, cert: Path | None, key_file: Path | None, config_path: Path | None) -> None:
    """Serve the REST API (/api/v1) and the dashboard (/) from the hub store.

    Runs next to `hub serve` (any number of copies against one store); tokens come from
    `edgefleet hub token create`.
    """
    from edgefleet.hub.console.api.server import run_api

    host, port = parse_listen(listen)
    tls = tls_files(cert, key_file)
    with hub_store(config_path) as (config, store):
        scheme = "https" if tls else "http"
        click.echo(f"edgefleet hub API and dashboard on {scheme}://{host}:{port}/", err=True)
        run_api(config, store, host, port, tls)


def start_api(config: HubConfig, store: HubStore, listen: str, tls: TlsFiles | None) -> ApiThread:
    """The API on a thread of ``hub serve`` (``--api HOST:PORT``), sharing its store."""
    from edgefleet.hub.console.api.server import ApiThread

    host, port = parse_listen(listen)
    return ApiThread(config, store, host, port, tls).start()


@click.command()
def openapi() -> None:
    """Print the API's OpenAPI 3 document (JSON)."""
    click.echo(json.dumps(openapi_document(), indent=2, sort_keys=True))


def openapi_document() -> dict[str, Any]:
    """The document, built from the routes without opening any store (nothing is called)."""
    from edgefleet.hub.console.api.app import create_app

    app = create_app(None, None, clock=lambda: 0.0)  # type: ignore[arg-type]
    document: dict[str, Any] = app.openapi()
    return document
