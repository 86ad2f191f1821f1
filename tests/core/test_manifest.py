"""Manifest: validation, path rules, canonical encoding and unknown-field round trips."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.core.canonical import canonical_json, parse_json
from edgefleet.core.errors import BundleError
from edgefleet.core.manifest import FORMAT_VERSION, FileEntry, Manifest, check_member_path

SHA = hashlib.sha256(b"x").hexdigest()


def full_manifest_dict() -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "bundle_id": "iris-3-rpi4",
        "model": {
            "name": "iris",
            "version": 3,
            "task": "classification",
            "labels": [0, 1, 2],
            "framework": "sklearn",
            "opsets": {"": 17, "ai.onnx.ml": 3},
            "ir_version": 8,
        },
        "target": {
            "profile": "rpi4-arm64",
            "arch": "aarch64",
            "min_onnxruntime": "1.17",
            "execution_providers": ["CPUExecutionProvider"],
            "session_options": {"intra_op_threads": 4},
        },
        "files": [
            {"path": "model.onnx", "size": 1, "sha256": SHA},
            {"path": "smoke.npz", "size": 1, "sha256": SHA},
            {"path": "reference.json", "size": 1, "sha256": SHA},
        ],
        "io_schema": {"inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 4]}]},
        "quantization": {"method": "not_applicable", "reason": "tree ensemble"},
        "validation": {"original": {"accuracy": 0.97}, "packaged": {"accuracy": 0.97}},
        "lineage": {"registry_id": "iris:3", "created_at": "2026-01-01T00:00:00Z"},
        "reference_path": "reference.json",
        "smoke_path": "smoke.npz",
    }


def test_round_trip_is_exact() -> None:
    data = full_manifest_dict()
    manifest = Manifest.from_dict(data)
    assert manifest.to_dict() == data
    assert manifest.canonical_bytes() == canonical_json(data)
    assert Manifest.from_json_bytes(manifest.canonical_bytes()) == manifest
    assert manifest.name == "iris" and manifest.version == 3
    assert manifest.file("smoke.npz") == FileEntry("smoke.npz", 1, SHA)
    assert manifest.file("nope") is None
    assert manifest.total_size() == 3


def test_unknown_fields_survive_a_round_trip() -> None:
    data = full_manifest_dict()
    data["signed_by_newer_packager"] = {"sbom": ["onnx==1.16"], "n": 1.5}
    data["files"][0]["compression"] = "none"
    data["model"]["new_model_field"] = [1, 2]
    manifest = Manifest.from_dict(data)
    assert manifest.unrecognized_fields == {
        "signed_by_newer_packager": {"sbom": ["onnx==1.16"], "n": 1.5}
    }
    assert manifest.files[0].unrecognized_fields == {"compression": "none"}
    # Same bytes after an older reader re-encodes: signatures stay valid.
    assert manifest.canonical_bytes() == canonical_json(data)
    assert parse_json(manifest.canonical_bytes()) == data


def test_to_dict_is_a_copy() -> None:
    manifest = Manifest.from_dict(full_manifest_dict())
    manifest.to_dict()["model"]["name"] = "changed"
    assert manifest.name == "iris"


def test_defaults_and_optional_reference() -> None:
    manifest = Manifest(model={"name": "m", "version": 1, "task": "regression"})
    assert manifest.format_version == FORMAT_VERSION
    assert len(manifest.bundle_id) == 32
    assert manifest.required_members() == ("model.onnx", "smoke.npz", "reference.json")
    no_reference = Manifest(
        model={"name": "m", "version": 1, "task": "regression"}, reference_path=None
    )
    assert no_reference.required_members() == ("model.onnx", "smoke.npz")
    assert Manifest.from_dict(no_reference.to_dict()).reference_path is None


def test_with_files_replaces_the_file_list() -> None:
    manifest = Manifest.from_dict(full_manifest_dict())
    updated = manifest.with_files([FileEntry("model.onnx", 5, SHA)])
    assert [f.path for f in updated.files] == ["model.onnx"]
    assert [f.path for f in manifest.files] == ["model.onnx", "smoke.npz", "reference.json"]


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d.pop("model"), "missing field 'model'"),
        (lambda d: d.update(format_version=3), "unsupported format_version 3"),
        (lambda d: d.update(format_version=True), "unsupported format_version True"),
        (lambda d: d.update(bundle_id=""), "bundle_id"),
        (lambda d: d["model"].update(task="ranking"), "model.task"),
        (lambda d: d["model"].update(version=True), "model.version"),
        (lambda d: d["model"].update(version=-1), "model.version"),
        (lambda d: d["model"].pop("name"), "model.name"),
        (lambda d: d.update(target=[]), "target must be an object"),
        (lambda d: d.update(files={}), "files must be a list"),
        (lambda d: d["files"].append(dict(d["files"][0])), "lists 'model.onnx' twice"),
        (lambda d: d["files"][0].update(size="1"), "size must be an integer"),
        (lambda d: d["files"][0].update(sha256=SHA.upper()), "64 lowercase hex"),
        (lambda d: d["files"][0].pop("sha256"), "lacks 'sha256'"),
        (lambda d: d.update(smoke_path="../smoke.npz"), "'..'"),
        (lambda d: d.update(reference_path="/abs.json"), "absolute"),
        (lambda d: d["validation"].update(score=float("nan")), "canonical JSON"),
        (
            lambda d: d["files"].append({"path": "model.onnx/x", "size": 1, "sha256": SHA}),
            "lies under 'model.onnx'",
        ),
    ],
)
def test_invalid_manifests_name_the_field(mutate, reason: str) -> None:
    data = full_manifest_dict()
    mutate(data)
    with pytest.raises(BundleError) as info:
        Manifest.from_dict(data)
    assert reason in str(info.value)


def test_from_json_bytes_refuses_duplicate_keys() -> None:
    raw = canonical_json(full_manifest_dict())
    doubled = raw[:-1] + b',"bundle_id":"other"}'
    with pytest.raises(BundleError, match="duplicate key 'bundle_id'"):
        Manifest.from_json_bytes(doubled)


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("", "non-empty"),
        ("/etc/passwd", "absolute"),
        ("../x", "'..'"),
        ("a/../../x", "'..'"),
        ("a\\b", "backslash"),
        ("a//b", "invalid component ''"),
        ("a/", "invalid component ''"),
        ("./a", "invalid component '.'"),
        (".hidden", "invalid component"),
        ("sp ace", "invalid component"),
        ("caf\u00e9", "invalid component"),
        ("manifest.json", "reserved"),
        ("signatures.json", "reserved"),
        ("a" * 101, "longer than 100 bytes"),
    ],
)
def test_member_path_rules(path: str, reason: str) -> None:
    with pytest.raises(BundleError) as info:
        check_member_path(path)
    assert reason in str(info.value)


@pytest.mark.parametrize("path", ["model.onnx", "card.md", "extra/labels-v2.json", "a_b-c.D9"])
def test_acceptable_member_paths(path: str) -> None:
    assert check_member_path(path) == path


extra_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=10,
)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=10), extra_values, max_size=4))
def test_any_unknown_top_level_fields_round_trip(extra: dict[str, Any]) -> None:
    data = full_manifest_dict()
    extra = {k: v for k, v in extra.items() if k not in data}
    data.update(extra)
    manifest = Manifest.from_json_bytes(canonical_json(data))
    assert manifest.canonical_bytes() == canonical_json(data)
