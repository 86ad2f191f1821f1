"""The CI/CD recipe (examples/ci/edgefleet-rollout.yml): its `run:` steps, executed as the
workflow would, train, register, pack, publish and start a rollout against a real hub API."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tests.hub.console.consolekit import client, populate, serve_api

REPO = Path(__file__).resolve().parents[3]
WORKFLOW = REPO / "examples" / "ci" / "edgefleet-rollout.yml"
SKIPPED = {"Install edgefleet"}  # the test runs the edgefleet under test


@pytest.mark.slow
def test_workflow_steps_roll_out_through_the_api(tmp_path: Path) -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    job = workflow["jobs"]["rollout"]
    hub = populate(tmp_path / "hub")
    workspace = tmp_path / "workspace"
    shutil.copytree(REPO / "examples", workspace / "examples")
    with serve_api(hub) as base:
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        }
        for key, value in job["env"].items():
            env[key] = str(value)
        env.update(
            {
                "EDGEFLEET_HUB_URL": base,
                "EDGEFLEET_TOKEN": hub.token("operator"),
                "PUBLISHER_KEY_PEM": hub.fx.publisher_key.read_text(),
                "EDGEFLEET_REGISTRY": str(workspace / "registry"),
                "TARGET": "group=north",
            }
        )
        ran = []
        for step in job["steps"]:
            if "run" not in step or step["name"] in SKIPPED:
                continue
            assert not re.search(r"\$\{\{", step["run"]), "run steps read only env variables"
            done = subprocess.run(
                ["bash", "-eo", "pipefail", "-c", step["run"]],
                cwd=workspace,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert done.returncode == 0, (step["name"], done.stdout, done.stderr)
            ran.append(step["name"])
        assert ran[-1] == "Report where it stands"
        viewer = client(base, hub.token("viewer"))
        rollouts = viewer.get("/api/v1/rollouts").json()["items"]
        digits = [r for r in rollouts if r["model"] == "digits"]
        assert len(digits) == 1
        assert digits[0]["selector"] == "group=north" and digits[0]["devices"] == 4
        bundles = {b["model"] for b in viewer.get("/api/v1/bundles").json()["items"]}
        assert "digits" in bundles
        assert not (workspace / "build" / "publisher.key").exists()
    hub.store.close()
