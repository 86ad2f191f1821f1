"""Hub limits for a bad day: hostile numbers, broken stores and odd umasks are refused
with one line naming the problem, and nothing half-written is left behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tests.hub.hubkit import HubFixture, make_bundle, make_hub

import edgefleet.core.manifest as manifest_module


def hub_cli(
    fx: HubFixture, *args: str, umask: int | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "edgefleet.core.cli.main",
            "hub",
            *args,
            "--config",
            str(fx.config_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=None if umask is None else (lambda: _set_umask(umask)),
    )


def _set_umask(mask: int) -> None:
    import os

    os.umask(mask)


def test_publish_refuses_a_version_beyond_two_to_the_53(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fx = make_hub(tmp_path)
    # A publisher whose tools know no bound signs version 2^63.
    monkeypatch.setattr(manifest_module, "MAX_MODEL_VERSION", 2**64)
    info = make_bundle(tmp_path / "huge.efb", fx.publisher_key, version=2**63)
    monkeypatch.undo()
    result = hub_cli(fx, "publish", str(info.path))
    assert result.returncode == 3, result.stderr
    assert result.stderr.count("\n") == 1 and "must be at most 9007199254740991" in result.stderr
    bundles = fx.config().store.bundles_dir
    assert not bundles.exists() or [p for p in bundles.rglob("*") if p.is_file()] == []
