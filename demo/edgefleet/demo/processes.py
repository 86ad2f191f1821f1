"""Every process the demo starts, and how they all stop.

The demo starts long-lived processes (the hub, one agent per device) and short
CLI calls (registry, pack, hub commands). All of them go through one
:class:`ProcessSupervisor`, which is the only place that calls ``Popen``.

Invariants:

- each child runs in a session (and process group) of its own, so a Ctrl-C in
  the terminal reaches only the demo, which then stops the children in order;
  ``stop_all`` signals whole process groups, so grandchildren go too;
- on Linux each child also asks the kernel for SIGTERM when the demo dies
  (``PR_SET_PDEATHSIG``), the last line of defence when the demo is killed with
  SIGKILL; children are therefore spawned from the main thread only (the
  death signal follows the spawning thread);
- a child is registered before ``Popen`` returns to the caller and forgotten
  only once reaped: ``stop_all`` never misses one, and never signals a process
  group id that may have been reused (a reaped child's group is not signalled);
- every child gets ``EDGEFLEET_DEMO_RUN`` in its environment, so leftovers can
  be found by scanning ``/proc`` (the end-to-end tests do);
- output goes to a log file per child, never to the demo's own stdout (which
  ``--json`` keeps for one JSON object).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

from edgefleet.core.errors import OperationalError

log = logging.getLogger("edgefleet.demo")

RUN_MARKER_ENV = "EDGEFLEET_DEMO_RUN"
_PR_SET_PDEATHSIG = 1


def edgefleet_argv(*args: str) -> list[str]:
    """``edgefleet ARGS...`` with the interpreter running the demo (same environment)."""
    return [sys.executable, "-m", "edgefleet.core.cli.main", *args]


def _load_prctl() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Resolved once in the parent: between fork and exec the child should do as little as
# possible (no dlopen, no allocation-heavy work) while other threads of the demo run.
_PRCTL = _load_prctl()


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: SIGTERM when the demo dies."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


@dataclass
class ManagedProcess:
    """A child process and the log it writes to."""

    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    log_path: Path
    started_at: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class CommandResult:
    name: str
    argv: list[str]
    returncode: int
    stdout: str
    log_path: Path


class ProcessSupervisor:
    """Starts, tracks and stops every child of one demo run."""

    def __init__(self, log_dir: Path, run_marker: str, env: Mapping[str, str] | None = None):
        self.log_dir = log_dir
        self.run_marker = run_marker
        self._base_env = dict(os.environ if env is None else env)
        self._base_env[RUN_MARKER_ENV] = run_marker
        # Child processes must not write bytecode caches or wait on a terminal.
        self._base_env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
        self._children: dict[int, ManagedProcess] = {}
        self._lock = threading.Lock()
        self._counter = 0

    # -- starting ------------------------------------------------------------------

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdout: int | IO[bytes] | None = None,
        cwd: Path | None = None,
    ) -> ManagedProcess:
        """Start ``argv`` in its own session; stderr (and stdout unless given) go to a log."""
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("the demo spawns children from the main thread only")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._counter += 1
            log_path = self.log_dir / f"{self._counter:03d}-{name}.log"
        full_env = dict(self._base_env)
        if env:
            full_env.update(env)
        log_file = open(log_path, "ab")  # noqa: SIM115 - the child owns it after Popen
        # Ctrl-C between Popen and the registration below would leave an untracked child.
        with interrupts_deferred(), log_file:
            try:
                popen = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log_file if stdout is None else stdout,
                    stderr=log_file,
                    env=full_env,
                    cwd=cwd,
                    start_new_session=True,
                    preexec_fn=_die_with_parent if _PRCTL is not None else None,
                )
            except OSError as e:
                raise OperationalError(f"cannot start {name}: {e.strerror or e}") from e
            child = ManagedProcess(name, list(argv), popen, log_path)
            with self._lock:
                self._children[popen.pid] = child
        log.debug("started %s (pid %d): %s", name, popen.pid, " ".join(argv))
        return child

    def start_command(self, name: str, argv: Sequence[str]) -> ManagedProcess:
        """A short command whose stdout is captured (read it with :meth:`finish`)."""
        return self.spawn(name, argv, stdout=subprocess.PIPE)

    def finish(self, child: ManagedProcess, timeout_s: float) -> CommandResult:
        """Wait for a command from :meth:`start_command`; its stdout and exit code."""
        try:
            out, _ = child.popen.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired as e:
            self.stop(child)
            raise OperationalError(f"{child.name} did not finish within {timeout_s:.0f} s") from e
        self._forget(child)
        return CommandResult(
            child.name,
            child.argv,
            child.popen.returncode,
            (out or b"").decode("utf-8", "replace"),
            child.log_path,
        )

    def run(self, name: str, argv: Sequence[str], timeout_s: float = 120.0) -> CommandResult:
        """Run a command to completion (tracked, so an interrupt stops it too)."""
        return self.finish(self.start_command(name, argv), timeout_s)

    # -- stopping ------------------------------------------------------------------

    def _forget(self, child: ManagedProcess) -> None:
        with self._lock:
            self._children.pop(child.pid, None)

    def stop(self, child: ManagedProcess, grace_s: float = 10.0) -> int | None:
        """SIGTERM the child's process group, SIGKILL it after ``grace_s``; reap it."""
        self._signal_group(child, signal.SIGTERM)
        try:
            code = child.popen.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            log.warning("%s (pid %d) ignored SIGTERM; killing it", child.name, child.pid)
            self._signal_group(child, signal.SIGKILL)
            code = child.popen.wait()
        self._kill_group_leftovers(child)
        self._forget(child)
        return code

    def stop_all(self, grace_s: float = 10.0) -> None:
        """Stop every child still tracked: SIGTERM all groups, wait, SIGKILL the rest."""
        with self._lock:
            children = list(self._children.values())
        for child in children:
            self._signal_group(child, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in children:
            try:
                child.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) ignored SIGTERM; killing it", child.name, child.pid)
                self._signal_group(child, signal.SIGKILL)
                child.popen.wait()
        for child in children:
            self._kill_group_leftovers(child)
            if child.popen.stdout is not None:
                with contextlib.suppress(OSError):
                    child.popen.stdout.close()
            self._forget(child)

    @staticmethod
    def _signal_group(child: ManagedProcess, sig: signal.Signals) -> None:
        # The child is its own group leader (start_new_session). Once it has been
        # reaped its pid may be reused, so only a child not yet reaped is signalled.
        if child.popen.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, sig)

    @staticmethod
    def _kill_group_leftovers(child: ManagedProcess) -> None:
        # Grandchildren that outlived their leader keep the group id alive; the leader
        # was just reaped by us, so the id cannot belong to anyone else yet.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)

    def running(self) -> list[ManagedProcess]:
        with self._lock:
            return [c for c in self._children.values() if c.running()]


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, treated like Ctrl-C: stop every child, then exit."""


class _InterruptGate:
    """Python runs signal handlers in the main thread; this defers them in critical spots."""

    def __init__(self) -> None:
        self.depth = 0
        self.pending: int | None = None

    def handler(self, signum: int, _frame: FrameType | None) -> None:
        if self.depth:
            self.pending = signum
            return
        self.raise_for(signum)

    @staticmethod
    def raise_for(signum: int) -> None:
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Interrupted(signal.Signals(signum).name)


_GATE = _InterruptGate()
_HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def interrupts_raise() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise (``KeyboardInterrupt`` or :class:`Interrupted`)."""
    previous: dict[signal.Signals, Any] = {}
    for sig in _HANDLED:
        previous[sig] = signal.signal(sig, _GATE.handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """A signal arriving inside is raised on the way out (the block is never cut short)."""
    _GATE.depth += 1
    try:
        yield
    finally:
        _GATE.depth -= 1
        if _GATE.depth == 0 and _GATE.pending is not None:
            signum, _GATE.pending = _GATE.pending, None
            _GATE.raise_for(signum)


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """While cleaning up, further Ctrl-Cs are dropped: the cleanup must finish."""
    _GATE.depth += 1
    try:
        yield
    finally:
        _GATE.depth -= 1
        _GATE.pending = None
