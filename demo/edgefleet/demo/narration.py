"""The demo's voice: numbered steps, the commands it runs, progress and results.

Invariants: with ``--json`` nothing is printed here (stdout carries one JSON object,
written by the command at the end); progress lines rewrite themselves on a
terminal; elsewhere a changed progress text is printed at most every few seconds.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Sequence
from typing import TextIO

import click

NON_TTY_PROGRESS_S = 5.0


class Narrator:
    def __init__(self, *, quiet: bool, stream: TextIO | None = None) -> None:
        self.quiet = quiet
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.started = time.monotonic()
        self._step = 0
        self._progress: str | None = None
        self._progress_at = 0.0

    def _elapsed(self) -> str:
        return f"{time.monotonic() - self.started:5.1f}s"

    def _write(self, text: str) -> None:
        if self.quiet:
            return
        self._end_progress()
        click.echo(text, file=self.stream)

    def _style(self, text: str, **kwargs: object) -> str:
        return click.style(text, **kwargs) if self.tty else text  # type: ignore[arg-type]

    def step(self, title: str) -> None:
        self._step += 1
        self._write("")
        self._write(self._style(f"[{self._elapsed()}] {self._step}. {title}", bold=True))

    def say(self, text: str) -> None:
        self._write(f"   {text}")

    def command(self, argv: Sequence[str]) -> None:
        """Show a command as the user would type it (paths shortened to the work dir)."""
        self._write(self._style("   $ " + " ".join(shlex.quote(a) for a in argv), fg="cyan"))

    def ok(self, text: str) -> None:
        self._write(self._style(f"   ✓ {text}", fg="green"))

    def warn(self, text: str) -> None:
        self._write(self._style(f"   ! {text}", fg="yellow"))

    def progress(self, text: str) -> None:
        if self.quiet or text == self._progress:
            return
        line = f"   … {text}"
        if self.tty:
            click.echo("\r\x1b[2K" + line, file=self.stream, nl=False)
        else:
            # In a log, a progress line every few seconds is enough.
            now = time.monotonic()
            if now - self._progress_at < NON_TTY_PROGRESS_S:
                return
            self._progress_at = now
            click.echo(line, file=self.stream)
        self._progress = text

    def _end_progress(self) -> None:
        if self._progress is not None and self.tty:
            click.echo("\r\x1b[2K", file=self.stream, nl=False)
        self._progress = None

    def block(self, text: str) -> None:
        for line in text.splitlines():
            self._write(f"   {line}")
