"""The libcrypto-free sha256 gives hashlib's digest and leaves hashlib unloaded."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.core.light_sha256 import sha256, sha256_hex


@given(st.lists(st.binary(max_size=300), max_size=5))
def test_digest_equals_hashlib(parts: list[bytes]) -> None:
    light = sha256()
    for part in parts:
        light.update(part)
    whole = b"".join(parts)
    assert light.hexdigest() == hashlib.sha256(whole).hexdigest() == sha256_hex(whole)


@pytest.mark.subprocess
def test_hashing_does_not_load_hashlib() -> None:
    code = (
        "import sys\n"
        "from edgefleet.core.light_sha256 import sha256_hex\n"
        "sha256_hex(b'x' * 100000)\n"
        "print(sorted(m for m in ('hashlib', '_hashlib', 'ssl') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"
