"""Topic and topic-filter checks and matching (MQTT 3.1.1 §4.7), free of paho.

Invariants: ``topic_matches(f, t)`` agrees with paho's ``topic_matches_sub`` for every
valid filter and topic (checked in the tests), with ``$share/<group>/`` stripped first;
topics starting with ``$`` are not matched by filters starting with a wildcard.
"""

from __future__ import annotations

from edgefleet.core.errors import UsageError


def check_topic(topic: str) -> str:
    """A topic to publish to: non-empty, no wildcards (UsageError otherwise)."""
    if not isinstance(topic, str) or not topic or "+" in topic or "#" in topic or "\0" in topic:
        raise UsageError(f"invalid MQTT topic {topic!r}")
    return topic


def check_filter(topic_filter: str) -> str:
    """A subscription filter: wildcards only as whole levels, ``#`` only last."""
    if not isinstance(topic_filter, str) or not topic_filter or "\0" in topic_filter:
        raise UsageError(f"invalid MQTT topic filter {topic_filter!r}")
    levels = filter_without_share(topic_filter).split("/")
    for i, level in enumerate(levels):
        if ("+" in level or "#" in level) and len(level) != 1:
            raise UsageError(f"invalid MQTT topic filter {topic_filter!r}: wildcard inside a level")
        if level == "#" and i != len(levels) - 1:
            raise UsageError(f"invalid MQTT topic filter {topic_filter!r}: '#' must be last")
    return topic_filter


def filter_without_share(topic_filter: str) -> str:
    """``$share/group/a/b`` -> ``a/b`` (what incoming topics are matched against)."""
    if topic_filter.startswith("$share/"):
        parts = topic_filter.split("/", 2)
        if len(parts) == 3 and parts[1] and parts[2]:
            return parts[2]
        raise UsageError(f"invalid shared subscription {topic_filter!r}")
    return topic_filter


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches ``topic_filter`` (a plain or ``$share/`` filter)."""
    pattern = filter_without_share(topic_filter).split("/")
    levels = topic.split("/")
    if topic.startswith("$") and pattern[0] in ("+", "#"):
        return False
    for i, want in enumerate(pattern):
        if want == "#":
            return True
        if i >= len(levels):
            return False
        if want != "+" and want != levels[i]:
            return False
    # "a/#" also matches "a" itself: handled above only when levels run out at the '#'.
    return len(levels) == len(pattern)
