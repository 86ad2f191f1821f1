"""``edgefleet keys generate``, ``bundle inspect`` and ``bundle verify`` end to end."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from tests.support.bundles import placeholder_bundle

from edgefleet.core.bundle_writer import BundleInfo, write_bundle
from edgefleet.core.cli.main import main
from edgefleet.core.keys import keyid_of, load_private_key, load_public_key
from edgefleet.core.manifest import Manifest
from edgefleet.core.trust import TrustStore

MEMBERS: dict[str, bytes | Path] = {
    "model.onnx": b"\x08\x07" * 500,
    "smoke.npz": b"smoke",
    "reference.json": b"{}",
}


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    code = info.value.code
    return (code if isinstance(code, int) else 1), out, err


def make_bundle(
    tmp_path: Path, key_names: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> BundleInfo:
    keys = []
    for name in key_names:
        code, _, _ = run(["keys", "generate", name, "--out", str(tmp_path / "keys")], capsys)
        assert code == 0
        keys.append(load_private_key(tmp_path / "keys" / f"{name}.key"))
    return placeholder_bundle(
        tmp_path / "wine.efb",
        keys,
        model="wine",
        version=2,
        bundle_id="cli-test",
        labels=[0, 1, 2],
        quantization={"method": "dynamic", "format": "QOperator"},
    )


def test_keys_generate_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["keys", "generate", "release", "--out", str(tmp_path), "--json"], capsys)
    assert (code, err) == (0, "")
    result = json.loads(out)
    private, public = Path(result["private_key"]), Path(result["public_key"])
    assert private == tmp_path / "release.key" and public == tmp_path / "release.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert result["keyid"] == keyid_of(load_public_key(public))
    assert result["keyid"] == keyid_of(load_private_key(private).public_key())
    assert len(result["public_key_hex"]) == 64
    assert "PRIVATE" not in out


def test_keys_generate_text_and_refusal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["keys", "generate", "k", "--out", str(tmp_path)], capsys)
    assert code == 0
    assert "key id:" in out and "0600" in out
    code, out, err = run(["keys", "generate", "k", "--out", str(tmp_path)], capsys)
    assert code == 2
    assert out == ""
    assert err.startswith("error: ") and "already exists" in err
    assert len(err.splitlines()) == 1


def test_bundle_inspect_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    info = make_bundle(tmp_path, ("pub",), capsys)
    code, out, err = run(["bundle", "inspect", str(info.path), "--json"], capsys)
    assert (code, err) == (0, "")
    result = json.loads(out)
    assert result["sha256"] == info.sha256
    assert result["size"] == info.size
    assert result["verified"] is False
    assert result["manifest"] == info.manifest.to_dict()
    assert [s["keyid"] for s in result["signatures"]] == list(info.signer_keyids)


def test_bundle_inspect_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    info = make_bundle(tmp_path, ("pub",), capsys)
    code, out, _ = run(["bundle", "inspect", str(info.path)], capsys)
    assert code == 0
    assert "model wine v2 (classification) for profile rpi4-arm64" in out
    assert "model.onnx" in out and "NOT verified" in out


def test_bundle_verify_with_pub_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    info = make_bundle(tmp_path, ("pub",), capsys)
    argv = ["bundle", "verify", str(info.path), "--trust", str(tmp_path / "keys" / "pub.pub")]
    code, out, err = run([*argv, "--json"], capsys)
    assert (code, err) == (0, "")
    result = json.loads(out)
    assert result["ok"] is True
    assert result["sha256"] == info.sha256
    assert result["model"] == {"name": "wine", "version": 2}
    assert result["signer_keyids"] == list(info.signer_keyids)
    code, out, _ = run(argv, capsys)
    assert code == 0 and out.startswith("OK ")


def test_bundle_verify_with_trust_json_threshold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    info = make_bundle(tmp_path, ("a", "b"), capsys)
    keys = [load_public_key(tmp_path / "keys" / f"{n}.pub") for n in ("a", "b")]
    TrustStore.from_keys(keys, 2).save(tmp_path / "trust.json")
    code, out, _ = run(
        ["bundle", "verify", str(info.path), "--trust", str(tmp_path / "trust.json"), "--json"],
        capsys,
    )
    assert code == 0
    assert json.loads(out)["threshold"] == 2
    # Only one of the two keys trusted, threshold 2 asked: rejected, exit 3.
    code, out, err = run(
        [
            "bundle",
            "verify",
            str(info.path),
            "--trust",
            str(tmp_path / "keys" / "a.pub"),
            "--threshold",
            "2",
        ],
        capsys,
    )
    assert code == 2 and "more than the 1 trusted keys" in err
    code, out, err = run(
        [
            "bundle",
            "verify",
            str(info.path),
            "--trust",
            str(tmp_path / "keys" / "a.pub"),
            "--trust",
            str(tmp_path / "keys" / "b.pub"),
            "--sha256",
            "0" * 64,
        ],
        capsys,
    )
    assert code == 3 and "not the expected" in err


def test_bundle_verify_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    info = make_bundle(tmp_path, ("pub",), capsys)
    code, _, err = run(["bundle", "verify", str(info.path)], capsys)
    assert code == 2 and "--trust" in err
    code, _, err = run(
        ["bundle", "verify", str(info.path), "--trust", str(tmp_path / "nope.pub")], capsys
    )
    assert code == 2
    bad_key = tmp_path / "bad.pub"
    bad_key.write_text("not a key")
    code, _, err = run(["bundle", "verify", str(info.path), "--trust", str(bad_key)], capsys)
    assert code == 3 and err.startswith("error: ") and "not a PEM public key" in err


@pytest.mark.subprocess
def test_real_console_script_round_trip(tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "edgefleet.core.cli.main", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    result = cli("keys", "generate", "ci", "--out", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    key = load_private_key(Path(json.loads(result.stdout)["private_key"]))
    manifest = Manifest(model={"name": "m", "version": 1, "task": "regression"})
    info = write_bundle(tmp_path / "m.efb", manifest, MEMBERS, [key])
    ok = cli("bundle", "verify", str(info.path), "--trust", str(tmp_path / "ci.pub"), "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["sha256"] == info.sha256
    with tarfile.open(info.path, "r:") as tar:
        model_at = tar.getmember("model.onnx").offset_data
    data = bytearray(info.path.read_bytes())
    data[model_at + 10] ^= 1
    tampered = tmp_path / "tampered.efb"
    tampered.write_bytes(bytes(data))
    bad = cli("bundle", "verify", str(tampered), "--trust", str(tmp_path / "ci.pub"))
    assert bad.returncode == 3
    assert bad.stderr.startswith(
        "error: tampered.efb rejected: member 'model.onnx' fails its sha256"
    )
    assert "Traceback" not in bad.stderr
