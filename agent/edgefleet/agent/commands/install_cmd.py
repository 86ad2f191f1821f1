"""``edgefleet agent install FILE``: sideload a bundle (USB stick, scp)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgefleet.agent.deploy.context import DEFAULT_CONFIG
from edgefleet.core.cli.output import emit, json_option, show_progress

# What each deployment state means to someone waiting for an install.
STAGE_TEXT = {
    "downloading": "copying the bundle",
    "verifying": "verifying signatures and members",
    "staged": "staged",
    "activating": "activating (loading the model, smoke set)",
    "probation": "serving on probation",
    "rolling_back": "rolling back",
    "committed": "committed",
    "rolled_back": "rolled back",
    "failed": "failed",
    "rejected": "rejected",
}


def _show_stage(state: str, reason: str | None) -> None:
    text = STAGE_TEXT.get(state, state)
    click.echo(f"... {text}" + (f": {reason}" if reason else ""), err=True)


def _render(result: dict[str, Any]) -> str:
    name = result.get("model") or "bundle"
    version = result.get("version")
    label = f"{name} version {version}" if version is not None else name
    state = result["state"]
    if state == "queued":
        return (
            f"queued as {result['id']}; the agent installs it next (see `edgefleet agent status`)"
        )
    if state == "probation":
        where = "by the agent" if result["via"] == "daemon" else "when the agent runs"
        return f"{label} is active and on probation (committed {where} if it stays healthy)"
    if state == "committed":
        return f"{label} installed and committed"
    return f"{label}: {state} ({result.get('reason')})"


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_CONFIG,
    show_default=True,
)
@click.option(
    "--allow-downgrade",
    is_flag=True,
    help="Accept a version older than (or equal to) the installed one.",
)
@click.option(
    "--wait",
    type=click.Choice(["none", "active", "final"]),
    default="active",
    show_default=True,
    help="Return when queued, when the new version serves (on probation), or when committed "
    "or rolled back.",
)
@click.option("--timeout", "timeout_s", type=float, default=600.0, show_default=True)
@json_option
def install(
    file: Path,
    config_path: Path,
    allow_downgrade: bool,
    wait: str,
    timeout_s: float,
    as_json: bool,
) -> None:
    """Verify FILE against the trust store and install it through the deployment machine.

    Exit codes: 0 installed (committed or on probation), 1 failed or rolled back,
    3 rejected (signature, profile, arch, size, onnxruntime or version checks).
    """
    from edgefleet.agent.deploy.context import AgentContext
    from edgefleet.agent.deploy.submit import install_bundle

    ctx = AgentContext.load(config_path)
    outcome = install_bundle(
        ctx,
        file,
        allow_downgrade=allow_downgrade,
        wait=wait,
        timeout_s=timeout_s,
        on_stage=_show_stage if show_progress(as_json) else None,
    )
    if outcome.state in ("queued", "probation", "committed"):
        emit(as_json, outcome.to_dict(), _render)
        return
    if as_json:
        emit(True, outcome.to_dict())
    outcome.check()
