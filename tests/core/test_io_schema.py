"""io schema v2 (edgefleet.core.io_schema), batching (io_batch) and format-2 smoke helpers."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

from edgefleet.core.errors import BundleError
from edgefleet.core.io_batch import BatchError, run_batched
from edgefleet.core.io_schema import FeatureRef, IoSchema, TensorSpec
from edgefleet.core.manifest import Manifest
from edgefleet.core.tensor_smoke import check_outputs, compact, generate, inputs_from_smoke

V2: dict[str, Any] = {
    "version": 2,
    "inputs": [
        {"name": "image", "dtype": "uint8", "shape": ["N", 3, 8, 8], "batch_axis": 0,
         "role": "data", "x-layout": "nchw"},
        {"name": "h_in", "dtype": "float32", "shape": [1, None, 4], "batch_axis": None,
         "role": "state"},
        {"name": "rate", "dtype": "int64", "shape": [], "batch_axis": None, "role": "data"},
    ],
    "outputs": [
        {"name": "scores", "dtype": "float16", "shape": ["N", 10], "batch_axis": 0,
         "role": "probabilities"},
        {"name": "h_out", "dtype": "float32", "shape": [1, None, 4], "batch_axis": None,
         "role": "state"},
    ],
    "features": [],
    "state": [{"input": "h_in", "output": "h_out"}],
    "allow_non_finite": False,
    "x-future": {"kept": True},
}  # fmt: skip


def test_v2_round_trip_keeps_unknown_fields() -> None:
    schema = IoSchema.from_dict(V2)
    assert schema.to_dict() == V2
    assert schema.input("image").unrecognized_fields == {"x-layout": "nchw"}  # type: ignore[union-attr]
    assert schema.input("h_in").batch_axis is None and schema.input("rate").rank == 0  # type: ignore[union-attr]
    assert schema.output_with_role("probabilities").name == "scores"  # type: ignore[union-attr]
    assert not schema.is_table


def test_format_1_io_schema_is_one_instance() -> None:
    v1 = {
        "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 3]}],
        "outputs": [
            {"name": "label", "dtype": "int64", "shape": [-1], "role": "label"},
            {"name": "probabilities", "dtype": "float32", "shape": [-1, 2], "role": "probabilities"},
        ],
        "features": [{"name": "a", "kind": "numeric"}, {"name": "b", "kind": "numeric"},
                     {"name": "c", "kind": "categorical", "levels": [0, 1]}],
        "allow_non_finite": False,
    }  # fmt: skip
    schema = IoSchema.from_dict(v1)
    assert schema.is_table and schema.inputs[0].shape == (None, 3)
    assert [(f.name, f.input, f.column) for f in schema.features] == [
        ("a", "input", 0),
        ("b", "input", 1),
        ("c", "input", 2),
    ]
    assert schema.features[2].levels == (0, 1)


def test_one_input_per_dataframe_column() -> None:
    schema = IoSchema(
        inputs=(
            TensorSpec("age", "float32", ("N", 1)),
            TensorSpec("city", "string", ("N", 1)),
        ),
        outputs=(TensorSpec("y", "float32", ("N", 1), role="value"),),
        features=(FeatureRef("age", "age"), FeatureRef("city", "city", kind="categorical")),
    )
    again = IoSchema.from_dict(schema.to_dict())
    assert again == schema
    assert [(f.input, f.column) for f in again.features] == [("age", None), ("city", None)]


def _broken(change: Any) -> dict[str, Any]:
    data = copy.deepcopy(V2)
    change(data)
    return data


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["inputs"][0].update(dtype="complex64"), "dtype 'complex64'"),
        (lambda d: d["inputs"][0].update(batch_axis=4), "batch axis 4 is outside its shape"),
        (lambda d: d["inputs"][0].update(shape=["N", -3]), "invalid dimension -3"),
        (lambda d: d["inputs"].append(dict(d["inputs"][0])), "input 'image' is declared twice"),
        (lambda d: d["outputs"][0].update(role="guess"), "role 'guess' is not one of"),
        (lambda d: d["inputs"][1].update(role="probabilities"), "role 'probabilities'"),
        (lambda d: d.update(features=[{"name": "f", "input": "nope", "column": 0}]), "unknown input 'nope'"),
        (lambda d: d.update(features=[{"name": "f", "input": "image", "column": 9}]), "which has 8 columns"),
        (lambda d: d.update(state=[{"input": "h_in", "output": "nope"}]), "unknown tensor"),
        (lambda d: d.update(version=3), "unsupported version 3"),
        (lambda d: d.update(inputs=[]), "no inputs declared"),
    ],
)  # fmt: skip
def test_malformed_schemas_are_refused(change: Any, message: str) -> None:
    with pytest.raises(BundleError, match=message):
        IoSchema.from_dict(_broken(change))


def _manifest(format_version: int, task: str, io_schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "format_version": format_version,
        "bundle_id": "b",
        "model": {"name": "m", "version": 1, "task": task},
        "target": {},
        "files": [],
        "io_schema": io_schema,
        "reference_path": None,
    }


def test_manifest_format_2_checks_its_io_schema_and_tasks() -> None:
    assert Manifest.from_dict(_manifest(2, "detector", V2)).format_version == 2
    with pytest.raises(BundleError, match="io_schema: no inputs declared"):
        Manifest.from_dict(_manifest(2, "raw", {**V2, "inputs": []}))
    with pytest.raises(BundleError, match="model.task must be one of classification, regression"):
        Manifest.from_dict(_manifest(1, "raw", {}))


def _fixed_batch_schema(output_axis: int | None = 0) -> IoSchema:
    return IoSchema(
        inputs=(
            TensorSpec("x", "float32", (1, 3)),
            TensorSpec("k", "float32", (), batch_axis=None),
        ),
        outputs=(TensorSpec("y", "float32", (1, 3), batch_axis=output_axis),),
    )


def test_fixed_batch_graph_is_fed_one_sample_at_a_time() -> None:
    calls: list[int] = []

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        assert feeds["x"].shape == (1, 3) and feeds["k"].shape == ()
        calls.append(1)
        return [feeds["x"] * feeds["k"]]

    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    k = np.array(2.0, np.float32)
    (y,) = run_batched(_fixed_batch_schema(), {"x": x, "k": k}, run, ["y"])
    assert len(calls) == 4 and np.array_equal(y, x * 2)
    with pytest.raises(BatchError, match="output 'y' has no batch axis"):
        run_batched(_fixed_batch_schema(None), {"x": x, "k": k}, run, ["y"])


def test_batched_inputs_must_agree() -> None:
    schema = IoSchema(
        inputs=(TensorSpec("a", "float32", ("N", 2)), TensorSpec("b", "float32", ("N",))),
        outputs=(TensorSpec("y", "float32", ("N",)),),
    )
    with pytest.raises(BatchError, match="inputs disagree on the batch size"):
        run_batched(schema, {"a": np.zeros((3, 2)), "b": np.zeros(4)}, lambda f: [], ["y"])


def test_smoke_generator_is_deterministic_and_in_range() -> None:
    a = generate([2, 3, 5], np.dtype(np.float32), 7, -1.0, 3.0)
    b = generate([2, 3, 5], np.dtype(np.float32), 7, -1.0, 3.0)
    assert np.array_equal(a, b) and a.dtype == np.float32 and a.shape == (2, 3, 5)
    assert a.min() >= -1.0 and a.max() <= 3.0 and len(np.unique(a)) > 20
    assert np.array_equal(a.astype(np.float16).astype(np.float32), a)  # float16 values
    assert not np.array_equal(a, generate([2, 3, 5], np.dtype(np.float32), 8, -1.0, 3.0))
    ints = generate([100], np.dtype(np.int64), 1, 0, 9)
    assert ints.min() >= 0 and ints.max() <= 9


def test_compact_inputs_lose_nothing_and_outputs_are_checked() -> None:
    x = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)
    stored = {"in:x": compact(x), "out:y": np.ones(2, np.float32), "atol": np.array(1e-3)}
    assert stored["in:x"].dtype == np.float16
    feeds = inputs_from_smoke(stored, {"x": np.dtype(np.float32)})
    assert feeds["x"].dtype == np.float32
    assert np.array_equal(feeds["x"], x.astype(np.float16).astype(np.float32))
    assert check_outputs(stored, {"y": np.ones(2)}) is None
    assert "differs by" in (check_outputs(stored, {"y": np.array([1.0, 1.1])}) or "")
    assert "no output 'y'" in (check_outputs(stored, {}) or "")
