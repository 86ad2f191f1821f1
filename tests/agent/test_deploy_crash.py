"""Crash tests: the real daemon is SIGKILLed at every state of the deployment machine.

For each pause point the daemon stops itself (SIGSTOP, the test hook) right
after persisting a state (``verifying``) or right after that state's side
effects (``verifying+``), and is killed there. A new daemon must then serve a
valid version immediately (old or new, never none), finish or undo the step,
and leave no temp files behind.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from tests.support.agents import AgentEnv, infer, kill, make_env, stop, wait_stopped
from tests.support.waiting import wait_until

from edgefleet.agent.deploy import inbox
from edgefleet.agent.deploy.context import AgentContext
from edgefleet.agent.deploy.record import DeployStateFile
from edgefleet.agent.deploy.slots import SlotTable
from edgefleet.agent.deploy.store import ExtractedBundleStore
from edgefleet.agent.deploy.submit import install_bundle

ROW = [[5.1, 3.5, 1.4, 0.2]]


def setup_v1(env: AgentEnv) -> AgentContext:
    ctx = AgentContext.load(env.config_path)
    assert install_bundle(ctx, env.bundle(1)).state == "committed"
    return ctx


def served_version(url: str) -> int:
    status, body = infer(url, "iris", ROW)
    assert status == 200, body
    return int(body["model_version"])


def wait_idle(env: AgentEnv, request_id: str, timeout: float = 60) -> dict[str, Any]:
    state_file = DeployStateFile(env.state_dir / "deploy.json")

    def finished() -> dict[str, Any] | None:
        state = state_file.load()
        outcome = state.find_outcome(request_id)
        return outcome if state.current is None and outcome is not None else None

    return wait_until(
        lambda: f"the deployment to finish: {state_file.load()} {env.log_tail()}", finished, timeout
    )


def leftovers(env: AgentEnv) -> list[str]:
    state = env.state_dir
    found = [str(p) for d in ("downloads", "staging", "inbox") for p in (state / d).iterdir()]
    found += [str(p) for p in state.rglob("*.tmp")]
    found += [str(p) for p in state.rglob(".*") if p.name not in (".",)]
    stored = set(ExtractedBundleStore(AgentContext.load(env.config_path).layout).stored())
    found += [str(p) for p in (state / "bundles").iterdir() if p.name not in stored]
    referenced = SlotTable(AgentContext.load(env.config_path).layout).referenced()
    found += [f"unreferenced bundle {sha}" for sha in stored - referenced]
    return found


def crash_at(env: AgentEnv, point: str, submit: Any) -> tuple[str, int]:
    """Run a daemon that pauses at ``point``, kill it there, restart; returns
    (request id, version served right after the restart)."""
    proc = env.start_daemon({"EDGEFLEET_TEST_PAUSE_AT": point})
    try:
        env.endpoint_url(proc)
        request_id = submit()
        wait_stopped(proc)
    finally:
        kill(proc)
    proc = env.start_daemon()
    try:
        url = env.endpoint_url(proc)
        first = served_version(url)  # never none, even before recovery finishes
        wait_idle(env, request_id)
        assert stop(proc) == 0
    finally:
        kill(proc)
    return request_id, first


GOOD_POINTS = [
    "downloading",
    "downloading+",
    "verifying",
    "verifying+",
    "staged",
    "staged+",
    "activating",
    "activating+",
    "probation",
    "probation+",
    "committed",
]


@pytest.mark.subprocess
@pytest.mark.parametrize("point", GOOD_POINTS)
def test_kill_during_a_good_install_finishes_it(tmp_path: Path, point: str) -> None:
    env = make_env(tmp_path)
    ctx = setup_v1(env)
    bundle = env.bundle(2)

    def submit() -> str:
        return inbox.submit_install(
            ctx.layout, bundle, now=time.time(), max_bundle_bytes=ctx.profile.max_bundle_bytes
        ).id

    request_id, first = crash_at(env, point, submit)
    assert first in (1, 2)
    outcome = DeployStateFile(env.state_dir / "deploy.json").load().find_outcome(request_id)
    assert outcome is not None and outcome["state"] == "committed" and outcome["version"] == 2
    pointers = SlotTable(ctx.layout).get("iris")
    assert pointers.active == outcome["bundle_sha256"] and pointers.previous is not None
    assert leftovers(env) == []


BAD_POINTS = [
    ("rolling_back", {"break_smoke": True}, "rolled_back"),
    ("rolling_back+", {"break_smoke": True}, "rolled_back"),
    ("rolled_back", {"break_smoke": True}, "rolled_back"),
    ("rejected", {"arch": "aarch64"}, "rejected"),
]


@pytest.mark.subprocess
@pytest.mark.parametrize(("point", "kwargs", "final"), BAD_POINTS, ids=[p[0] for p in BAD_POINTS])
def test_kill_during_a_bad_install_undoes_it(
    tmp_path: Path, point: str, kwargs: dict[str, Any], final: str
) -> None:
    env = make_env(tmp_path)
    ctx = setup_v1(env)
    v1 = SlotTable(ctx.layout).get("iris").active
    bundle = env.bundle(2, **kwargs)

    def submit() -> str:
        return inbox.submit_install(
            ctx.layout, bundle, now=time.time(), max_bundle_bytes=ctx.profile.max_bundle_bytes
        ).id

    request_id, first = crash_at(env, point, submit)
    assert first in (1, 2)
    outcome = DeployStateFile(env.state_dir / "deploy.json").load().find_outcome(request_id)
    assert outcome is not None and outcome["state"] == final
    assert SlotTable(ctx.layout).get("iris").active == v1
    assert leftovers(env) == []


@pytest.mark.subprocess
def test_kill_at_failed(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    ctx = setup_v1(env)
    bundle = env.bundle(2)

    def submit() -> str:
        request = inbox.submit_install(
            ctx.layout, bundle, now=time.time(), max_bundle_bytes=ctx.profile.max_bundle_bytes
        )
        assert request.bundle is not None
        request.bundle.unlink()  # the copy vanished: the fetch fails
        return request.id

    request_id, first = crash_at(env, "failed", submit)
    assert first == 1
    outcome = DeployStateFile(env.state_dir / "deploy.json").load().find_outcome(request_id)
    assert outcome is not None and outcome["state"] == "failed"
    assert "is gone" in outcome["reason"]
    assert leftovers(env) == []


@pytest.mark.subprocess
def test_kill_during_manual_rollback(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    ctx = setup_v1(env)
    assert install_bundle(ctx, env.bundle(2)).state == "committed"
    v1, v2 = SlotTable(ctx.layout).get("iris").previous, SlotTable(ctx.layout).get("iris").active

    def submit() -> str:
        return inbox.submit_rollback(ctx.layout, "iris", now=time.time()).id

    request_id, first = crash_at(env, "rolling_back+", submit)
    assert first == 1  # the pointers were already back when it died
    outcome = DeployStateFile(env.state_dir / "deploy.json").load().find_outcome(request_id)
    assert outcome is not None and outcome["state"] == "rolled_back" and outcome["version"] == 1
    pointers = SlotTable(ctx.layout).get("iris")
    assert (pointers.active, pointers.previous) == (v1, None)
    assert v2 not in ExtractedBundleStore(ctx.layout).stored()
    assert leftovers(env) == []


@pytest.mark.subprocess
def test_loop_counter_gives_up_on_a_version_that_keeps_killing_the_agent(tmp_path: Path) -> None:
    env = make_env(tmp_path, probation={"max_attempts": 1})
    ctx = setup_v1(env)
    v1 = SlotTable(ctx.layout).get("iris").active
    bundle = env.bundle(2)
    pause = {"EDGEFLEET_TEST_PAUSE_AT": "activating+"}
    proc = env.start_daemon(pause)
    try:
        env.endpoint_url(proc)
        request = inbox.submit_install(
            ctx.layout, bundle, now=time.time(), max_bundle_bytes=ctx.profile.max_bundle_bytes
        )
        wait_stopped(proc)
    finally:
        kill(proc)
    # second run: the step is resumed (attempt 1 of 1) and "dies" again
    proc = env.start_daemon(pause)
    try:
        wait_stopped(proc)
    finally:
        kill(proc)
    record = json.loads((env.state_dir / "deploy.json").read_text())["current"]
    assert record["state"] == "activating" and record["attempts"] == 1
    # third run: over the limit, the machine gives up and restores version 1
    proc = env.start_daemon(pause)
    try:
        url = env.endpoint_url(proc)
        assert served_version(url) == 1
        outcome = wait_idle(env, request.id)
        assert stop(proc) == 0
    finally:
        kill(proc)
    assert outcome["state"] == "rolled_back"
    assert "gave up after 1 restarts in state activating" in outcome["reason"]
    assert SlotTable(ctx.layout).get("iris").active == v1
    assert leftovers(env) == []
