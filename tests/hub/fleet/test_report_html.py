"""The HTML drift report: self-contained, escaped, and rendered by headless Chromium cleanly.

Chromium (Debian's ``chromium``; ``scripts/install-system-deps.sh`` installs it) renders the
report from a file URL with networking features off and console logging on; any console
message (a script error, a blocked fetch) fails the test. A control page that tries to
fetch an image proves the console check sees what it should.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from tests.hub.fleet.fleetkit import MODEL, build_fleet, reference, run_cli

from edgefleet.hub.fleet import DriftQuery, FleetAggregator, FleetTelemetry, References

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")
WIDTH, HEIGHT = 1280, 2200
HOSTILE = "<script>alert(1)</script>"


def chromium() -> str:
    for candidate in CHROMIUM_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    pytest.fail(
        "chromium is not installed: run `bash scripts/install-system-deps.sh`", pytrace=False
    )


def render(page: Path, png: Path, profile_dir: Path) -> list[str]:
    """Screenshot ``page``; returns the console messages Chromium logged."""
    proc = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile_dir}",
            "--enable-logging=stderr",
            "--v=0",
            "--hide-scrollbars",
            f"--window-size={WIDTH},{HEIGHT}",
            f"--screenshot={png}",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert png.exists(), proc.stderr[-2000:]
    return [line for line in proc.stderr.splitlines() if "CONSOLE" in line]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.chromium
def test_report_is_self_contained_and_renders_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    profile = reference(np.random.default_rng(31))
    db = tmp_path / "fleet.db"
    build_fleet(
        db, profile, 5, np.random.default_rng(32), groups=("north", "south", "east", HOSTILE)
    )
    page = tmp_path / "report.html"
    code, out, err = run_cli(
        capsys,
        "hub",
        "drift",
        MODEL,
        "--db",
        str(db),
        "--by",
        "group",
        "--html",
        str(page),
        "--json",
    )
    assert code == 0, err
    assert json.loads(out)["html"] == str(page)
    html = page.read_text(encoding="utf-8")

    # Self-contained: no script, no external stylesheet/image/font, a CSP that forbids fetches.
    assert "<script" not in html.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html, re.I)
    assert "default-src 'none'" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # the hostile group, escaped
    # One reference-vs-current chart per drifted feature, plus the timeline charts.
    for name in ("f0", "f1", "f2", "f3", "f4"):
        assert f"{name}: PSI" in html
    assert html.count("<svg") >= 5 + 2

    shot = tmp_path / "report.png"
    console = render(page, shot, tmp_path / "chrome-report")
    assert console == []
    assert png_size(shot) == (WIDTH, HEIGHT)

    # Control: the same checks see a blocked fetch and an almost empty page.
    control = tmp_path / "control.html"
    control.write_text(
        '<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'\"></head><body>"
        '<img src="http://example.invalid/x.png"></body></html>'
    )
    control_shot = tmp_path / "control.png"
    control_console = render(control, control_shot, tmp_path / "chrome-control")
    assert any("Content Security Policy" in line for line in control_console)
    # A page of charts and tables compresses far worse than a blank one.
    assert shot.stat().st_size > 10 * control_shot.stat().st_size


@pytest.mark.parametrize("minute", [0, 5, 30, 59])
def test_the_report_fleet_has_two_time_buckets_at_any_minute_of_the_hour(
    tmp_path: Path, minute: int
) -> None:
    """The timeline charts need two buckets; the fixture fleet must give them at any time."""
    profile = reference(np.random.default_rng(31))
    now = (time.time() // 3600) * 3600 + minute * 60 + 1
    build_fleet(tmp_path / "fleet.db", profile, 5, np.random.default_rng(32), now=now)
    telemetry = FleetTelemetry(tmp_path / "fleet.db")
    try:
        result = FleetAggregator(telemetry.store, References(cache=telemetry.store)).query(
            DriftQuery(MODEL, by="group", since_s=now - 86400), now
        )
    finally:
        telemetry.close()
    points = [p for p in result.timeline if p.report is not None]
    assert [p.windows for p in points] == [60, 60]
