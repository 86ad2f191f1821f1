"""Tamper corpus: every malformed or forged bundle is rejected by the Python
verifier and by ``edgefleet bundle verify`` (exit 3, one line naming what
failed), and no verification of a bad bundle leaves files behind."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.core.bundle_verifier import BundleVerifier
from edgefleet.core.bundle_writer import write_bundle
from edgefleet.core.canonical import canonical_json
from edgefleet.core.cli.main import main
from edgefleet.core.errors import BundleError, SignatureError
from edgefleet.core.manifest import Manifest
from edgefleet.core.trust import TrustStore, sign_payload

MODEL = bytes(range(256)) * 12  # 3072 bytes; the verifier never parses it
SMOKE = b"smoke-set-bytes" * 20
REFERENCE = b'{"profile_id": "abc"}'
MEMBERS = {"model.onnx": MODEL, "smoke.npz": SMOKE, "reference.json": REFERENCE}


@dataclass
class Kit:
    """Keys and a known-good bundle to tamper with."""

    tmp: Path
    publisher: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    second: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    stranger: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    @property
    def trust(self) -> TrustStore:
        return TrustStore.from_keys([self.publisher.public_key()])

    def manifest(self, files: dict[str, bytes] | None = None, **extra: object) -> Manifest:
        files = MEMBERS if files is None else files
        base = Manifest(
            bundle_id="corpus-1",
            model={"name": "iris", "version": 3, "task": "classification"},
            target={"profile": "rpi4-arm64", "arch": "aarch64"},
        )
        data = base.to_dict()
        data["files"] = [
            {"path": p, "size": len(b), "sha256": hashlib.sha256(b).hexdigest()}
            for p, b in files.items()
        ]
        data.update(extra)
        return Manifest.from_dict(data)

    def good_bundle(self) -> bytes:
        out = self.tmp / "good-source.efb"
        write_bundle(out, self.manifest(), MEMBERS, [self.publisher])
        data = out.read_bytes()
        out.unlink()
        return data


@dataclass(frozen=True)
class Member:
    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    linkname: str = ""
    size: int | None = None  # header size when it must differ from len(data)


def signatures_for(manifest_bytes: bytes, *keys: Ed25519PrivateKey) -> bytes:
    return canonical_json([sign_payload(manifest_bytes, k).to_dict() for k in keys])


def build_tar(members: list[Member], fmt: int = tarfile.USTAR_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type = m.type
            info.linkname = m.linkname
            info.mode = 0o644
            if m.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
                info.devmajor, info.devminor = 1, 3
            if m.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
                info.size = len(m.data) if m.size is None else m.size
                tar.addfile(info, io.BytesIO(m.data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def signed_bundle(
    kit: Kit,
    tail: list[Member],
    *,
    manifest: Manifest | None = None,
    keys: tuple[Ed25519PrivateKey, ...] | None = None,
    manifest_bytes: bytes | None = None,
    fmt: int = tarfile.USTAR_FORMAT,
) -> bytes:
    """manifest.json + signatures.json (validly signed unless told otherwise) + ``tail``."""
    if manifest_bytes is None:
        manifest_bytes = (manifest or kit.manifest()).canonical_bytes()
    sigs = signatures_for(manifest_bytes, *(keys or (kit.publisher,)))
    head = [Member("manifest.json", manifest_bytes), Member("signatures.json", sigs)]
    return build_tar(head + tail, fmt)


def regular_members() -> list[Member]:
    return [Member(p, b) for p, b in MEMBERS.items()]


def data_offset(bundle: bytes, name: str) -> int:
    with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:") as tar:
        return tar.getmember(name).offset_data


def flip(bundle: bytes, offset: int) -> bytes:
    data = bytearray(bundle)
    data[offset] ^= 0x01
    return bytes(data)


@dataclass(frozen=True)
class Case:
    bundle: bytes
    trust: TrustStore
    max_bytes: int | None = None


# --- the scenarios -------------------------------------------------------


def flipped_model_byte(kit: Kit) -> Case:
    good = kit.good_bundle()
    return Case(flip(good, data_offset(good, "model.onnx") + 100), kit.trust)


def flipped_manifest_byte(kit: Kit) -> Case:
    good = kit.good_bundle()
    return Case(flip(good, data_offset(good, "manifest.json") + 40), kit.trust)


def flipped_signature_byte(kit: Kit) -> Case:
    good = kit.good_bundle()
    start = data_offset(good, "signatures.json")
    sig_at = good.index(b'"sig":"', start) + len(b'"sig":"') + 10
    data = bytearray(good)
    data[sig_at] = ord("A") if data[sig_at] != ord("A") else ord("B")
    return Case(bytes(data), kit.trust)


def unknown_key(kit: Kit) -> Case:
    return Case(signed_bundle(kit, regular_members(), keys=(kit.stranger,)), kit.trust)


def below_threshold(kit: Kit) -> Case:
    trust = TrustStore.from_keys([kit.publisher.public_key(), kit.second.public_key()], 2)
    return Case(signed_bundle(kit, regular_members()), trust)


def one_key_signing_twice(kit: Kit) -> Case:
    trust = TrustStore.from_keys([kit.publisher.public_key(), kit.second.public_key()], 2)
    keys = (kit.publisher, kit.publisher)
    return Case(signed_bundle(kit, regular_members(), keys=keys), trust)


def no_signatures(kit: Kit) -> Case:
    head = [
        Member("manifest.json", kit.manifest().canonical_bytes()),
        Member("signatures.json", b"[]"),
    ]
    return Case(build_tar(head + regular_members()), kit.trust)


def malformed_signatures(kit: Kit) -> Case:
    head = [
        Member("manifest.json", kit.manifest().canonical_bytes()),
        Member("signatures.json", b'{"keyid": '),
    ]
    return Case(build_tar(head + regular_members()), kit.trust)


def extra_member(kit: Kit) -> Case:
    return Case(signed_bundle(kit, [*regular_members(), Member("extra.bin", b"x")]), kit.trust)


def missing_member(kit: Kit) -> Case:
    tail = [m for m in regular_members() if m.name != "model.onnx"]
    return Case(signed_bundle(kit, tail), kit.trust)


def manifest_not_first(kit: Kit) -> Case:
    manifest_bytes = kit.manifest().canonical_bytes()
    head = [
        Member("signatures.json", signatures_for(manifest_bytes, kit.publisher)),
        Member("manifest.json", manifest_bytes),
    ]
    return Case(build_tar(head + regular_members()), kit.trust)


def signatures_not_second(kit: Kit) -> Case:
    manifest_bytes = kit.manifest().canonical_bytes()
    members = [Member("manifest.json", manifest_bytes), *regular_members()]
    members.append(Member("signatures.json", signatures_for(manifest_bytes, kit.publisher)))
    return Case(build_tar(members), kit.trust)


def path_traversal(kit: Kit) -> Case:
    return Case(
        signed_bundle(kit, [Member("../evil.sh", b"#!/bin/sh\n"), *regular_members()]), kit.trust
    )


def absolute_path(kit: Kit) -> Case:
    return Case(
        signed_bundle(kit, [Member("/tmp/evil.sh", b"#!/bin/sh\n"), *regular_members()]), kit.trust
    )


def symlink(kit: Kit) -> Case:
    tail = [Member("model.onnx", type=tarfile.SYMTYPE, linkname="/etc/passwd")]
    return Case(signed_bundle(kit, tail + regular_members()[1:]), kit.trust)


def hard_link(kit: Kit) -> Case:
    tail = [Member("model.onnx", type=tarfile.LNKTYPE, linkname="/etc/shadow")]
    return Case(signed_bundle(kit, tail + regular_members()[1:]), kit.trust)


def device_file(kit: Kit) -> Case:
    tail = [Member("model.onnx", type=tarfile.CHRTYPE)]
    return Case(signed_bundle(kit, tail + regular_members()[1:]), kit.trust)


def fifo(kit: Kit) -> Case:
    tail = [Member("model.onnx", type=tarfile.FIFOTYPE)]
    return Case(signed_bundle(kit, tail + regular_members()[1:]), kit.trust)


def directory_member(kit: Kit) -> Case:
    return Case(
        signed_bundle(kit, [Member("models", type=tarfile.DIRTYPE), *regular_members()]), kit.trust
    )


def pax_extension_header(kit: Kit) -> Case:
    long_name = "d/" + "a" * 120
    tail = [*regular_members(), Member(long_name, b"x")]
    return Case(signed_bundle(kit, tail, fmt=tarfile.PAX_FORMAT), kit.trust)


def member_larger_than_declared(kit: Kit) -> Case:
    tail = [Member("model.onnx", MODEL + b"\0" * 4096), *regular_members()[1:]]
    return Case(signed_bundle(kit, tail), kit.trust)


def member_smaller_than_declared(kit: Kit) -> Case:
    tail = [Member("model.onnx", MODEL[:-1]), *regular_members()[1:]]
    return Case(signed_bundle(kit, tail), kit.trust)


def truncated_in_member(kit: Kit) -> Case:
    good = kit.good_bundle()
    return Case(good[: data_offset(good, "model.onnx") + 1000], kit.trust)


def truncated_in_header(kit: Kit) -> Case:
    good = kit.good_bundle()
    return Case(good[: data_offset(good, "model.onnx") - 200], kit.trust)


def truncated_end_marker(kit: Kit) -> Case:
    good = kit.good_bundle()
    end = data_offset(good, "reference.json") + 512  # last member data + padding
    return Case(good[:end], kit.trust)


def duplicate_member(kit: Kit) -> Case:
    tail = [*regular_members(), Member("model.onnx", MODEL)]
    return Case(signed_bundle(kit, tail), kit.trust)


def second_manifest(kit: Kit) -> Case:
    manifest_bytes = kit.manifest().canonical_bytes()
    tail = [*regular_members(), Member("manifest.json", manifest_bytes)]
    return Case(signed_bundle(kit, tail), kit.trust)


def oversized_manifest(kit: Kit) -> Case:
    manifest = kit.manifest(padding="p" * (2 << 20))
    return Case(signed_bundle(kit, regular_members(), manifest=manifest), kit.trust)


def non_canonical_manifest(kit: Kit) -> Case:
    pretty = json.dumps(kit.manifest().to_dict(), indent=2).encode()
    return Case(signed_bundle(kit, regular_members(), manifest_bytes=pretty), kit.trust)


def manifest_without_model(kit: Kit) -> Case:
    files = {p: b for p, b in MEMBERS.items() if p != "model.onnx"}
    manifest = kit.manifest(files)
    tail = [m for m in regular_members() if m.name != "model.onnx"]
    return Case(signed_bundle(kit, tail, manifest=manifest), kit.trust)


def corrupt_header_checksum(kit: Kit) -> Case:
    good = kit.good_bundle()
    header = data_offset(good, "model.onnx") - 512
    return Case(flip(good, header + 3), kit.trust)


def non_zero_member_padding(kit: Kit) -> Case:
    good = kit.good_bundle()
    after_smoke = data_offset(good, "smoke.npz") + len(SMOKE)  # inside its padding
    return Case(flip(good, after_smoke + 3), kit.trust)


def trailing_garbage(kit: Kit) -> Case:
    return Case(kit.good_bundle() + b"appended payload", kit.trust)


def over_budget(kit: Kit) -> Case:
    return Case(kit.good_bundle(), kit.trust, max_bytes=4096)


def not_a_tar(kit: Kit) -> Case:
    return Case(b"PK\x03\x04 this is a zip file, not a bundle" * 40, kit.trust)


def gzip_compressed(kit: Kit) -> Case:
    return Case(gzip.compress(kit.good_bundle()), kit.trust)


def empty_file(kit: Kit) -> Case:
    return Case(b"", kit.trust)


# name -> (builder, error class, words the one-line reason must contain)
SCENARIOS: dict[str, tuple[Callable[[Kit], Case], type[Exception], tuple[str, ...]]] = {
    "flipped-model-byte": (flipped_model_byte, BundleError, ("model.onnx", "sha256")),
    "flipped-manifest-byte": (
        flipped_manifest_byte,
        SignatureError,
        ("manifest.json", "signature", "bad signature"),
    ),
    "flipped-signature-byte": (
        flipped_signature_byte,
        SignatureError,
        ("signature", "bad signature"),
    ),
    "unknown-key": (unknown_key, SignatureError, ("signature", "unknown key")),
    "below-threshold": (below_threshold, SignatureError, ("1 of the 2 required",)),
    "one-key-signing-twice": (
        one_key_signing_twice,
        SignatureError,
        ("1 of the 2 required", "repeated"),
    ),
    "no-signatures": (no_signatures, SignatureError, ("0 of the 1 required",)),
    "malformed-signatures": (malformed_signatures, BundleError, ("signatures.json is malformed",)),
    "extra-member": (extra_member, BundleError, ("unknown member", "extra.bin")),
    "missing-member": (missing_member, BundleError, ("missing member", "model.onnx")),
    "manifest-not-first": (
        manifest_not_first,
        BundleError,
        ("first member must be manifest.json",),
    ),
    "signatures-not-second": (
        signatures_not_second,
        BundleError,
        ("second member must be signatures.json",),
    ),
    "path-traversal": (path_traversal, BundleError, ("../evil.sh", "'..'")),
    "absolute-path": (absolute_path, BundleError, ("/tmp/evil.sh", "absolute")),
    "symlink": (symlink, BundleError, ("model.onnx", "symbolic link")),
    "hard-link": (hard_link, BundleError, ("model.onnx", "hard link")),
    "device-file": (device_file, BundleError, ("model.onnx", "character device")),
    "fifo": (fifo, BundleError, ("model.onnx", "fifo")),
    "directory-member": (directory_member, BundleError, ("models", "directory")),
    "pax-extension-header": (pax_extension_header, BundleError, ("pax extended header",)),
    "member-larger-than-declared": (
        member_larger_than_declared,
        BundleError,
        ("model.onnx", "more than"),
    ),
    "member-smaller-than-declared": (
        member_smaller_than_declared,
        BundleError,
        ("model.onnx", "less than"),
    ),
    "truncated-in-member": (truncated_in_member, BundleError, ("truncated archive", "model.onnx")),
    "truncated-in-header": (truncated_in_header, BundleError, ("truncated archive", "header")),
    "truncated-end-marker": (
        truncated_end_marker,
        BundleError,
        ("truncated archive", "end-of-archive"),
    ),
    "duplicate-member": (duplicate_member, BundleError, ("model.onnx", "appears twice")),
    "second-manifest": (second_manifest, BundleError, ("manifest.json", "appears twice")),
    "oversized-manifest": (oversized_manifest, BundleError, ("manifest.json", "over the limit")),
    "non-canonical-manifest": (non_canonical_manifest, BundleError, ("manifest.json", "canonical")),
    "manifest-without-model": (manifest_without_model, BundleError, ("model.onnx",)),
    "corrupt-header-checksum": (corrupt_header_checksum, BundleError, ("checksum",)),
    "non-zero-member-padding": (
        non_zero_member_padding,
        BundleError,
        ("non-zero padding", "smoke.npz"),
    ),
    "trailing-garbage": (trailing_garbage, BundleError, ("after the end of the archive",)),
    "over-budget": (over_budget, BundleError, ("budget of 4096",)),
    "not-a-tar": (not_a_tar, BundleError, ("not a tar archive",)),
    "gzip-compressed": (gzip_compressed, BundleError, ("not a tar archive", "gzip")),
    "empty-file": (empty_file, BundleError, ("not a tar archive", "empty")),
}


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    return Kit(tmp_path_factory.mktemp("kit"))


def listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def make_case(kit: Kit, name: str, workdir: Path) -> tuple[Path, Case]:
    builder = SCENARIOS[name][0]
    case = builder(kit)
    bundle = workdir / f"{name}.efb"
    bundle.write_bytes(case.bundle)
    return bundle, case


def test_corpus_is_large_enough() -> None:
    assert len(SCENARIOS) >= 15


def test_good_bundle_passes_both_paths(
    kit: Kit, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Guards the corpus: each case differs from a bundle that verifies.
    bundle = tmp_path / "good.efb"
    bundle.write_bytes(kit.good_bundle())
    verified = BundleVerifier(kit.trust).verify_and_extract(bundle, tmp_path / "out")
    assert (tmp_path / "out" / "model.onnx").read_bytes() == MODEL
    assert verified.manifest.name == "iris"
    kit.trust.save(tmp_path / "trust.json")
    with pytest.raises(SystemExit) as exit_info:
        main(["bundle", "verify", str(bundle), "--trust", str(tmp_path / "trust.json")])
    assert exit_info.value.code == 0


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_python_verifier_rejects(kit: Kit, tmp_path: Path, name: str) -> None:
    _, error_class, words = SCENARIOS[name]
    bundle, case = make_case(kit, name, tmp_path)
    verifier = BundleVerifier(case.trust, max_bundle_bytes=case.max_bytes)
    before = listing(tmp_path)

    with pytest.raises(error_class) as plain:
        verifier.verify(bundle)
    with pytest.raises(error_class) as extracting:
        verifier.verify_and_extract(bundle, tmp_path / "installed")

    for error in (plain.value, extracting.value):
        message = str(error)
        assert "\n" not in message
        for word in words:
            assert word in message, message
    assert listing(tmp_path) == before, "verification left files behind"


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_cli_rejects_with_exit_3(
    kit: Kit, tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, _, words = SCENARIOS[name]
    bundle, case = make_case(kit, name, tmp_path)
    trust_file = tmp_path / "trust.json"
    case.trust.save(trust_file)
    argv = ["bundle", "verify", str(bundle), "--trust", str(trust_file)]
    if case.max_bytes is not None:
        argv += ["--max-bytes", str(case.max_bytes)]
    before = listing(tmp_path)

    with pytest.raises(SystemExit) as exit_info:
        main(argv)

    out, err = capsys.readouterr()
    assert exit_info.value.code == 3
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {bundle.name} rejected: ")
    for word in words:
        assert word in lines[0], lines[0]
    assert listing(tmp_path) == before


def test_expected_sha256_mismatch_is_rejected(kit: Kit, tmp_path: Path) -> None:
    bundle = tmp_path / "good.efb"
    bundle.write_bytes(kit.good_bundle())
    with pytest.raises(BundleError, match="not the expected"):
        BundleVerifier(kit.trust).verify_and_extract(
            bundle, tmp_path / "out", expected_sha256="0" * 64
        )
    assert listing(tmp_path) == {"good.efb"}


def test_signature_flip_really_changes_one_base64_char(kit: Kit) -> None:
    good = kit.good_bundle()
    bad = flipped_signature_byte(kit).bundle
    assert len(good) == len(bad)
    diff = [i for i, (a, b) in enumerate(zip(good, bad, strict=True)) if a != b]
    assert len(diff) == 1
    start = good.index(b'"sig":"', data_offset(good, "signatures.json")) + 7
    sig_text = good[start : good.index(b'"', start)]
    assert len(base64.b64decode(sig_text)) == 64


def test_rejection_never_creates_dest_even_if_parent_has_other_files(
    kit: Kit, tmp_path: Path
) -> None:
    (tmp_path / "keep.txt").write_text("unrelated")
    bundle, case = make_case(kit, "truncated-in-member", tmp_path)
    with pytest.raises(BundleError):
        BundleVerifier(case.trust).verify_and_extract(bundle, tmp_path / "dest")
    assert sorted(os.listdir(tmp_path)) == ["keep.txt", "truncated-in-member.efb"]
