"""Crash-safe file updates: write a temp sibling, fsync it, rename, fsync the directory.

Invariants:

- After :func:`atomic_write_bytes` returns, the new content is durable and a
  reader sees either the old file or the new one, never a mix (rename(2) is
  atomic within a file system; the directory fsync makes the rename itself
  survive power loss).
- Temp siblings are named ``.NAME.tmp`` so a crash leaves a name that
  :func:`remove_temp_files` recognises and deletes at the next start.

``shutil`` is imported only where a directory tree is removed: it loads the
compression modules, which the serving daemon otherwise never needs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".tmp"


def temp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}{TEMP_SUFFIX}")


def fsync_dir(directory: Path) -> None:
    """Make renames and unlinks inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    tmp = temp_sibling(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
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
    with open(src, "rb") as fin, open(tmp, "wb") as fout:
        while chunk := fin.read(chunk_bytes):
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    durable_rename(tmp, dst)


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
