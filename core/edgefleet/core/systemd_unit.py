"""systemd service units for the edgefleet daemons (``agent run``, ``hub serve``).

One renderer, so the agent's and the hub's units share the same hardening and the same
reasoning:

- a dedicated user; the state directory is the working directory (a model's relative
  external-data path, or any other relative path, then resolves inside the daemon's
  own files and never against ``/``) and the only writable path besides any extra
  ones the daemon's configuration names;
- ``ProtectSystem=strict`` with ``ReadWritePaths``, ``NoNewPrivileges``, ``PrivateTmp``
  and the usual kernel/namespace protections; no capabilities;
- ``Restart=on-failure``. No watchdog (``WatchdogSec``): neither daemon speaks
  sd_notify, and a watchdog killing a Pi's agent during a long bundle verification
  would do more harm than good.

Pure: :func:`render_unit` only formats text. ``systemd-analyze verify`` checks the
output in the tests.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click

from edgefleet.core.cli.output import emit

F = TypeVar("F", bound=Callable[..., Any])

# systemd creates /var/lib/NAME itself (StateDirectory=) owned by User= with this mode.
_SYSTEMD_STATE_ROOT = Path("/var/lib")
STATE_DIRECTORY_MODE = "0750"


@dataclass(frozen=True)
class ServiceSpec:
    description: str
    exec_start: str
    user: str
    state_dir: Path
    stop_timeout_s: int = 30
    read_write_paths: Sequence[Path] = field(default=())
    address_families: str = "AF_UNIX AF_INET AF_INET6"

    def __post_init__(self) -> None:
        if not self.state_dir.is_absolute():
            raise ValueError(f"state directory {self.state_dir} must be an absolute path")
        if not self.user or any(c.isspace() for c in self.user):
            raise ValueError(f"user {self.user!r} is not an account name")


def default_executable() -> str:
    """The ``edgefleet`` command of this installation (for ``ExecStart=``)."""
    found = shutil.which("edgefleet")
    if found:
        return str(Path(found).resolve())
    # not resolved: a venv's python is a symlink to the base interpreter, whose bin/
    # has no edgefleet
    return str(Path(sys.executable).absolute().parent / "edgefleet")


def _quote(path: Path) -> str:
    # systemd splits these settings on whitespace; a quoted path keeps its spaces.
    text = str(path)
    return f'"{text}"' if any(c.isspace() for c in text) else text


def render_unit(spec: ServiceSpec) -> str:
    state_directory = ""
    if spec.state_dir.parent == _SYSTEMD_STATE_ROOT:
        state_directory = (
            f"StateDirectory={spec.state_dir.name}\nStateDirectoryMode={STATE_DIRECTORY_MODE}\n"
        )
    writable = [spec.state_dir, *(p for p in spec.read_write_paths if p != spec.state_dir)]
    return f"""\
[Unit]
Description={spec.description}
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={spec.exec_start}
Restart=on-failure
RestartSec=5
# SIGTERM starts a graceful shutdown.
KillSignal=SIGTERM
TimeoutStopSec={spec.stop_timeout_s}
User={spec.user}
Group={spec.user}
{state_directory}WorkingDirectory={_quote(spec.state_dir)}
ReadWritePaths={" ".join(_quote(p) for p in writable)}
UMask=0027
Environment=PYTHONUNBUFFERED=1

# Hardening (no watchdog: the daemon does not use sd_notify).
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
RestrictNamespaces=yes
LockPersonality=yes
RestrictAddressFamilies={spec.address_families}
CapabilityBoundingSet=
AmbientCapabilities=
SystemCallArchitectures=native

[Install]
WantedBy=multi-user.target
"""


def unit_options(f: F) -> F:
    """``--user`` and ``--executable``, the options every ``service-unit`` command has."""
    f = click.option("--executable", default=None, help="Path of the edgefleet command.")(f)
    return click.option(
        "--user", default="edgefleet", show_default=True, help="User (and group) to run as."
    )(f)


def emit_unit(name: str, unit: str, as_json: bool) -> None:
    if as_json:
        emit(True, {"name": name, "unit": unit})
    else:
        click.echo(unit, nl=False)
