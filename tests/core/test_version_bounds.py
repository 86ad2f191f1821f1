"""Model versions are bounded to 2^53 - 1, what every store holds exactly (SQLite and
PostgreSQL integers, JSON numbers read as doubles)."""

from __future__ import annotations

import pytest

from edgefleet.core.directive import Assignment
from edgefleet.core.errors import BundleError, DirectiveError
from edgefleet.core.manifest import MAX_MODEL_VERSION, Manifest
from edgefleet.packager.errors import InvalidNameError
from edgefleet.packager.registry.refs import parse_ref

TOO_BIG = (2**53, 2**63, 2**64 + 5)


def _manifest(version: int) -> Manifest:
    return Manifest(
        bundle_id="b",
        model={"name": "iris", "version": version, "task": "classification"},
        target={"arch": "x86_64"},
    )


def test_the_bound_is_two_to_the_53_minus_one() -> None:
    assert MAX_MODEL_VERSION == 9_007_199_254_740_991
    assert _manifest(MAX_MODEL_VERSION).version == MAX_MODEL_VERSION


@pytest.mark.parametrize("version", TOO_BIG)
def test_a_manifest_with_a_larger_version_is_refused(version: int) -> None:
    with pytest.raises(BundleError, match="model.version must be at most 9007199254740991"):
        _manifest(version)


@pytest.mark.parametrize("version", TOO_BIG)
def test_a_directive_assignment_with_a_larger_version_is_refused(version: int) -> None:
    with pytest.raises(DirectiveError, match="assignment version"):
        Assignment("iris", "ab" * 32, version, 100, "r1")


@pytest.mark.parametrize("version", TOO_BIG)
def test_a_registry_reference_with_a_larger_version_is_refused(version: int) -> None:
    with pytest.raises(InvalidNameError, match="versions end at"):
        parse_ref(f"iris:{version}")
    assert parse_ref(f"iris:{MAX_MODEL_VERSION}").version == MAX_MODEL_VERSION


def test_a_registry_reference_takes_ascii_digits_only() -> None:
    with pytest.raises(InvalidNameError, match="NAME:VERSION"):
        parse_ref("iris:\u0663")  # ARABIC-INDIC DIGIT THREE: int() would read 3
