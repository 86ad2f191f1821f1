"""``[fleet]`` in hub.toml: every key lands in the right place, typos are named, and the
bucket lengths a fleet database was written with are kept by every later reader."""

from __future__ import annotations

import json
import socket
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
from tests.hub.fleet.fleetkit import MODEL, fleet, reference, run_cli
from tests.hub.hubkit import make_hub

from edgefleet.core.cli.main import main
from edgefleet.hub.config import FleetConfig, HubConfig
from edgefleet.hub.errors import HubConfigError
from edgefleet.hub.fleet import FleetSettings, FleetTelemetry
from edgefleet.hub.fleet.settings import fleet_location
from edgefleet.hub.fleet.workers import FleetWorkers
from edgefleet.hub.store import SqliteHubStore

FLEET = """
[fleet]
monitor_interval_s = 30
webhook_url = "https://ops.example.org/hook"
metrics_host = "0.0.0.0"
metrics_port = 9464
ingest_queue_size = 500
raw_retention_s = 86400
coarse_retention_s = "forever"
k_fire = 3
min_requests = 50
scopes = ["fleet", "profile"]
rules = ["feature_drift", "error_rate"]

[fleet.thresholds]
psi_drift = 0.25
min_n = 500
"""


def load(tmp_path: Path, text: str) -> HubConfig:
    path = tmp_path / "hub.toml"
    path.write_text(text)
    return HubConfig.load(path)


def test_every_fleet_key_reaches_settings_policy_or_service(tmp_path: Path) -> None:
    config = load(tmp_path, FLEET)
    fleet_config = config.fleet
    assert fleet_config.monitor_interval_s == 30.0
    assert fleet_config.webhook_url == "https://ops.example.org/hook"
    assert (fleet_config.metrics_host, fleet_config.metrics_port) == ("0.0.0.0", 9464)
    assert fleet_config.ingest_queue_size == 500
    assert fleet_config.settings.raw_retention_s == 86400
    assert fleet_config.settings.coarse_retention_s is None
    assert fleet_config.settings.bucket_s == 3600  # untouched keys keep their defaults
    policy = fleet_config.policy
    assert (policy.k_fire, policy.k_resolve, policy.min_requests) == (3, 2, 50)
    assert policy.scopes == ("fleet", "profile")
    assert policy.rules == ("feature_drift", "error_rate")
    assert (policy.thresholds.psi_drift, policy.thresholds.min_n) == (0.25, 500)
    assert policy.thresholds.psi_warn == 0.1
    # Rendering and reading back gives the same settings.
    again = HubConfig.from_mapping(tomllib.loads(config.to_toml()), base_dir=tmp_path)
    assert again.fleet == fleet_config
    assert load(tmp_path, "").fleet == FleetConfig()  # no section: the defaults, metrics off
    with pytest.raises(HubConfigError, match=r"\[fleet\] must be a table"):
        HubConfig.from_mapping({"fleet": 3}, base_dir=tmp_path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[fleet]\nkfire = 2\n", "fleet.kfire: unknown key"),
        ("[fleet]\nsettings = 1\n", "fleet.settings: unknown key"),
        ("[fleet.thresholds]\npsi = 0.3\n", "fleet.thresholds.psi: unknown key"),
        ("[fleet]\nk_fire = 1.5\n", "fleet.k_fire: expected an integer"),
        ('[fleet]\nscopes = "fleet"\n', "fleet.scopes: expected a list of strings"),
        ('[fleet]\ncoarse_retention_s = "never"\n', "fleet.coarse_retention_s: expected"),
        ("[fleet]\nmetrics_port = 70000\n", "metrics_port 70000 out of range"),
        ('[fleet]\nwebhook_url = "ftp://x"\n', "webhook_url must be http(s)"),
        ('[fleet]\nscopes = ["galaxy"]\n', "scopes must be taken from"),
        ("[fleet]\nraw_retention_s = 60\n", "raw_retention_s must be at least"),
        ("[fleet.thresholds]\npsi_warn = 0.5\n", "need 0 < psi_warn <= psi_drift"),
    ],
)
def test_bad_fleet_settings_are_one_line_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    hub = make_hub(tmp_path, extra=text)
    with pytest.raises(HubConfigError, match="hub.toml"):
        hub.config()
    with pytest.raises(SystemExit) as exit_info:
        main(["hub", "devices", "--config", str(hub.config_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert message in err and err.startswith("error: ") and err.count("\n") == 1


def test_bucket_lengths_are_fixed_by_the_first_writer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub = make_hub(tmp_path, extra="[fleet]\nbucket_s = 1800\n")
    config = hub.config()
    db = fleet_location(config.store.path)
    profile = reference(np.random.default_rng(81))
    rng = np.random.default_rng(82)
    telemetry = FleetTelemetry(db, config.fleet.settings)
    telemetry.store.put_reference(MODEL, 1, profile.to_json(), {}, time.time())
    start = (time.time() // 1800) * 1800 - 3 * 1800
    for dev in fleet(["a"], 3):
        for k in range(6):  # half an hour apart: three half-hour buckets, six windows
            dev.record(profile, rng.normal(size=(100, 8)), start + k * 900, start + k * 900 + 60)
        telemetry.ingest(dev.info, dev.unacked, time.time())
    while telemetry.maintain(time.time()).more:
        pass
    assert telemetry.store.count_windows()["in_group_rollups"] == 18
    telemetry.close()

    # `hub drift --db` knows nothing of hub.toml: it reads the half-hour rollups anyway.
    code, out, err = run_cli(capsys, "hub", "drift", MODEL, "--db", str(db), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["fleet"]["windows"] == 18
    assert [p["windows"] for p in result["timeline"]] == [6, 6, 6]

    # A hub started with other bucket lengths is refused instead of mixing levels.
    store = SqliteHubStore(config.store.path)
    try:
        with pytest.raises(HubConfigError, match="bucket_s=1800"):
            FleetWorkers(
                FleetConfig(settings=FleetSettings()),
                config.store.path,
                lambda sha256: config.store.bundles_dir / sha256,
                store,
                lambda topic, payload: None,
                "edgefleet/v1/alerts",
            )
    finally:
        store.close()


def test_a_metrics_port_in_use_is_refused_naming_the_setting(tmp_path: Path) -> None:
    hub = make_hub(tmp_path)
    config = hub.config()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    store = SqliteHubStore(config.store.path)
    workers = FleetWorkers(
        FleetConfig(metrics_port=taken.getsockname()[1]),
        config.store.path,
        lambda sha256: config.store.bundles_dir / sha256,
        store,
        lambda topic, payload: None,
        "edgefleet/v1/alerts",
    )
    try:
        with pytest.raises(HubConfigError, match="fleet.metrics_port: cannot listen"):
            workers.start()
            workers.start_metrics()
        assert workers.worker._thread is None  # nothing left running
    finally:
        taken.close()
        store.close()
