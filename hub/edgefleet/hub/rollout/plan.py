"""What a rollout is asked to do: phases, gates and the ordered device list.

Invariants:

- phase sizes are cumulative device counts over the selection, strictly
  increasing, and the last phase always covers every selected device (a
  rollout that stops short of its selection is a smaller selection, not a
  phase list);
- phases that would add no device for this selection size (``5%`` of 3
  devices and ``25%`` of 3 devices are both 1) are merged, so every phase moves
  at least one device;
- the device order is a deterministic pseudo-random permutation keyed by the
  rollout id, so the first phase is a spread across groups rather than the
  alphabetically first devices, and the same plan rebuilt after a restart puts
  every device in the same phase.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from typing import Any

from edgefleet.hub.errors import HubUsageError

DEFAULT_PHASES = "5%,25%,100%"
_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


@dataclass(frozen=True)
class Phase:
    """One step: ``percent`` of the selection, or an absolute cumulative ``count``."""

    percent: float | None = None
    count: int | None = None

    def __post_init__(self) -> None:
        if (self.percent is None) == (self.count is None):
            raise HubUsageError("a phase is either a percentage or a device count")
        if self.percent is not None and not 0 < self.percent <= 100:
            raise HubUsageError(f"phase percentage must be in (0, 100], got {self.percent}")
        if self.count is not None and self.count < 1:
            raise HubUsageError(f"phase device count must be at least 1, got {self.count}")

    def target(self, total: int) -> int:
        """Cumulative number of devices this phase covers out of ``total``."""
        return min(total, self.raw_target(total))

    def raw_target(self, total: int) -> int:
        """Like :meth:`target` but not capped at ``total`` (to spot shrinking phase lists)."""
        if self.percent is not None:
            # ceil so that 5% of 10 devices still moves one device
            return math.ceil(total * self.percent / 100.0 - 1e-9)
        assert self.count is not None
        return self.count

    def __str__(self) -> str:
        if self.percent is not None:
            return f"{self.percent:g}%"
        return str(self.count)


def parse_phases(text: str) -> tuple[Phase, ...]:
    """``"5%,25%,100%"`` or ``"1,10,100%"`` -> phases (validated, not yet sized)."""
    phases: list[Phase] = []
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            raise HubUsageError(f"invalid phases {text!r}: empty phase")
        try:
            if part.endswith("%"):
                phases.append(Phase(percent=float(part[:-1])))
            else:
                phases.append(Phase(count=int(part)))
        except ValueError as e:
            raise HubUsageError(f"invalid phase {part!r}: expected N% or a device count") from e
    return tuple(phases)


def parse_duration_s(text: str | float | int) -> float:
    """``"90"``, ``"30s"``, ``"5m"``, ``"2h"`` -> seconds."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        value = float(text)
    else:
        m = _DURATION_RE.fullmatch(str(text).strip())
        if not m:
            raise HubUsageError(f"invalid duration {text!r}: expected e.g. 30s, 5m, 2h")
        value = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if value < 0 or not math.isfinite(value):
        raise HubUsageError(f"invalid duration {text!r}")
    return value


@dataclass(frozen=True)
class Gates:
    """Thresholds a phase must meet before the next one starts.

    Shares and rates are fractions in [0, 1]; ratios compare the new version
    with the previous one on the same selection; durations are seconds.
    """

    max_failure_share: float = 0.2  # (failed + timed out) / devices moved so far
    max_error_rate: float = 0.05  # errors / requests of the new version
    max_latency_p95_ratio: float = 1.5  # p95 new / p95 previous
    max_prediction_psi: float = 0.2  # PSI of prediction counts, new vs previous
    min_devices: int = 1  # devices committed and reporting the new version
    min_inferences: int = 100  # requests served by the new version, all devices
    bake_s: float = 300.0  # after the phase's last commit
    device_timeout_s: float = 3600.0  # assigned -> committed, while online
    baseline_lookback_s: float = 86400.0  # previous-version telemetry considered
    auto_rollback: bool = True  # on abort, move the devices back

    def __post_init__(self) -> None:
        for name in ("max_failure_share", "max_error_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise HubUsageError(f"gate {name} must be in [0, 1], got {value}")
        for name in ("max_latency_p95_ratio", "max_prediction_psi"):
            if getattr(self, name) <= 0:
                raise HubUsageError(f"gate {name} must be positive")
        if self.min_devices < 1:
            raise HubUsageError("gate min_devices must be at least 1")
        if self.min_inferences < 0:
            raise HubUsageError("gate min_inferences must not be negative")
        for name in ("bake_s", "device_timeout_s", "baseline_lookback_s"):
            if getattr(self, name) < 0:
                raise HubUsageError(f"gate {name} must not be negative")
        if self.device_timeout_s == 0:
            raise HubUsageError("gate device_timeout_s must be positive")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Gates:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def with_overrides(self, pairs: Sequence[str]) -> Gates:
        """Apply ``--gate k=v`` strings (``-`` or ``_`` in names; durations like ``5m``)."""
        changes: dict[str, Any] = {}
        types = {f.name: f.type for f in fields(self)}
        aliases = {
            "bake": "bake_s",
            "device_timeout": "device_timeout_s",
            "timeout": "device_timeout_s",
        }
        for pair in pairs:
            key, sep, raw = pair.partition("=")
            name = key.strip().replace("-", "_")
            name = aliases.get(name, name)
            if not sep or name not in types:
                raise HubUsageError(
                    f"invalid gate {pair!r}: expected NAME=VALUE with NAME one of "
                    + ", ".join(sorted(types))
                )
            changes[name] = _coerce(name, str(types[name]), raw.strip())
        return replace(self, **changes)


def _coerce(name: str, type_name: str, raw: str) -> Any:
    try:
        if type_name == "bool":
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if type_name == "int":
            return int(raw)
        if name.endswith("_s"):
            return parse_duration_s(raw)
        value = float(raw[:-1]) / 100.0 if raw.endswith("%") else float(raw)
        if not math.isfinite(value):
            # NaN fails every comparison: a NaN limit makes its gate impossible to fail.
            raise ValueError(raw)
        return value
    except ValueError as e:
        raise HubUsageError(f"invalid value for gate {name}: {raw!r}") from e


def device_order(rollout_id: str, device_ids: Sequence[str]) -> tuple[str, ...]:
    """A stable pseudo-random permutation of ``device_ids`` keyed by ``rollout_id``."""

    def key(device_id: str) -> str:
        return hashlib.sha256(f"{rollout_id}\0{device_id}".encode()).hexdigest()

    return tuple(sorted(dict.fromkeys(device_ids), key=key))


@dataclass(frozen=True)
class RolloutPlan:
    """An immutable rollout: model version, ordered devices and their phases.

    ``phase_sizes[k]`` is the cumulative number of devices moved once phase
    ``k`` has started; ``devices[:phase_sizes[k]]`` are those devices.
    """

    rollout_id: str
    model: str
    version: int
    selector: str
    devices: tuple[str, ...]
    phase_sizes: tuple[int, ...]
    gates: Gates = field(default_factory=Gates)
    phases_text: str = DEFAULT_PHASES

    def __post_init__(self) -> None:
        if not self.devices:
            raise HubUsageError(f"rollout {self.rollout_id}: the selector matches no device")
        if not self.phase_sizes or self.phase_sizes[-1] != len(self.devices):
            raise HubUsageError("the last phase must cover every selected device")
        if any(b <= a for a, b in zip(self.phase_sizes, self.phase_sizes[1:], strict=False)):
            raise HubUsageError("phase sizes must strictly increase")
        if self.phase_sizes[0] < 1:
            raise HubUsageError("the first phase must move at least one device")

    @classmethod
    def build(
        cls,
        rollout_id: str,
        model: str,
        version: int,
        selector: str,
        device_ids: Sequence[str],
        phases: Sequence[Phase],
        gates: Gates,
        phases_text: str = DEFAULT_PHASES,
    ) -> RolloutPlan:
        ordered = device_order(rollout_id, device_ids)
        if not ordered:
            raise HubUsageError(f"selector {selector!r} matches no enrolled device")
        sizes: list[int] = []
        raw = [phase.raw_target(len(ordered)) for phase in phases]
        if any(b < a for a, b in zip(raw, raw[1:], strict=False)):
            raise HubUsageError(f"phases {phases_text!r} must not shrink")
        for phase in phases:
            size = phase.target(len(ordered))
            if size and (not sizes or size > sizes[-1]):
                sizes.append(size)
        if not sizes or sizes[-1] != len(ordered):
            # The design asks for a rollout to reach its whole selection.
            raise HubUsageError(
                f"phases {phases_text!r} stop at {sizes[-1] if sizes else 0} of "
                f"{len(ordered)} devices; end with 100%"
            )
        return cls(rollout_id, model, version, selector, ordered, tuple(sizes), gates, phases_text)

    @property
    def phase_count(self) -> int:
        return len(self.phase_sizes)

    def devices_through(self, phase: int) -> tuple[str, ...]:
        """Devices moved once ``phase`` (0-based) has started."""
        return self.devices[: self.phase_sizes[phase]]

    def devices_of(self, phase: int) -> tuple[str, ...]:
        """Devices that phase ``phase`` adds."""
        start = self.phase_sizes[phase - 1] if phase > 0 else 0
        return self.devices[start : self.phase_sizes[phase]]

    def phase_of(self, device_id: str) -> int:
        return self._phases[device_id]

    @cached_property
    def _phases(self) -> dict[str, int]:
        # Built once: a lookup per device through the tuple was quadratic in the fleet.
        return {d: k for k in range(self.phase_count) for d in self.devices_of(k)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "rollout_id": self.rollout_id,
            "model": self.model,
            "version": self.version,
            "selector": self.selector,
            "devices": list(self.devices),
            "phase_sizes": list(self.phase_sizes),
            "gates": self.gates.to_dict(),
            "phases_text": self.phases_text,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutPlan:
        return cls(
            rollout_id=str(data["rollout_id"]),
            model=str(data["model"]),
            version=int(data["version"]),
            selector=str(data["selector"]),
            devices=tuple(data["devices"]),
            phase_sizes=tuple(int(s) for s in data["phase_sizes"]),
            gates=Gates.from_dict(data.get("gates", {})),
            phases_text=str(data.get("phases_text", DEFAULT_PHASES)),
        )
