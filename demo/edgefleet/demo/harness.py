"""What every step of the demo stands on: the work directory, the child processes,
running ``edgefleet`` commands, waiting, and stopping it all.

:class:`DemoHarness` is the base of :class:`~edgefleet.demo.scenario.DemoRun`;
the fleet setup steps are in :mod:`~edgefleet.demo.setup_steps`, the story's
rollouts, drift and final state in :mod:`~edgefleet.demo.scenario`.

Invariants:

- every child is started through one :class:`ProcessSupervisor` and stopped in
  :meth:`DemoHarness.close`, whatever happened (error, Ctrl-C, SIGTERM);
- every wait has a deadline and checks that the hub and the agents are still alive,
  so a dead process ends the demo with its log tail instead of a hang.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from edgefleet.core.errors import OperationalError
from edgefleet.demo.fleet_view import FleetView
from edgefleet.demo.narration import Narrator
from edgefleet.demo.processes import (
    ManagedProcess,
    ProcessSupervisor,
    edgefleet_argv,
)
from edgefleet.demo.summary import DemoSummary
from edgefleet.demo.traffic import TrafficPump
from edgefleet.demo.workspace import (
    AgentTuning,
    Workspace,
    plan_fleet,
    prepare_root,
)

POLL_S = 0.5


@dataclass(frozen=True)
class DemoOptions:
    devices: int = 6
    workdir: Path | None = None
    keep: bool = False
    requests_per_s: float = 8.0
    tuning: AgentTuning = field(default_factory=AgentTuning)
    # Gates of the demo's rollouts: seconds instead of the production minutes.
    v1_gates: tuple[str, ...] = ("bake=2s", "min_inferences=20", "device_timeout=90s")
    v2_phases: str = "1,50%,100%"
    v2_gates: tuple[str, ...] = (
        "bake=3s",
        "min_inferences=40",
        "max_error_rate=0.02",
        "max_latency_p95_ratio=3",
        "device_timeout=90s",
    )
    v3_phases: str = "1,100%"
    v3_gates: tuple[str, ...] = ("bake=3s", "min_inferences=40", "device_timeout=90s")
    drift_rows: int = 1500  # drifted rows each drifted device must answer before the check


class DemoHarness:
    """A demo run's work directory, children and commands; :meth:`close` stops them all."""

    def __init__(self, options: DemoOptions, narrator: Narrator) -> None:
        self.options = options
        self.say = narrator
        self.started = time.monotonic()
        self.fleet = plan_fleet(options.devices)
        self._own_root = options.workdir is None
        if options.workdir is None:
            root = Path(tempfile.mkdtemp(prefix="edgefleet-demo-"))
        else:
            root = options.workdir.resolve()
            prepare_root(root)
        self.ws = Workspace(root)
        self.procs = ProcessSupervisor(self.ws.logs, run_marker=str(root))
        self.hub: ManagedProcess | None = None
        self.agents: dict[str, ManagedProcess] = {}
        self.pump: TrafficPump | None = None
        self.view: FleetView | None = None
        self.summary = DemoSummary(workdir=str(root), devices=self.fleet)

    # -- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def keep_on_failure(self) -> None:
        """A failed run keeps its work directory: the logs say what went wrong."""
        self._own_root = False

    def close(self) -> None:
        """Stop the clients, the agents, then the hub; remove the work dir unless kept."""
        if self.pump is not None:
            self.pump.stop()
            self.pump = None
        if self.view is not None:
            self.view.close()
            self.view = None
        agents = [a for a in self.agents.values() if a.running()]
        if agents:
            self.say.say(f"stopping {len(agents)} agents and the hub")
        self.procs.stop_all(grace_s=15.0)
        self.summary.wall_time_s = round(time.monotonic() - self.started, 1)
        if self._own_root and not self.options.keep:
            self._keep_report_outside()
            shutil.rmtree(self.ws.root, ignore_errors=True)
            self.summary.workdir = None

    def _keep_report_outside(self) -> None:
        # The HTML report is the one file worth keeping when the work dir goes away.
        if not self.ws.report.exists():
            return
        fd, name = tempfile.mkstemp(prefix="edgefleet-demo-drift-", suffix=".html")
        with open(fd, "wb") as out:
            out.write(self.ws.report.read_bytes())
        self.summary.report = name

    # -- running commands and waiting ---------------------------------------------------

    def _show(self, argv: Sequence[str]) -> list[str]:
        prefix = f"{self.ws.root}/"
        return ["edgefleet", *(a.replace(prefix, "") for a in argv)]

    def edgefleet(self, name: str, *args: str, show: bool = True, timeout_s: float = 120.0) -> Any:
        """Run ``edgefleet ARGS --json`` and return its JSON result."""
        if show:
            self.say.command(self._show(args))
        result = self.procs.run(name, edgefleet_argv(*args, "--json"), timeout_s)
        return self._parse(name, args, result.returncode, result.stdout, result.log_path)

    def _parse(self, name: str, args: Sequence[str], code: int, out: str, log: Path) -> Any:
        if code != 0:
            tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
            why = tail[-1] if tail else f"exit code {code}"
            raise OperationalError(f"`{' '.join(self._show(args))}` failed ({why}); log: {log}")
        try:
            return json.loads(out)
        except ValueError as e:
            raise OperationalError(f"{name}: no JSON on stdout; log: {log}") from e

    def _check_alive(self) -> None:
        for proc in [self.hub, *self.agents.values()]:
            if proc is not None and not proc.running():
                raise OperationalError(
                    f"{proc.name} exited with code {proc.popen.returncode}; "
                    f"last lines of {proc.log_path}:\n{proc.log_tail()}"
                )

    def wait_for(
        self,
        what: str,
        done: Callable[[], bool],
        timeout_s: float,
        progress: Callable[[], str] | None = None,
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            self._check_alive()
            if done():
                return
            if progress is not None:
                self.say.progress(progress())
            if time.monotonic() > deadline:
                detail = f" ({progress()})" if progress is not None else ""
                raise OperationalError(
                    f"timed out after {timeout_s:.0f} s waiting for {what}{detail}"
                )
            time.sleep(POLL_S)

    def _view(self) -> FleetView:
        if self.view is None:
            self.view = FleetView(self.ws.hub_store)
        return self.view
