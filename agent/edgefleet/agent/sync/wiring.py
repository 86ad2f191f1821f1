"""Building a :class:`HubSync` from ``agent.toml`` for the daemon.

The daemon calls :func:`hub_sync_for` after its telemetry buffer is open and its
deployment thread runs, and hands it that thread: the sync submits to the thread's
deployment queue and reads its in-memory state. It returns None when ``agent.toml``
has no ``[mqtt]`` section (a stand-alone device: no hub, nothing to sync).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from edgefleet.agent.config import AgentConfig
from edgefleet.agent.deploy.context import AgentContext
from edgefleet.agent.sync.checker import ChildDirectiveChecker
from edgefleet.agent.sync.deployer import QueueDeployer
from edgefleet.agent.sync.hub_sync import HubSync, SyncBuffer, agent_version, pause_hook_from_env
from edgefleet.agent.sync.reporter import last_will
from edgefleet.agent.sync.settings import SyncSettings
from edgefleet.core.mqtt import MqttSettings, TlsSettings
from edgefleet.core.protocol import Topics

if TYPE_CHECKING:
    from edgefleet.agent.deploy.worker import DeploymentWorker

SYNC_DIR = "sync"


def mqtt_settings_for(config: AgentConfig) -> MqttSettings:
    """The device's MQTT connection: client id = device id, persistent session, LWT offline."""
    mqtt = config.mqtt
    if mqtt is None:
        raise ValueError("agent.toml has no [mqtt] section")
    tls = None
    if mqtt.ca_file is not None:
        tls = TlsSettings(ca_file=mqtt.ca_file, cert_file=mqtt.cert_file, key_file=mqtt.key_file)
    return MqttSettings(
        host=mqtt.host,
        port=mqtt.port,
        client_id=config.device_id,
        username=mqtt.username,
        password=mqtt.password,
        tls=tls,
        keepalive_s=mqtt.keepalive_s,
        lwt=last_will(Topics(mqtt.topic_root), config.device_id),
        # A persistent session: chunks and acks the hub sent while we were away wait for us.
        clean_session=False,
    )


def sync_settings_for(
    context: AgentContext, environ: Mapping[str, str] | None = None
) -> SyncSettings:
    config = context.config
    assert config.mqtt is not None
    return SyncSettings(
        device_id=config.device_id,
        profile=context.profile.name,
        agent_version=agent_version(),
        max_bundle_bytes=context.profile.max_bundle_bytes,
        topic_root=config.mqtt.topic_root,
    ).with_env(environ)


def hub_sync_for(
    context: AgentContext,
    buffer: SyncBuffer | None,
    worker: DeploymentWorker,
    *,
    environ: Mapping[str, str] | None = None,
) -> HubSync | None:
    """The hub sync of this agent, not started; None without ``[mqtt]``.

    ``worker`` is the daemon's deployment thread; it must have a deployment queue.
    """
    if context.config.mqtt is None:
        return None
    if worker.queue is None:
        raise ValueError("the hub sync needs a deployment worker with a queue")
    from edgefleet.core.mqtt.client import MqttClient

    settings = sync_settings_for(context, environ)
    deployer = QueueDeployer(worker.queue, context.layout, worker.deploy_state)
    sync = HubSync(
        settings,
        MqttClient(mqtt_settings_for(context.config)),
        # Directives are checked in a verification child: the daemon never loads cryptography.
        ChildDirectiveChecker(context.config.trust_store),
        deployer,
        buffer,
        context.layout.root / SYNC_DIR,
        pause=pause_hook_from_env(),
    )
    deployer.on_outcome(sync.wake)
    return sync
