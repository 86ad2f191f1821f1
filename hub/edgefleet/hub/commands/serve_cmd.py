"""``edgefleet hub serve``: run the hub service until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import click

from edgefleet.core.keys import load_private_key
from edgefleet.core.mqtt import MqttSettings, MqttTransport, TlsSettings
from edgefleet.hub.commands.api_cmd import parse_listen, start_api, tls_files, tls_options
from edgefleet.hub.commands.common import config_option
from edgefleet.hub.config import HubConfig, load_config
from edgefleet.hub.credentials import generate_password, mosquitto_hash
from edgefleet.hub.errors import HubConfigError
from edgefleet.hub.store import HubStore, open_store
from edgefleet.hub.store.serve_lock import ServeLock

if TYPE_CHECKING:
    # Imported at run time only with --embedded-broker: it loads amqtt, which a hub
    # serving through Mosquitto has no use for.
    from edgefleet.hub.embedded_broker import EmbeddedBroker

log = logging.getLogger("edgefleet.hub")


def mqtt_settings(config: HubConfig, password: str | None) -> MqttSettings:
    broker = config.broker
    tls = None
    if broker.tls_ca is not None:
        tls = TlsSettings(ca_file=broker.tls_ca, cert_file=broker.tls_cert, key_file=broker.tls_key)
    return MqttSettings(
        host=broker.host,
        port=broker.port,
        client_id=broker.client_id,
        username=broker.username,
        password=password,
        tls=tls,
        # Alone, a persistent session: the broker keeps fetches and telemetry for us while
        # we restart. In a shared-subscription group, a clean one: Mosquitto goes on
        # handing a dead member's saved session its share of the group's messages until
        # the session expires, so a hub killed for good would hold back a share of the
        # fleet's telemetry and fetches; with a clean session the survivors get them all
        # (the devices resend what was in flight to the dead hub).
        clean_session=broker.shared_subscriptions,
        # Chunk frames are paced by the service (back pressure); this is headroom.
        max_queued=4096,
        # Unacknowledged QoS 1 messages: chunk frames are sent no faster than this window
        # turns over at the broker (64 cost bench/distribution.py about 40% in time).
        max_inflight=256,
    )


def start_embedded(config: HubConfig, store: HubStore, password: str) -> EmbeddedBroker:
    from edgefleet.hub.embedded_broker import EmbeddedBroker

    broker = config.broker
    if broker.shared_subscriptions:
        raise HubConfigError(
            "broker.shared_subscriptions must be false with --embedded-broker (amqtt)"
        )
    if not broker.username:
        raise HubConfigError("broker.username must be set with --embedded-broker")
    hub_user, hub_hash = broker.username, mosquitto_hash(password)

    def users() -> dict[str, str]:
        table = {d.device_id: d.password_hash for d in store.list_devices()}
        table[hub_user] = hub_hash
        return table

    return EmbeddedBroker(
        broker.host, broker.port, users, topic_root=broker.topic_root, hub_username=hub_user
    ).start()


def _log_started(transport: MqttTransport, config: HubConfig, store_where: str) -> None:
    # "serving" only once the broker acknowledged us: a hub that cannot connect must not
    # look healthy in its own log. The client logs "connected to" when it does connect.
    where = f"{config.broker.host}:{config.broker.port}"
    if transport.connected:
        log.info(
            "hub: serving %s through the broker at %s (store and fleet telemetry %s)",
            config.broker.topic_root,
            where,
            store_where,
        )
    else:
        log.warning(
            "hub: not connected to the broker at %s yet (%s); retrying",
            where,
            transport.stats.last_error or "no answer",
        )


@click.command()
@click.option(
    "--embedded-broker",
    is_flag=True,
    help="Run an amqtt broker in-process on broker.host:broker.port (single machine).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
@click.option(
    "--api",
    "api_listen",
    default=None,
    metavar="HOST:PORT",
    help="Also serve the REST API and dashboard.",
)
@tls_options
@config_option
def serve(
    embedded_broker: bool,
    log_level: str,
    api_listen: str | None,
    cert: Path | None,
    key_file: Path | None,
    config_path: Path | None,
) -> None:
    """Run the hub: device tracking, chunk server, telemetry, rollouts, directives,
    drift alerts, (with fleet.metrics_port) Prometheus metrics and (with --api) the API."""
    from edgefleet.core.mqtt.client import MqttClient
    from edgefleet.hub.service import HubService

    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = load_config(config_path)
    if config.keys.hub_signing_key is None:
        raise HubConfigError("keys.hub_signing_key must be set to sign directives")
    key = load_private_key(config.keys.hub_signing_key)
    api_tls = tls_files(cert, key_file)
    if api_listen is not None:
        parse_listen(api_listen)  # a bad --api fails before anything starts
    password = config.broker.resolved_password()
    # SQLite: one hub serve per store file (PostgreSQL stores are shared by design).
    lock = ServeLock(config.store.path).acquire() if config.store.is_sqlite else None
    try:
        store = open_store(config.store.location)
        check_integrity = getattr(store, "check_integrity", None)  # SQLite: damaged pages
        if check_integrity is not None:
            try:
                check_integrity()
            except Exception:
                store.close()
                raise
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    broker = None
    api = None
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("hub: signal %d, shutting down", signum)
        stop.set()

    try:
        if embedded_broker:
            # The embedded broker only needs to know the hub's password, not keep it.
            password = password or generate_password()
            broker = start_embedded(config, store, password)
        service = HubService(config, store, MqttClient(mqtt_settings(config, password)), key)
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        service.start()
        if api_listen is not None:
            try:
                api = start_api(config, store, api_listen, api_tls)
            except BaseException:
                service.stop()
                raise
        _log_started(service.transport, config, store.where)
        stop.wait()
        if api is not None:
            api.stop()
        service.stop()
    finally:
        if broker is not None:
            broker.stop()
        store.close()
        if lock is not None:
            lock.release()
