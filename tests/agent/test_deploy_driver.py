"""The deployment driver in-process: real bundles, real verification, real onnxruntime.

Every kind of bad bundle is rejected or rolled back, the old version
stays active, and the reason shows in the deployment state and in telemetry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tests.support.agents import MAX_BUNDLE_BYTES, AgentEnv, make_env

from edgefleet.agent.daemon import registration_for
from edgefleet.agent.deploy.context import AgentContext
from edgefleet.agent.deploy.driver import DeploymentDriver
from edgefleet.agent.deploy.machine import State
from edgefleet.agent.deploy.slots import SlotTable
from edgefleet.agent.deploy.status import collect_status
from edgefleet.agent.model.serving import ServingSet
from edgefleet.agent.telemetry import WindowRecorder
from edgefleet.core.testing.clock import FakeClock


class Harness:
    def __init__(self, env: AgentEnv, *, live: bool = False) -> None:
        self.env = env
        self.ctx = AgentContext.load(env.config_path)
        self.buffer = self.ctx.open_buffer()
        self.clock = FakeClock(1_700_000_000.0)
        self.recorder = WindowRecorder(self.buffer, 60, clock=self.clock)
        self.serving = ServingSet() if live else None
        if self.serving is not None:
            self.serving.on_swap(
                lambda name, loaded: (
                    loaded is not None and self.recorder.register_model(registration_for(loaded))
                )
            )
        self.driver: DeploymentDriver = self.ctx.driver(
            serving=self.serving,
            tap=self.recorder if live else None,
            events=self.recorder.record_event,
        )
        self.driver.clock = self.clock

    def install(self, bundle: Path, **kwargs: Any) -> dict[str, Any]:
        record = self.driver.submit_install(bundle, size=bundle.stat().st_size, **kwargs)
        self.driver.run()
        current = self.driver.current
        if current is not None and current.id == record.id:
            return current.to_dict()
        outcome = self.driver.state.find_outcome(record.id)
        assert outcome is not None
        return outcome

    def active(self, model: str = "iris") -> str | None:
        return SlotTable(self.ctx.layout).get(model).active

    def events(self) -> list[dict[str, Any]]:
        return [r.body for r in self.buffer.records() if r.kind == "event"]

    def leftovers(self) -> list[str]:
        layout = self.ctx.layout
        found = []
        for directory in (layout.downloads, layout.staging, layout.inbox):
            found += [str(p) for p in directory.iterdir()]
        found += [str(p) for p in layout.root.rglob("*.tmp")]
        found += [str(p) for p in layout.bundles.iterdir() if len(p.name) != 64]
        return found


@pytest.fixture
def env(tmp_path: Path) -> AgentEnv:
    return make_env(tmp_path)


def test_install_commit_and_upgrade(env: AgentEnv) -> None:
    h = Harness(env)
    first = h.install(env.bundle(1))
    assert first["state"] == "committed"
    sha1 = first["bundle_sha256"]
    assert h.active() == sha1
    second = h.install(env.bundle(2))
    assert second["state"] == "committed" and second["version"] == 2
    pointers = SlotTable(h.ctx.layout).get("iris")
    assert (pointers.active, pointers.previous) == (second["bundle_sha256"], sha1)
    assert h.driver.current is None
    assert h.leftovers() == []
    states = [e["state"] for e in h.events() if e["deployment_id"] == second["id"]]
    assert states == ["downloading", "verifying", "staged", "activating", "probation", "committed"]
    assert sorted(h.driver.store.stored()) == sorted([sha1, second["bundle_sha256"]])


def _unknown_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


BAD_BUNDLES: list[tuple[str, dict[str, Any], str, str]] = [
    ("unknown-key", {"signer": "unknown"}, "rejected", "signature"),
    ("other-profile", {"profile": "rpi5"}, "rejected", "profile 'rpi5'"),
    ("other-arch", {"arch": "aarch64"}, "rejected", "arch 'aarch64'"),
    (
        "over-budget",
        {"extra_members": {"card.md": b"x" * (MAX_BUNDLE_BYTES + 1)}},
        "rejected",
        "over the budget",
    ),
    (
        "newer-onnxruntime",
        {"overrides": {"target": {"min_onnxruntime": "99.0"}}},
        "rejected",
        "needs onnxruntime >= 99.0",
    ),
    ("failing-smoke", {"break_smoke": True}, "rolled_back", "smoke set"),
    ("downgrade", {"version": 1}, "rejected", "older than the installed version"),
]


@pytest.mark.parametrize(
    ("case", "kwargs", "state", "reason"), BAD_BUNDLES, ids=[c[0] for c in BAD_BUNDLES]
)
def test_bad_bundles_keep_the_old_version(
    env: AgentEnv, case: str, kwargs: dict[str, Any], state: str, reason: str
) -> None:
    h = Harness(env)
    good = h.install(env.bundle(2))
    assert good["state"] == "committed"
    kwargs = dict(kwargs)
    if kwargs.get("signer") == "unknown":
        kwargs["signer"] = _unknown_key()
    version = kwargs.pop("version", 3)
    outcome = h.install(env.bundle(version, **kwargs))
    assert outcome["state"] == state
    assert reason in outcome["reason"]
    # the old version keeps its slot, and nothing is left over
    assert h.active() == good["bundle_sha256"]
    assert h.leftovers() == []
    assert h.driver.store.stored() == [good["bundle_sha256"]]
    # the reason is in status and in telemetry
    status = collect_status(h.ctx)
    if outcome["model"] is not None:
        [model] = status["models"]
        assert model["last_deployment"]["state"] == state
        assert reason in model["last_deployment"]["reason"]
        assert model["active"]["version"] == 2
    assert any(h["reason"] and reason in h["reason"] for h in status["history"])
    last = h.events()[-1]
    assert last["state"] == state and reason in last["reason"]


def test_live_probation_commits_after_enough_requests(tmp_path: Path) -> None:
    env = make_env(tmp_path, probation={"min_requests": 5, "max_seconds": 600})
    h = Harness(env, live=True)
    record = h.driver.submit_install(env.bundle(1))
    assert h.driver.run() is State.PROBATION
    loaded = h.serving.get("iris") if h.serving else None
    assert loaded is not None and loaded.version == 1
    import numpy as np

    X = np.zeros((1, 4), dtype=np.float32)
    for _ in range(4):
        h.recorder.record_inference("iris", 1, X, np.array([0]), 1.0, ["p"])
    assert h.driver.run() is State.PROBATION  # 4 of 5 requests
    h.recorder.record_inference("iris", 1, X, np.array([0]), 1.0, ["p"])
    assert h.driver.run() is State.IDLE
    outcome = h.driver.state.find_outcome(record.id)
    assert outcome is not None and outcome["state"] == "committed"
    assert "5 requests" in outcome["reason"]


def test_live_probation_rolls_back_on_errors_and_latency(tmp_path: Path) -> None:
    import numpy as np

    env = make_env(
        tmp_path, probation={"min_requests": 10, "max_seconds": 600, "max_p95_latency_ms": 50.0}
    )
    h = Harness(env, live=True)
    h.driver.submit_install(env.bundle(1))
    h.driver.run()
    X = np.zeros((1, 4), dtype=np.float32)
    for _ in range(10):
        h.recorder.record_inference("iris", 1, X, np.array([0]), 1.0, ["p"])
    assert h.driver.run() is State.IDLE
    sha1 = h.active()
    # version 2 is slow: p95 over the limit
    record = h.driver.submit_install(env.bundle(2))
    assert h.driver.run() is State.PROBATION
    assert h.serving is not None and h.serving.get("iris").version == 2
    for _ in range(10):
        h.recorder.record_inference("iris", 2, X, np.array([0]), 400.0, ["p"])
    assert h.driver.run() is State.IDLE
    outcome = h.driver.state.find_outcome(record.id)
    assert outcome is not None and outcome["state"] == "rolled_back"
    assert "p95 latency 485.0 ms" in outcome["reason"]  # in (200, 500], interpolated
    assert h.active() == sha1 and h.serving.get("iris").version == 1
    # version 3 fails requests: rolled back early, before min_requests
    record = h.driver.submit_install(env.bundle(3))
    h.driver.run()
    for _ in range(2):
        h.recorder.record_error("iris", 3, "runtime")
    assert h.driver.run() is State.IDLE
    outcome = h.driver.state.find_outcome(record.id)
    assert outcome is not None and outcome["state"] == "rolled_back"
    assert "error rate" in outcome["reason"]
    assert h.serving.get("iris").version == 1


def test_probation_with_no_traffic_passes_after_max_seconds(tmp_path: Path) -> None:
    env = make_env(tmp_path, probation={"min_requests": 100, "max_seconds": 30})
    h = Harness(env, live=True)
    h.driver.submit_install(env.bundle(1))
    assert h.driver.run() is State.PROBATION
    h.clock.advance(31)
    assert h.driver.run() is State.IDLE
    assert h.driver.state.history[-1]["state"] == "committed"


def test_manual_rollback(env: AgentEnv) -> None:
    h = Harness(env)
    v1 = h.install(env.bundle(1))
    v2 = h.install(env.bundle(2))
    record = h.driver.submit_rollback("iris")
    assert h.driver.run() is State.IDLE
    outcome = h.driver.state.find_outcome(record.id)
    assert outcome is not None and outcome["state"] == "rolled_back" and outcome["version"] == 1
    pointers = SlotTable(h.ctx.layout).get("iris")
    assert (pointers.active, pointers.previous) == (v1["bundle_sha256"], None)
    assert h.driver.store.stored() == [v1["bundle_sha256"]]  # v2 left the store
    assert v2["bundle_sha256"] not in h.driver.store.stored()
    from edgefleet.agent.errors import DeploymentError

    with pytest.raises(DeploymentError, match="no previous version"):
        h.driver.submit_rollback("iris")


def test_first_install_failing_smoke_leaves_nothing_installed(env: AgentEnv) -> None:
    h = Harness(env)
    outcome = h.install(env.bundle(1, break_smoke=True))
    assert outcome["state"] == "rolled_back"
    assert h.active() is None
    assert h.driver.store.stored() == []
    assert SlotTable(h.ctx.layout).models() == []


def test_worker_takes_inbox_requests_in_order(env: AgentEnv) -> None:
    import time

    from edgefleet.agent.deploy import inbox
    from edgefleet.agent.deploy.worker import DeploymentWorker

    h = Harness(env)
    layout = h.ctx.layout
    budget = h.ctx.profile.max_bundle_bytes
    now = time.time()
    first = inbox.submit_install(
        layout, env.bundle(1), now=now, max_bundle_bytes=budget, rollout_id="r-1"
    )
    refused = inbox.submit_rollback(layout, "unknown-model", now=now + 0.001)
    big = env.bundle(2, extra_members={"card.md": b"x" * (MAX_BUNDLE_BYTES + 1)})
    oversize = inbox.submit_install(layout, big, now=now + 0.002, max_bundle_bytes=budget)
    assert oversize.bundle is None  # not even copied
    worker = DeploymentWorker(h.driver, layout)
    for _ in range(6):
        worker.tick()
    assert worker.errors == 0
    state = h.driver.state
    assert state.current is None
    outcomes = {o["id"]: o for o in state.history}
    assert outcomes[first.id]["state"] == "committed"
    assert outcomes[first.id]["rollout_id"] == "r-1"
    assert outcomes[refused.id]["state"] == "failed"
    assert "not installed" in outcomes[refused.id]["reason"]
    assert outcomes[oversize.id]["state"] == "rejected"
    assert "over the budget" in outcomes[oversize.id]["reason"]
    assert list(layout.inbox.iterdir()) == []
    events = [e for e in h.events() if e["deployment_id"] == first.id]
    assert events and all(e["rollout_id"] == "r-1" for e in events)
