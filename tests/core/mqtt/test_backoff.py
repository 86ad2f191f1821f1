"""BackoffPolicy: capped, monotone until the cap, jitter within bounds, immutable."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.core.mqtt import BackoffPolicy

policies = st.builds(
    lambda initial, extra, multiplier, jitter: BackoffPolicy(
        initial_s=initial, max_s=initial + extra, multiplier=multiplier, jitter=jitter
    ),
    initial=st.floats(0.001, 10),
    extra=st.floats(0, 600),
    multiplier=st.floats(1.0, 5.0),
    jitter=st.floats(0.0, 1.0),
)


@given(policies, st.integers(0, 3000))
def test_capped_and_monotone_until_the_cap(policy: BackoffPolicy, attempts: int) -> None:
    previous = 0.0
    for _ in range(min(attempts, 60)):
        delay = policy.base_delay_s
        assert policy.initial_s <= delay <= policy.max_s
        assert delay >= previous
        previous = delay
        policy = policy.next()
    far = dataclasses.replace(policy, attempt=attempts)
    assert far.base_delay_s <= far.max_s  # no overflow however many attempts


@given(policies, st.integers(0, 50), st.integers(0, 2**32))
def test_jitter_stays_within_bounds(policy: BackoffPolicy, attempt: int, seed: int) -> None:
    policy = dataclasses.replace(policy, attempt=attempt)
    rng = random.Random(seed)
    base = policy.base_delay_s
    for _ in range(20):
        delay = policy.delay_s(rng)
        assert base * (1 - policy.jitter) - 1e-12 <= delay <= base + 1e-12


def test_next_and_reset_return_new_policies() -> None:
    policy = BackoffPolicy(initial_s=1, max_s=8, multiplier=2, jitter=0)
    later = policy.next().next()
    assert policy.attempt == 0 and later.attempt == 2
    assert [
        p.base_delay_s for p in (policy, policy.next(), later, later.next(), later.next().next())
    ] == [1, 2, 4, 8, 8]
    assert later.reset() == policy
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.attempt = 3  # type: ignore[misc]


def test_jitter_spreads_a_fleet() -> None:
    policy = BackoffPolicy(initial_s=10, max_s=10, jitter=0.5)
    rng = random.Random(7)
    delays = [policy.delay_s(rng) for _ in range(200)]
    assert min(delays) < 6 and max(delays) > 9


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_s": 0},
        {"initial_s": 5, "max_s": 1},
        {"multiplier": 0.5},
        {"jitter": 1.5},
        {"jitter": -0.1},
        {"attempt": -1},
        {"stable_after_s": -1},
    ],
)
def test_invalid_policies(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BackoffPolicy(**kwargs)  # type: ignore[arg-type]
