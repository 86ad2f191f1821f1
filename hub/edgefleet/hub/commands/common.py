"""What every hub command shares: ``--config``, loading the config, opening the store."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from edgefleet.hub.config import HubConfig, load_config
from edgefleet.hub.store import HubStore, open_store

F = TypeVar("F", bound=Callable[..., Any])


def config_option(f: F) -> F:
    return click.option(
        "--config",
        "config_path",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="hub.toml (default: $EDGEFLEET_HUB_CONFIG, then ./hub.toml).",
    )(f)


def fleet_db_option(f: F) -> F:
    """``--db FILE``: the fleet database the read-only fleet commands look at."""
    return click.option(
        "--db",
        "db_path",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="The fleet database (default: next to the hub store of hub.toml).",
    )(f)


@contextmanager
def hub_store(config_path: Path | None) -> Iterator[tuple[HubConfig, HubStore]]:
    config = load_config(config_path)
    store = open_store(config.store.location)
    try:
        yield config, store
    finally:
        store.close()


def now() -> float:
    return time.time()


def ago(at: float | None, current: float) -> str:
    if at is None:
        return "never"
    delta = max(0.0, current - at)
    if delta < 120:
        return f"{delta:.0f}s ago"
    if delta < 7200:
        return f"{delta / 60:.0f}m ago"
    if delta < 172800:
        return f"{delta / 3600:.0f}h ago"
    return f"{delta / 86400:.0f}d ago"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)
