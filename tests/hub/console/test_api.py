"""The REST API over HTTP against a real hub store: auth, roles, validation, paging, every route."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openapi_spec_validator import validate
from tests.hub.console.consolekit import (
    DRIFTING_DEVICE,
    REFUSAL,
    REFUSING_DEVICE,
    ROLLOUT,
    ConsoleHub,
    client,
    device_ids,
    populate,
    serve_api,
)
from tests.hub.fleet.fleetkit import MODEL, run_cli
from tests.support.bundles import placeholder_bundle

from edgefleet.core.keys import generate_keypair
from edgefleet.hub.commands.api_cmd import openapi_document
from edgefleet.hub.console.access_store import AccessStore, console_db_path
from edgefleet.hub.fleet.alert_store import AlertStore, NewAlert
from edgefleet.hub.fleet.database import open_fleet_database
from edgefleet.hub.fleet.settings import fleet_location

# Every route with a request a viewer would be refused for (mutating) or allowed (GET).
READS = [
    "/api/v1/session",
    "/api/v1/overview",
    "/api/v1/devices",
    f"/api/v1/devices/{REFUSING_DEVICE}",
    "/api/v1/groups",
    "/api/v1/bundles",
    "/api/v1/rollouts",
    f"/api/v1/rollouts/{ROLLOUT}",
    "/api/v1/drift",
    f"/api/v1/drift/{MODEL}",
    "/api/v1/alerts",
    "/api/openapi.json",
]
WRITES = [
    ("POST", "/api/v1/bundles", "operator"),
    ("POST", "/api/v1/rollouts", "operator"),
    ("POST", f"/api/v1/rollouts/{ROLLOUT}/pause", "operator"),
    ("POST", f"/api/v1/rollouts/{ROLLOUT}/resume", "operator"),
    ("POST", f"/api/v1/rollouts/{ROLLOUT}/abort", "operator"),
    ("POST", f"/api/v1/rollouts/{ROLLOUT}/rollback", "operator"),
    ("POST", "/api/v1/alerts/1/ack", "operator"),
    ("POST", "/api/v1/devices", "admin"),
    ("POST", "/api/v1/devices/north-d00/reissue", "admin"),
    ("POST", "/api/v1/devices/north-d00/revoke", "admin"),
    ("DELETE", "/api/v1/devices/north-d00", "admin"),
]


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> ConsoleHub:
    return populate(tmp_path_factory.mktemp("console-hub"))


@pytest.fixture(scope="module")
def base(hub: ConsoleHub) -> Iterator[str]:
    with serve_api(hub) as url:
        yield url


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[tuple[ConsoleHub, str]]:
    """A hub of its own for tests that change it."""
    hub = populate(tmp_path / "hub")
    with serve_api(hub) as url:
        yield hub, url
    hub.store.close()


def test_health_is_the_only_open_route(base: str) -> None:
    anon = client(base)
    assert anon.get("/api/v1/health").json()["status"] == "ok"
    for path in READS[1:]:
        r = anon.get(path)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"] == "Bearer"
    for method, path, _role in WRITES:
        assert anon.request(method, path, json={}).status_code == 401, path


@pytest.mark.parametrize("path", READS)
def test_a_viewer_reads_every_resource(base: str, hub: ConsoleHub, path: str) -> None:
    r = client(base, hub.token("viewer")).get(path)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")


@pytest.mark.parametrize(("method", "path", "role"), WRITES)
def test_roles_are_checked_before_the_body(
    base: str, hub: ConsoleHub, method: str, path: str, role: str
) -> None:
    """A viewer gets 403 whatever it sends: a valid body, garbage, or nothing."""
    viewer = client(base, hub.token("viewer"))
    for content in (b"", b"{not json", json.dumps({"model": MODEL}).encode()):
        r = viewer.request(method, path, content=content)
        assert r.status_code == 403, (path, content, r.text)
        assert "viewer" in r.json()["detail"]
    if role == "admin":
        r = client(base, hub.token("operator")).request(method, path, content=b"{not json")
        assert r.status_code == 403, path


def test_wrong_revoked_and_expired_tokens_get_401(base: str, hub: ConsoleHub) -> None:
    assert client(base, "efc_not-a-token").get("/api/v1/overview").status_code == 401
    access = AccessStore(console_db_path(hub.config.store.path))
    try:
        now = time.time()
        access.add_token("expired", "admin", "efc_expired-secret", now - 100, now - 1)
        access.add_token("to-revoke", "admin", "efc_revoked-secret", now, None)
        assert client(base, "efc_revoked-secret").get("/api/v1/overview").status_code == 200
        access.revoke_token("to-revoke", now)
    finally:
        access.close()
    assert client(base, "efc_expired-secret").get("/api/v1/overview").status_code == 401
    assert client(base, "efc_revoked-secret").get("/api/v1/overview").status_code == 401
    # The scheme must be Bearer; a token in another scheme is no token.
    r = httpx.get(
        f"{base}/api/v1/overview", headers={"Authorization": f"Basic {hub.token('admin')}"}
    )
    assert r.status_code == 401


def test_validation_errors_name_the_field(base: str, hub: ConsoleHub) -> None:
    op = client(base, hub.token("operator"))
    r = op.post("/api/v1/rollouts", json={"model": MODEL, "version": "two", "selector": "all"})
    assert r.status_code == 422
    assert ["body", "version"] in [e["loc"] for e in r.json()["detail"]]
    r = op.post("/api/v1/rollouts", json={"model": MODEL, "version": 2})
    assert ["body", "selector"] in [e["loc"] for e in r.json()["detail"]]
    viewer = client(base, hub.token("viewer"))
    for query, field in (
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("offset=-1", "offset"),
        ("state=bogus", "state"),
    ):
        r = viewer.get(f"/api/v1/devices?{query}")
        assert r.status_code == 422, query
        assert ["query", field] in [e["loc"] for e in r.json()["detail"]]
    r = viewer.get(f"/api/v1/drift/{MODEL}?scope=planet")
    assert r.status_code == 422 and ["query", "scope"] in [e["loc"] for e in r.json()["detail"]]
    # Hub rules give the same errors as the CLI: unknown rollout 404, bad selector 400.
    assert viewer.get("/api/v1/rollouts/r-nope").status_code == 404
    assert viewer.get("/api/v1/devices/nope").status_code == 404
    r = op.post("/api/v1/rollouts", json={"model": MODEL, "version": 2, "selector": "colour=red"})
    assert r.status_code == 400 and "selector" in r.json()["detail"]


def test_devices_page_filter_and_show_refusals(base: str, hub: ConsoleHub) -> None:
    viewer = client(base, hub.token("viewer"))
    seen: list[str] = []
    for offset in range(0, 8, 3):
        page = viewer.get(f"/api/v1/devices?limit=3&offset={offset}").json()
        assert page["total"] == len(device_ids()) and page["limit"] == 3
        assert page["offset"] == offset
        seen += [d["device"] for d in page["items"]]
    assert seen == sorted(device_ids())
    refusing = viewer.get("/api/v1/devices?state=refusing").json()
    assert [d["device"] for d in refusing["items"]] == [REFUSING_DEVICE]
    assert refusing["items"][0]["refusal"] == REFUSAL
    south = viewer.get("/api/v1/devices?group=south&online=true&q=d0").json()
    assert south["total"] == 4 and {d["group"] for d in south["items"]} == {"south"}
    detail = viewer.get("/api/v1/devices/south-d01").json()
    assert detail["models"][MODEL]["version"] == 1 and detail["desired"] == {MODEL: 2}
    assert detail["state"] == "updating"
    assert [h["rollout"] for h in detail["history"]] == [ROLLOUT]
    assert detail["history"][0]["install"] == "pending"


def test_rollout_detail_says_what_each_gate_waits_for(base: str, hub: ConsoleHub) -> None:
    r = client(base, hub.token("viewer")).get(f"/api/v1/rollouts/{ROLLOUT}").json()
    assert r["state"] == "running" and r["phase"] == 1
    gates = {g["name"]: g for g in r["decision"]["gates"]}
    assert gates["min_inferences"]["threshold"] == r["gates"]["min_inferences"]
    assert r["decision"]["counts"]["moved"] == 1
    waiting = {w["gate"]: w for w in r["waiting"]}
    assert "settled" in waiting
    settled = waiting["settled"]
    device = next(d for d in r["devices"] if d["assigned_at"] is not None)
    assert settled["until"] == pytest.approx(device["assigned_at"] + r["gates"]["device_timeout_s"])
    assert r["headline"].startswith("running, phase 1/2: waiting for")


def test_groups_bundles_and_overview(base: str, hub: ConsoleHub) -> None:
    viewer = client(base, hub.token("viewer"))
    groups = viewer.get("/api/v1/groups").json()["items"]
    assert [(g["group"], g["devices"], g["versions"]) for g in groups] == [
        ("north", 4, {f"{MODEL}:1": 4}),
        ("south", 4, {f"{MODEL}:1": 4}),
    ]
    bundles = viewer.get("/api/v1/bundles").json()["items"]
    assert [v["version"] for v in bundles[0]["versions"]] == [1, 2]
    overview = viewer.get("/api/v1/overview").json()
    assert overview["devices"] == {"total": 8, "online": 8, "offline": 0}
    assert overview["refusing"] == [REFUSING_DEVICE]
    assert [r["rollout"] for r in overview["rollouts"]] == [ROLLOUT]


def test_drift_headline_names_the_drifting_device(base: str, hub: ConsoleHub) -> None:
    d = client(base, hub.token("viewer")).get(f"/api/v1/drift/{MODEL}?scope=device").json()
    assert f"device {DRIFTING_DEVICE}" in d["headline"]
    kinds = {(s["kind"], s["name"]) for s in d["drifting"]}
    assert ("device", DRIFTING_DEVICE) in kinds
    rows = {row["scope"]: row for row in d["heatmap"]["rows"]}
    assert rows[DRIFTING_DEVICE]["verdict"] == "drift"
    assert rows["north-d00"]["verdict"] == "no_drift"
    assert d["heatmap"]["rows"][0]["scope"] == DRIFTING_DEVICE  # drifting rows first
    f0 = d["histograms"]["f0"]
    assert f0["kind"] == "numeric" and len(f0["reference"]) == len(f0["edges"]) + 1
    assert sum(f0["reference"]) == pytest.approx(1.0, abs=1e-3)
    assert sum(f0["current"]) == pytest.approx(1.0, abs=1e-3)


def test_open_alert_is_never_contradicted_and_can_be_acknowledged(
    fresh: tuple[ConsoleHub, str],
) -> None:
    hub, base = fresh
    db = open_fleet_database(fleet_location(hub.config.store.path))
    try:
        with db.write() as conn:
            alert = AlertStore.open_alert(
                conn,
                NewAlert(
                    "k",
                    "feature_drift",
                    MODEL,
                    1,
                    "device",
                    "north-d00",
                    "warning",
                    "1 feature(s) drifted: f7",
                    {"features": {"f7": {"verdict": "drift"}}},
                ),
                time.time(),
            )
    finally:
        db.close()
    assert alert is not None
    viewer = client(base, hub.token("viewer"))
    d = viewer.get(f"/api/v1/drift/{MODEL}?scope=device").json()
    rows = {row["scope"]: row for row in d["heatmap"]["rows"]}
    assert rows["north-d00"]["verdict"] == "alert"  # not "no_drift" while the alert is open
    assert "device north-d00" in d["headline"]
    alerts = viewer.get("/api/v1/alerts").json()
    assert [a["id"] for a in alerts["items"]] == [alert.id] and alerts["open"] == 1
    assert viewer.post(f"/api/v1/alerts/{alert.id}/ack", json={}).status_code == 403
    op = client(base, hub.token("operator"))
    assert op.post("/api/v1/alerts/999/ack", json={}).status_code == 404
    r = op.post(f"/api/v1/alerts/{alert.id}/ack", json={"note": "looking"})
    assert r.status_code == 200
    acked = viewer.get("/api/v1/alerts").json()["items"][0]["acknowledged"]
    assert acked["by"] == "operator-token" and acked["note"] == "looking"


def test_rollout_actions_match_the_cli(
    fresh: tuple[ConsoleHub, str], capsys: pytest.CaptureFixture[str]
) -> None:
    hub, base = fresh
    op = client(base, hub.token("operator"))
    r = op.post(f"/api/v1/rollouts/{ROLLOUT}/pause", json={"reason": "api test"})
    assert r.status_code == 200 and r.json()["state"] == "paused"
    code, out, _err = run_cli(
        capsys, "hub", "rollout", "status", ROLLOUT, "--config", str(hub.fx.config_path), "--json"
    )
    assert code == 0 and json.loads(out)["state"] == "paused"
    # An illegal transition is the CLI's RolloutStateError: 409 here, exit 2 there.
    assert op.post(f"/api/v1/rollouts/{ROLLOUT}/pause").status_code == 409
    code, _out, err = run_cli(
        capsys, "hub", "rollout", "pause", ROLLOUT, "--config", str(hub.fx.config_path)
    )
    assert code == 2 and "error:" in err
    assert op.post(f"/api/v1/rollouts/{ROLLOUT}/resume").json()["state"] == "running"
    # A second rollout on the same devices is refused with the engine's reason.
    body = {"model": MODEL, "version": 2, "selector": "group=south", "id": "r-two"}
    r = op.post("/api/v1/rollouts", json=body)
    assert r.status_code == 400 and "still active" in r.json()["detail"]
    assert op.post(f"/api/v1/rollouts/{ROLLOUT}/abort").json()["state"] == "aborted"
    assert op.post(f"/api/v1/rollouts/{ROLLOUT}/rollback").json()["state"] == "rolled_back"
    r = op.post("/api/v1/rollouts", json={**body, "phases": "50%,100%", "gates": {"bake": "1m"}})
    assert r.status_code == 201, r.text
    assert r.json()["rollout"] == "r-two" and r.json()["gates"]["bake_s"] == 60
    assert (
        client(base, hub.token("viewer"))
        .get("/api/v1/rollouts?state=created")
        .json()["items"][0]["rollout"]
        == "r-two"
    )


def test_audit_log_records_every_mutating_call(fresh: tuple[ConsoleHub, str]) -> None:
    hub, base = fresh
    client(base, hub.token("viewer")).post(f"/api/v1/rollouts/{ROLLOUT}/pause")
    client(base, hub.token("operator")).post(f"/api/v1/rollouts/{ROLLOUT}/pause")
    client(base, hub.token("operator")).post("/api/v1/rollouts", json={"model": 1})
    assert client(base, hub.token("operator")).get("/api/v1/audit").status_code == 403
    log = client(base, hub.token("admin")).get("/api/v1/audit").json()
    rows = [(e["token"], e["action"], e["status"]) for e in reversed(log["items"])]
    assert rows == [
        ("viewer-token", f"rollout.pause {ROLLOUT}", 403),
        ("operator-token", f"rollout.pause {ROLLOUT}", 200),
        ("operator-token", "rollout.create", 422),
    ]
    assert all(e["at"] > 0 for e in log["items"])


def test_browser_session_cookie_needs_csrf_for_writes(fresh: tuple[ConsoleHub, str]) -> None:
    hub, base = fresh
    browser = httpx.Client(base_url=base)
    assert browser.get("/api/v1/session").json() == {"authenticated": False}
    assert browser.post("/api/v1/session", json={"token": "efc_wrong"}).status_code == 401
    r = browser.post("/api/v1/session", json={"token": hub.token("operator")})
    assert r.status_code == 200
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    csrf = r.json()["csrf"]
    assert browser.get("/api/v1/overview").status_code == 200
    assert browser.post(f"/api/v1/rollouts/{ROLLOUT}/pause").status_code == 403
    r = browser.post(f"/api/v1/rollouts/{ROLLOUT}/pause", headers={"X-CSRF-Token": "nope"})
    assert r.status_code == 403
    r = browser.post(f"/api/v1/rollouts/{ROLLOUT}/pause", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200
    assert browser.delete("/api/v1/session").status_code == 200
    assert browser.get("/api/v1/overview").status_code == 401


def test_openapi_document_validates_and_matches_the_served_one(
    base: str, hub: ConsoleHub, capsys: pytest.CaptureFixture[str]
) -> None:
    served = client(base, hub.token("viewer")).get("/api/openapi.json").json()
    validate(served)
    code, out, _err = run_cli(capsys, "hub", "openapi")
    assert code == 0 and json.loads(out) == served == openapi_document()
    paths = set(served["paths"])
    for path in READS:
        if path.startswith("/api/v1/"):
            templated = {p for p in paths if _matches(p, path)}
            assert templated, path


def _matches(template: str, path: str) -> bool:
    t, p = template.split("/"), path.split("/")
    return len(t) == len(p) and all(a == b or a.startswith("{") for a, b in zip(t, p, strict=True))


def test_client_round_trips_each_resource(base: str, hub: ConsoleHub) -> None:
    """A client written against the document: every GET path it lists answers 200 JSON."""
    viewer = client(base, hub.token("viewer"))
    document = viewer.get("/api/openapi.json").json()
    values = {"device_id": REFUSING_DEVICE, "rollout_id": ROLLOUT, "model": MODEL}
    for template, item in document["paths"].items():
        if "get" not in item or template.endswith("/audit"):
            continue
        path = template
        for name, value in values.items():
            path = path.replace("{" + name + "}", value)
        r = viewer.get(path)
        assert r.status_code == 200, (path, r.text)
        assert isinstance(r.json(), dict)


def test_publish_a_bundle_over_the_api(fresh: tuple[ConsoleHub, str], tmp_path: Path) -> None:
    hub, base = fresh
    op = client(base, hub.token("operator"))
    info = placeholder_bundle(tmp_path / "v3.efb", hub.fx.publisher_key, model=MODEL, version=3)
    body = info.path.read_bytes()
    r = op.post(
        "/api/v1/bundles", content=body, headers={"Content-Type": "application/octet-stream"}
    )
    assert r.status_code == 201, r.text
    assert (r.json()["model"], r.json()["version"], r.json()["created"]) == (MODEL, 3, True)
    assert op.post("/api/v1/bundles", content=body).json()["created"] is False
    # Signed by a key the hub does not trust: the verifier's rejection, as `hub publish` has it.
    stranger = generate_keypair("stranger", tmp_path / "keys")
    forged = placeholder_bundle(tmp_path / "v4.efb", stranger.private, model=MODEL, version=4)
    r = op.post("/api/v1/bundles", content=forged.path.read_bytes())
    assert r.status_code == 400
    assert r.json()["detail"].startswith("uploaded bundle: manifest.json signature check failed")
    assert op.post("/api/v1/bundles", content=b"").status_code == 422
    versions = client(base, hub.token("viewer")).get("/api/v1/bundles").json()["items"][0]
    assert [v["version"] for v in versions["versions"]] == [1, 2, 3]


def test_group_view_names_drifting_devices_once_they_are_scored(
    fresh: tuple[ConsoleHub, str],
) -> None:
    """Asked by group, the per-device breakdown is scored in the background: the first answer
    may say so, and a later one names the drifting device."""
    hub, base = fresh
    viewer = client(base, hub.token("viewer"))
    first = viewer.get(f"/api/v1/drift/{MODEL}?scope=group").json()
    assert "group south" in first["headline"]
    if not first["devices_scored"]:
        assert first["headline"].endswith("(per-device breakdown still being computed)")
    deadline = time.monotonic() + 60
    while True:
        d = viewer.get(f"/api/v1/drift/{MODEL}?scope=group").json()
        if d["devices_scored"]:
            break
        assert time.monotonic() < deadline, "the per-device breakdown never arrived"
        time.sleep(0.5)
    assert f"device {DRIFTING_DEVICE}" in d["headline"]
    assert [r["scope"] for r in d["heatmap"]["rows"]][0] == "south"
