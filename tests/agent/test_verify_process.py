"""Bundle checks in a child process: same checks, same errors, the checked bytes over the pipe.

Real child processes (``python -m edgefleet.agent.verify_process``), real
signatures, real bundles; the loader and the driver's checker on top of it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.support.bundles import Signer, make_signer, write_model_dir, write_signed_bundle

from edgefleet.agent.deploy.layout import StateLayout
from edgefleet.agent.deploy.loader import BundleLoader
from edgefleet.agent.errors import AgentConfigError, BundleRejectedError, ModelLoadError
from edgefleet.agent.runtime_verify import verify_bundle_dir
from edgefleet.agent.verify_process import ChildBundleChecker, VerifyProcess
from edgefleet.core.canonical import canonical_json
from edgefleet.core.errors import BundleError, SignatureError
from edgefleet.core.profiles import load_profile

PROFILE = load_profile("x86_64-gateway")


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Signer:
    return make_signer(tmp_path_factory.mktemp("keys"))


def trust_path(signer: Signer) -> Path:
    assert signer.trust_path is not None
    return signer.trust_path


def test_child_reports_the_verified_manifest_and_the_model_bytes(
    tmp_path: Path, signer: Signer
) -> None:
    bundle = write_model_dir(tmp_path / "iris", "iris", signer, version=4)
    with VerifyProcess(trust_path(signer)) as process:
        checked = process.load(bundle)
        again = process.load(bundle)  # one child answers several requests, in order
    expected = verify_bundle_dir(bundle, signer.trust)
    assert checked.manifest.to_dict() == expected.to_dict() == again.manifest.to_dict()
    assert checked.manifest.name == "iris" and checked.manifest.version == 4
    assert checked.members["model.onnx"] == (bundle / "model.onnx").read_bytes()
    assert process.returncode == 0


@pytest.mark.parametrize("member", ["model.onnx", "reference.json", "smoke.npz"])
def test_tampered_member_raises_the_verifiers_error(
    tmp_path: Path, signer: Signer, member: str
) -> None:
    bundle = write_model_dir(tmp_path / "iris", "iris", signer)
    data = bytearray((bundle / member).read_bytes())
    data[len(data) // 2] ^= 1
    (bundle / member).write_bytes(bytes(data))
    with VerifyProcess(trust_path(signer)) as process, pytest.raises(BundleError, match=member):
        process.load(bundle)


def test_edited_manifest_and_unknown_signer_are_signature_errors(
    tmp_path: Path, signer: Signer
) -> None:
    edited = write_model_dir(tmp_path / "edited", "iris", signer)
    manifest = json.loads((edited / "manifest.json").read_bytes())
    manifest["model"]["version"] = 99
    (edited / "manifest.json").write_bytes(canonical_json(manifest))
    foreign = write_model_dir(tmp_path / "foreign", "iris", make_signer())
    with VerifyProcess(trust_path(signer)) as process:
        with pytest.raises(SignatureError):
            process.load(edited)
        with pytest.raises(SignatureError):
            process.load(foreign)  # the child keeps answering after a refusal


def test_the_trust_store_is_read_by_the_child_at_each_start(tmp_path: Path, signer: Signer) -> None:
    bundle = write_model_dir(tmp_path / "iris", "iris", signer)
    trust = tmp_path / "trust.json"
    trust.write_bytes(trust_path(signer).read_bytes())
    with VerifyProcess(trust) as process:
        process.check_trust()
        process.load(bundle)
    make_signer(tmp_path / "other").trust.save(trust)  # the publisher is no longer trusted
    with VerifyProcess(trust) as process, pytest.raises(SignatureError):
        process.load(bundle)
    trust.write_text("{not json")
    with VerifyProcess(trust) as process, pytest.raises(AgentConfigError, match="trust_store"):
        process.check_trust()


def test_a_child_that_dies_is_a_load_error(tmp_path: Path, signer: Signer) -> None:
    bundle = write_model_dir(tmp_path / "iris", "iris", signer)
    with (
        VerifyProcess(trust_path(signer), python="/bin/false") as process,
        pytest.raises(ModelLoadError, match="verification process failed"),
    ):
        process.load(bundle)


def test_extract_verifies_before_anything_appears(tmp_path: Path, signer: Signer) -> None:
    good = write_signed_bundle(tmp_path / "good.efb", "iris", signer, version=2).path
    bad = write_signed_bundle(tmp_path / "bad.efb", "iris", make_signer().private_key).path
    checker = ChildBundleChecker(trust_path(signer), max_bundle_bytes=10 << 20)
    checked = checker(good, tmp_path / "out-good")
    assert checked.manifest.version == 2 and checked.sha256 is not None
    assert (tmp_path / "out-good" / "model.onnx").is_file()
    with pytest.raises(SignatureError):
        checker(bad, tmp_path / "out-bad")
    assert not (tmp_path / "out-bad").exists()
    small = ChildBundleChecker(trust_path(signer), max_bundle_bytes=1000)
    with pytest.raises(BundleError):
        small(good, tmp_path / "out-small")
    assert not (tmp_path / "out-small").exists()


def store_bundle(layout: StateLayout, signer: Signer, name: str, **kwargs: object) -> str:
    sha = f"{len(list(layout.bundles.glob('*'))):064x}"
    write_model_dir(layout.bundle_dir(sha), "iris", signer, name=name, **kwargs)  # type: ignore[arg-type]
    return sha


def test_isolated_loader_serves_what_the_in_process_loader_serves(
    tmp_path: Path, signer: Signer
) -> None:
    layout = StateLayout(tmp_path / "state")
    layout.ensure()
    first = store_bundle(layout, signer, "iris", version=1)
    second = store_bundle(layout, signer, "other", version=7)
    isolated = BundleLoader(layout, None, PROFILE, trust_path=trust_path(signer))
    isolated.prefetch([first, second])
    isolated.check_trust()
    b = isolated(second)  # answers may be taken out of order
    a = isolated(first)
    isolated.end_prefetch()
    c = isolated(first)  # no prefetch left: a fresh child
    direct = BundleLoader(layout, signer.trust, PROFILE)(first)
    assert (a.name, a.version, b.name, b.version) == ("iris", 1, "other", 7)
    assert a.manifest.to_dict() == direct.manifest.to_dict() == c.manifest.to_dict()
    assert a.bundle_sha256 == first and a.session.get_inputs()[0].name == "X"


def test_isolated_loader_applies_the_target_checks(tmp_path: Path, signer: Signer) -> None:
    layout = StateLayout(tmp_path / "state")
    layout.ensure()
    sha = store_bundle(layout, signer, "iris", arch="aarch64")
    loader = BundleLoader(layout, None, PROFILE, trust_path=trust_path(signer))
    with pytest.raises(BundleRejectedError, match="arch"):
        loader(sha)
