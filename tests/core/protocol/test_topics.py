"""Topic building, parsing and device-id validation."""

from __future__ import annotations

import pytest
from hypothesis import given
from tests.core.protocol.strategies import device_ids

from edgefleet.core.errors import ProtocolError, UsageError
from edgefleet.core.protocol import TopicKind, Topics, device_id_problem, validate_device_id

BAD_IDS = [
    ("empty", ""),
    ("slash", "a/b"),
    ("plus", "a+b"),
    ("hash", "a#"),
    ("dollar", "$SYS"),
    ("leading dot", ".hidden"),
    ("leading dash", "-x"),
    ("space", "pi 1"),
    ("nul", "pi\0"),
    ("unicode", "pi-é"),
    ("too long", "a" * 65),
    ("not a string", 42),
]
GOOD_IDS = ["pi-001", "a", "A.b_c-9", "x" * 64, "0"]


@pytest.mark.parametrize(("case", "device_id"), BAD_IDS, ids=[c for c, _ in BAD_IDS])
def test_bad_device_ids_are_refused_by_builders(case: str, device_id: object) -> None:
    assert device_id_problem(device_id) is not None
    with pytest.raises(UsageError, match="invalid device id"):
        Topics().status(device_id)  # type: ignore[arg-type]


@pytest.mark.parametrize("device_id", GOOD_IDS)
def test_good_device_ids(device_id: str) -> None:
    assert validate_device_id(device_id) == device_id
    assert Topics().telemetry(device_id) == f"edgefleet/v1/dev/{device_id}/telemetry"


def test_every_builder_and_the_alert_topic() -> None:
    t = Topics("fleet/prod")
    assert [t.status("d"), t.state("d"), t.desired("d"), t.fetch("d"), t.chunk("d")] == [
        "fleet/prod/dev/d/status",
        "fleet/prod/dev/d/state",
        "fleet/prod/dev/d/desired",
        "fleet/prod/dev/d/fetch",
        "fleet/prod/dev/d/chunk",
    ]
    assert t.telemetry("d") == "fleet/prod/dev/d/telemetry"
    assert t.ack("d") == "fleet/prod/dev/d/ack"
    assert t.alerts() == "fleet/prod/alerts"
    assert t.device_subscriptions("d") == [t.desired("d"), t.chunk("d"), t.ack("d")]


@pytest.mark.parametrize("root", ["", "/a", "a/", "a//b", "a/+/b", "a/#", "$SYS/x", "a b"])
def test_bad_roots(root: str) -> None:
    with pytest.raises(UsageError):
        Topics(root)


def test_hub_subscriptions_plain_and_shared() -> None:
    t = Topics()
    assert t.hub_subscriptions(shared=False) == [
        "edgefleet/v1/dev/+/status",
        "edgefleet/v1/dev/+/state",
        "edgefleet/v1/dev/+/fetch",
        "edgefleet/v1/dev/+/telemetry",
        "edgefleet/v1/dev/+/resync",
    ]
    # status/state are retained snapshots every hub process needs; only work is shared.
    assert t.hub_subscriptions(shared=True) == [
        "edgefleet/v1/dev/+/status",
        "edgefleet/v1/dev/+/state",
        "$share/edgefleet-hub/edgefleet/v1/dev/+/fetch",
        "$share/edgefleet-hub/edgefleet/v1/dev/+/telemetry",
        "$share/edgefleet-hub/edgefleet/v1/dev/+/resync",
    ]


@given(device_ids)
def test_parse_inverts_every_builder(device_id: str) -> None:
    t = Topics()
    for kind in TopicKind:
        parsed = t.parse(t.device(device_id, kind))
        assert parsed == (device_id, kind)
        assert parsed.kind == kind.value


BAD_TOPICS = [
    ("other root", "other/v1/dev/pi/status"),
    ("no kind", "edgefleet/v1/dev/pi"),
    ("extra level", "edgefleet/v1/dev/pi/status/x"),
    ("unknown kind", "edgefleet/v1/dev/pi/reboot"),
    ("bad device", "edgefleet/v1/dev/$x/status"),
    ("empty device", "edgefleet/v1/dev//status"),
    ("alerts", "edgefleet/v1/alerts"),
]


@pytest.mark.parametrize(("case", "topic"), BAD_TOPICS, ids=[c for c, _ in BAD_TOPICS])
def test_parse_refuses_foreign_topics(case: str, topic: str) -> None:
    with pytest.raises(ProtocolError) as info:
        Topics().parse(topic, side="device")
    assert info.value.side == "device"


def test_unknown_kind_in_a_builder() -> None:
    with pytest.raises(UsageError, match="unknown topic kind"):
        Topics().device("pi", "reboot")
