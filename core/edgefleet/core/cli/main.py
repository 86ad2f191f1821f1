"""Root of the ``edgefleet`` command.

Role groups are loaded lazily from a name -> module table so that
``edgefleet agent ...`` on a Raspberry Pi never imports packager code, and a
role whose extra is not installed answers with one line naming the extra.
Errors are mapped to exit codes in one place (:func:`main`).
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import Any

import click

from edgefleet.core import __version__
from edgefleet.core.errors import EXIT_OPERATIONAL, EXIT_USAGE, EdgefleetError, exit_code_for


@dataclass(frozen=True)
class RoleCommand:
    """Where a lazily loaded command lives and which extra provides it."""

    module: str
    attribute: str
    extra: str
    summary: str


# name -> where it lives. Core commands are listed here too, so help is built
# without importing anything heavy.
COMMANDS: dict[str, RoleCommand] = {
    "keys": RoleCommand("edgefleet.core.cli.keys_cmd", "keys", "", "Generate signing keys."),
    "bundle": RoleCommand(
        "edgefleet.core.cli.bundle_cmd", "bundle", "", "Inspect, verify and co-sign .efb bundles."
    ),
    "registry": RoleCommand(
        "edgefleet.packager.cli.registry_cmd", "registry", "packager", "Model registry."
    ),
    "pack": RoleCommand(
        "edgefleet.packager.cli.pack_cmd", "pack", "packager", "Build a signed bundle."
    ),
    "agent": RoleCommand("edgefleet.agent.cli", "agent", "agent", "The device daemon."),
    "hub": RoleCommand("edgefleet.hub.cli", "hub", "hub", "The fleet hub."),
    "demo": RoleCommand("edgefleet.demo.cli", "demo", "all", "The whole story on one machine."),
}


def _missing_extra_command(name: str, spec: RoleCommand, reason: str) -> click.Command:
    @click.command(
        name=name,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        add_help_option=False,
        help=spec.summary,
    )
    @click.pass_context
    def missing(ctx: click.Context) -> None:
        click.echo(
            f"error: 'edgefleet {name}' needs the '{spec.extra}' extra: "
            f"pip install 'edgefleet[{spec.extra}]' ({reason})",
            err=True,
        )
        ctx.exit(EXIT_OPERATIONAL)

    return missing


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use.

    ``lazy_commands`` maps a command name to where it lives. A missing
    third-party module (an extra not installed) becomes a one-line error naming
    the extra; a missing ``edgefleet`` module is a bug and is raised.
    """

    def __init__(self, *args: Any, lazy_commands: dict[str, RoleCommand], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = lazy_commands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.lazy_commands) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        spec = self.lazy_commands.get(cmd_name)
        if spec is None:
            return None
        try:
            module = importlib.import_module(spec.module)
        except ModuleNotFoundError as e:
            missing = e.name or "?"
            if missing.startswith("edgefleet") or not spec.extra:
                raise
            return _missing_extra_command(cmd_name, spec, f"missing module {missing}")
        command = getattr(module, spec.attribute)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Summaries come from the table: listing commands must not import roles.
        rows = []
        for name in self.list_commands(ctx):
            if name in self.lazy_commands:
                rows.append((name, self.lazy_commands[name].summary))
            else:
                rows.append((name, self.commands[name].get_short_help_str()))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(
    cls=LazyGroup,
    lazy_commands=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="edgefleet")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """edgefleet: registry, signed bundles, offline agent and MQTT hub for ML on small devices.

    Exit codes: 0 ok, 1 operational failure, 2 usage error, 3 verification or
    security rejection.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: runs the CLI and maps errors to exit codes."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        # With standalone_mode=False click returns ctx.exit()'s code instead of raising.
        rv = cli.main(args=args, prog_name="edgefleet", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code if e.exit_code else EXIT_USAGE)
    except click.exceptions.Abort as e:
        # click turns Ctrl-C into Abort itself; keep the shell's 130 for an interrupt.
        if isinstance(e.__cause__, KeyboardInterrupt):
            click.echo("interrupted", err=True)
            sys.exit(130)
        click.echo("aborted", err=True)
        sys.exit(EXIT_OPERATIONAL)
    except EdgefleetError as e:
        if debug:
            raise
        click.echo(f"error: {_one_line(str(e))}", err=True)
        sys.exit(exit_code_for(e))
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)


def _one_line(message: str) -> str:
    return " ".join(message.split()) or "unknown error"


if __name__ == "__main__":
    main()
