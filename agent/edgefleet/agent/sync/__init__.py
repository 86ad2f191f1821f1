"""The agent's sync with the hub over MQTT.

``HubSync`` accepts signed directives, pulls bundles in windows of chunks, hands
finished files to the deployment driver, and reports status, state, events and
telemetry. See docs/sync.md. The daemon builds it with :func:`hub_sync_for`.
"""

from __future__ import annotations

from edgefleet.agent.sync.deployer import Deployer, DeployOutcome, Progress, QueueDeployer
from edgefleet.agent.sync.hub_sync import HubSync
from edgefleet.agent.sync.settings import SyncSettings
from edgefleet.agent.sync.wiring import hub_sync_for, mqtt_settings_for

__all__ = [
    "DeployOutcome",
    "Deployer",
    "HubSync",
    "Progress",
    "QueueDeployer",
    "SyncSettings",
    "hub_sync_for",
    "mqtt_settings_for",
]
