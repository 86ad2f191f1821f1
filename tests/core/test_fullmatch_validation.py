"""Names and ids are validated by full matches: a trailing newline (which ``$`` accepts
before the end) is refused everywhere, e.g. a model named ``iris\\n`` no longer installs
as ``slots/iris\\n.json``."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from edgefleet.agent.deploy.compat import check_target
from edgefleet.agent.deploy.slots import _checked as checked_slot_name
from edgefleet.core.directive import Assignment
from edgefleet.core.keys import _check_name as check_key_name
from edgefleet.core.manifest import check_member_path
from edgefleet.core.profiles import load_profile
from edgefleet.core.protocol import Topics, device_id_problem
from edgefleet.core.protocol.messages import check_sha256
from edgefleet.hub.selectors import check_device_id, check_word
from edgefleet.packager.registry.refs import check_alias, check_model_name

SHA = "ab" * 32


def _target_check(name: str) -> None:
    check_target(
        {"name": name},
        {"profile": "x86_64-gateway", "arch": "x86_64"},
        profile_name="x86_64-gateway",
        arch="x86_64",
        onnxruntime_version="1.32",
    )


def _device_id(value: str) -> None:
    problem = device_id_problem(value)
    if problem is not None:
        raise ValueError(problem)


VALIDATORS: dict[str, tuple[Callable[[str], object], str]] = {
    "device id (protocol)": (_device_id, "pi-1"),
    "device id (topics)": (lambda v: Topics().status(v), "pi-1"),
    "device id (hub)": (check_device_id, "pi-1"),
    "group (hub)": (lambda v: check_word("group", v), "lab"),
    "model name (registry)": (check_model_name, "iris"),
    "alias (registry)": (check_alias, "production"),
    "model name (agent install)": (_target_check, "iris"),
    "model name (agent slots)": (checked_slot_name, "iris"),
    "key name": (check_key_name, "publisher"),
    "member path": (check_member_path, "model.onnx"),
    "sha256 (protocol)": (lambda v: check_sha256("sha", v), SHA),
    "sha256 (directive)": (lambda v: Assignment("iris", v, 1, 10, "r1"), SHA),
}


@pytest.mark.parametrize("name", list(VALIDATORS))
def test_a_trailing_newline_is_refused(name: str) -> None:
    validate, good = VALIDATORS[name]
    validate(good)
    with pytest.raises(Exception) as info:  # each validator raises its own family's error
        validate(good + "\n")
    assert not isinstance(info.value, AssertionError)


def test_a_profile_name_with_a_newline_is_not_looked_up() -> None:
    with pytest.raises(Exception, match="not a profile name"):
        load_profile("rpi4-arm64\n")
