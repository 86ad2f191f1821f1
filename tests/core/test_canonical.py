"""Canonical JSON: exact bytes, strict parsing of untrusted input, stability."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.core.canonical import MAX_DEPTH, canonical_json, is_canonical, parse_json

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=25,
)


def test_sorted_keys_no_whitespace_utf8() -> None:
    assert canonical_json({"b": [1, 2.5, None], "a": "é", "c": {"z": True, "y": False}}) == (
        '{"a":"é","b":[1,2.5,null],"c":{"y":false,"z":true}}'.encode()
    )


def test_control_characters_are_escaped() -> None:
    assert canonical_json("a\nb\x00") == b'"a\\nb\\u0000"'


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), {"x": [float("nan")]}])
def test_non_finite_numbers_are_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match="not canonical JSON"):
        canonical_json(bad)


@pytest.mark.parametrize("bad", [{1, 2}, b"bytes", object()])
def test_non_json_values_are_refused(bad: Any) -> None:
    with pytest.raises(TypeError):
        canonical_json(bad)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'{"a": 1, "a": 2}', "duplicate key 'a'"),
        (b'{"x": NaN}', "NaN is not allowed"),
        (b"[Infinity]", "Infinity is not allowed"),
        (b"[1e400]", "out of range"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"a": ', "invalid JSON"),
        (b"[" * (MAX_DEPTH + 2) + b"]" * (MAX_DEPTH + 2), "nested deeper"),
        (b"[" * 100_000 + b"]" * 100_000, "nested deeper"),
    ],
)
def test_parse_json_refuses_ambiguous_input(data: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_json(data)


def test_is_canonical() -> None:
    assert is_canonical(b'{"a":1,"b":[]}')
    assert not is_canonical(b'{"b":[],"a":1}')
    assert not is_canonical(b'{"a": 1}')
    assert not is_canonical(b"not json")


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_round_trip_and_stability(value: Any) -> None:
    encoded = canonical_json(value)
    parsed = parse_json(encoded)
    assert parsed == value
    assert canonical_json(parsed) == encoded
    assert is_canonical(encoded)
    # The standard library reads canonical JSON the same way.
    assert json.loads(encoded) == value


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=6), st.integers(), min_size=2, max_size=8))
def test_key_insertion_order_does_not_matter(value: dict[str, int]) -> None:
    reversed_dict = dict(reversed(list(value.items())))
    assert canonical_json(reversed_dict) == canonical_json(value)
