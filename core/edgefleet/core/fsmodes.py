"""File and folder modes set explicitly, whatever the process umask.

A umask of 000 (some container runtimes, a careless service unit) made the hub create
``broker/``, ``devices/`` and their subfolders world-writable, and SQLite creates its
database with 0644 & ~umask, so ``hub.db`` (broker password hashes) was world-readable
under every umask. Every folder and private file the hub creates goes through here, so
the modes are decided in one place:

=========================  ======  ==============================================
what                       mode    why
=========================  ======  ==============================================
``hub.db`` (+ -wal, -shm)  0600    broker password hashes, device state
folders holding it         0700    created only when missing
``broker/`` (+ ``data/``)  0700    mosquitto.conf, passwd, acl, persistence
``devices/`` and each      0750    agent.toml inside is 0600 itself; trust.json
device folder                      and ca.crt are public
=========================  ======  ==============================================

Existing folders keep their mode (an operator may have chosen it); what is created
gets exactly the mode above (``chmod`` after ``mkdir``: the umask can neither widen
nor narrow it).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700
BROKER_DIR = 0o700
DEVICES_DIR = 0o750


def make_dirs(path: Path, mode: int) -> Path:
    """``mkdir -p path``; every folder created here gets exactly ``mode``."""
    missing: list[Path] = []
    at = Path(path)
    while not at.exists() and at != at.parent:
        missing.append(at)
        at = at.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode)
        except FileExistsError:
            continue  # made meanwhile by someone else: theirs to decide
        os.chmod(folder, mode)
    return Path(path)


def private_file(path: Path) -> bool:
    """Create ``path`` empty with mode 0600 if it is missing; tighten an existing
    regular file of ours to 0600. Returns True when the file was created here."""
    path = Path(path)
    make_dirs(path.parent, PRIVATE_DIR)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_FILE)
    except FileExistsError:
        st = path.stat()
        if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_mode & 0o077:
            os.chmod(path, PRIVATE_FILE)
        return False
    try:
        os.fchmod(fd, PRIVATE_FILE)
    finally:
        os.close(fd)
    return True
