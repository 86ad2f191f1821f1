"""``edgefleet agent run``: the daemon (see :mod:`edgefleet.agent.daemon`).

The command replaces its own process (``os.execv``, same pid, same
environment and file descriptors, so systemd and ``ps`` see one process) with
``python -m edgefleet.agent.daemon agent run --config FILE``: the
long-running daemon then never imports the command-line machinery (click and
the command tables, about 1.2 MB resident for the life of the process).
``--in-process`` runs it in this process instead (debugging).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

DAEMON_MODULE = "edgefleet.agent.daemon"
# The same path as edgefleet.agent.config.DEFAULT_CONFIG_PATH; not imported from
# there because this process is replaced right away (config is a slow import).
DEFAULT_CONFIG = Path("/etc/edgefleet/agent.toml")


def interpreter_options(orig_argv: list[str] | None = None) -> list[str]:
    """The options this interpreter was started with (``-X dev``, ``-W error``, ``-O``...)."""
    args = iter((sys.orig_argv if orig_argv is None else orig_argv)[1:])
    options: list[str] = []
    for arg in args:
        if not arg.startswith("-") or arg == "-" or arg.startswith(("-m", "-c", "--")):
            break
        options.append(arg)
        if arg in ("-X", "-W"):  # the value is the next argument
            options.append(next(args, ""))
    return options


def daemon_argv(config_path: Path, *, debug: bool = False) -> list[str]:
    """The command line the daemon runs with (interpreter options kept)."""
    return [
        sys.executable,
        *interpreter_options(),
        "-m",
        DAEMON_MODULE,
        *(["--debug"] if debug else []),
        "agent",
        "run",
        "--config",
        str(config_path),
    ]


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_CONFIG,
    show_default=True,
    help="The agent.toml to run with.",
)
@click.option(
    "--in-process",
    is_flag=True,
    hidden=True,
    help="Run in this process instead of replacing it with the lean daemon entry.",
)
@click.pass_context
def run(ctx: click.Context, config_path: Path, in_process: bool) -> None:
    """Run the agent daemon: serve models, buffer telemetry, apply installs.

    Stops gracefully on SIGTERM or SIGINT; logs to stderr (journald-friendly).
    """
    if in_process:
        from edgefleet.agent.daemon import run_agent

        run_agent(config_path)
        return
    root = ctx.find_root().obj
    debug = bool(root.get("debug")) if isinstance(root, dict) else False
    argv = daemon_argv(config_path, debug=debug)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)
