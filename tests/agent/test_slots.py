"""Slot pointers: both pointers switch together, atomically, with no temp files left."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgefleet.agent.deploy.atomic_files import atomic_write_bytes, remove_temp_files, temp_sibling
from edgefleet.agent.deploy.layout import StateLayout, StateLock, lock_is_held_elsewhere
from edgefleet.agent.deploy.slots import SlotPointers, SlotTable
from edgefleet.agent.errors import DeploymentError

A = "a" * 64
B = "b" * 64
C = "c" * 64


def test_switch_and_read_back(tmp_path: Path) -> None:
    layout = StateLayout(tmp_path)
    layout.ensure()
    slots = SlotTable(layout)
    assert slots.get("iris") == SlotPointers()
    slots.switch("iris", SlotPointers(A))
    slots.switch("iris", SlotPointers(B, A))
    slots.switch("wine", SlotPointers(C))
    assert slots.get("iris") == SlotPointers(B, A)
    assert slots.models() == ["iris", "wine"]
    assert slots.referenced() == {A, B, C}
    assert sorted(p.name for p in layout.slots.iterdir()) == ["iris.json", "wine.json"]


def test_empty_active_removes_the_slot_file(tmp_path: Path) -> None:
    layout = StateLayout(tmp_path)
    slots = SlotTable(layout)
    slots.switch("iris", SlotPointers(A))
    slots.switch("iris", SlotPointers())
    assert slots.models() == []
    assert not layout.slot_file("iris").exists()


@pytest.mark.parametrize(
    "pointers",
    [{"active": "nope"}, {"active": None, "previous": A}, {"active": A, "previous": "../x"}],
)
def test_bad_pointers_are_refused(pointers: dict[str, str | None]) -> None:
    with pytest.raises(DeploymentError):
        SlotPointers.from_dict(pointers)


def test_bad_model_names_are_refused(tmp_path: Path) -> None:
    slots = SlotTable(StateLayout(tmp_path))
    for name in ("../etc", "", ".hidden", "a/b"):
        with pytest.raises(DeploymentError):
            slots.switch(name, SlotPointers(A))


def test_corrupt_slot_file_is_an_error_naming_it(tmp_path: Path) -> None:
    layout = StateLayout(tmp_path)
    layout.ensure()
    layout.slot_file("iris").write_text("{not json")
    with pytest.raises(DeploymentError, match="iris.json"):
        SlotTable(layout).get("iris")


def test_atomic_write_leaves_old_or_new_and_temp_files_are_swept(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    atomic_write_bytes(target, b"old")
    # A crash after the temp file was written but before the rename:
    temp_sibling(target).write_bytes(b"half")
    assert target.read_bytes() == b"old"
    assert remove_temp_files(tmp_path) == [temp_sibling(target)]
    assert os.listdir(tmp_path) == ["x.json"]
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["x.json"]


def test_state_lock_is_exclusive(tmp_path: Path) -> None:
    layout = StateLayout(tmp_path)
    first = StateLock(layout)
    assert first.acquire()
    assert lock_is_held_elsewhere(layout)
    assert not StateLock(layout).acquire()
    first.release()
    assert not lock_is_held_elsewhere(layout)
    with StateLock(layout) as again:
        assert again.acquire()
