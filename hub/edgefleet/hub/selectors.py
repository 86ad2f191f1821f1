"""Device selectors: which enrolled devices a rollout targets.

Grammar (one selector per rollout)::

    all                 every enrolled device
    group=NAME          devices enrolled with ``--group NAME``
    tag=KEY=VALUE       devices enrolled with ``--tag KEY=VALUE``
    profile=NAME        devices of that device profile
    ids=A,B,C           exactly these devices (``A,B,C`` alone means the same)

Invariants: parsing is pure and total (a bad selector is a ``HubUsageError`` with
the text that failed); matching looks only at the enrolled attributes, never at
whether a device is online, so a selection is stable while devices come and go.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from edgefleet.hub.errors import HubUsageError

# Device ids are MQTT topic levels and broker usernames: no wildcards, no '/'.
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_WORD_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


def check_device_id(device_id: str) -> str:
    """Return ``device_id`` or raise ``HubUsageError`` when it cannot be a topic level."""
    if not DEVICE_ID_RE.fullmatch(device_id):
        raise HubUsageError(
            f"invalid device id {device_id!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return device_id


def check_word(kind: str, value: str) -> str:
    """Validate a group name, tag key or tag value (same alphabet as ids, plus ':')."""
    if not _WORD_RE.fullmatch(value):
        raise HubUsageError(
            f"invalid {kind} {value!r}: use 1-64 letters, digits, '.', '_', ':' or '-'"
        )
    return value


def parse_tag(text: str) -> tuple[str, str]:
    """``"k=v"`` -> ``("k", "v")``; both sides validated."""
    key, sep, value = text.partition("=")
    if not sep:
        raise HubUsageError(f"invalid tag {text!r}: expected KEY=VALUE")
    return check_word("tag key", key), check_word("tag value", value)


class SelectorKind(StrEnum):
    ALL = "all"
    GROUP = "group"
    TAG = "tag"
    PROFILE = "profile"
    IDS = "ids"


class Selectable(Protocol):
    """What a selector looks at (the store's device record satisfies this)."""

    @property
    def device_id(self) -> str: ...
    @property
    def group(self) -> str | None: ...
    @property
    def tags(self) -> Mapping[str, str]: ...
    @property
    def profile(self) -> str: ...


@dataclass(frozen=True)
class Selector:
    """A parsed selector; ``str(selector)`` gives back the canonical text."""

    kind: SelectorKind
    value: str = ""
    tag_value: str = ""
    ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind is SelectorKind.IDS and not self.ids:
            raise HubUsageError("selector ids= needs at least one device id")

    @classmethod
    def parse(cls, text: str) -> Selector:
        text = text.strip()
        if text == "all":
            return cls(SelectorKind.ALL)
        key, sep, rest = text.partition("=")
        if sep and key == "group":
            return cls(SelectorKind.GROUP, check_word("group", rest))
        if sep and key == "profile":
            return cls(SelectorKind.PROFILE, check_word("profile", rest))
        if sep and key == "tag":
            tag_key, tag_value = parse_tag(rest)
            return cls(SelectorKind.TAG, tag_key, tag_value)
        if sep and key in ("ids", "id", "device", "devices"):
            return cls(SelectorKind.IDS, ids=_parse_ids(rest))
        if sep:
            raise HubUsageError(
                f"invalid selector {text!r}: use all, group=G, tag=K=V, profile=P or ids=A,B"
            )
        return cls(SelectorKind.IDS, ids=_parse_ids(text))

    def matches(self, device: Selectable) -> bool:
        match self.kind:
            case SelectorKind.ALL:
                return True
            case SelectorKind.GROUP:
                return device.group == self.value
            case SelectorKind.PROFILE:
                return device.profile == self.value
            case SelectorKind.TAG:
                return device.tags.get(self.value) == self.tag_value
            case SelectorKind.IDS:
                return device.device_id in self.ids
        raise AssertionError(self.kind)  # pragma: no cover

    def select(self, devices: Iterable[Selectable]) -> list[str]:
        """Ids of the matching devices, sorted; explicit ids must all be enrolled."""
        known = {d.device_id: d for d in devices}
        if self.kind is SelectorKind.IDS:
            missing = [i for i in self.ids if i not in known]
            if missing:
                raise HubUsageError(f"unknown device(s) in selector: {', '.join(missing)}")
        return sorted(i for i, d in known.items() if self.matches(d))

    def __str__(self) -> str:
        match self.kind:
            case SelectorKind.ALL:
                return "all"
            case SelectorKind.TAG:
                return f"tag={self.value}={self.tag_value}"
            case SelectorKind.IDS:
                return "ids=" + ",".join(self.ids)
            case _:
                return f"{self.kind.value}={self.value}"


def _parse_ids(text: str) -> tuple[str, ...]:
    parts: Sequence[str] = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise HubUsageError(f"invalid selector {text!r}: no device ids")
    ids = tuple(dict.fromkeys(check_device_id(p) for p in parts))
    return ids
