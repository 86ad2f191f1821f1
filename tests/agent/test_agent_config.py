"""agent.toml: defaults, relative paths, and errors that name the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.agent.config import AgentConfig, example_config
from edgefleet.agent.errors import AgentConfigError
from edgefleet.core.errors import exit_code_for

MINIMAL = '[agent]\ndevice_id = "pi-1"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_minimal_config_has_defaults(tmp_path: Path) -> None:
    cfg = AgentConfig.load(write(tmp_path, MINIMAL))
    assert cfg.device_id == "pi-1"
    assert cfg.endpoint.host == "127.0.0.1" and cfg.endpoint.token is None
    assert cfg.probation.smoke is True and cfg.probation.max_attempts == 3
    assert cfg.telemetry.window_s is None  # the profile decides
    assert cfg.mqtt is None
    assert cfg.source == tmp_path / "agent.toml"


def test_example_config_round_trips(tmp_path: Path) -> None:
    cfg = AgentConfig.load(write(tmp_path, example_config("dev-7", tmp_path / "state")))
    assert cfg.device_id == "dev-7"
    assert cfg.state_dir == tmp_path / "state"
    assert cfg.probation.max_seconds == 600.0


def test_relative_paths_are_resolved_against_the_config_file(tmp_path: Path) -> None:
    text = MINIMAL + 'state_dir = "state"\ntrust_store = "keys/trust.json"\n'
    text += '[mqtt]\nhost = "hub"\nca_file = "tls/ca.pem"\n'
    cfg = AgentConfig.load(write(tmp_path, text))
    assert cfg.state_dir == tmp_path / "state"
    assert cfg.trust_store == tmp_path / "keys" / "trust.json"
    assert cfg.mqtt is not None and cfg.mqtt.ca_file == tmp_path / "tls" / "ca.pem"
    assert cfg.mqtt.tls and cfg.mqtt.topic_root == "edgefleet/v1"


def test_full_sections(tmp_path: Path) -> None:
    text = MINIMAL + (
        '[endpoint]\nhost = "0.0.0.0"\nport = 9000\ntoken = "0123456789abcdef0123"\n'
        "max_body_bytes = 2048\n"
        "[probation]\nsmoke = false\nmin_requests = 5\nmax_seconds = 2\n"
        "max_error_rate = 0.2\nmax_p95_latency_ms = 50\nmax_attempts = 2\n"
        "[telemetry]\nwindow_s = 60\nbudget_bytes = 1048576\nflush_interval_s = 0.5\n"
        "prediction_ring = 100\n"
        '[mqtt]\nhost = "hub.local"\nport = 8883\nusername = "pi-1"\npassword = "pw"\n'
        'topic_root = "acme/edge"\n'
    )
    cfg = AgentConfig.load(write(tmp_path, text))
    assert cfg.endpoint.port == 9000 and cfg.endpoint.token is not None
    assert cfg.probation.max_seconds == 2.0 and isinstance(cfg.probation.max_seconds, float)
    assert cfg.telemetry.budget_bytes == 1048576
    assert cfg.mqtt is not None and cfg.mqtt.username == "pi-1"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("", "agent.device_id"),
        ('[agent]\ndevice_id = "has space"\n', "agent.device_id"),
        (MINIMAL + "colour = 1\n", "agent.colour"),
        (MINIMAL + "[extra]\nx = 1\n", "extra"),
        (MINIMAL + '[endpoint]\nhost = "0.0.0.0"\n', "endpoint.token"),
        (MINIMAL + '[endpoint]\ntoken = "short"\n', "endpoint.token"),
        (MINIMAL + "[endpoint]\nport = 70000\n", "endpoint.port"),
        (MINIMAL + "[endpoint]\nport = true\n", "endpoint.port"),
        (MINIMAL + "[probation]\nmax_error_rate = 1.5\n", "probation.max_error_rate"),
        (MINIMAL + "[probation]\nmin_requests = -1\n", "probation.min_requests"),
        (MINIMAL + '[probation]\nsmoke = "yes"\n', "probation.smoke"),
        (MINIMAL + "[probation]\nmax_attempts = 0\n", "probation.max_attempts"),
        (MINIMAL + "[telemetry]\nbudget_bytes = 10\n", "telemetry.budget_bytes"),
        (MINIMAL + "[telemetry]\nflush_interval_s = 0\n", "telemetry.flush_interval_s"),
        (MINIMAL + "[mqtt]\nport = 1\n", "mqtt.host"),
        (MINIMAL + '[mqtt]\nhost = "h"\ntopic_root = "a/#"\n', "mqtt.topic_root"),
        (MINIMAL + '[mqtt]\nhost = "h"\ncert_file = "c.pem"\n', "mqtt.cert_file"),
        (MINIMAL + '[mqtt]\nhost = "h"\npassword = "p"\n', "mqtt.password"),
        (MINIMAL + 'log_level = "loud"\n', "agent.log_level"),
        (MINIMAL + "state_dir = 3\n", "agent.state_dir"),
    ],
)
def test_errors_name_file_and_field(tmp_path: Path, text: str, field: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(AgentConfigError) as info:
        AgentConfig.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert field in message
    assert exit_code_for(info.value) == 2


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AgentConfigError, match="not valid TOML"):
        AgentConfig.load(write(tmp_path, "[agent\n"))
    with pytest.raises(AgentConfigError, match="no such config file"):
        AgentConfig.load(tmp_path / "absent.toml")
