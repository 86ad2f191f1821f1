"""What every agent command builds from ``agent.toml``: the state layout, the device
profile, the trust store and the telemetry settings, plus the driver wiring.

Keeps ``run``, ``install``, ``rollback`` and ``status`` consistent: the same
budget, the same window length and the same driver collaborators everywhere.
Loading onnxruntime is deferred to :meth:`AgentContext.driver` (``status``
never needs it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.agent.config import AgentConfig
from edgefleet.agent.deploy.driver import (
    DeploymentDriver,
    EventSink,
    ProbationTap,
    ServingPort,
    pause_hook_from_env,
)
from edgefleet.agent.deploy.layout import StateLayout
from edgefleet.agent.errors import AgentConfigError, TelemetryBufferError
from edgefleet.agent.telemetry.buffer import TelemetryBuffer
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.profiles import DeviceProfile, load_profile
from edgefleet.core.trust import TrustStore

log = logging.getLogger("edgefleet.agent")

DEFAULT_CONFIG = Path("/etc/edgefleet/agent.toml")


@dataclass
class AgentContext:
    config: AgentConfig
    layout: StateLayout
    profile: DeviceProfile

    @classmethod
    def load(cls, config_path: Path | None) -> AgentContext:
        config = AgentConfig.load(Path(config_path) if config_path else DEFAULT_CONFIG)
        profile = load_profile(config.profile, config.profiles_dir)
        return cls(config, StateLayout(config.state_dir), profile)

    @property
    def window_s(self) -> int:
        return self.config.telemetry.window_s or self.profile.window_s

    @property
    def telemetry_budget_bytes(self) -> int:
        return self.config.telemetry.budget_bytes or self.profile.telemetry_budget_bytes

    def trust(self) -> TrustStore:
        path = self.config.trust_store
        try:
            return TrustStore.load(path)
        except EdgefleetError as e:
            raise AgentConfigError(f"field 'agent.trust_store': {e}") from e
        except OSError as e:
            raise AgentConfigError(f"field 'agent.trust_store': cannot read {path}: {e}") from e

    def open_buffer(self, *, readonly: bool = False) -> TelemetryBuffer:
        return TelemetryBuffer(
            self.layout.telemetry_db,
            self.telemetry_budget_bytes,
            ring_size=self.config.telemetry.prediction_ring,
            readonly=readonly,
        )

    def open_buffer_or_reset(self) -> TelemetryBuffer:
        """The buffer; a database that cannot be opened is moved aside, never fatal."""
        try:
            buffer = self.open_buffer()
            if buffer.integrity_ok():
                return buffer
            buffer.close()
            reason = "integrity check failed"
        except TelemetryBufferError as e:
            reason = str(e)
        db = self.layout.telemetry_db
        for suffix in ("", "-wal", "-shm"):
            path = db.with_name(db.name + suffix)
            if path.exists():
                path.replace(path.with_name(path.name + ".corrupt"))
        log.error("telemetry buffer unusable (%s); moved aside, starting a new one", reason)
        return self.open_buffer()

    def driver(
        self,
        *,
        serving: ServingPort | None = None,
        tap: ProbationTap | None = None,
        events: EventSink | None = None,
        loader: Any | None = None,
    ) -> DeploymentDriver:
        from edgefleet.agent.deploy.loader import BundleLoader, onnxruntime_version

        trust = self.trust()
        return DeploymentDriver(
            self.layout,
            profile=self.profile,
            trust=trust,
            settings=self.config.probation,
            loader=loader or BundleLoader(self.layout, trust, self.profile),
            onnxruntime_version=onnxruntime_version(),
            serving=serving,
            tap=tap,
            events=events,
            pause=pause_hook_from_env(),
        )
