"""Writer and verifier together: what is written verifies, extracts and inspects."""

from __future__ import annotations

import base64
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.core.bundle_verifier import BLOCK, BundleVerifier, inspect_bundle, sha256_file
from edgefleet.core.bundle_writer import write_bundle
from edgefleet.core.canonical import canonical_json, is_canonical
from edgefleet.core.errors import BundleError, SignatureError, StorageError, UsageError
from edgefleet.core.keys import keyid_of
from edgefleet.core.manifest import Manifest
from edgefleet.core.trust import Signature, TrustStore, sign_payload, tally_signatures

MODEL = os.urandom(200_000)
MEMBERS: dict[str, bytes | Path] = {
    "model.onnx": MODEL,
    "smoke.npz": b"smoke",
    "reference.json": b'{"profile_id":"p"}',
}


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def manifest(**extra: object) -> Manifest:
    return Manifest.from_dict(
        {
            **Manifest(
                bundle_id="b-1",
                model={"name": "digits", "version": 7, "task": "classification"},
                target={"profile": "rpi5", "arch": "aarch64"},
            ).to_dict(),
            **extra,
        }
    )


def trust_for(*keys: Ed25519PrivateKey, threshold: int = 1) -> TrustStore:
    return TrustStore.from_keys([k.public_key() for k in keys], threshold)


def test_write_verify_extract(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    out = tmp_path / "digits.efb"
    info = write_bundle(out, manifest(), MEMBERS, [key])
    assert info.path == out
    assert info.size == out.stat().st_size
    assert info.sha256 == sha256_file(out)
    assert [f.path for f in info.manifest.files] == ["model.onnx", "smoke.npz", "reference.json"]
    assert info.manifest.file("model.onnx").size == len(MODEL)  # type: ignore[union-attr]
    assert info.signer_keyids == (keyid_of(key.public_key()),)

    verifier = BundleVerifier(trust_for(key))
    verified = verifier.verify(out)
    assert verified.manifest == info.manifest
    assert (verified.sha256, verified.size) == (info.sha256, info.size)
    assert verified.signer_keyids == [keyid_of(key.public_key())]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits.efb"]

    dest = tmp_path / "bundles" / info.sha256
    dest.parent.mkdir()
    extracted = verifier.verify_and_extract(out, dest, expected_sha256=info.sha256)
    assert extracted == verified
    assert sorted(os.listdir(dest)) == [
        "manifest.json",
        "model.onnx",
        "reference.json",
        "signatures.json",
        "smoke.npz",
    ]
    assert (dest / "model.onnx").read_bytes() == MODEL
    assert (dest / "manifest.json").read_bytes() == info.manifest.canonical_bytes()
    assert stat.S_IMODE((dest / "model.onnx").stat().st_mode) == 0o644
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755
    # No temporary directory left next to dest.
    assert os.listdir(dest.parent) == [info.sha256]


def test_bundle_layout_is_plain_ustar_with_leading_manifest(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    out = tmp_path / "b.efb"
    info = write_bundle(out, manifest(), MEMBERS, [key])
    with tarfile.open(out, "r:") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [
            "manifest.json",
            "signatures.json",
            "model.onnx",
            "smoke.npz",
            "reference.json",
        ]
        assert all(m.isreg() and m.mode == 0o644 and m.mtime == 0 for m in members)
        manifest_bytes = tar.extractfile("manifest.json").read()  # type: ignore[union-attr]
    assert is_canonical(manifest_bytes)
    assert manifest_bytes == info.manifest.canonical_bytes()


def test_writing_is_deterministic(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    a = write_bundle(tmp_path / "a.efb", manifest(), MEMBERS, [key])
    b = write_bundle(tmp_path / "b.efb", manifest(), MEMBERS, [key])
    assert a.sha256 == b.sha256


def test_members_from_files_and_nested_paths(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    model_file = tmp_path / "model.onnx"
    model_file.write_bytes(MODEL)
    members: dict[str, bytes | Path] = {
        **MEMBERS,
        "model.onnx": model_file,
        "extra/card.md": b"# card",
    }
    out = tmp_path / "b.efb"
    write_bundle(out, manifest(), members, [key])
    dest = tmp_path / "x"
    BundleVerifier(trust_for(key)).verify_and_extract(out, dest)
    assert (dest / "model.onnx").read_bytes() == MODEL
    assert (dest / "extra" / "card.md").read_bytes() == b"# card"


def test_unknown_manifest_fields_are_signed_and_kept(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    out = tmp_path / "b.efb"
    write_bundle(out, manifest(future_field={"x": [1, 2]}), MEMBERS, [key])
    verified = BundleVerifier(trust_for(key)).verify(out)
    assert verified.manifest.unrecognized_fields == {"future_field": {"x": [1, 2]}}


def test_threshold_of_two_distinct_publishers(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    second = Ed25519PrivateKey.generate()
    out = tmp_path / "b.efb"
    write_bundle(out, manifest(), MEMBERS, [key, second, key])
    verified = BundleVerifier(trust_for(key, second, threshold=2)).verify(out)
    assert sorted(verified.signer_keyids) == sorted(keyid_of(k.public_key()) for k in (key, second))
    only_one = tmp_path / "one.efb"
    write_bundle(only_one, manifest(), MEMBERS, [key])
    with pytest.raises(SignatureError, match="1 of the 2 required"):
        BundleVerifier(trust_for(key, second, threshold=2)).verify(only_one)


def test_writer_refuses_bad_input_and_leaves_nothing(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    out = tmp_path / "b.efb"
    with pytest.raises(UsageError, match="at least one signing key"):
        write_bundle(out, manifest(), MEMBERS, [])
    without_smoke = {k: v for k, v in MEMBERS.items() if k != "smoke.npz"}
    with pytest.raises(BundleError, match="lacks required member 'smoke.npz'"):
        write_bundle(out, manifest(), without_smoke, [key])
    with pytest.raises(BundleError, match="'..'"):
        write_bundle(out, manifest(), {**MEMBERS, "../x": b"x"}, [key])
    with pytest.raises(BundleError, match="reserved"):
        write_bundle(out, manifest(), {**MEMBERS, "manifest.json": b"{}"}, [key])
    with pytest.raises(StorageError, match="cannot read bundle member"):
        write_bundle(out, manifest(), {**MEMBERS, "model.onnx": tmp_path / "missing"}, [key])
    assert list(tmp_path.iterdir()) == []


def test_writer_replaces_an_existing_bundle_atomically(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    out = tmp_path / "b.efb"
    out.write_bytes(b"old")
    write_bundle(out, manifest(), MEMBERS, [key])
    assert BundleVerifier(trust_for(key)).verify(out).manifest.name == "digits"
    assert [p.name for p in tmp_path.iterdir()] == ["b.efb"]


def test_extract_refuses_existing_dest(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    out = tmp_path / "b.efb"
    write_bundle(out, manifest(), MEMBERS, [key])
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep").write_text("x")
    with pytest.raises(StorageError, match="already exists"):
        BundleVerifier(trust_for(key)).verify_and_extract(out, dest)
    assert os.listdir(dest) == ["keep"]
    assert sorted(os.listdir(tmp_path)) == ["b.efb", "dest"]


def test_budget_applies_to_streams_too(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    out = tmp_path / "b.efb"
    info = write_bundle(out, manifest(), MEMBERS, [key])
    stream = io.BytesIO(out.read_bytes())
    assert BundleVerifier(trust_for(key)).verify_stream(stream).sha256 == info.sha256
    # The manifest's declared sizes are checked before any member is read.
    with pytest.raises(BundleError, match="manifest declares .* over the budget of 100000"):
        BundleVerifier(trust_for(key), max_bundle_bytes=100_000).verify_stream(
            io.BytesIO(out.read_bytes())
        )
    with pytest.raises(BundleError, match="larger than the budget of 2000"):
        BundleVerifier(trust_for(key), max_bundle_bytes=2000).verify_stream(
            io.BytesIO(out.read_bytes())
        )


def test_bundle_exactly_at_budget_passes(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    out = tmp_path / "b.efb"
    info = write_bundle(out, manifest(), MEMBERS, [key])
    assert BundleVerifier(trust_for(key), max_bundle_bytes=info.size).verify(out).size == info.size


def test_inspect_reads_without_trust(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    out = tmp_path / "b.efb"
    info = write_bundle(out, manifest(), MEMBERS, [key])
    summary = inspect_bundle(out)
    assert summary.manifest == info.manifest
    assert [s.keyid for s in summary.signatures] == [keyid_of(key.public_key())]
    assert (summary.sha256, summary.size) == (info.sha256, info.size)


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_verifier_refuses_other_tar_writers(
    tmp_path: Path, key: Ed25519PrivateKey, fmt: int
) -> None:
    # Re-packing the same members with another tar writer (other header fields, GNU
    # magic) would give the same signed content a new sha256: refused.
    out = tmp_path / "b.efb"
    write_bundle(out, manifest(), MEMBERS, [key])
    with tarfile.open(out, "r:") as src:
        repacked = io.BytesIO()
        with tarfile.open(fileobj=repacked, mode="w", format=fmt) as dst:
            for member in src.getmembers():
                member.mtime = 1_700_000_000
                member.uname = "builder"
                dst.addfile(member, src.extractfile(member))
    copy = tmp_path / "copy.efb"
    copy.write_bytes(repacked.getvalue())
    with pytest.raises(BundleError, match="differs from the canonical one"):
        BundleVerifier(trust_for(key)).verify(copy)


@pytest.mark.parametrize(
    ("what", "at", "value"),
    [
        ("mtime", 136, b"14531254000\0"),
        ("mode", 100, b"0000755\0"),
        ("byte after the NUL ending the name", 99, b"x"),
        ("user name", 265, b"root"),
    ],
)
def test_header_bytes_outside_the_signed_content_are_refused(
    tmp_path: Path, key: Ed25519PrivateKey, what: str, at: int, value: bytes
) -> None:
    out = tmp_path / "b.efb"
    write_bundle(out, manifest(), MEMBERS, [key])
    with tarfile.open(out, "r:") as tar:
        header_at = tar.getmember("model.onnx").offset
    data = bytearray(out.read_bytes())
    header = data[header_at : header_at + BLOCK]
    header[at : at + len(value)] = value
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)  # a valid checksum: only the field differs
    data[header_at : header_at + BLOCK] = header
    other = tmp_path / "other.efb"
    other.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="differs from the canonical one"):
        BundleVerifier(trust_for(key)).verify(other)


def test_signatures_json_is_canonical_list(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    out = tmp_path / "b.efb"
    write_bundle(out, manifest(), MEMBERS, [key])
    with tarfile.open(out, "r:") as tar:
        raw = tar.extractfile("signatures.json").read()  # type: ignore[union-attr]
    summary = inspect_bundle(out)
    assert raw == canonical_json([s.to_dict() for s in summary.signatures])


def test_single_byte_changes_are_rejected(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    # Flipped one at a time: every byte of the first header, of the signatures
    # member and of each header's size, checksum and type fields, plus every
    # 11th byte of everything else (headers, padding, contents, end marker,
    # record tail). Nothing in a bundle is free to change unnoticed.
    small: dict[str, bytes | Path] = {
        "model.onnx": b"m" * 700,
        "smoke.npz": b"s",
        "reference.json": b"{}",
    }
    out = tmp_path / "small.efb"
    write_bundle(out, manifest(), small, [key])
    good = out.read_bytes()
    offsets = set(range(0, len(good), 11)) | set(range(BLOCK))
    with tarfile.open(out, "r:") as tar:
        for member in tar.getmembers():
            header = member.offset
            offsets |= set(range(header + 124, header + 136)) | set(
                range(header + 148, header + 157)
            )
            if member.name == "signatures.json":
                offsets |= set(range(member.offset_data, member.offset_data + member.size))
    verifier = BundleVerifier(trust_for(key))
    accepted = []
    for offset in sorted(offsets):
        data = bytearray(good)
        data[offset] ^= 0x01
        try:
            verifier.verify_stream(io.BytesIO(bytes(data)))
        except (BundleError, SignatureError):
            continue
        accepted.append(offset)
    assert accepted == []


def test_non_canonical_base64_signature_is_not_valid(key: Ed25519PrivateKey) -> None:
    good = sign_payload(b"payload", key)
    assert good.sig.endswith("==")
    last = good.sig[-3]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    # Same decoded bytes, different text: flip an unused low bit of the last character.
    twin = good.sig[:-3] + alphabet[alphabet.index(last) ^ 1] + "=="
    assert base64.b64decode(twin) == base64.b64decode(good.sig)
    keys = {good.keyid: key.public_key()}
    assert tally_signatures(b"payload", [Signature(good.keyid, twin)], keys).invalid == 1
    assert tally_signatures(b"payload", [good], keys).valid_keyids == (good.keyid,)


def test_signed_checksum_spelling_is_refused_as_non_canonical(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    # Old tar writers summed header bytes as signed chars; the checksum still parses,
    # but the header is not the canonical writer's (a user name), so it is refused.
    out = tmp_path / "b.efb"
    write_bundle(out, manifest(), MEMBERS, [key])
    with tarfile.open(out, "r:") as tar:
        header_at = tar.getmember("model.onnx").offset
    data = bytearray(out.read_bytes())
    header = data[header_at : header_at + BLOCK]
    header[265:267] = "é".encode()  # uname field
    header[148:156] = b" " * 8
    signed = sum(b - 256 if b > 127 else b for b in header)
    header[148:156] = b"%06o\0 " % signed
    data[header_at : header_at + BLOCK] = header
    other = tmp_path / "signed.efb"
    other.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="differs from the canonical one"):
        BundleVerifier(trust_for(key)).verify(other)
    header[148:156] = b"%06o\0 " % (signed + 1)
    data[header_at : header_at + BLOCK] = header
    other.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch"):
        BundleVerifier(trust_for(key)).verify(other)
