"""Topic filter matching (agrees with paho), filter checks, outbox and settings validation."""

from __future__ import annotations

from pathlib import Path

import paho.mqtt.client as paho
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.core.errors import ConfigError, TransportError, UsageError
from edgefleet.core.mqtt import MqttSettings, TlsSettings, Will
from edgefleet.core.mqtt.matching import check_filter, check_topic, topic_matches
from edgefleet.core.mqtt.outbox import Outbox, OutgoingMessage

levels = st.sampled_from(["a", "b", "dev", "$x", ""])
topics = st.lists(levels, min_size=1, max_size=4).map("/".join).filter(bool)
filter_levels = st.sampled_from(["a", "b", "dev", "$x", "", "+"])


@st.composite
def filters(draw: st.DrawFn) -> str:
    parts = draw(st.lists(filter_levels, min_size=1, max_size=4))
    if draw(st.booleans()):
        parts.append("#")
    return "/".join(parts)


@given(filters(), topics)
def test_matching_agrees_with_paho(topic_filter: str, topic: str) -> None:
    if not topic_filter:
        return
    assert topic_matches(topic_filter, topic) == paho.topic_matches_sub(topic_filter, topic)
    assert topic_matches(f"$share/g/{topic_filter}", topic) == paho.topic_matches_sub(
        topic_filter, topic
    )


@pytest.mark.parametrize("bad", ["", "a/+/b", "a/#", "a\0b"])
def test_bad_topics(bad: str) -> None:
    with pytest.raises(UsageError):
        check_topic(bad)


@pytest.mark.parametrize("bad", ["", "a/b#", "a/#/b", "a+/b", "$share/g", "$share//a"])
def test_bad_filters(bad: str) -> None:
    with pytest.raises(UsageError):
        check_filter(bad)


def test_outbox_drop_oldest() -> None:
    box = Outbox(3, "drop_oldest")
    for i in range(5):
        box.put(OutgoingMessage("t", bytes([i])))
    assert box.dropped == 2
    assert [box.pop(), box.pop(), box.pop(), box.pop()] == [
        OutgoingMessage("t", b"\x02"),
        OutgoingMessage("t", b"\x03"),
        OutgoingMessage("t", b"\x04"),
        None,
    ]


def test_outbox_raise_leaves_queue_unchanged() -> None:
    box = Outbox(2, "raise")
    box.put(OutgoingMessage("t", b"1"))
    box.put(OutgoingMessage("t", b"2"))
    with pytest.raises(TransportError, match="queue full"):
        box.put(OutgoingMessage("t", b"3"))
    assert len(box) == 2 and box.dropped == 0
    assert box.pop() == OutgoingMessage("t", b"1")


BAD_SETTINGS = [
    ("empty host", {"host": ""}),
    ("port", {"port": 0}),
    ("client id", {"client_id": ""}),
    ("password without user", {"password": "x"}),
    ("keepalive", {"keepalive_s": 1}),
    ("protocol", {"protocol": "3.1"}),
    ("queue", {"max_queued": 0}),
    ("queue policy", {"queue_full": "block"}),
    ("inflight", {"max_inflight": 0}),
]


@pytest.mark.parametrize(("case", "override"), BAD_SETTINGS, ids=[c for c, _ in BAD_SETTINGS])
def test_bad_settings(case: str, override: dict[str, object]) -> None:
    kwargs: dict[str, object] = {"host": "127.0.0.1", "client_id": "pi", **override}
    with pytest.raises(ConfigError):
        MqttSettings(**kwargs)  # type: ignore[arg-type]


def test_bad_will_and_tls() -> None:
    with pytest.raises(ConfigError):
        Will("a/+", b"x")
    with pytest.raises(ConfigError):
        TlsSettings(Path("ca.pem"), cert_file=Path("c.pem"))


def test_defaults_follow_the_design() -> None:
    s = MqttSettings(host="h", client_id="pi")
    assert (s.protocol, s.clean_session, s.port, s.queue_full) == (
        "3.1.1",
        False,
        1883,
        "drop_oldest",
    )
