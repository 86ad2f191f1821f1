"""The endpoint under attack from the local network, against a real ``agent run`` process.

The daemon runs with the Raspberry Pi Zero 2 W's memory figures (its
``agent_memory_budget_mb`` and ``max_bundle_bytes``) and a bearer token. Each
attack is bounded in count and time; after each one the daemon's peak resident
memory (``VmHWM`` in ``/proc/PID/status``) must still be within the budget and
a client with the token must still get 200. Latencies under attack are in
``bench/agent.py``, not here.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from tests.agent.attack_client import (
    connect,
    infer_body,
    largest_admitted_rows,
    peak_rss_mb,
    post_expecting_continue,
    post_head,
    read_response,
    run_together,
    served,
    unauthenticated_bodies,
)
from tests.support.agents import PROFILE_NAME, kill, make_env, profile_toml, stop

from edgefleet.core.profiles import load_profile

pytestmark = pytest.mark.slow

ZERO = load_profile("rpi-zero-2w")
TOKEN = "attack-test-token-0123456789"


def zero_like_profile() -> str:
    """The test gateway profile with the Pi Zero's memory budget and bundle size."""
    return profile_toml(
        description=f"x86_64 test machine with the memory figures of {ZERO.name}",
        memory_mb=ZERO.memory_mb,
        max_bundle_bytes=ZERO.max_bundle_bytes,
        extra=f"\n[agent]\nagent_memory_budget_mb = {ZERO.agent_memory_budget_mb}\n",
    )


@dataclass
class Daemon:
    proc: subprocess.Popen[str]
    port: int

    def within_budget(self) -> None:
        peak = peak_rss_mb(self.proc.pid)
        print(f"peak RSS {peak:.1f} MB")
        assert peak <= ZERO.agent_memory_budget_mb, (
            f"peak RSS {peak:.0f} MB above the budget of {ZERO.agent_memory_budget_mb} MB"
        )

    def served(self) -> int:
        return served(self.port, TOKEN)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    env = make_env(tmp_path_factory.mktemp("attacks"))
    (env.root / "profiles" / f"{PROFILE_NAME}.toml").write_text(zero_like_profile())
    config = env.config_path.read_text().replace("[endpoint]\n", f'[endpoint]\ntoken = "{TOKEN}"\n')
    env.config_path.write_text(config)
    installed = env.cli("install", str(env.bundle(1)))
    assert installed.returncode == 0, installed.stderr
    proc = env.start_daemon()
    try:
        url = env.endpoint_url(proc)
        running = Daemon(proc, int(url.rsplit(":", 1)[1]))
        assert running.served() == 200
        yield running
    finally:
        try:
            assert stop(proc) == 0, env.log_tail()
        finally:
            kill(proc)


def test_unauthenticated_bodies_are_never_buffered(daemon: Daemon) -> None:
    results: list[int] = []

    def meanwhile() -> None:
        # A client without the token sending its head first is told 401 at once ...
        with connect(daemon.port) as sock:
            sock.sendall(post_head(4_000_000, "wrong-token-0123456789"))
            results.append(read_response(sock)[0])
            assert sock.recv(1) == b""  # ... and closed without waiting for the body
        results.append(daemon.served())  # a client with the token is served

    run_together([lambda: unauthenticated_bodies(daemon.port), meanwhile], timeout_s=90)
    assert results == [401, 200]
    assert daemon.served() == 200
    daemon.within_budget()


def test_idle_connections_do_not_lock_clients_out(daemon: Daemon) -> None:
    idle = [connect(daemon.port) for _ in range(300)]
    try:
        assert daemon.served() == 200
        assert daemon.served() == 200
    finally:
        for sock in idle:
            sock.close()
    daemon.within_budget()


def test_big_batches_stay_within_the_memory_budget(daemon: Daemon) -> None:
    results: list[int] = []

    def send_all(body: bytes) -> None:
        results.clear()
        send = lambda: results.append(post_expecting_continue(daemon.port, body, TOKEN))  # noqa: E731
        run_together([send] * 4 + [lambda: results.append(-daemon.served())], timeout_s=120)

    # Four of the 4 MB, 520,000-row requests that used to take 751 MB ...
    send_all(infer_body(520_000))
    daemon.within_budget()
    assert sorted(results) == [-200] + [413] * 4
    # ... and four of the largest batches this budget admits, sent at once: they
    # take turns in the tensor budget instead of decoding side by side.
    send_all(infer_body(largest_admitted_rows(daemon.port, TOKEN)))
    daemon.within_budget()
    assert sorted(results) == [-200] + [200] * 4
