"""The profile field ``max_requests_per_s``: optional, documented default, validated."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.core.errors import ProfileError
from edgefleet.core.profiles import DEFAULT_MAX_REQUESTS_PER_S, load_profile, parse_profile


def profile_text(extra: str = "") -> str:
    text = (Path(load_profile("rpi5").source)).read_text()
    return text.replace("[telemetry]\n", f"[telemetry]\n{extra}", 1)


def test_shipped_profiles_get_the_default() -> None:
    assert load_profile("rpi-zero-2w").max_requests_per_s == DEFAULT_MAX_REQUESTS_PER_S == 1000


def test_a_profile_may_set_it() -> None:
    profile = parse_profile(Path("rpi5.toml"), profile_text("max_requests_per_s = 50\n"))
    assert profile.max_requests_per_s == 50
    assert profile.to_dict()["max_requests_per_s"] == 50


@pytest.mark.parametrize("bad", ["0", "-5", "1.5", "true", '"fast"'])
def test_it_must_be_a_positive_integer(bad: str) -> None:
    with pytest.raises(ProfileError, match="max_requests_per_s"):
        parse_profile(Path("rpi5.toml"), profile_text(f"max_requests_per_s = {bad}\n"))
