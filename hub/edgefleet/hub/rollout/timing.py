"""When a rollout phase can pass at the earliest, so a slow rollout is expected, not a surprise.

A phase passes only once the new version's telemetry reached the hub and the bake time
elapsed after the phase's last commit. Devices send telemetry per closed window, so the
first evidence of a committed device arrives up to one telemetry window (the device
profile's ``window_s``, 5 minutes on a Pi) after it starts serving; the bake time then
runs on top. With the defaults that is ten minutes per phase, thirty for three phases,
before counting the agent's own probation or the time to serve ``min_inferences``
requests. Pure: the caller says which window each device uses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from edgefleet.hub.rollout.plan import RolloutPlan


@dataclass(frozen=True)
class PhaseTiming:
    window_s: float  # the longest telemetry window among the rollout's devices
    bake_s: float
    min_inferences: int
    phases: int
    profiles: tuple[str, ...]

    @property
    def earliest_phase_s(self) -> float:
        return self.window_s + self.bake_s

    @property
    def earliest_total_s(self) -> float:
        return self.phases * self.earliest_phase_s

    def to_dict(self) -> dict[str, object]:
        return {
            "window_s": self.window_s,
            "bake_s": self.bake_s,
            "min_inferences": self.min_inferences,
            "phases": self.phases,
            "profiles": list(self.profiles),
            "earliest_phase_s": self.earliest_phase_s,
            "earliest_total_s": self.earliest_total_s,
        }

    def describe(self) -> str:
        return (
            f"each phase passes {duration(self.earliest_phase_s)} after its last commit at the "
            f"earliest (telemetry window {duration(self.window_s)} of "
            f"{', '.join(self.profiles) or 'the devices'} + bake {duration(self.bake_s)}) "
            f"and once the new version served {self.min_inferences} requests; "
            f"{self.phases} phases: at least {duration(self.earliest_total_s)}"
        )


def phase_timing(
    plan: RolloutPlan, profiles: Iterable[str], window_of: Callable[[str], float]
) -> PhaseTiming:
    """The earliest pass of each phase of ``plan`` for devices of ``profiles``."""
    names = tuple(sorted(set(profiles)))
    window_s = max((window_of(p) for p in names), default=0.0)
    return PhaseTiming(
        window_s=float(window_s),
        bake_s=plan.gates.bake_s,
        min_inferences=plan.gates.min_inferences,
        phases=len(plan.phase_sizes),
        profiles=names,
    )


def duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
