"""NaN and infinity in agent.toml are refused with one line naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.agent.config import AgentConfig
from edgefleet.agent.errors import AgentConfigError


@pytest.mark.parametrize(
    ("section", "line", "field"),
    [
        ("probation", "max_error_rate = nan", "probation.max_error_rate"),
        ("probation", "max_seconds = inf", "probation.max_seconds"),
        ("probation", "max_p95_latency_ms = nan", "probation.max_p95_latency_ms"),
        ("telemetry", "flush_interval_s = nan", "telemetry.flush_interval_s"),
        ("agent", "shutdown_timeout_s = inf", "agent.shutdown_timeout_s"),
    ],
)
def test_non_finite_numbers_are_refused(
    tmp_path: Path, section: str, line: str, field: str
) -> None:
    path = tmp_path / "agent.toml"
    extra = f"{line}\n" if section == "agent" else f"[{section}]\n{line}\n"
    path.write_text(f'[agent]\ndevice_id = "pi-1"\nstate_dir = "{tmp_path}"\n{extra}')
    with pytest.raises(AgentConfigError) as info:
        AgentConfig.load(path)
    assert field in str(info.value) and "\n" not in str(info.value)
