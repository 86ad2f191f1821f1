"""Names and references of registered models: pure parsing, no I/O.

A reference names one model version, in one of three forms::

    NAME          the newest version that is not retired
    NAME:VERSION  one version (a positive integer)
    NAME@ALIAS    the version an alias points at

Invariants: model names start with a letter or digit and hold letters, digits,
``.``, ``_`` and ``-`` (at most 64 characters); aliases are lowercase, start
with a letter and are never all digits, so ``NAME:3`` and ``NAME@prod`` can
never be confused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from edgefleet.core.bounds import MAX_MODEL_VERSION
from edgefleet.packager.errors import InvalidNameError

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-/]{0,127}$")


def check_model_name(name: str) -> str:
    """``name`` if it is a valid model name, else :class:`InvalidNameError`."""
    if not _NAME_RE.fullmatch(name):
        raise InvalidNameError(
            f"invalid model name {name!r}: use letters, digits, '.', '_' and '-' "
            "(at most 64 characters, starting with a letter or digit)"
        )
    return name


def check_alias(alias: str) -> str:
    """``alias`` if it is a valid alias, else :class:`InvalidNameError`."""
    if not _ALIAS_RE.fullmatch(alias):
        raise InvalidNameError(
            f"invalid alias {alias!r}: use lowercase letters, digits, '_' and '-', "
            "starting with a letter (e.g. production, staging)"
        )
    return alias


@dataclass(frozen=True)
class ModelRef:
    """A parsed reference: a name plus at most one of version and alias."""

    name: str
    version: int | None = None
    alias: str | None = None

    def __post_init__(self) -> None:
        check_model_name(self.name)
        if self.version is not None and self.alias is not None:
            raise InvalidNameError("a model reference has a version or an alias, not both")
        if self.version is not None and self.version < 1:
            raise InvalidNameError(f"versions start at 1, got {self.version}")
        if self.version is not None and self.version > MAX_MODEL_VERSION:
            raise InvalidNameError(f"versions end at {MAX_MODEL_VERSION}, got {self.version}")
        if self.alias is not None:
            check_alias(self.alias)

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}:{self.version}"
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name


def parse_ref(text: str) -> ModelRef:
    """Parse ``NAME``, ``NAME:VERSION`` or ``NAME@ALIAS``.

    >>> parse_ref("digits:3")
    ModelRef(name='digits', version=3, alias=None)
    >>> str(parse_ref("digits@production"))
    'digits@production'
    """
    text = text.strip()
    if "@" in text:
        name, _, alias = text.partition("@")
        return ModelRef(check_model_name(name), alias=check_alias(alias))
    if ":" in text:
        name, _, version = text.partition(":")
        if not (version.isascii() and version.isdigit()):
            raise InvalidNameError(f"invalid model reference {text!r}: expected NAME:VERSION")
        return ModelRef(check_model_name(name), version=int(version))
    return ModelRef(check_model_name(text))


def parse_versioned_ref(text: str) -> ModelRef:
    """Like :func:`parse_ref` but the version must be explicit (``NAME:VERSION``)."""
    ref = parse_ref(text)
    if ref.version is None:
        raise InvalidNameError(f"expected NAME:VERSION, got {text!r}")
    return ref


def _coerce(value: str) -> str | int | float | bool:
    """Numbers and booleans become JSON numbers and booleans; the rest stays text."""
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return int(value)
    except ValueError:
        pass
    try:
        number = float(value)
    except ValueError:
        return value
    # nan/inf are not JSON and would break canonical manifests later.
    return number if number == number and abs(number) != float("inf") else value


def parse_pairs(
    pairs: Iterable[str], option: str, *, numeric: bool = False
) -> dict[str, str | int | float | bool]:
    """Parse repeated ``k=v`` options; ``numeric`` requires numbers (metrics).

    A key given twice is an error rather than last-wins: it is almost always a typo.
    """
    out: dict[str, str | int | float | bool] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not _KEY_RE.fullmatch(key):
            raise InvalidNameError(f"{option} expects KEY=VALUE, got {pair!r}")
        if key in out:
            raise InvalidNameError(f"{option} {key} given twice")
        parsed = _coerce(value.strip())
        if numeric and (isinstance(parsed, bool) or not isinstance(parsed, int | float)):
            raise InvalidNameError(f"{option} {key} must be a finite number, got {value!r}")
        out[key] = float(parsed) if numeric else parsed
    return out
