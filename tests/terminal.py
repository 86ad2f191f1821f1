"""Run a command with stderr on a pseudo-terminal: progress lines are shown only there."""

from __future__ import annotations

import os
import pty
import subprocess


def run_with_terminal_stderr(argv: list[str], timeout_s: float = 300) -> tuple[int, str, str]:
    """(exit code, stdout, what the terminal showed) of ``argv``; stdout stays a pipe."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    out = proc.stdout.read() if proc.stdout else ""
    code = proc.wait(timeout=timeout_s)
    os.close(master)
    return code, out, b"".join(chunks).decode(errors="replace")
