"""State reports: what is published at once, what waits, and how deployments are shown."""

from __future__ import annotations

from tests.agent.sync.fakes import DEVICE, bundle

from edgefleet.agent.sync.deployer import Progress
from edgefleet.agent.sync.reconcile import (
    DOWNLOADING,
    FAILED,
    HANDED,
    InstalledModel,
    LedgerEntry,
)
from edgefleet.agent.sync.reporter import DownloadView, StateReporter, build_state
from edgefleet.core.mqtt import MqttSettings
from edgefleet.core.protocol import Topics, decode_state
from edgefleet.core.testing.memory_mqtt import MemoryBroker, MemoryMqttClient

V1, V2 = bundle(version=1), bundle(version=2)
ON_V1 = {"iris": InstalledModel(V1.sha, 1)}


def state(now: float, **kw: object):  # type: ignore[no-untyped-def]
    values: dict[str, object] = {
        "device_id": DEVICE,
        "agent_version": "t",
        "profile": "p",
        "now": now,
        "installed": ON_V1,
        "progress": None,
        "ledger": (),
        "download": None,
        "last_outcomes": {},
    }
    values.update(kw)
    return build_state(**values)  # type: ignore[arg-type]


def reporter() -> tuple[StateReporter, MemoryBroker]:
    broker = MemoryBroker()
    client = MemoryMqttClient(MqttSettings(host="m", client_id=DEVICE), broker)
    client.start()
    return StateReporter(client, Topics(), DEVICE, progress_interval_s=5.0), broker


def test_progress_waits_finished_work_goes_out_at_once() -> None:
    r, broker = reporter()
    downloading = LedgerEntry.start(V2.assignment(), DOWNLOADING, 0.0)
    assert r.report(state(100.0))
    # A download starting and advancing: work in progress, at most every 5 s.
    assert not r.report(state(101.0, ledger=(downloading,), download=DownloadView(V2.sha, 0.25)))
    assert not r.report(state(102.0, ledger=(downloading,), download=DownloadView(V2.sha, 0.5)))
    assert r.report(state(105.5, ledger=(downloading,), download=DownloadView(V2.sha, 0.75)))
    published = decode_state(broker.retained(Topics().state(DEVICE)) or b"")
    deployment = published.model("iris").deployment
    assert deployment.state == "downloading" and deployment.progress == 0.75
    # The new version active: published at once.
    on_v2 = {"iris": InstalledModel(V2.sha, 2, V1.sha, 1)}
    assert r.report(state(106.0, installed=on_v2))
    # A refusal of a directive: at once too.
    assert r.report(state(106.5, installed=on_v2, directive_error="replayed directive"))
    # Nothing new: nothing sent, however long it has been.
    assert not r.report(state(200.0, installed=on_v2, directive_error="replayed directive"))
    assert r.published == 4


def test_deployment_shown_per_model_driver_first_then_sync_then_last_outcome() -> None:
    handed = LedgerEntry.start(V2.assignment(), HANDED, 1.0, request_id="req-7")
    running = Progress("req-7", "verifying", None, None, None, None, 2.0)
    d = state(3.0, ledger=(handed,), progress=running).model("iris").deployment
    # The driver does not know the model before verifying: the sync's ledger says it.
    assert (d.state, d.version, d.bundle_sha256, d.rollout_id) == ("verifying", 2, V2.sha, "r-1")
    d = state(3.0, ledger=(handed,)).model("iris").deployment
    assert d.state == "queued"
    failed = LedgerEntry.start(
        V2.assignment(), FAILED, 4.0, result="rolled_back", reason="probation failed"
    )
    d = state(5.0, ledger=(failed,)).model("iris").deployment
    assert (d.state, d.reason) == ("rolled_back", "probation failed")
    last = {
        "iris": {"state": "committed", "version": 1, "bundle_sha256": V1.sha, "finished_at": 9.0}
    }
    d = state(10.0, last_outcomes=last).model("iris").deployment
    assert (d.state, d.version) == ("committed", 1)
