"""Pure parts of the console: the route -> role table, the answer cache, drift verdicts."""

from __future__ import annotations

import threading

import pytest

from edgefleet.hub.commands.api_cmd import openapi_document
from edgefleet.hub.console import auth
from edgefleet.hub.console import drift as dr
from edgefleet.hub.console.answer_cache import AnswerCache
from edgefleet.hub.console.api.guard import action_of


@pytest.mark.parametrize(
    ("method", "path", "role"),
    [
        ("GET", "/api/v1/health", auth.PUBLIC),
        ("GET", "/", auth.PUBLIC),
        ("GET", "/static/app.js", auth.PUBLIC),
        ("POST", "/api/v1/session", auth.PUBLIC),
        ("GET", "/api/v1/devices", "viewer"),
        ("HEAD", "/api/v1/devices", "viewer"),
        ("GET", "/api/openapi.json", "viewer"),
        ("GET", "/api/v1/audit", "admin"),
        ("POST", "/api/v1/rollouts/r-1/pause", "operator"),
        ("POST", "/api/v1/bundles", "operator"),
        ("POST", "/api/v1/devices/pi/revoke", "admin"),
        ("DELETE", "/api/v1/devices/pi", "admin"),
        ("PUT", "/api/v1/rollouts/r-1", "admin"),  # unlisted writes are closed, not open
        ("PATCH", "/api/v1/anything", "admin"),
    ],
)
def test_required_role(method: str, path: str, role: str) -> None:
    assert auth.required_role(method, path) == role


def test_every_documented_route_needs_a_token_except_the_open_ones() -> None:
    open_routes = {
        ("get", "/api/v1/health"),
        ("post", "/api/v1/session"),
        ("get", "/api/v1/session"),
        ("delete", "/api/v1/session"),
    }
    for path, item in openapi_document()["paths"].items():
        for method in item:
            needed = auth.required_role(method.upper(), path)
            assert (needed == auth.PUBLIC) == ((method, path) in open_routes), (method, path)


def test_roles_are_ordered() -> None:
    assert auth.allows("admin", "operator") and auth.allows("operator", "viewer")
    assert not auth.allows("viewer", "operator") and not auth.allows("operator", "admin")


def test_audit_action_names() -> None:
    assert action_of("POST", "/api/v1/rollouts") == "rollout.create"
    assert action_of("POST", "/api/v1/rollouts/r-1/pause") == "rollout.pause r-1"
    assert action_of("DELETE", "/api/v1/devices/pi-3") == "device.remove pi-3"


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_answer_cache_fresh_stale_and_cleared() -> None:
    clock = Clock()
    cache = AnswerCache(2.0, clock, stale_s=10.0)
    calls: list[int] = []

    def compute() -> int:
        calls.append(1)
        return len(calls)

    assert cache.get("k", compute) == 1
    clock.t = 1.0
    assert cache.get("k", compute) == 1 and len(calls) == 1  # fresh
    clock.t = 5.0
    assert cache.get("k", compute) == 1  # stale: answered at once, refreshed behind
    for _ in range(100):
        if cache.get("k", compute) == 2:
            break
        threading.Event().wait(0.01)
    assert cache.get("k", compute) == 2
    clock.t = 30.0
    assert cache.get("k", compute) == 3  # too old: computed while the caller waits
    cache.clear()
    assert cache.get("k", compute) == 4


def test_a_computation_that_straddles_a_clear_is_not_kept() -> None:
    clock = Clock()
    cache = AnswerCache(60.0, clock)
    values = iter(["before the write", "after the write"])

    def compute() -> str:
        value = next(values)
        if value == "before the write":
            cache.clear()  # a write lands while this answer is being computed
        return value

    assert cache.get("k", compute) == "before the write"
    assert cache.get("k", compute) == "after the write"


def test_scope_with_an_open_alert_is_never_no_drift() -> None:
    alert = {
        "id": 7,
        "status": "open",
        "rule": "feature_drift",
        "model": "m",
        "scope_kind": "device",
        "scope": "pi-1",
        "details": {"features": {"f3": {}}},
    }
    clean = {"drifting": False, "dataset_drift": False, "features": {"f3": {"psi": 0.01}}}
    assert dr.scope_verdict("device", "pi-1", clean, [alert]) == "alert"
    assert dr.scope_verdict("device", "pi-2", clean, [alert]) == "no_drift"
    scopes = dr.drifting_scopes(None, None, [alert])
    assert scopes == [
        {"kind": "device", "name": "pi-1", "features": ["f3"], "drift_share": None, "alerts": [7]}
    ]
    pooled = {"fleet": {"dataset_drift": False, "drift_share": 0.0, "features": {"f3": {}}}}
    assert dr.headline(pooled, scopes).startswith("DRIFT on device pi-1 (1 feature(s)); pooled")
    assert dr.headline(pooled, []) == (
        "no drift on any group or device; pooled fleet: no dataset drift (0.0% of features)"
    )
    fleet_alert = {**alert, "scope_kind": "fleet", "scope": "*"}
    assert dr.drifting_scopes(None, None, [fleet_alert])[0]["name"] == "fleet"


def test_get_nowait_answers_at_once_and_computes_behind() -> None:
    cache = AnswerCache(60.0, Clock())
    release = threading.Event()

    def slow() -> str:
        release.wait(10)
        return "scored"

    assert cache.get_nowait("k", slow) == (False, None)
    assert cache.get_nowait("k", slow) == (False, None)  # one computation, not two
    release.set()
    for _ in range(200):
        found, value = cache.get_nowait("k", slow)
        if found:
            break
        threading.Event().wait(0.01)
    assert (found, value) == (True, "scored")


def test_wait_idle_waits_for_background_computations() -> None:
    cache = AnswerCache(60.0, Clock())
    release = threading.Event()
    cache.get_nowait("k", lambda: release.wait(10))
    assert cache.wait_idle(0.05) is False  # still computing
    release.set()
    assert cache.wait_idle(10) is True
