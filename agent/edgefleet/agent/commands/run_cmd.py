"""``edgefleet agent run``: the daemon (see :mod:`edgefleet.agent.daemon`)."""

from __future__ import annotations

from pathlib import Path

import click

from edgefleet.agent.deploy.context import DEFAULT_CONFIG


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_CONFIG,
    show_default=True,
    help="The agent.toml to run with.",
)
def run(config_path: Path) -> None:
    """Run the agent daemon: serve models, buffer telemetry, apply installs.

    Stops gracefully on SIGTERM or SIGINT; logs to stderr (journald-friendly).
    """
    from edgefleet.agent.daemon import run_agent

    run_agent(config_path)
