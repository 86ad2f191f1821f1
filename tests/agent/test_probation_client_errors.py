"""Probation judges the model, not its clients; a model that serves nothing says why.

- Requests a client gets wrong (bad JSON, wrong shape: 400) during the
  probation of a first install leave the new version serving (a real daemon).
- Only model and runtime failures reach the probation counters.
- A first install that fails leaves ``agent status`` and the state sent to the
  hub saying that nothing serves, and why.
"""

from __future__ import annotations

import json
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from tests.support.agents import http_json, infer, kill, make_env, stop
from tests.support.waiting import wait_until

from edgefleet.agent.commands.status_cmd import render
from edgefleet.agent.sync.reconcile import InstalledModel
from edgefleet.agent.sync.reporter import build_state
from edgefleet.agent.telemetry import TelemetryBuffer, WindowRecorder
from edgefleet.agent.telemetry_sink import counts_against_version
from edgefleet.core.testing.clock import FakeClock

ROW = [[5.1, 3.5, 1.4, 0.2]]


def post_raw(url: str, body: bytes) -> int:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


@pytest.mark.slow
def test_client_mistakes_during_probation_leave_a_first_install_serving(tmp_path: Path) -> None:
    env = make_env(tmp_path, probation={"min_requests": 10, "max_seconds": 120})
    proc = env.start_daemon()  # nothing installed yet
    try:
        url = env.endpoint_url(proc)
        results: list[subprocess.CompletedProcess[str]] = []
        waiter = threading.Thread(
            target=lambda: results.append(env.cli("install", str(env.bundle(1)), "--wait", "final"))
        )
        waiter.start()
        wait_until(
            lambda: f"version 1 ready: {env.log_tail()}",
            lambda: http_json(f"{url}/v2/models/iris/ready")[0] == 200,
            60,
        )
        # Seven bad requests while version 1 is on probation: not JSON, wrong shape.
        infer_url = f"{url}/v2/models/iris/infer"
        for body in (b"{not json", b"", b'{"inputs": 3}', b"[1, 2"):
            assert post_raw(infer_url, body) == 400
        for _ in range(3):
            assert infer(url, "iris", [[1.0, 2.0, 3.0]])[0] == 400
        # Then the traffic probation is about.
        for _ in range(10):
            status, answer = infer(url, "iris", ROW)
            assert status == 200, answer
        waiter.join(60)
        [done] = results
        assert done.returncode == 0 and "committed" in done.stdout, done.stderr
        status, answer = infer(url, "iris", ROW)
        assert status == 200 and answer["model_version"] == "1"
        [model] = env.status()["models"]
        assert model["serving"] is True and "not_served" not in model
    finally:
        assert stop(proc) == 0
        kill(proc)


def test_probation_counts_only_model_failures(tmp_path: Path) -> None:
    buffer = TelemetryBuffer(tmp_path / "t.db", budget_bytes=1 << 20)
    recorder = WindowRecorder(buffer, 60, clock=FakeClock(1_000_000.0))
    recorder.start_probation("iris", 1)
    for kind in ("json", "request", "shape", "features", "dtype", "datatype", "data", "too_large"):
        assert not counts_against_version(kind)
        recorder.record_error("iris", 1, kind)
    X = np.ones((1, 4), dtype=np.float32)
    recorder.record_inference("iris", 1, X, np.array([0]), 1.0, ["a"])
    assert (
        recorder.probation_stats("iris", 1).requests,
        recorder.probation_stats("iris", 1).errors,
    ) == (1, 0)
    recorder.record_error("iris", 1, "runtime")
    stats = recorder.probation_stats("iris", 1)
    assert (stats.requests, stats.errors) == (2, 1)
    buffer.close()


@pytest.mark.slow
def test_a_first_install_that_fails_says_nothing_is_served_and_why(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    failed = env.cli("install", str(env.bundle(1, break_smoke=True)))
    assert failed.returncode == 1, failed.stdout + failed.stderr
    status = env.status()
    [model] = status["models"]
    assert model["active"] is None and model["serving"] is False
    assert model["not_served"].startswith("nothing served: install v1 rolled back (smoke set")
    assert model["not_served"] in render(status)
    text = env.cli("status")
    assert "nothing served: install v1 rolled back" in text.stdout


def test_the_hub_hears_that_nothing_is_served_and_why() -> None:
    last = {
        "kind": "install",
        "version": 1,
        "bundle_sha256": "a" * 64,
        "state": "rolled_back",
        "reason": "probation failed: error rate 70.0% over the limit 5.0%",
        "finished_at": 10.0,
    }
    common = {
        "device_id": "dev-1",
        "agent_version": "t",
        "profile": "p",
        "now": 11.0,
        "progress": None,
        "ledger": (),
        "download": None,
        "last_outcomes": {"iris": last},
    }
    nothing = build_state(installed={}, **common)  # type: ignore[arg-type]
    [model] = nothing.models
    assert model.active is None and model.deployment is not None
    assert model.deployment.state == "rolled_back"
    assert model.deployment.reason == (
        "nothing served: v1 rolled back (probation failed: error rate 70.0% over the limit 5.0%)"
    )
    # With an older version still serving, the reason stays the deployment's own.
    serving = build_state(  # type: ignore[arg-type]
        installed={"iris": InstalledModel("b" * 64, 0, None, None)}, **common
    )
    assert serving.models[0].deployment.reason == last["reason"]  # type: ignore[union-attr]
    assert json.loads(json.dumps(nothing.to_dict()))["models"][0]["deployment"][
        "reason"
    ].startswith("nothing served")
