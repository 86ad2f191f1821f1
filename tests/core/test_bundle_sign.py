"""``edgefleet bundle sign``: co-signing a bundle to meet a publisher threshold above 1.

Real keys from ``keys generate``, real bundle files, the real CLI (in process,
and once as a subprocess of the console module).
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from edgefleet.core.bundle_sign import plan_signatures, sign_bundle
from edgefleet.core.bundle_verifier import BundleVerifier, inspect_bundle
from edgefleet.core.bundle_writer import BundleInfo, write_bundle
from edgefleet.core.cli.main import main
from edgefleet.core.errors import BundleError, SignatureError, UsageError
from edgefleet.core.keys import keyid_of, load_private_key, load_public_key
from edgefleet.core.manifest import Manifest
from edgefleet.core.trust import Signature, TrustStore, sign_payload

MEMBERS: dict[str, bytes | Path] = {
    "model.onnx": bytes(range(256)) * 12,
    "smoke.npz": b"smoke rows",
    "reference.json": b'{"features": []}',
}
MANIFEST = Manifest(
    bundle_id="sign-test",
    model={"name": "wine", "version": 3, "task": "classification", "labels": [0, 1, 2]},
    target={"profile": "rpi4-arm64", "arch": "aarch64"},
    quantization={"method": "dynamic", "format": "QOperator"},
    unrecognized_fields={"added_by_a_newer_packager": {"keep": [1, 2]}},
)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    code = info.value.code
    return (code if isinstance(code, int) else 1), out, err


@pytest.fixture
def keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """``a``, ``b`` and ``c`` key pairs in ``tmp_path/keys`` and a 2-of-2 trust store of a, b."""
    folder = tmp_path / "keys"
    for name in ("a", "b", "c"):
        code, _, _ = run(["keys", "generate", name, "--out", str(folder)], capsys)
        assert code == 0
    publishers = [load_public_key(folder / f"{n}.pub") for n in ("a", "b")]
    TrustStore.from_keys(publishers, 2).save(folder / "trust-2of2.json")
    return folder


def write(path: Path, keys: Path, *names: str) -> BundleInfo:
    path.parent.mkdir(parents=True, exist_ok=True)
    private = [load_private_key(keys / f"{n}.key") for n in names]
    return write_bundle(path, MANIFEST, MEMBERS, private)


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_two_of_two_rejects_one_signature_and_accepts_after_sign(
    tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = write(tmp_path / "dist" / "wine-3.efb", keys, "a").path
    verify = ["bundle", "verify", str(bundle), "--trust", str(keys / "trust-2of2.json")]
    code, out, err = run(verify, capsys)
    assert code == 3 and out == ""
    assert err == (
        "error: wine-3.efb rejected: manifest.json signature check failed: "
        "valid signatures from 1 of the 2 required keys\n"
    )

    code, out, err = run(
        ["bundle", "sign", str(bundle), "--key", str(keys / "b.key"), "--json"], capsys
    )
    assert (code, err) == (0, "")
    result = json.loads(out)
    a_id, b_id = (keyid_of(load_public_key(keys / f"{n}.pub")) for n in ("a", "b"))
    assert result["path"] == str(bundle)
    assert result["added_keyids"] == [b_id]
    # a's key was not given, so its signature is kept but not vouched for.
    assert result["unchecked_keyids"] == [a_id] and result["verified_keyids"] == []
    assert listing(bundle.parent) == ["wine-3.efb"]

    code, out, err = run([*verify, "--json"], capsys)
    assert (code, err) == (0, "")
    verified = json.loads(out)
    assert verified["threshold"] == 2
    assert verified["signer_keyids"] == [a_id, b_id]
    assert verified["sha256"] == result["sha256"]


@pytest.mark.subprocess
def test_sign_as_a_subprocess_checks_existing_signatures_with_trust(
    tmp_path: Path, keys: Path
) -> None:
    bundle = write(tmp_path / "one.efb", keys, "a").path
    signed = tmp_path / "out" / "two.efb"
    signed.parent.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgefleet.core.cli.main",
            "bundle",
            "sign",
            str(bundle),
            "--key",
            str(keys / "b.key"),
            "--trust",
            str(keys / "a.pub"),
            "--out",
            str(signed),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (proc.returncode, proc.stderr) == (0, "")
    a_id = keyid_of(load_public_key(keys / "a.pub"))
    assert f"kept, verified: {a_id}" in proc.stdout
    assert "NOT verified" not in proc.stdout
    trust = TrustStore.load(keys / "trust-2of2.json")
    assert len(BundleVerifier(trust).verify(signed).signer_keyids) == 2
    # --out leaves the input as it was: still one signature.
    assert [s.keyid for s in inspect_bundle(bundle).signatures] == [a_id]


def test_signing_is_deterministic_and_matches_a_bundle_written_with_both_keys(
    tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one = write(tmp_path / "one.efb", keys, "a").path
    original = one.read_bytes()
    outputs = []
    for name in ("first.efb", "second.efb"):
        code, _, err = run(
            [
                "bundle",
                "sign",
                str(one),
                "--key",
                str(keys / "b.key"),
                "--key",
                str(keys / "c.key"),
                "--out",
                str(tmp_path / name),
            ],
            capsys,
        )
        assert (code, err) == (0, "")
        outputs.append((tmp_path / name).read_bytes())
    assert outputs[0] == outputs[1]
    assert one.read_bytes() == original
    # Adding b then c to a's bundle gives exactly what the writer makes with a, b, c.
    together = write(tmp_path / "together.efb", keys, "a", "b", "c").path.read_bytes()
    assert outputs[0] == together
    # And one at a time, in place, the same again.
    step = tmp_path / "steps.efb"
    step.write_bytes(original)
    for name in ("b", "c"):
        code, _, _ = run(["bundle", "sign", str(step), "--key", str(keys / f"{name}.key")], capsys)
        assert code == 0
    assert step.read_bytes() == together


def test_out_folder_keeps_the_name(
    tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = write(tmp_path / "wine-3.efb", keys, "a").path
    (tmp_path / "signed").mkdir()
    code, out, _ = run(
        [
            "bundle",
            "sign",
            str(bundle),
            "--key",
            str(keys / "b.key"),
            "--out",
            str(tmp_path / "signed"),
        ],
        capsys,
    )
    assert code == 0 and out.startswith(f"signed {tmp_path / 'signed' / 'wine-3.efb'}:")
    assert listing(tmp_path / "signed") == ["wine-3.efb"]


def test_signing_twice_with_one_key_is_refused_and_writes_nothing(
    tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = write(tmp_path / "wine-3.efb", keys, "a", "b").path
    before = bundle.read_bytes()
    b_id = keyid_of(load_public_key(keys / "b.pub"))
    code, out, err = run(["bundle", "sign", str(bundle), "--key", str(keys / "b.key")], capsys)
    assert (code, out) == (2, "")
    assert err == f"error: wine-3.efb: already signed by key {b_id}; nothing written\n"
    assert bundle.read_bytes() == before
    code, _, err = run(
        [
            "bundle",
            "sign",
            str(bundle),
            "--key",
            str(keys / "a.key"),
            "--out",
            str(tmp_path / "o.efb"),
        ],
        capsys,
    )
    assert code == 2 and "already signed by key" in err
    assert listing(tmp_path) == ["keys", "wine-3.efb"]


@pytest.mark.parametrize(
    "key_name, message",
    [
        ("missing.key", "signing key {path} does not exist"),
        ("a.pub", "{path} does not hold a PEM private key"),
    ],
)
def test_unusable_key_file_is_a_usage_error(
    tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str], key_name: str, message: str
) -> None:
    bundle = write(tmp_path / "wine-3.efb", keys, "a").path
    before = bundle.read_bytes()
    key = keys / key_name
    code, out, err = run(["bundle", "sign", str(bundle), "--key", str(key)], capsys)
    assert (code, out) == (2, "")
    assert err.startswith("error: " + message.format(path=key))
    assert len(err.splitlines()) == 1
    assert bundle.read_bytes() == before
    assert listing(tmp_path) == ["keys", "wine-3.efb"]


def _replace_member(bundle: Path, name: str, data: bytes) -> None:
    """Rewrite ``bundle`` with member ``name`` holding ``data`` (same order, headers)."""
    with tarfile.open(bundle) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    with tarfile.open(bundle, "w", format=tarfile.USTAR_FORMAT) as tar:
        for member, content in members:
            if member.name == name:
                content = data
                member.size = len(data)
            tar.addfile(member, io.BytesIO(content))


def _flip_model_byte(bundle: Path, keys: Path) -> list[str]:
    data = bundle.read_bytes()
    at = data.index(bytes(range(256)))
    bundle.write_bytes(data[:at] + b"\xff" + data[at + 1 :])
    return []


def _corrupt_known_signature(bundle: Path, keys: Path) -> list[str]:
    sigs = [s.to_dict() for s in inspect_bundle(bundle).signatures]
    raw = bytearray(base64.b64decode(sigs[0]["sig"]))
    raw[0] ^= 1
    sigs[0]["sig"] = base64.b64encode(bytes(raw)).decode()
    _replace_member(bundle, "signatures.json", json.dumps(sigs, separators=(",", ":")).encode())
    return ["--trust", str(keys / "a.pub")]


def _malformed_signature(bundle: Path, keys: Path) -> list[str]:
    sigs = [{"keyid": "ab" * 32, "sig": "not base64!"}]
    _replace_member(bundle, "signatures.json", json.dumps(sigs).encode())
    return []


def _changed_manifest(bundle: Path, keys: Path) -> list[str]:
    manifest = json.loads(inspect_bundle(bundle).manifest.canonical_bytes())
    manifest["model"]["version"] = 4
    _replace_member(
        bundle,
        "manifest.json",
        json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode(),
    )
    return ["--trust", str(keys / "trust-2of2.json")]


def _truncated(bundle: Path, keys: Path) -> list[str]:
    data = bundle.read_bytes()
    bundle.write_bytes(data[: data.index(b"smoke rows") + 4])
    return []


def _extra_member(bundle: Path, keys: Path) -> list[str]:
    data = bundle.read_bytes().rstrip(b"\0")
    info = tarfile.TarInfo("evil.sh")
    info.size = 4
    header = info.tobuf(format=tarfile.USTAR_FORMAT)
    padded = data + bytes(-len(data) % 512)
    bundle.write_bytes(padded + header + b"boom" + bytes(508) + bytes(1024))
    return []


@pytest.mark.parametrize(
    "tamper, reason",
    [
        pytest.param(_flip_model_byte, "member 'model.onnx' fails its sha256 check", id="member"),
        pytest.param(
            _corrupt_known_signature,
            "1 existing signature(s) by a known key do not verify",
            id="bad-known-signature",
        ),
        pytest.param(
            _malformed_signature,
            "signatures.json holds a malformed signature",
            id="malformed-signature",
        ),
        pytest.param(
            _changed_manifest,
            "1 existing signature(s) by a known key do not verify",
            id="changed-manifest",
        ),
        pytest.param(_truncated, "truncated archive", id="truncated"),
        pytest.param(_extra_member, "unknown member 'evil.sh'", id="extra-member"),
    ],
)
@pytest.mark.parametrize("in_place", [True, False], ids=["in-place", "out"])
def test_tampered_bundle_is_refused_and_leaves_nothing(
    tmp_path: Path,
    keys: Path,
    capsys: pytest.CaptureFixture[str],
    tamper: Callable[[Path, Path], list[str]],
    reason: str,
    in_place: bool,
) -> None:
    bundle = write(tmp_path / "wine-3.efb", keys, "a").path
    extra = tamper(bundle, keys)
    before = bundle.read_bytes()
    out = [] if in_place else ["--out", str(tmp_path / "signed.efb")]
    code, stdout, err = run(
        ["bundle", "sign", str(bundle), "--key", str(keys / "b.key"), *extra, *out], capsys
    )
    assert (code, stdout) == (3, "")
    assert err.startswith("error: wine-3.efb rejected: ") and reason in err
    assert len(err.splitlines()) == 1
    assert bundle.read_bytes() == before
    assert listing(tmp_path) == ["keys", "wine-3.efb"]


def test_plan_keeps_unknown_signatures_in_place(keys: Path) -> None:
    a, b, c = (load_private_key(keys / f"{n}.key") for n in ("a", "b", "c"))
    payload = MANIFEST.canonical_bytes()
    sig_a = Signature.from_dict({**sign_payload(payload, a).to_dict(), "note": "newer field"})
    sig_c = sign_payload(payload, c)
    plan = plan_signatures(payload, [sig_a, sig_c], [b], {keyid_of(c.public_key()): c.public_key()})
    assert [s.keyid for s in plan.signatures] == [
        sig_a.keyid,
        sig_c.keyid,
        keyid_of(b.public_key()),
    ]
    assert plan.signatures[0].to_dict()["note"] == "newer field"
    assert plan.verified_keyids == (sig_c.keyid,)
    assert plan.unchecked_keyids == (sig_a.keyid,)
    # The same key twice in one call signs once.
    assert len(plan_signatures(payload, [], [b, b], {}).added) == 1
    with pytest.raises(UsageError, match="already signed"):
        plan_signatures(payload, [sig_c], [c], {})
    with pytest.raises(UsageError, match="at least one --key"):
        plan_signatures(payload, [sig_c], [], {})
    with pytest.raises(UsageError, match="at most 64"):
        plan_signatures(payload, [sig_c] * 64, [b], {})
    forged = Signature(keyid=sig_c.keyid, sig=sign_payload(b"other", c).sig)
    with pytest.raises(SignatureError, match="do not verify"):
        plan_signatures(payload, [forged], [b], {sig_c.keyid: c.public_key()})
    with pytest.raises(BundleError, match="malformed signature"):
        plan_signatures(payload, [Signature(keyid=sig_c.keyid, sig="AAAA")], [b], {})


def test_device_verifier_with_threshold_two_installs_the_cosigned_bundle(
    tmp_path: Path, keys: Path
) -> None:
    """What the agent does with a downloaded bundle: BundleVerifier(trust,
    profile budget).verify_and_extract, here with publisher threshold 2."""
    trust = TrustStore.load(keys / "trust-2of2.json")
    assert trust.publisher_threshold == 2
    verifier = BundleVerifier(trust, max_bundle_bytes=1 << 20)
    bundle = write(tmp_path / "wine-3.efb", keys, "a").path
    with pytest.raises(SignatureError, match="1 of the 2 required keys"):
        verifier.verify_and_extract(bundle, tmp_path / "slot")
    assert not (tmp_path / "slot").exists()
    signed = sign_bundle(bundle, [load_private_key(keys / "b.key")])
    result = verifier.verify_and_extract(
        bundle, tmp_path / "slot", expected_sha256=signed.info.sha256
    )
    assert sorted(result.signer_keyids) == sorted(signed.info.signer_keyids)
    assert result.manifest.unrecognized_fields == MANIFEST.unrecognized_fields
    for path, content in MEMBERS.items():
        assert (tmp_path / "slot" / path).read_bytes() == content
    assert sorted(os.listdir(tmp_path)) == ["keys", "slot", "wine-3.efb"]


@pytest.mark.parametrize("in_place", [True, False], ids=["in-place", "out"])
def test_bundle_over_the_budget_is_refused_and_leaves_nothing(
    tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str], in_place: bool
) -> None:
    bundle = write(tmp_path / "wine-3.efb", keys, "a").path
    before = bundle.read_bytes()
    size = len(before)
    out = [] if in_place else ["--out", str(tmp_path / "signed.efb")]
    argv = ["bundle", "sign", str(bundle), "--key", str(keys / "b.key"), *out]
    code, stdout, err = run([*argv, "--max-bytes", str(size - 1)], capsys)
    assert (code, stdout) == (3, "")
    assert err == (
        f"error: wine-3.efb rejected: bundle is {size} bytes, over the budget of {size - 1} bytes\n"
    )
    assert bundle.read_bytes() == before
    assert listing(tmp_path) == ["keys", "wine-3.efb"]
    # A bundle of exactly the budget is signed.
    code, _, err = run([*argv, "--max-bytes", str(size)], capsys)
    assert (code, err) == (0, "")


def test_oversized_input_is_refused_from_its_size_before_it_is_read(
    tmp_path: Path, keys: Path
) -> None:
    # 8 GiB of sparse zeros: were it read, the reader would call it an empty tar archive.
    huge = tmp_path / "huge.efb"
    with open(huge, "wb") as f:
        f.truncate(8 << 30)
    with pytest.raises(BundleError, match=r"^bundle is 8589934592 bytes, over the budget of "):
        sign_bundle(huge, [load_private_key(keys / "b.key")], max_bundle_bytes=1 << 30)
    assert listing(tmp_path) == ["huge.efb", "keys"]


def test_input_of_unknown_size_is_measured_and_refused_before_writing(
    tmp_path: Path, keys: Path
) -> None:
    data = write(tmp_path / "src" / "wine-3.efb", keys, "a").path.read_bytes()
    pipe = tmp_path / "in" / "wine-3.efb"
    pipe.parent.mkdir()
    os.mkfifo(pipe)
    feeder = threading.Thread(target=pipe.write_bytes, args=(data,), daemon=True)
    feeder.start()
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(BundleError, match="^bundle is larger than the budget of"):
        sign_bundle(
            pipe, [load_private_key(keys / "b.key")], out=out, max_bundle_bytes=len(data) - 1
        )
    feeder.join(5)
    assert listing(out) == []
