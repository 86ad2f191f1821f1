"""The registry: versions, aliases, retirement, lineage, compare, all-or-nothing registration."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from edgefleet.packager.errors import (
    InvalidNameError,
    NotARegistryError,
    RegistryEntryNotFoundError,
    RegistryStorageError,
    RetiredVersionError,
)
from edgefleet.packager.registry import ModelRef, Registry, parse_ref, parse_versioned_ref
from edgefleet.packager.registry.compare import compare_versions
from edgefleet.packager.registry.intake import RegistrationInput, prepare_registration
from edgefleet.packager.registry.refs import parse_pairs


def _new(models: dict[str, Any], kind: str = "iris_forest", **kw: Any) -> Any:
    files = models[kind]
    return prepare_registration(
        RegistrationInput(files.model, kw.pop("name", "iris"), reference_path=files.reference, **kw)
    )


def _artifact_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "artifacts").rglob("*") if p.is_file())


# -- references and k=v options (pure) -------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("digits", ModelRef("digits")),
        ("digits:3", ModelRef("digits", version=3)),
        ("digits@production", ModelRef("digits", alias="production")),
        ("my.model-2_b:12", ModelRef("my.model-2_b", version=12)),
    ],
)
def test_parse_ref(text: str, expected: ModelRef) -> None:
    assert parse_ref(text) == expected
    assert str(parse_ref(text)) == text


@pytest.mark.parametrize(
    "bad", ["", "digits:", "digits:x", "digits:0", "di gits", "digits@1x", "digits@"]
)
def test_parse_ref_rejects(bad: str) -> None:
    with pytest.raises(InvalidNameError):
        parse_ref(bad)


def test_versioned_ref_needs_version() -> None:
    with pytest.raises(InvalidNameError, match="NAME:VERSION"):
        parse_versioned_ref("digits")


def test_parse_pairs_types_and_errors() -> None:
    assert parse_pairs(["lr=0.1", "layers=2", "opt=adam", "flag=true"], "--param") == {
        "lr": 0.1,
        "layers": 2,
        "opt": "adam",
        "flag": True,
    }
    assert parse_pairs(["acc=1"], "--metric", numeric=True) == {"acc": 1.0}
    with pytest.raises(InvalidNameError, match="finite number"):
        parse_pairs(["acc=high"], "--metric", numeric=True)
    with pytest.raises(InvalidNameError, match="finite number"):
        parse_pairs(["acc=nan"], "--metric", numeric=True)
    with pytest.raises(InvalidNameError, match="twice"):
        parse_pairs(["a=1", "a=2"], "--tag")
    with pytest.raises(InvalidNameError, match="KEY=VALUE"):
        parse_pairs(["novalue"], "--tag")


# -- versions, aliases, retirement ---------------------------------------------------


def test_versions_increment_per_name_and_record_metadata(
    models: dict[str, Any], registry_dir: Path
) -> None:
    with Registry.open(registry_dir, create=True) as reg:
        v1 = reg.register(_new(models, metrics={"acc": 0.9}, params={"depth": 5}), now=100.0)
        v2 = reg.register(_new(models, metrics={"acc": 0.95}), now=200.0)
        other = reg.register(_new(models, name="other"), now=300.0)
    assert (v1.version, v2.version, other.version) == (1, 2, 1)
    assert v1.task == "classification" and v1.labels == [0, 1, 2]
    assert v1.estimator == "RandomForestClassifier" and v1.framework == "scikit-learn"
    assert "scikit-learn" in v1.framework_versions
    assert v1.reference is not None and v1.reference.rows == 45 and v1.reference.y_sha256
    assert v1.metrics == {"acc": 0.9} and v1.params == {"depth": 5}
    assert v1.created_by and v1.created_at == 100.0
    # Same model bytes: stored once.
    assert v1.artifact_sha256 == v2.artifact_sha256
    with Registry.open(registry_dir) as reg:
        assert [mv.ref for mv in reg.versions()] == ["iris:1", "iris:2", "other:1"]
        assert reg.get(ModelRef("iris")).version == 2


def test_alias_moves_and_resolves(models: dict[str, Any], registry_dir: Path) -> None:
    with Registry.open(registry_dir, create=True) as reg:
        reg.register(_new(models), now=1.0)
        reg.register(_new(models), now=2.0)
        reg.set_alias(ModelRef("iris", version=1), "production", now=3.0)
        assert reg.get(parse_ref("iris@production")).version == 1
        reg.set_alias(ModelRef("iris", version=2), "production", now=4.0)
        assert reg.get(parse_ref("iris@production")).version == 2
        assert reg.get(ModelRef("iris", version=2)).aliases == ("production",)
        assert reg.get(ModelRef("iris", version=1)).aliases == ()
        with pytest.raises(RegistryEntryNotFoundError, match="no alias 'staging'"):
            reg.get(parse_ref("iris@staging"))
        with pytest.raises(RegistryEntryNotFoundError, match="no model named 'nope'"):
            reg.get(parse_ref("nope@production"))


def test_retired_version_is_visible_but_not_usable(
    models: dict[str, Any], registry_dir: Path
) -> None:
    with Registry.open(registry_dir, create=True) as reg:
        reg.register(_new(models), now=1.0)
        reg.register(_new(models), now=2.0)
        retired = reg.retire(ModelRef("iris", version=2), reason="leaky feature", now=5.0)
        assert retired.status == "retired" and retired.retired_reason == "leaky feature"
        # Idempotent: the first retirement date and reason stay.
        again = reg.retire(ModelRef("iris", version=2), reason="other", now=9.0)
        assert again.retired_at == 5.0 and again.retired_reason == "leaky feature"
        assert reg.get(ModelRef("iris")).version == 1  # newest non-retired
        with pytest.raises(RetiredVersionError):
            reg.get(ModelRef("iris", version=2), allow_retired=False)
        with pytest.raises(RetiredVersionError):
            reg.set_alias(ModelRef("iris", version=2), "production", now=6.0)
        statuses = {mv.ref: mv.status for mv in reg.versions("iris")}
        assert statuses == {"iris:1": "active", "iris:2": "retired"}
        reg.retire(ModelRef("iris", version=1), reason=None, now=7.0)
        with pytest.raises(RetiredVersionError, match="every version"):
            reg.get(ModelRef("iris"))


def test_lineage_follows_parents_across_names(models: dict[str, Any], registry_dir: Path) -> None:
    with Registry.open(registry_dir, create=True) as reg:
        reg.register(_new(models, name="base"), now=1.0)
        reg.register(_new(models, parent="base:1"), now=2.0)
        reg.register(_new(models, parent="iris:1"), now=3.0)
        chain = reg.lineage(ModelRef("iris", version=2))
    assert [mv.ref for mv in chain] == ["iris:2", "iris:1", "base:1"]
    assert chain[0].parent == "iris:1"


def test_compare_shows_deltas_and_changes(models: dict[str, Any], registry_dir: Path) -> None:
    with Registry.open(registry_dir, create=True) as reg:
        a = reg.register(
            _new(models, metrics={"acc": 0.9, "f1": 0.8}, params={"depth": 3}), now=1.0
        )
        b = reg.register(_new(models, metrics={"acc": 0.95}, params={"depth": 5}), now=2.0)
    result = compare_versions(a, b)
    metrics = {row["key"]: row for row in result["metrics"]}
    assert metrics["acc"]["delta"] == pytest.approx(0.05)
    assert metrics["f1"]["b"] is None and metrics["f1"]["delta"] is None
    params = {row["key"]: row for row in result["params"]}
    assert params["depth"]["changed"] and (params["depth"]["a"], params["depth"]["b"]) == (3, 5)
    meta = {row["key"]: row for row in result["metadata"]}
    assert not meta["artifact_sha256"]["changed"]


# -- all or nothing ---------------------------------------------------------------------


def test_failed_register_leaves_no_version_and_no_artifacts(
    models: dict[str, Any], registry_dir: Path
) -> None:
    with Registry.open(registry_dir, create=True) as reg:
        # The parent is checked inside the transaction, after the artifacts were written.
        with pytest.raises(RegistryEntryNotFoundError):
            reg.register(_new(models, parent="ghost:1"), now=1.0)
        assert reg.versions() == []
        assert _artifact_files(registry_dir) == []


def test_failed_register_keeps_artifacts_other_versions_share(
    models: dict[str, Any], registry_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Registry.open(registry_dir, create=True) as reg:
        reg.register(_new(models), now=1.0)
        before = _artifact_files(registry_dir)

        def broken_insert(*args: Any, **kwargs: Any) -> None:
            raise RegistryStorageError("disk full (injected)")

        monkeypatch.setattr(reg, "_insert", broken_insert)
        with pytest.raises(RegistryStorageError, match="injected"):
            reg.register(_new(models), now=2.0)
        assert [mv.ref for mv in reg.versions()] == ["iris:1"]
        assert _artifact_files(registry_dir) == before
        mv = reg.get(ModelRef("iris", version=1))
        assert reg.read_model(mv)  # still readable, hash checked


# -- folders that are not registries ----------------------------------------------------


def test_missing_registry_is_refused_for_reading(tmp_path: Path) -> None:
    with pytest.raises(NotARegistryError, match="no registry"):
        Registry.open(tmp_path / "absent")
    assert not (tmp_path / "absent").exists()


@pytest.mark.parametrize("case", ["non_empty_folder", "file", "garbage_db", "foreign_sqlite"])
def test_folder_that_is_not_a_registry(tmp_path: Path, case: str) -> None:
    target = tmp_path / "reg"
    if case == "file":
        target.write_text("hello")
    else:
        target.mkdir()
        if case == "non_empty_folder":
            (target / "notes.txt").write_text("mine")
        elif case == "garbage_db":
            (target / "registry.db").write_bytes(b"this is not sqlite" * 100)
        else:
            conn = sqlite3.connect(target / "registry.db")
            conn.execute("CREATE TABLE people (name TEXT)")
            conn.commit()
            conn.close()
    with pytest.raises(NotARegistryError, match="not a registry"):
        Registry.open(target, create=True)


def test_corrupt_artifact_is_detected(models: dict[str, Any], registry_dir: Path) -> None:
    with Registry.open(registry_dir, create=True) as reg:
        mv = reg.register(_new(models), now=time.time())
        path = reg.artifacts.path_for(mv.artifact_sha256)
        path.write_bytes(path.read_bytes() + b"x")
        with pytest.raises(RegistryStorageError, match="corrupt"):
            reg.read_model(mv)
