"""Durability of directory entries: one rule for every writer that renames into place.

A file written to a temp name, fsynced and renamed is durable only once the directory
holding the new name is fsynced too; otherwise a power cut can bring back the old name
(or none). Bundle writing and verification, the agent's atomic files and the hub's
bundle cache all call :func:`fsync_dir` after their renames and unlinks.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(directory: Path, *, best_effort: bool = False) -> None:
    """Make renames and unlinks inside ``directory`` durable.

    ``best_effort``: a directory that cannot be opened (a file system that refuses it) is
    skipped instead of failing a write whose data is already safe in the file itself.
    """
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        if best_effort:
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
