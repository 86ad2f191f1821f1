"""End to end: ``edgefleet demo`` tells its whole story and leaves no process behind.

Each test runs the real command as a child process (a hub with its embedded broker,
real agent processes, the registry and packager commands) in a work directory under
``tmp_path``. Every process the demo starts carries that directory in its command line
or in ``EDGEFLEET_DEMO_RUN``, so leftovers are found by scanning ``/proc``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

DEMO_TIMEOUT_S = 600


def edgefleet(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgefleet.core.cli.main", *args]


def processes_of(marker: str) -> dict[int, str]:
    """Live processes whose command line or environment mentions ``marker``."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (entry / "environ").read_bytes().decode(errors="replace")
            status = (entry / "status").read_text()
        except OSError:  # gone meanwhile, or not ours
            continue
        if "State:\tZ" in status:
            continue  # a zombie holds no resources and is its parent's to reap
        if marker in cmdline or marker in environ:
            found[int(entry.name)] = cmdline.strip()
    return found


def test_demo_json_summary_tells_the_story_and_nothing_is_left(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    proc = subprocess.run(
        edgefleet("demo", "--devices", "3", "--workdir", str(workdir), "--json"),
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)  # --json: one JSON object and nothing else on stdout

    devices = summary["devices"]
    assert len(devices) == 3
    assert len({d["group"] for d in devices.values()}) == 2
    assert len({d["profile"] for d in devices.values()}) == 2
    assert {name: d["version"] for name, d in devices.items()} == dict.fromkeys(devices, 2)

    outcomes = {r["version"]: r for r in summary["rollouts"]}
    assert outcomes[1]["outcome"] == "completed"
    assert outcomes[2]["outcome"] == "completed"
    assert len(outcomes[2]["phase_sizes"]) > 1  # v2 went out in phases
    assert outcomes[3]["outcome"] == "rolled_back"
    assert "gate failed" in outcomes[3]["abort_reason"]
    # The device that got v3 failed its probation and the hub sent it back to v2.
    assert "rolled_back" in outcomes[3]["devices"].values()

    drift = summary["drift"]["devices"]
    injected = {name for name, d in drift.items() if d["drift_injected"]}
    found = {name for name, d in drift.items() if d["verdict"] == "drift"}
    assert len(injected) == 2
    assert found == injected
    for name in set(devices) - injected:
        assert drift[name]["verdict"] == "no_drift", drift[name]
    for name in injected:
        assert "mean_radius" in drift[name]["drifted_features"]

    report = Path(summary["report"])
    assert report.is_file() and report.is_relative_to(workdir)
    assert "<html" in report.read_text(encoding="utf-8")[:2000].lower()
    assert summary["checks"] == {
        "all_devices_on_v2": True,
        "v3_rolled_back": True,
        "drift_on_drifted_devices_only": True,
        "console_lists_devices": True,
    }
    # The dashboard's URL and a viewer token were printed, and while the hub ran the
    # API behind that URL listed every device to that token (checked by the demo).
    console = summary["console"]
    assert console["url"].startswith("http://127.0.0.1:") and console["role"] == "viewer"
    assert console["token"] and console["devices_listed"] == sorted(devices)
    assert summary["ok"] is True
    assert processes_of(str(workdir)) == {}


def printed_console(narration: str) -> tuple[str, str] | None:
    """The dashboard URL and the viewer token the demo printed, once both are out."""
    url = re.search(r"fleet console: open (http://\S+/) while the demo runs", narration)
    token = re.search(r"viewer token \(paste it into the dashboard\): (\S+)", narration)
    return None if url is None or token is None else (url.group(1), token.group(1))


def get_json(url: str, token: str | None = None) -> tuple[int, object]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, None


def test_ctrl_c_during_the_demo_stops_every_process(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    marker = str(workdir)
    narration = tmp_path / "narration.txt"
    with narration.open("wb") as out:
        demo = subprocess.Popen(
            edgefleet("demo", "--devices", "3", "--workdir", marker),
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
        )
    try:
        # While the demo runs, the URL it printed serves the API, and the viewer token
        # it printed reads the fleet (the three devices are enrolled before the agents).
        wait_until(
            "the dashboard URL and token",
            lambda: printed_console(narration.read_text(encoding="utf-8")) is not None,
            120,
        )
        found = printed_console(narration.read_text(encoding="utf-8"))
        assert found is not None
        url, token = found
        assert get_json(f"{url}api/v1/health") == (200, {"status": "ok", "api": "v1"})
        assert get_json(f"{url}api/v1/devices")[0] == 401

        # Interrupt while long-lived children (hub, agents) and short commands (the
        # registry or the packager) run at the same time.
        def busy() -> bool:
            cmdlines = processes_of(marker).values()
            agents = sum(1 for c in cmdlines if " agent run " in c)
            commands = sum(1 for c in cmdlines if " registry register " in c or " pack " in c)
            return agents == 3 and commands >= 1 and any(" hub serve " in c for c in cmdlines)

        wait_until("the hub, the agents and a packaging command", busy, 300)
        status, page = get_json(f"{url}api/v1/devices", token)
        assert status == 200 and isinstance(page, dict), (status, page)
        assert sorted(d["device"] for d in page["items"]) == ["gw-1", "pi-1", "pi-2"]
        demo.send_signal(signal.SIGINT)
        code = demo.wait(timeout=90)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    err = demo.stderr.read() if demo.stderr else ""
    # click turns Ctrl-C into its Abort: one line on stderr and a failure exit code.
    assert code != 0 and ("aborted" in err or "interrupted" in err), (code, err)
    assert processes_of(marker) == {}
