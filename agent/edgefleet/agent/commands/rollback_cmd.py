"""``edgefleet agent rollback MODEL``: go back to the previous version of a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgefleet.agent.deploy.context import DEFAULT_CONFIG
from edgefleet.core.cli.output import emit, json_option


def _render(result: dict[str, Any]) -> str:
    if result["state"] == "queued":
        return f"rollback queued as {result['id']}"
    return f"{result['model']} rolled back to version {result['version']}"


@click.command()
@click.argument("model")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_CONFIG,
    show_default=True,
)
@click.option("--no-wait", is_flag=True, help="Return once the agent has the request.")
@click.option("--timeout", "timeout_s", type=float, default=120.0, show_default=True)
@json_option
def rollback(model: str, config_path: Path, no_wait: bool, timeout_s: float, as_json: bool) -> None:
    """Serve the previous version of MODEL again.

    The version left behind is removed from the store, so MODEL then has no
    previous version until the next install.
    """
    from edgefleet.agent.deploy.context import AgentContext
    from edgefleet.agent.deploy.submit import WAIT_FINAL, WAIT_NONE, rollback_model

    ctx = AgentContext.load(config_path)
    outcome = rollback_model(
        ctx, model, wait=WAIT_NONE if no_wait else WAIT_FINAL, timeout_s=timeout_s
    ).check()
    emit(as_json, outcome.to_dict(), _render)
