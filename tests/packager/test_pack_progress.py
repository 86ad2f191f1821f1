"""``pack`` shows one progress line per variant it measures on a terminal, none with --json."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.terminal import run_with_terminal_stderr


def pack_on_a_terminal(args: list[str]) -> tuple[int, str, str]:
    return run_with_terminal_stderr(
        [sys.executable, "-m", "edgefleet.core.cli.main", "pack", *args]
    )


@pytest.mark.subprocess
def test_a_line_per_measured_variant_on_stderr_only(
    cli: Any,
    models: dict[str, Any],
    registry_dir: Path,
    signing_key: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    files = models["digits_mlp"]
    registered = cli(
        "registry", "register", files.model, "--name", "digits", "--registry", registry_dir,
        "--reference-data", files.reference,
    )  # fmt: skip
    assert registered.code == 0, registered.err
    common = [
        "digits:1", "--profile", "rpi4-arm64", "--key", str(signing_key[0]),
        "--registry", str(registry_dir),
    ]  # fmt: skip
    code, out, err = pack_on_a_terminal([*common, "--out", str(tmp_path / "a")])
    assert code == 0, err
    measured = [line for line in err.splitlines() if line.startswith("... measured ")]
    names = [line.split()[2].rstrip(":") for line in measured]
    assert names[0] == "float32" and "dynamic" in names, err
    assert all("p50" in line for line in measured)
    assert "... measured" not in out  # the report on stdout is unchanged
    # With --json nothing but the JSON document, and no progress even on a terminal.
    code, out, err = pack_on_a_terminal([*common, "--out", str(tmp_path / "b"), "--json"])
    assert code == 0, err
    report = json.loads(out)
    assert {v["variant"] for v in report["quantization"]["variants"]} >= set(names)
    assert "... measured" not in err
