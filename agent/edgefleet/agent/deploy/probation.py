"""The live phase of probation as the deployment driver runs it: which requests count, and
when the verdict is in.

Requests count from the moment the new version serves (activation), not from the end
of the smoke set, so the requests answered while the smoke set ran are judged too; the
``max_seconds`` clock starts when the smoke set passed (the driver persists that time
as ``probation_started_at``). The counters live in the probation tap (the daemon's
window recorder); this object only remembers whether this process started them.

After a restart in ``probation`` nothing was counted in this process: the counter
starts when the live phase starts. The verdict itself is
:func:`edgefleet.agent.deploy.health.evaluate_probation` (pure, ``now`` is an argument).
"""

from __future__ import annotations

from edgefleet.agent.config import ProbationSettings
from edgefleet.agent.deploy.health import HealthReport, Verdict, evaluate_probation
from edgefleet.agent.deploy.hooks import ProbationTap
from edgefleet.agent.telemetry.recorder import LiveStats


class ProbationWatch:
    """Starts, judges and stops the probation counter of one deployment at a time."""

    def __init__(self, settings: ProbationSettings, tap: ProbationTap | None) -> None:
        self.settings = settings
        self.tap = tap
        self.running = False  # the live phase is under way in this process
        self._counting: tuple[str, int] | None = None  # counter started at activation

    def count_from_activation(self, model: str, version: int) -> None:
        """The new version is about to serve: count from its first answer."""
        assert self.tap is not None
        self.tap.start_probation(model, version)
        self._counting = (model, version)

    def stop_counting(self, model: str, version: int) -> None:
        """Probation ended before its live phase (load or smoke set failed)."""
        self._counting = None
        if self.tap is not None:
            self.tap.stop_probation(model, version)

    def start_live(self, model: str, version: int) -> None:
        """The smoke set passed: the live phase begins (counting since activation if it ran here)."""
        assert self.tap is not None
        if self._counting != (model, version):
            self.tap.start_probation(model, version)
        self._counting = None
        self.running = True

    def without_traffic(self, now: float) -> HealthReport:
        """The verdict where no traffic can come (no serving daemon): pass only with no live phase."""
        return evaluate_probation(self.settings, now, now, LiveStats())

    def judge(self, model: str, version: int, started_at: float, now: float) -> HealthReport:
        """Pass, fail or wait; a final verdict stops the counter."""
        assert self.tap is not None
        stats = self.tap.probation_stats(model, version)
        report = evaluate_probation(self.settings, started_at, now, stats)
        if report.verdict is not Verdict.WAIT:
            self.tap.stop_probation(model, version)
            self.running = False
        return report
