"""``edgefleet hub service-unit``: a hardened systemd unit for ``hub serve``.

The unit's text comes from :mod:`edgefleet.core.systemd_unit` (shared with the agent's).
The hub writes its store, its fleet database and its bundles: when ``hub.toml`` exists,
the directories it names for them become writable paths too, so a config that keeps
them outside the state directory still works under ``ProtectSystem=strict`` (and one
that keeps them under ``/etc`` is visible in the unit, not a mystery at start).
"""

from __future__ import annotations

from pathlib import Path

import click

from edgefleet.core.cli.output import json_option
from edgefleet.core.systemd_unit import (
    ServiceSpec,
    default_executable,
    emit_unit,
    render_unit,
    unit_options,
)
from edgefleet.hub.config import load_config

UNIT_NAME = "edgefleet-hub.service"
DEFAULT_CONFIG = Path("/etc/edgefleet/hub.toml")
DEFAULT_STATE_DIR = Path("/var/lib/edgefleet-hub")


def hub_unit(*, executable: str, config: Path, state_dir: Path, user: str) -> str:
    writable: list[Path] = []
    if config.exists():
        settings = load_config(config)
        for path in (settings.store.path.parent, settings.store.bundles_dir):
            resolved = path.resolve()
            if resolved not in writable and not resolved.is_relative_to(state_dir):
                writable.append(resolved)
    return render_unit(
        ServiceSpec(
            description="edgefleet hub: enrollment, distribution, rollouts, telemetry",
            exec_start=f"{executable} hub serve --config {config}",
            user=user,
            state_dir=state_dir,
            read_write_paths=writable,
            # hub serve drains its queues and flushes acks for at most ~20 s on SIGTERM
            stop_timeout_s=40,
        )
    )


@click.command("service-unit")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_CONFIG,
    show_default=True,
    help="The hub.toml the unit runs with (its store and bundle directories become "
    "writable when the file exists).",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_STATE_DIR,
    show_default=True,
    help="Working directory and writable state of the hub.",
)
@unit_options
@json_option
def service_unit(
    config_path: Path, state_dir: Path, user: str, executable: str | None, as_json: bool
) -> None:
    """Print a systemd unit for `edgefleet hub serve`.

    Save it as /etc/systemd/system/edgefleet-hub.service, then
    `systemctl daemon-reload && systemctl enable --now edgefleet-hub`.
    """
    config = config_path.resolve() if config_path.exists() else config_path
    unit = hub_unit(
        executable=executable or default_executable(),
        config=config,
        state_dir=state_dir.absolute(),
        user=user,
    )
    emit_unit(UNIT_NAME, unit, as_json)
