"""What every agent command builds from ``agent.toml``: the state layout, the device
profile, the trust store and the telemetry settings, plus the driver wiring.

Keeps ``run``, ``install``, ``rollback`` and ``status`` consistent: the same
budget, the same window length and the same driver collaborators everywhere.
Loading onnxruntime and the deployment code is deferred to
:meth:`AgentContext.driver` (``status`` never needs them; the daemon only
when it has a deployment to run).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.agent.config import DEFAULT_CONFIG_PATH, AgentConfig
from edgefleet.agent.deploy.layout import StateLayout
from edgefleet.agent.errors import AgentConfigError, TelemetryBufferError
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.profiles import DeviceProfile, load_profile

if TYPE_CHECKING:
    from edgefleet.agent.deploy.driver import (
        DeploymentDriver,
        EventSink,
        ProbationTap,
        ServingPort,
    )
    from edgefleet.agent.telemetry.buffer import TelemetryBuffer
    from edgefleet.core.trust import TrustStore

log = logging.getLogger("edgefleet.agent")

DEFAULT_CONFIG = DEFAULT_CONFIG_PATH


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
        from edgefleet.core.trust import TrustStore

        path = self.config.trust_store
        try:
            return TrustStore.load(path)
        except EdgefleetError as e:
            raise AgentConfigError(f"field 'agent.trust_store': {e}") from e
        except OSError as e:
            raise AgentConfigError(f"field 'agent.trust_store': cannot read {path}: {e}") from e

    def open_buffer(self, *, readonly: bool = False) -> TelemetryBuffer:
        from edgefleet.agent.telemetry.buffer import TelemetryBuffer

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
        isolated: bool = False,
    ) -> DeploymentDriver:
        """The deployment driver; ``isolated`` (the daemon) checks bundles in child processes.

        Without ``isolated`` the trust store is loaded here and bundles are
        verified in this process (short-lived commands).
        """
        from edgefleet.agent.deploy.driver import DeploymentDriver, pause_hook_from_env
        from edgefleet.agent.deploy.loader import BundleLoader, onnxruntime_version

        trust: TrustStore | None = None
        checker = None
        if isolated:
            from edgefleet.agent.verify_process import ChildBundleChecker

            checker = ChildBundleChecker(self.config.trust_store, self.profile.max_bundle_bytes)
            if loader is None:
                loader = self.loader(isolated=True)
        else:
            trust = self.trust()
            if loader is None:
                loader = BundleLoader(self.layout, trust, self.profile)
        return DeploymentDriver(
            self.layout,
            profile=self.profile,
            trust=trust,
            settings=self.config.probation,
            loader=loader,
            onnxruntime_version=onnxruntime_version(),
            serving=serving,
            tap=tap,
            events=events,
            pause=pause_hook_from_env(),
            checker=checker,
        )

    def loader(self, *, isolated: bool = False) -> Any:
        """A BundleLoader for the store; ``isolated`` verifies in child processes."""
        from edgefleet.agent.deploy.loader import BundleLoader

        if isolated:
            return BundleLoader(self.layout, None, self.profile, trust_path=self.config.trust_store)
        return BundleLoader(self.layout, self.trust(), self.profile)
