"""The daemon computes a drift profile id each time it registers a model. That must not map
OpenSSL's libcrypto into the long-running process (about 3.5 MB resident, needed for
nothing else there), and the id must stay the SHA-256 every other role computes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tests.support.bundles import reference_json

from edgefleet.core.drift import ReferenceProfile
from edgefleet.core.drift.reference import canonical_json

LOAD_PROFILE = textwrap.dedent(
    """
    import json, sys
    from edgefleet.core.drift import ReferenceProfile

    profile = ReferenceProfile.from_json(open(sys.argv[1], "rb").read())
    rebuilt = ReferenceProfile.from_dict({**profile.to_dict(), "profile_id": ""})
    with open("/proc/self/maps") as f:
        maps = f.read()
    print(json.dumps({
        "profile_id": profile.profile_id,
        "rebuilt_id": rebuilt.profile_id,
        "modules": sorted(m for m in ("hashlib", "_hashlib", "ssl") if m in sys.modules),
        "libcrypto": "libcrypto" in maps,
    }))
    """
)


@pytest.mark.subprocess
def test_a_profile_id_is_computed_without_loading_libcrypto(tmp_path: Path) -> None:
    reference = tmp_path / "reference.json"
    reference.write_bytes(reference_json("iris"))
    result = subprocess.run(
        [sys.executable, "-c", LOAD_PROFILE, str(reference)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["modules"] == []
    assert seen["libcrypto"] is False
    # the same id OpenSSL's sha256 gives, both when checked and when computed afresh
    profile = ReferenceProfile.from_json(reference.read_bytes())
    expected = hashlib.sha256(canonical_json(profile._content())).hexdigest()
    assert seen["profile_id"] == expected
    assert seen["rebuilt_id"] == expected
