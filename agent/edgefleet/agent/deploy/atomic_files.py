"""Crash-safe file updates: write a temp sibling, fsync it, rename, fsync the directory.

Invariants:

- After :func:`atomic_write_bytes` returns, the new content is durable and a
  reader sees either the old file or the new one, never a mix (rename(2) is
  atomic within a file system; the directory fsync makes the rename itself
  survive power loss).
- Temp siblings are named ``.NAME.tmp`` so a crash leaves a name that
  :func:`remove_temp_files` recognises and deletes at the next start; a write
  that fails (a full disk, say) removes its temp sibling before it raises.

``shutil`` is imported only where a directory tree is removed: it loads the
compression modules, which the serving daemon otherwise never needs.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

from edgefleet.core.durable import fsync_dir

TEMP_SUFFIX = ".tmp"


def temp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}{TEMP_SUFFIX}")


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    tmp = temp_sibling(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        remove_path(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True).encode("utf-8") + b"\n")


def durable_rename(src: Path, dst: Path) -> None:
    """rename(2) ``src`` to ``dst`` and fsync both parent directories."""
    os.replace(src, dst)
    fsync_dir(dst.parent)
    if src.parent != dst.parent:
        fsync_dir(src.parent)


def copy_durably(src: Path, dst: Path, chunk_bytes: int = 1 << 20) -> None:
    """Copy ``src`` into ``dst`` through a temp sibling, so ``dst`` is complete or absent."""
    tmp = temp_sibling(dst)
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            while chunk := fin.read(chunk_bytes):
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        durable_rename(tmp, dst)
    except BaseException:
        remove_path(tmp)
        raise


def link_or_copy(src: Path, dst: Path) -> None:
    """Give ``src``'s bytes a second name ``dst`` (a hard link: no copy, no space);
    copied instead where the file system cannot link (another mount, no links)."""
    try:
        os.link(src, dst)
    except FileExistsError:
        remove_path(dst)
        os.link(src, dst)
    except OSError as e:
        if is_disk_full(e):
            raise
        copy_durably(src, dst)
        return
    fsync_dir(dst.parent)


#: errno values that mean "no room to write", whatever the quota kind.
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(error: BaseException | None) -> bool:
    """True when ``error`` or an error behind it (``raise ... from``) is a full disk."""
    seen = 0
    while error is not None and seen < 16:
        if isinstance(error, OSError) and error.errno in _DISK_FULL:
            return True
        error = error.__cause__ or error.__context__
        seen += 1
    return False


def remove_path(path: Path) -> None:
    """Delete a file or a directory tree; absent is fine."""
    if path.is_dir() and not path.is_symlink():
        import shutil  # shutil pulls in the compression modules: not on the serving path

        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def remove_temp_files(directory: Path) -> list[Path]:
    """Delete every ``.NAME.tmp`` left in ``directory`` by a crash; returns what went."""
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        if entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX):
            remove_path(entry)
            removed.append(entry)
    return removed
