"""The files ``hub broker-config`` writes, their modes and who must read them.

Mosquitto started as root drops to the account of its ``user`` line (``--run-as``,
default ``mosquitto``) *after* reading its configuration but *before* it opens the
password file, the ACL, the TLS key and the persistence directory. Files readable only
by root then fail with ``Unable to open pwfile``. So every file the broker reads after
dropping privileges is given to the group of the ``--run-as`` account, group-readable
(the persistence directory group-writable), and nothing else: the CA key and the hub's
own password stay private to the account that ran broker-config.

:data:`BROKER_FILES` is the one table of these files (docs/hub.md shows the same).
Modes are set with :func:`os.chmod` after writing, so the caller's umask never decides
them.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from edgefleet.hub.errors import HubStoreError, HubUsageError


@dataclass(frozen=True)
class BrokerFile:
    name: str
    # Mode with a broker group (--run-as) and without one (mosquitto runs as the writer).
    mode: int
    mode_alone: int
    broker_reads: bool  # read by mosquitto after dropping privileges: group-owned
    what: str


BROKER_FILES: tuple[BrokerFile, ...] = (
    # The folder itself: created 0700 whatever the umask, opened to the broker's group
    # only so that Mosquitto can reach the files it reads below.
    BrokerFile(".", 0o750, 0o700, True, "the folder itself (the broker enters it)"),
    BrokerFile("mosquitto.conf", 0o644, 0o644, False, "broker configuration (read as root)"),
    BrokerFile("passwd", 0o640, 0o600, True, "PBKDF2-SHA512 hashes of the hub and devices"),
    BrokerFile("acl", 0o640, 0o600, True, "topic rules: the hub sees all, a device its own"),
    BrokerFile("ca.crt", 0o644, 0o644, True, "the CA devices and the hub trust (TLS)"),
    BrokerFile("ca.key", 0o600, 0o600, False, "the CA's private key (TLS; never the broker's)"),
    BrokerFile("server.crt", 0o644, 0o644, True, "the listener's certificate (TLS)"),
    BrokerFile("server.key", 0o640, 0o600, True, "the listener's private key (TLS)"),
    BrokerFile("data", 0o770, 0o700, True, "persistence directory (retained directives)"),
    BrokerFile("hub.password", 0o600, 0o600, False, "the hub's broker password, if generated"),
    BrokerFile("hub-broker.toml", 0o644, 0o644, False, "the [broker] section hub.toml needs"),
    # With --hubs N: one broker account per hub process (hub-1 .. hub-N).
    BrokerFile("hub-*.password", 0o600, 0o600, False, "hub process K's broker password"),
    BrokerFile("hub-*-broker.toml", 0o644, 0o644, False, "the [broker] section of hub process K"),
)


# The account Mosquitto switches to when started as root without a `user` line.
MOSQUITTO_DEFAULT_USER = "mosquitto"


def effective_run_as(run_as: str | None) -> str | None:
    """``--run-as``, or Mosquitto's own default account when broker-config runs as root.

    Root writing root-only files for a broker that root starts and that then drops to
    ``mosquitto`` is exactly the ``Unable to open pwfile`` failure; naming the account
    Mosquitto will use anyway avoids it. As any other user, Mosquitto runs as that user
    and no group is needed.
    """
    if run_as is not None or os.geteuid() != 0:
        return run_as
    try:
        pwd.getpwnam(MOSQUITTO_DEFAULT_USER)
    except KeyError:
        return None
    return MOSQUITTO_DEFAULT_USER


def broker_gid(run_as: str | None) -> int | None:
    """The primary group of the ``--run-as`` account (None: mosquitto runs as the writer)."""
    if run_as is None:
        return None
    try:
        return pwd.getpwnam(run_as).pw_gid
    except KeyError:
        raise HubUsageError(f"--run-as {run_as}: no such user") from None


def apply_modes(out_dir: Path, gid: int | None) -> list[tuple[Path, int]]:
    """Set the table's mode (and group) on every file of it present in ``out_dir``
    (a name with ``*`` stands for every file it matches)."""
    applied = []
    for spec, path in _present(out_dir):
        group = gid if spec.broker_reads else None
        mode = spec.mode if group is not None else spec.mode_alone
        try:
            if group is not None:
                os.chown(path, -1, group)
            os.chmod(path, mode)
        except PermissionError:
            raise HubUsageError(
                f"cannot give group {_group_name(gid)} read access to {path}: run broker-config "
                "as root or as a member of that group, or omit --run-as and start mosquitto "
                "as yourself"
            ) from None
        except OSError as e:
            raise HubStoreError(f"cannot set the mode of {path}: {e.strerror or e}") from e
        applied.append((path, mode))
    return applied


def _present(out_dir: Path) -> list[tuple[BrokerFile, Path]]:
    found = []
    for spec in BROKER_FILES:
        paths = sorted(out_dir.glob(spec.name)) if "*" in spec.name else [out_dir / spec.name]
        found += [(spec, path) for path in paths if path.exists()]
    return found


def _group_name(gid: int | None) -> str:
    if gid is None:
        return "?"
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def render_table() -> str:
    """The table as Markdown (docs/hub.md carries this text; a test compares them)."""
    rows = [
        "| file | mode with `--run-as` | mode without | read by the broker | what |",
        "| --- | --- | --- | --- | --- |",
    ]
    for f in BROKER_FILES:
        reads = "yes (group)" if f.broker_reads else "no"
        rows.append(f"| `{f.name}` | {f.mode:04o} | {f.mode_alone:04o} | {reads} | {f.what} |")
    return "\n".join(rows)
