"""The sync -> deploy seam: an in-process queue with typed tickets, driven by the real
deployment worker and driver (real bundles, real verification children, real onnxruntime).

- a queued install ends in a resolved ticket (a future), with nothing in the inbox and
  no copy of the bundle file (the driver links the caller's file);
- the bundle is verified once per install: one verification child, not two;
- a full disk during the verifying step (a real tmpfs) is a typed ``disk_full`` failure
  that leaves nothing behind and keeps the caller's file for the retry.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from tests.agent.full_disk import small_disk
from tests.support.agents import AgentEnv, make_env

from edgefleet.agent.deploy import intake
from edgefleet.agent.deploy.context import AgentContext
from edgefleet.agent.deploy.deployment_queue import (
    DeploymentOutcome,
    DeploymentQueue,
    DeploymentTicket,
)
from edgefleet.agent.deploy.worker import DeploymentWorker
from edgefleet.agent.verify_process import _Child

pytestmark = pytest.mark.slow  # verification children are real processes


@pytest.fixture
def env(tmp_path: Path) -> AgentEnv:
    return make_env(tmp_path)


class Deployment:
    """The daemon's deployment side: a worker with a queue, its driver, telemetry."""

    def __init__(self, env: AgentEnv, *, isolated: bool) -> None:
        self.ctx = AgentContext.load(env.config_path)
        self.buffer = self.ctx.open_buffer()
        self.driver = self.ctx.driver(
            events=lambda body: self.buffer.append("event", body), isolated=isolated
        )
        self.queue = DeploymentQueue()
        self.worker = DeploymentWorker(self.driver, self.ctx.layout, queue=self.queue)
        self.downloads = self.ctx.layout.root / "sync" / "downloads"
        self.downloads.mkdir(parents=True, exist_ok=True)

    def sync_file(self, bundle: Path) -> Path:
        """The bundle where the hub sync keeps a finished download."""
        path = self.downloads / f"{bundle.stem}.efb"
        shutil.copyfile(bundle, path)
        return path

    def drive(self, ticket: DeploymentTicket) -> DeploymentOutcome:
        for _ in range(20):
            self.worker.tick()
            if ticket.done():
                return ticket.result(0)
        raise AssertionError(f"{ticket.request_id} did not end: {self.driver.current}")

    def close(self) -> None:
        self.buffer.close()


def test_requests_are_taken_in_order_and_each_submission_wakes_the_worker() -> None:
    queue = DeploymentQueue()
    woken: list[int] = []
    queue.on_submit(lambda: woken.append(1))
    first = queue.submit_rollback("iris", now=1.0)
    second = queue.submit_rollback("wine", now=2.0, rollout_id="r-2")
    assert len(woken) == 2 and queue.waiting() == 2
    assert queue.take() is first and queue.take() is second and queue.take() is None
    assert queue.taken_ids() == [first.request_id, second.request_id]
    seen: list[DeploymentOutcome] = []
    second.add_done_callback(seen.append)
    outcome = DeploymentOutcome(second.request_id, "rollback", "rolled_back")  # type: ignore[arg-type]
    queue.settle(outcome)
    queue.settle(outcome)  # a second settle of the same id changes nothing
    assert seen == [outcome] and second.result(0).succeeded
    assert not first.done() and queue.taken_ids() == [first.request_id]


def test_a_queued_install_resolves_its_ticket_without_inbox_or_copy(
    env: AgentEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = Deployment(env, isolated=False)
    try:

        def no_copy(*args: Any) -> None:
            raise AssertionError("the bundle was copied")

        monkeypatch.setattr(intake, "copy_durably", no_copy)
        source = d.sync_file(env.bundle(1))
        ticket = d.queue.submit_install(source, now=time.time(), rollout_id="r-1")
        told: list[DeploymentOutcome] = []
        ticket.add_done_callback(told.append)
        outcome = d.drive(ticket)
        assert outcome.phase == "committed" and outcome.succeeded and outcome.kind == "install"
        assert told == [outcome]
        assert d.driver.state.find_outcome(ticket.request_id)["rollout_id"] == "r-1"
        layout = d.ctx.layout
        assert not layout.inbox.exists() or list(layout.inbox.iterdir()) == []
        # The caller's file is untouched and the driver's link to it is gone.
        assert source.is_file() and source.stat().st_nlink == 1
        assert list(layout.downloads.iterdir()) == []
    finally:
        d.close()


def test_the_daemon_verifies_an_install_once(
    env: AgentEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    spawned: list[list[str]] = []
    real_spawn = _Child.spawn.__func__  # type: ignore[attr-defined]

    def counting(cls: type[_Child], argv: list[str]) -> _Child:
        spawned.append(argv)
        return real_spawn(cls, argv)  # type: ignore[no-any-return]

    monkeypatch.setattr(_Child, "spawn", classmethod(counting))
    d = Deployment(env, isolated=True)
    try:
        ticket = d.queue.submit_install(d.sync_file(env.bundle(1)), now=time.time())
        assert d.drive(ticket).phase == "committed"
        # One verification child: the verifying step's; the activation loads with its answer.
        assert len(spawned) == 1, spawned
    finally:
        d.close()


def test_a_full_disk_while_verifying_is_a_typed_disk_full_failure(env: AgentEnv) -> None:
    d = Deployment(env, isolated=True)
    try:
        source = d.sync_file(env.bundle(1, extra_members={"card.md": bytes(256 * 1024)}))
        staging = d.ctx.layout.staging
        with small_disk(staging, 64 * 1024):
            ticket = d.queue.submit_install(source, now=time.time())
            outcome = d.drive(ticket)
            assert outcome.phase == "failed" and outcome.disk_full, outcome
            assert "No space left on device" in (outcome.reason or "")
            assert list(staging.iterdir()) == []  # the partial extraction is gone
        assert source.is_file()  # kept for the retry: nothing is downloaded again
        events = [r.body for r in d.buffer.records() if r.kind == "event"]
        assert events[-1]["state"] == "failed"
    finally:
        d.close()


class _FullDiskDriver:
    """A driver whose every step fails the way a full disk makes ``deploy.json`` fail."""

    def __init__(self) -> None:
        self.current = object()
        self.runs = 0
        self.resumes = 0

    def run(self) -> None:
        self.runs += 1
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "deploy.json")

    def resume(self) -> None:
        self.resumes += 1
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "deploy.json")


def test_a_step_failing_on_a_full_disk_is_one_log_line_and_waits_longer_each_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from edgefleet.agent.deploy.layout import StateLayout
    from edgefleet.core.mqtt.backoff import BackoffPolicy

    driver = _FullDiskDriver()
    worker = DeploymentWorker(
        driver,  # type: ignore[arg-type]
        StateLayout(tmp_path),
        disk_full_backoff=BackoffPolicy(initial_s=0.05, max_s=10.0, jitter=0.0),
    )
    waits = []
    for _ in range(3):
        caplog.clear()
        worker._resume_at = 0.0  # the test does not sleep through the wait
        worker.tick()
        worker.tick()  # within the wait: nothing is tried
        assert worker._backoff is not None
        waits.append(worker._backoff.base_delay_s)
        lines = [r for r in caplog.records if "disk full" in r.getMessage()]
        assert len(lines) == 2 and all(r.exc_info is None for r in lines)  # step + recovery
    assert driver.runs == 3 and driver.resumes == 3
    assert waits[0] < waits[1] < waits[2], waits


def test_the_command_lines_inbox_copy_on_a_full_disk_leaves_no_temp_file(env: AgentEnv) -> None:
    from edgefleet.agent.deploy import inbox
    from edgefleet.agent.errors import DeploymentError

    ctx = AgentContext.load(env.config_path)
    bundle = env.bundle(1, extra_members={"card.md": bytes(256 * 1024)})
    with small_disk(ctx.layout.inbox, 64 * 1024):
        with pytest.raises(DeploymentError, match="No space left on device"):
            inbox.submit_install(
                ctx.layout, bundle, now=time.time(), max_bundle_bytes=ctx.profile.max_bundle_bytes
            )
        assert list(ctx.layout.inbox.iterdir()) == []
