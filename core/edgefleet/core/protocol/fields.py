"""Decoding JSON payloads and reading validated fields out of them.

Invariants:

- Every failure raises :class:`~edgefleet.core.errors.ProtocolError` whose ``side`` names
  the party that sent the bad message and whose text names the message and the field.
  No other exception escapes (``json``, ``UnicodeDecodeError``, ``RecursionError`` and the
  int-digits limit are all wrapped).
- A payload larger than its limit is refused before it is parsed.
- ``NaN`` and ``Infinity`` are refused: they are not JSON and other implementations choke.
- Unknown fields are ignored, so a newer peer may add optional fields without a version bump.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from typing import Any, NoReturn

from edgefleet.core.errors import ProtocolError

#: The protocol version this code speaks; ``v`` in every JSON message.
PROTOCOL_VERSION = 1

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not allowed")


def load_json_object(payload: bytes, *, what: str, side: str, max_bytes: int) -> dict[str, Any]:
    """Parse ``payload`` as one UTF-8 JSON object of at most ``max_bytes`` bytes."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise ProtocolError(f"{what}: payload must be bytes", side=side)
    if len(payload) > max_bytes:
        raise ProtocolError(
            f"{what}: payload of {len(payload)} bytes exceeds {max_bytes}", side=side
        )
    if len(payload) == 0:
        raise ProtocolError(f"{what}: empty payload", side=side)
    try:
        text = bytes(payload).decode("utf-8")
        data = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as e:
        raise ProtocolError(f"{what}: not valid JSON ({_short(e)})", side=side) from e
    if not isinstance(data, dict):
        raise ProtocolError(f"{what}: expected a JSON object, got {type(data).__name__}", side=side)
    return data


def dump_json(obj: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON with sorted keys (stable bytes for the same message)."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, allow_nan=False).encode("utf-8")


def _short(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) <= 120 else text[:117] + "..."


class FieldReader:
    """Typed access to a decoded JSON object; each getter validates or raises ProtocolError."""

    def __init__(self, data: Mapping[str, Any], *, what: str, side: str) -> None:
        self.data = data
        self.what = what
        self.side = side

    def fail(self, message: str) -> ProtocolError:
        return ProtocolError(f"{self.what}: {message}", side=self.side)

    def _get(self, name: str) -> Any:
        if name not in self.data:
            raise self.fail(f"missing field {name!r}")
        return self.data[name]

    def version(self, supported: int = PROTOCOL_VERSION) -> int:
        """Check ``v``: an integer from 1 to ``supported`` (a newer major version is refused)."""
        v = self.integer("v", minimum=1)
        if v > supported:
            raise self.fail(f"unsupported version v={v} (this side speaks up to v={supported})")
        return v

    def text(self, name: str, *, max_len: int = 256, pattern: re.Pattern[str] | None = None) -> str:
        value = self._get(name)
        return self._check_str(name, value, max_len, pattern)

    def opt_text(
        self, name: str, *, max_len: int = 256, pattern: re.Pattern[str] | None = None
    ) -> str | None:
        value = self.data.get(name)
        if value is None:
            return None
        return self._check_str(name, value, max_len, pattern)

    def _check_str(
        self, name: str, value: Any, max_len: int, pattern: re.Pattern[str] | None
    ) -> str:
        if not isinstance(value, str):
            raise self.fail(f"field {name!r} must be a string")
        if len(value) > max_len:
            raise self.fail(f"field {name!r} longer than {max_len} characters")
        if pattern is not None and not pattern.fullmatch(value):
            raise self.fail(f"field {name!r} has an invalid value {value[:80]!r}")
        return value

    def sha256(self, name: str) -> str:
        return self.text(name, max_len=64, pattern=SHA256_HEX)

    def opt_sha256(self, name: str) -> str | None:
        return self.opt_text(name, max_len=64, pattern=SHA256_HEX)

    def integer(self, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
        return self.check_integer(name, self._get(name), minimum, maximum)

    def opt_integer(
        self, name: str, *, minimum: int | None = None, maximum: int | None = None
    ) -> int | None:
        value = self.data.get(name)
        if value is None:
            return None
        return self.check_integer(name, value, minimum, maximum)

    def check_integer(self, name: str, value: Any, minimum: int | None, maximum: int | None) -> int:
        # bool is an int subclass; true/false where a number belongs is a sender bug.
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(f"field {name!r} must be an integer")
        if minimum is not None and value < minimum:
            raise self.fail(f"field {name!r} must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise self.fail(f"field {name!r} must be <= {maximum}, got {value}")
        return value

    def number(self, name: str, *, minimum: float | None = None) -> float:
        return self.check_number(name, self._get(name), minimum)

    def opt_number(self, name: str, *, minimum: float | None = None) -> float | None:
        value = self.data.get(name)
        if value is None:
            return None
        return self.check_number(name, value, minimum)

    def check_number(self, name: str, value: Any, minimum: float | None) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(f"field {name!r} must be a number")
        try:
            number = float(value)
        except OverflowError as e:
            raise self.fail(f"field {name!r} is out of range") from e
        if not math.isfinite(number):
            raise self.fail(f"field {name!r} must be finite")
        if minimum is not None and number < minimum:
            raise self.fail(f"field {name!r} must be >= {minimum}, got {number}")
        return number

    def flag(self, name: str) -> bool:
        value = self._get(name)
        if not isinstance(value, bool):
            raise self.fail(f"field {name!r} must be true or false")
        return value

    def obj(self, name: str) -> dict[str, Any]:
        value = self._get(name)
        if not isinstance(value, dict):
            raise self.fail(f"field {name!r} must be an object")
        return value

    def opt_obj(self, name: str) -> dict[str, Any] | None:
        if self.data.get(name) is None:
            return None
        return self.obj(name)

    def items(self, name: str, *, max_items: int) -> list[Any]:
        value = self._get(name)
        if not isinstance(value, list):
            raise self.fail(f"field {name!r} must be a list")
        if len(value) > max_items:
            raise self.fail(f"field {name!r} has more than {max_items} items")
        return value

    def opt_items(self, name: str, *, max_items: int) -> list[Any]:
        if self.data.get(name) is None:
            return []
        return self.items(name, max_items=max_items)

    def opt_base64(self, name: str, *, max_bytes: int) -> bytes | None:
        text = self.opt_text(name, max_len=(max_bytes + 2) // 3 * 4 + 4)
        if text is None:
            return None
        try:
            raw = base64.b64decode(text.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError) as e:
            raise self.fail(f"field {name!r} is not valid base64") from e
        if len(raw) > max_bytes:
            raise self.fail(f"field {name!r} decodes to more than {max_bytes} bytes")
        return raw

    def nested(self, name: str, value: Any) -> FieldReader:
        """A reader for an object found inside this one (``name`` used in messages)."""
        if not isinstance(value, dict):
            raise self.fail(f"{name} must be an object")
        return FieldReader(value, what=f"{self.what}.{name}", side=self.side)

    def count_map(self, name: str, *, max_items: int = 1024) -> dict[str, int]:
        """An optional ``{key: non-negative int}`` object; absent means empty."""
        raw = self.opt_obj(name) or {}
        if len(raw) > max_items:
            raise self.fail(f"field {name!r} has more than {max_items} entries")
        out: dict[str, int] = {}
        for key, value in raw.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise self.fail(f"field {name!r}[{key!r}] must be a non-negative integer")
            out[key] = value
        return out


def b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
