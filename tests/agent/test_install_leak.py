"""Installs do not leak: a real ``agent run`` goes through 20 install/rollback cycles and
its OS threads and resident memory, read from ``/proc``, stay flat.

The profile gives sessions two intra-op threads, so every session that stays referenced
after its model was replaced leaves an onnxruntime pool thread behind (the leak this
guards against: the endpoint's per-model response encoder held its model, the key of
the weak cache it lived in, so no replaced model was ever freed).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from tests.support.agents import PROFILE_NAME, infer, kill, make_env, stop

pytestmark = pytest.mark.slow

CYCLES = 20
ROW = [[5.1, 3.5, 1.4, 0.2]]


def threads_and_rss_mb(pid: int) -> tuple[int, float]:
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(status["Threads"]), int(status["VmRSS"].split()[0]) / 1024


def settled(pid: int) -> tuple[int, float]:
    """Threads and RSS once short-lived worker threads of the last request are gone."""
    samples = []
    for _ in range(5):
        samples.append(threads_and_rss_mb(pid))
        time.sleep(0.1)
    return min(s[0] for s in samples), samples[-1][1]


def test_twenty_install_rollback_cycles_leave_threads_and_memory_flat(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    profile = tmp_path / "profiles" / f"{PROFILE_NAME}.toml"
    profile.write_text(profile.read_text().replace("intra_op_threads = 1", "intra_op_threads = 2"))
    assert env.cli("install", str(env.bundle(1))).returncode == 0
    bundles = [env.bundle(version) for version in range(2, 2 + CYCLES)]
    proc = env.start_daemon()
    figures: list[tuple[int, float]] = []
    try:
        url = env.endpoint_url(proc)
        for bundle in bundles:
            result = env.cli("install", str(bundle), "--wait", "final")
            assert result.returncode == 0, result.stderr
            assert infer(url, "iris", ROW)[0] == 200  # the new model's encoder is built
            result = env.cli("rollback", "iris")
            assert result.returncode == 0, result.stderr
            assert infer(url, "iris", ROW)[1]["model_version"] == "1"
            figures.append(settled(proc.pid))
    finally:
        code = stop(proc)
        kill(proc)
    assert code == 0
    threads = [t for t, _ in figures]
    rss = np.array([r for _, r in figures], dtype=float)
    slope = float(np.polyfit(np.arange(5, CYCLES + 1), rss[4:], 1)[0])
    print(f"threads per cycle: {threads}")
    print(
        f"RSS MB per cycle: {[round(float(r), 2) for r in rss]}; slope 5-20: {slope:.3f} MB/cycle"
    )
    assert threads[-1] == threads[0], threads
    assert slope < 0.5, slope
