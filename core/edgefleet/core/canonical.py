"""Canonical JSON: the exact bytes that signatures cover.

Invariants:

- ``canonical_json(x)`` is a pure function of the JSON value ``x``: object keys
  sorted (by code point), separators ``","`` and ``":"`` with no whitespace,
  UTF-8 without ``\\u`` escapes for non-ASCII text, integers as integers and
  floats in Python's shortest round-tripping form.
- NaN and infinities are refused: they are not JSON and would make the signed
  bytes depend on the parser.
- ``parse_json`` is the strict counterpart for untrusted input: it refuses
  duplicate object keys (two parsers could pick different values, a classic
  signature-bypass trick), NaN/Infinity literals, invalid UTF-8 and nesting
  deeper than :data:`MAX_DEPTH`.
- For every value ``x``: ``canonical_json(parse_json(canonical_json(x))) ==
  canonical_json(x)``.
"""

from __future__ import annotations

import json
import math
from typing import Any

#: Deepest nesting ``parse_json`` accepts; manifests are a handful of levels deep.
MAX_DEPTH = 64


def canonical_json(obj: Any) -> bytes:
    """The canonical UTF-8 bytes of the JSON value ``obj``.

    Raises ``ValueError`` for NaN/infinity and ``TypeError`` for values JSON
    cannot represent (sets, bytes, objects).

    >>> canonical_json({"b": 1, "a": [1.5, "é", None]})
    b'{"a":[1.5,"\\xc3\\xa9",null],"b":1}'
    """
    try:
        text = json.dumps(
            obj,
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )
    except ValueError as e:
        raise ValueError(f"not canonical JSON: {e}") from e
    return text.encode("utf-8")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


def _finite_float(text: str) -> float:
    # json.loads turns 1e400 into inf, which canonical_json would then refuse.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _check_depth(value: Any, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        for item in value.values():
            _check_depth(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_depth(item, depth + 1)


def parse_json(data: bytes) -> Any:
    """Parse untrusted JSON bytes strictly; ``ValueError`` names the problem.

    >>> parse_json(b'{"a": 1}')
    {'a': 1}
    >>> parse_json(b'{"a": 1, "a": 2}')
    Traceback (most recent call last):
    ...
    ValueError: duplicate key 'a'
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8: {e.reason} at byte {e.start}") from e
    try:
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicate_keys,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
        )
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON: {e.msg} at line {e.lineno} column {e.colno}") from e
    except RecursionError as e:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels") from e
    _check_depth(value)
    return value


def is_canonical(data: bytes) -> bool:
    """Whether ``data`` parses strictly and is already in canonical form."""
    try:
        return canonical_json(parse_json(data)) == data
    except (ValueError, TypeError):
        return False
