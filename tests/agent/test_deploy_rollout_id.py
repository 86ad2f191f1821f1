"""A deployment names the rollout that asked for it, from the hub sync's hand-over to every
telemetry event, so the hub never counts an outcome against another rollout of the same
bundle. State written before rollout ids were carried still loads and finishes.

Real parts: the sync's queue deployer, the daemon's deployment worker and its queue, the
driver with real bundles and verification, the SQLite telemetry buffer.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from tests.support.agents import MAX_BUNDLE_BYTES, AgentEnv, make_env

from edgefleet.agent.deploy import inbox
from edgefleet.agent.deploy.context import AgentContext
from edgefleet.agent.deploy.deployment_queue import DeploymentQueue
from edgefleet.agent.deploy.driver import DeploymentDriver
from edgefleet.agent.deploy.record import DeployStateFile
from edgefleet.agent.deploy.worker import DeploymentWorker
from edgefleet.agent.sync.deployer import QueueDeployer
from edgefleet.agent.telemetry.buffer import TelemetryBuffer

ROLLOUT = "rollout-7f3a"
TERMINAL = ("committed", "rolled_back", "failed", "rejected")


class Device:
    """The daemon's deployment side without the endpoint: worker, driver, telemetry."""

    def __init__(self, env: AgentEnv) -> None:
        self.ctx = AgentContext.load(env.config_path)
        self.buffer: TelemetryBuffer = self.ctx.open_buffer()
        self.driver: DeploymentDriver = self.ctx.driver(
            events=lambda body: self.buffer.append("event", body)
        )
        self.queue = DeploymentQueue()
        self.worker = DeploymentWorker(self.driver, self.ctx.layout, queue=self.queue)
        self.deployer = QueueDeployer(self.queue, self.ctx.layout, self.worker.deploy_state)

    def drive(self, request_id: str) -> dict[str, Any]:
        """Tick the worker until the request ended; its outcome in ``deploy.json``."""
        for _ in range(20):
            self.worker.tick()
            outcome = DeployStateFile(self.ctx.layout.deploy_file).load().find_outcome(request_id)
            if outcome is not None:
                return outcome
        raise AssertionError(f"request {request_id} did not end: {self.driver.current}")

    def events(self, deployment_id: str) -> list[dict[str, Any]]:
        return [
            dict(r.body)
            for r in self.buffer.records()
            if r.kind == "event" and r.body.get("deployment_id") == deployment_id
        ]

    def close(self) -> None:
        self.buffer.close()


@pytest.fixture
def env(tmp_path: Path) -> AgentEnv:
    return make_env(tmp_path)


@pytest.fixture
def device(env: AgentEnv) -> Any:
    d = Device(env)
    yield d
    d.close()


def test_an_install_handed_over_with_a_rollout_id_names_it_in_every_event(
    env: AgentEnv, device: Device
) -> None:
    request_id = device.deployer.submit_install(
        env.bundle(1), allow_downgrade=False, now=time.time(), rollout_id=ROLLOUT
    )
    ticket = device.queue.ticket(request_id)
    assert ticket is not None and ticket.request.rollout_id == ROLLOUT
    outcome = device.drive(request_id)
    assert outcome["state"] == "committed"
    assert outcome["rollout_id"] == ROLLOUT
    assert ticket.result(0).phase == "committed" and ticket.result(0).succeeded
    assert device.deployer.last_outcomes()["iris"]["rollout_id"] == ROLLOUT
    events = device.events(request_id)
    states = [e["state"] for e in events]
    assert states == ["downloading", "verifying", "staged", "activating", "probation", "committed"]
    assert [e.get("rollout_id") for e in events] == [ROLLOUT] * len(events)


def test_a_second_rollout_of_the_same_bundle_is_not_confused_with_the_first(
    env: AgentEnv, device: Device
) -> None:
    bundle = env.bundle(1)
    first = device.deployer.submit_install(
        bundle, allow_downgrade=False, now=time.time(), rollout_id="rollout-old"
    )
    assert device.drive(first)["state"] == "committed"
    # The same bundle again under a new rollout: refused as already active, and the
    # refusal belongs to the new rollout, not the old one.
    second = device.deployer.submit_install(
        bundle, allow_downgrade=False, now=time.time(), rollout_id=ROLLOUT
    )
    outcome = device.drive(second)
    assert outcome["state"] == "rejected" and "already active" in (outcome["reason"] or "")
    events = device.events(second)
    assert events and {e.get("rollout_id") for e in events} == {ROLLOUT}
    assert {e.get("rollout_id") for e in device.events(first)} == {"rollout-old"}


def test_a_rollback_asked_for_by_a_rollout_names_it(env: AgentEnv, device: Device) -> None:
    for version in (1, 2):
        request_id = device.deployer.submit_install(
            env.bundle(version), allow_downgrade=False, now=time.time(), rollout_id="rollout-up"
        )
        assert device.drive(request_id)["state"] == "committed"
    request_id = device.deployer.submit_rollback("iris", now=time.time(), rollout_id=ROLLOUT)
    outcome = device.drive(request_id)
    assert outcome["state"] == "rolled_back" and outcome["version"] == 1
    events = device.events(request_id)
    assert [e["state"] for e in events] == ["rolling_back", "rolled_back"]
    assert all(e["kind"] == "rollback" and e.get("rollout_id") == ROLLOUT for e in events)


def test_a_refused_request_names_its_rollout(env: AgentEnv, device: Device) -> None:
    request_id = device.deployer.submit_rollback(
        "not-installed", now=time.time(), rollout_id=ROLLOUT
    )
    device.worker.tick()
    events = device.events(request_id)
    assert [(e["state"], e.get("rollout_id")) for e in events] == [("failed", ROLLOUT)]


def test_an_install_from_the_command_line_has_no_rollout_id(env: AgentEnv, device: Device) -> None:
    layout = device.ctx.layout
    request = inbox.submit_install(
        layout, env.bundle(1), now=time.time(), max_bundle_bytes=MAX_BUNDLE_BYTES
    )
    outcome = device.drive(request.id)
    assert outcome["state"] == "committed" and outcome["rollout_id"] is None
    assert all("rollout_id" not in e for e in device.events(request.id))


def test_state_written_without_rollout_ids_still_loads_and_finishes(
    env: AgentEnv, tmp_path: Path
) -> None:
    """``deploy.json`` and an inbox request as an agent without rollout ids wrote them."""
    # A deployment taken from the inbox and persisted in `downloading`, then the agent
    # stopped; plus a queued request behind it. Neither has a rollout_id field.
    ctx = AgentContext.load(env.config_path)
    layout = ctx.layout
    layout.ensure()
    layout.inbox.mkdir(parents=True, exist_ok=True)
    now = time.time()
    running_id, queued_id = (
        f"{int(now * 1000):013d}-0000aaaa",
        f"{int(now * 1000) + 1:013d}-0000bbbb",
    )
    running_bundle = layout.inbox / f"{running_id}.efb"
    running_bundle.write_bytes(env.bundle(1).read_bytes())
    old_record = {
        "id": running_id,
        "kind": "install",
        "state": "downloading",
        "started_at": now,
        "updated_at": now,
        "source": str(running_bundle),
        "source_is_inbox": True,
        "size": running_bundle.stat().st_size,
        "allow_downgrade": False,
        "model": None,
        "version": None,
        "bundle_sha256": None,
        "from_slots": None,
        "restore_slots": None,
        "reason": None,
        "attempts": 0,
        "clean_stop": True,
        "probation_started_at": None,
        "transitions": [{"state": "downloading", "at": now}],
    }
    old_outcome = {
        "id": "0000000000001-00000000",
        "kind": "install",
        "state": "failed",
        "model": "iris",
        "version": 1,
        "bundle_sha256": "0" * 64,
        "reason": "an older failure",
        "started_at": now - 60,
        "finished_at": now - 50,
    }
    layout.deploy_file.write_text(
        json.dumps(
            {
                "format": 1,
                "current": old_record,
                "models": {"iris": old_outcome},
                "history": [old_outcome],
            }
        )
    )
    queued_bundle = layout.inbox / f"{queued_id}.efb"
    queued_bundle.write_bytes(env.bundle(2).read_bytes())
    (layout.inbox / f"{queued_id}.json").write_text(
        json.dumps(
            {
                "id": queued_id,
                "kind": "install",
                "submitted_at": now,
                "bundle": queued_bundle.name,
                "size": queued_bundle.stat().st_size,
                "model": None,
                "allow_downgrade": False,
            }
        )
    )

    state = DeployStateFile(layout.deploy_file).load()
    assert state.current is not None and state.current.rollout_id is None
    assert [r.rollout_id for r in inbox.pending(layout)] == [None]
    deployer = QueueDeployer(DeploymentQueue(), layout, DeployStateFile(layout.deploy_file).load)
    progress = deployer.in_progress()
    assert progress is not None and progress.request_id == running_id
    assert progress.rollout_id is None

    device = Device(env)
    try:
        device.driver.resume()
        assert device.drive(running_id)["state"] == "committed"
        outcome = device.drive(queued_id)
        assert outcome["state"] == "committed" and outcome["rollout_id"] is None
        for deployment_id in (running_id, queued_id):
            events = device.events(deployment_id)
            assert events and all("rollout_id" not in e for e in events)
        history = DeployStateFile(layout.deploy_file).load().history
        assert history[0] == old_outcome  # the old entry is kept as it was
        assert [h["state"] for h in history] == ["failed", "committed", "committed"]
    finally:
        device.close()
