"""The one pid-naming flock (core/pid_lock.py) that the agent and the hub both take."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgefleet.core.pid_lock import PidLock


def test_second_holder_is_refused_and_names_the_first(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "x.lock"
    first = PidLock(path)
    assert first.try_acquire()
    assert first.holder() == os.getpid()
    # flock locks belong to the open file description: a second open in this process
    # conflicts exactly like another process would.
    second = PidLock(path)
    assert not second.try_acquire()
    assert not second.held
    assert second.holder() == os.getpid()  # the loser did not truncate the pid
    first.release()
    assert second.try_acquire()
    second.release()


def test_acquire_is_idempotent_and_context_releases(tmp_path: Path) -> None:
    lock = PidLock(tmp_path / "x.lock")
    with lock:
        assert lock.try_acquire()
        assert lock.try_acquire()
        assert lock.held
    assert not lock.held
    assert PidLock(tmp_path / "x.lock").try_acquire()


def test_unreadable_pid_is_none(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    path.write_text("not a pid\n")
    assert PidLock(path).holder() is None
    assert PidLock(tmp_path / "absent.lock").holder() is None


def test_os_errors_surface_as_oserror(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError):
        PidLock(blocker / "x.lock").try_acquire()
