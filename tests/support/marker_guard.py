"""A pytest plugin that keeps the fast lane honest: a test that starts a process must say so.

``make test-fast`` runs ``-m "not mqtt and not subprocess and not postgres and not chromium
and not slow"``; that lane is only dependable if every test that starts a broker, a
browser, a database server or any other process carries one of those markers. Reading
the code for ``subprocess`` does not find them all (fixtures, helpers and libraries
start processes too), so this plugin watches instead: it wraps ``subprocess.Popen`` and
``multiprocessing``'s process start for the whole session and fails, at teardown, every
test that started one without a marker that admits it. Tests that use a broker fixture
must carry ``mqtt`` whether or not the broker runs in-process (amqtt does).

The check is per test: a process started by a session-scoped fixture is charged to the
first test that set the fixture up, which uses it and so needs the marker anyway.
"""

from __future__ import annotations

import multiprocessing.process
import os
import subprocess
from collections.abc import Generator
from typing import Any

import pytest

#: Markers that take a test out of the fast lane; any of them admits a process start.
PROCESS_MARKERS = frozenset({"subprocess", "mqtt", "postgres", "chromium", "slow"})
#: Local tools that answer in milliseconds and start nothing that outlives them: the
#: registry asks ``git`` for the commit it records as lineage on every register; joblib
#: (under LightGBM) asks ``lscpu`` once per process for the number of physical cores.
INSTANT_TOOLS = frozenset({"git", "lscpu"})
#: Fixtures that mean "this test talks to a broker".
BROKER_FIXTURES = frozenset({"mosquitto", "mosquitto_factory", "amqtt_broker"})

_current: list[str | None] = [None]
_started: dict[str, str] = {}
_ran: set[str] = set()


def _note(what: str) -> None:
    nodeid = _current[0]
    if nodeid is not None:
        _started.setdefault(nodeid, what)


def _install() -> None:
    popen_init = subprocess.Popen.__init__
    if getattr(popen_init, "_edgefleet_guard", False):
        return

    def init(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
        argv0 = args if isinstance(args, str | bytes | os.PathLike) else next(iter(args), "")
        if os.path.basename(os.fsdecode(argv0)).split(" ")[0] not in INSTANT_TOOLS:
            _note(f"subprocess {args!r:.80}")
        popen_init(self, args, *rest, **kwargs)

    init._edgefleet_guard = True  # type: ignore[attr-defined]
    subprocess.Popen.__init__ = init  # type: ignore[method-assign]

    process_start = multiprocessing.process.BaseProcess.start

    def start(self: multiprocessing.process.BaseProcess) -> None:
        _note(f"multiprocessing {self.name}")
        process_start(self)

    multiprocessing.process.BaseProcess.start = start  # type: ignore[method-assign]


def pytest_configure(config: pytest.Config) -> None:
    _install()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
    _current[0] = item.nodeid
    try:
        yield
    finally:
        _current[0] = None


def _missing_marker(item: pytest.Item) -> str | None:
    marks = {m.name for m in item.iter_markers()}
    fixtures = set(getattr(item, "fixturenames", ()))
    if fixtures & BROKER_FIXTURES and "mqtt" not in marks:
        return f"uses a broker fixture ({', '.join(sorted(fixtures & BROKER_FIXTURES))})"
    started = _started.get(item.nodeid)
    if started is not None and not marks & PROCESS_MARKERS:
        return f"starts a process ({started})"
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None]:
    outcome = yield
    report = outcome.get_result()
    if call.when == "call":
        _ran.add(item.nodeid)
        return
    if call.when != "teardown" or item.nodeid not in _ran:
        return  # a test whose set-up failed has told its story already
    problem = _missing_marker(item)
    if problem is not None and report.passed:
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid} {problem} but carries none of the markers "
            f"{', '.join(sorted(PROCESS_MARKERS))} (see docs/testing.md)"
        )
