"""The io schema of a bundle, parsed once at load into what validation needs.

Pure: no onnxruntime, no file access. :class:`ModelSchema` is built from the
manifest's ``io_schema`` (docs/bundle-format.md: inputs, outputs with roles, features) and
:func:`coerce_input` checks one input array against an :class:`InputSpec`.

Invariants:

- Every error raised here is an :class:`InputSchemaError` whose ``kind`` is one
  of ``name``, ``dtype``, ``shape``, ``features``, ``non_finite``, ``empty``
  (see ``telemetry_sink.SCHEMA_ERROR_KINDS``) and whose message names the
  input and what was expected, e.g. ``input 'input' expects 64 features, got 63``.
- A malformed ``io_schema`` (a packager bug: the manifest is signed) raises
  :class:`ModelLoadError` at load time, never at request time.
- :func:`coerce_input` returns a C-contiguous array of the declared dtype and
  rank; it copies only when the caller's array is not already that.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgefleet.agent.errors import InputSchemaError, ModelLoadError
from edgefleet.core.errors import BundleError
from edgefleet.core.io_schema import IO_SCHEMA_VERSION, NUMPY_NAMES, IoSchema

# io_schema dtype names -> numpy dtypes. "string" tensors hold Python str objects.
NUMPY_DTYPES: dict[str, np.dtype[Any]] = {k: np.dtype(v) for k, v in NUMPY_NAMES.items()}

# onnxruntime's type strings for the same dtypes (to check the schema against the graph).
ORT_TYPES: dict[str, str] = {
    "float32": "tensor(float)",
    "float64": "tensor(double)",
    "float16": "tensor(float16)",
    "int64": "tensor(int64)",
    "int32": "tensor(int32)",
    "int16": "tensor(int16)",
    "int8": "tensor(int8)",
    "uint64": "tensor(uint64)",
    "uint32": "tensor(uint32)",
    "uint16": "tensor(uint16)",
    "uint8": "tensor(uint8)",
    "bool": "tensor(bool)",
    "string": "tensor(string)",
}

OUTPUT_ROLES = ("label", "probabilities", "value")

# Numeric kinds that may be cast to a numeric input dtype (bool, ints, floats).
_NUMERIC_KINDS = frozenset("biuf")


@dataclass(frozen=True)
class InputSpec:
    """One declared input: ``shape`` uses -1 for "any size" (the batch axis first)."""

    name: str
    dtype_name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    n_features: int | None  # size of axis 1 of a 2-D input, when known
    batch_axis: int | None = 0  # None: a scalar or state tensor, passed whole
    strict: bool = False  # io schema v2: no lossy or cross-kind casts (see coerce_input)

    @property
    def rank(self) -> int:
        return len(self.shape)


@dataclass(frozen=True)
class OutputSpec:
    """One declared output with its role (``label``, ``probabilities``, ``value`` or None)."""

    name: str
    dtype_name: str
    shape: tuple[int, ...]
    role: str | None


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    kind: str
    levels: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class ModelSchema:
    inputs: tuple[InputSpec, ...]
    outputs: tuple[OutputSpec, ...]
    features: tuple[FeatureSpec, ...]
    allow_non_finite: bool
    io: IoSchema | None = None  # the io schema v2 (format-2 bundles), for batching

    @classmethod
    def from_io_schema(cls, io_schema: Mapping[str, Any]) -> ModelSchema:
        """Parse the manifest's ``io_schema``; ModelLoadError names what is wrong."""
        try:
            if io_schema.get("version") == IO_SCHEMA_VERSION:
                return _from_v2(IoSchema.from_dict(io_schema))
            return _parse_io_schema(io_schema)
        except (KeyError, TypeError, ValueError, BundleError) as e:
            raise ModelLoadError(f"manifest io_schema is invalid: {e}") from e

    @property
    def loops_batches(self) -> bool:
        """A graph fixed to batch 1: batches are fed one sample at a time."""
        return self.io is not None and any(s.fixed_batch == 1 for s in self.io.inputs)

    def output_index(self, role: str) -> int | None:
        for i, out in enumerate(self.outputs):
            if out.role == role:
                return i
        return None

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]


def _dims(shape: Sequence[Any]) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) else -1 for d in shape)


def _from_v2(io: IoSchema) -> ModelSchema:
    """The runtime's view of an io schema v2 (symbolic dimensions become -1)."""
    inputs = []
    for spec in io.inputs:
        width = spec.fixed(1) if spec.rank == 2 and spec.batch_axis == 0 else None
        inputs.append(
            InputSpec(
                spec.name,
                spec.dtype,
                NUMPY_DTYPES[spec.dtype],
                _dims(spec.shape),
                width,
                spec.batch_axis,
                strict=True,
            )
        )
    # The runtime's roles: the table roles, plus "score" counted like a value.
    table_role = {"label": "label", "probabilities": "probabilities", "value": "value"}
    outputs = tuple(
        OutputSpec(o.name, o.dtype, _dims(o.shape), table_role.get(o.role)) for o in io.outputs
    )
    features = tuple(FeatureSpec(f.name, f.kind, f.levels) for f in io.features)
    return ModelSchema(tuple(inputs), outputs, features, io.allow_non_finite, io)


def _parse_shape(raw: Any, where: str) -> tuple[int, ...]:
    if not isinstance(raw, list | tuple) or not raw:
        raise ValueError(f"{where} shape must be a non-empty list")
    shape: list[int] = []
    for dim in raw:
        if dim is None or dim == "None" or (isinstance(dim, str)):
            shape.append(-1)  # symbolic dimension names mean "any size"
        elif isinstance(dim, int) and not isinstance(dim, bool) and dim >= -1:
            shape.append(dim)
        else:
            raise ValueError(f"{where} shape has an invalid dimension {dim!r}")
    return tuple(shape)


def _parse_dtype(raw: Any, where: str) -> str:
    if raw not in NUMPY_DTYPES:
        raise ValueError(f"{where} dtype {raw!r} is not one of {', '.join(NUMPY_DTYPES)}")
    return str(raw)


def _parse_io_schema(io_schema: Mapping[str, Any]) -> ModelSchema:
    raw_features = io_schema.get("features") or []
    features = tuple(
        FeatureSpec(
            name=str(f["name"]),
            kind=str(f.get("kind", "numeric")),
            levels=tuple(f["levels"]) if f.get("levels") is not None else None,
        )
        for f in raw_features
    )
    inputs: list[InputSpec] = []
    raw_inputs = io_schema["inputs"]
    if not raw_inputs:
        raise ValueError("no inputs declared")
    for raw in raw_inputs:
        name = str(raw["name"])
        dtype_name = _parse_dtype(raw["dtype"], f"input {name!r}")
        shape = _parse_shape(raw["shape"], f"input {name!r}")
        n_features: int | None = None
        if len(shape) == 2:
            if shape[1] > 0:
                n_features = shape[1]
            elif len(raw_inputs) == 1 and features:
                n_features = len(features)
        if (
            n_features is not None
            and features
            and len(raw_inputs) == 1
            and len(features) != n_features
        ):
            raise ValueError(
                f"input {name!r} has {n_features} columns but {len(features)} features are named"
            )
        inputs.append(InputSpec(name, dtype_name, NUMPY_DTYPES[dtype_name], shape, n_features))
    if len({i.name for i in inputs}) != len(inputs):
        raise ValueError("duplicate input names")
    outputs: list[OutputSpec] = []
    for raw in io_schema["outputs"]:
        name = str(raw["name"])
        role = raw.get("role")
        if role is not None and role not in OUTPUT_ROLES:
            raise ValueError(f"output {name!r} role {role!r} is not one of {OUTPUT_ROLES}")
        outputs.append(
            OutputSpec(
                name,
                _parse_dtype(raw["dtype"], f"output {name!r}"),
                _parse_shape(raw["shape"], f"output {name!r}"),
                role,
            )
        )
    if not outputs:
        raise ValueError("no outputs declared")
    return ModelSchema(
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        features=features,
        allow_non_finite=bool(io_schema.get("allow_non_finite", False)),
    )


def _describe_shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join("*" if d < 0 else str(d) for d in shape) + "]"


def coerce_input(spec: InputSpec, value: Any, *, check_finite: bool) -> np.ndarray:
    """``value`` as an array matching ``spec`` (dtype, rank, fixed dimensions, finiteness).

    A 1-D array of ``n_features`` values is taken as one row. Numeric arrays are
    cast to a numeric declared dtype; anything else of the wrong dtype is refused.
    A ``strict`` (io schema v2) input takes floats only into float inputs,
    integers within the declared integer type's range, bools only as bools and
    text only as text. The batch axis may have any non-zero size (a graph
    fixed to batch 1 is fed one sample at a time); other fixed dimensions must
    match.
    """
    arr = value if type(value) is np.ndarray else _as_array(spec, value)
    if arr.dtype != spec.dtype:
        arr = _cast_strict(spec, arr) if spec.strict else _cast(spec, arr)
    if arr.ndim != spec.rank:
        if arr.ndim == 1 and spec.rank == 2 and spec.n_features is not None:
            arr = arr.reshape(1, -1)
        else:
            raise InputSchemaError(
                f"input {spec.name!r} must have {spec.rank} dimensions "
                f"{_describe_shape(spec.shape)}, got shape {list(arr.shape)}",
                kind="shape",
            )
    batch = spec.batch_axis
    if batch is not None and arr.shape[batch] == 0:
        raise InputSchemaError(f"input {spec.name!r} has no rows", kind="empty")
    for axis in range(spec.rank):
        if axis == batch:
            continue
        want = spec.shape[axis]
        if axis == 1 and spec.n_features is not None:
            want = spec.n_features
        if want >= 0 and arr.shape[axis] != want:
            if axis == 1 and spec.rank == 2 and batch == 0:
                raise InputSchemaError(
                    f"input {spec.name!r} expects {want} features, got {arr.shape[1]}",
                    kind="features",
                )
            raise InputSchemaError(
                f"input {spec.name!r} expects shape {_describe_shape(spec.shape)}, "
                f"got {list(arr.shape)}",
                kind="shape",
            )
    if check_finite and arr.dtype.kind == "f" and not all_finite(arr):
        raise InputSchemaError(_non_finite_message(spec, arr), kind="non_finite")
    if not arr.flags.c_contiguous:
        arr = np.require(arr, requirements="C")  # keeps 0-d scalars 0-d
    return arr


def _cast_strict(spec: InputSpec, arr: np.ndarray) -> np.ndarray:
    """io schema v2 casting: only conversions that keep the meaning of every value."""
    want, kind = spec.dtype, arr.dtype.kind
    if want.kind == "O":
        if kind == "U" or (kind == "O" and all(type(v) is str for v in arr.flat)):
            return arr.astype(object)
    elif want.kind == "b":
        if kind == "b":
            return arr
    elif want.kind in "iu":
        if kind in "iu":
            if arr.size:
                info = np.iinfo(want)
                low, high = int(arr.min()), int(arr.max())
                if low < info.min or high > info.max:
                    raise InputSchemaError(
                        f"input {spec.name!r} expects {spec.dtype_name}, got values from "
                        f"{low} to {high}",
                        kind="dtype",
                    )
            return arr.astype(want)
    elif want.kind == "f" and kind in "iuf":
        return arr.astype(want)
    raise InputSchemaError(
        f"input {spec.name!r} expects {spec.dtype_name}, got {_kind_name(arr)}", kind="dtype"
    )


def _kind_name(arr: np.ndarray) -> str:
    return {
        "b": "true/false values",
        "f": "floating-point values",
        "U": "text",
        "O": "objects",
    }.get(arr.dtype.kind, str(arr.dtype))


def all_finite(arr: np.ndarray) -> bool:
    """No NaN or infinity in a floating-point ``arr``.

    The sum of squares is one BLAS call and propagates NaN/inf; only when it is
    not finite (NaN/inf present, or huge finite values overflowing) does the
    exact element-wise test run.
    """
    if math.isfinite(np.vdot(arr, arr)):
        return True
    return bool(np.isfinite(arr).all())


def non_finite_error(spec: InputSpec, arr: np.ndarray) -> InputSchemaError:
    return InputSchemaError(_non_finite_message(spec, arr), kind="non_finite")


def _as_array(spec: InputSpec, value: Any) -> np.ndarray:
    try:
        if spec.dtype.kind == "O":
            return np.asarray(value, dtype=object)
        return np.asarray(value)
    except (ValueError, TypeError) as e:
        raise InputSchemaError(
            f"input {spec.name!r} is not a rectangular array: {e}", kind="shape"
        ) from e


def _cast(spec: InputSpec, arr: np.ndarray) -> np.ndarray:
    if spec.dtype.kind == "O":
        if arr.dtype.kind in "UO":
            return arr.astype(object)
    elif arr.dtype.kind in _NUMERIC_KINDS and spec.dtype.kind in _NUMERIC_KINDS:
        if spec.dtype.kind in "iub" and arr.dtype.kind == "f":
            raise InputSchemaError(
                f"input {spec.name!r} expects {spec.dtype_name}, got floating-point values",
                kind="dtype",
            )
        return arr.astype(spec.dtype)
    raise InputSchemaError(
        f"input {spec.name!r} expects {spec.dtype_name}, got {arr.dtype}", kind="dtype"
    )


def _non_finite_message(spec: InputSpec, arr: np.ndarray) -> str:
    bad = ~np.isfinite(arr)
    rows, *cols = np.nonzero(bad)
    where = f"row {int(rows[0])}"
    if cols:
        where += f", column {int(cols[0][0])}"
    return (
        f"input {spec.name!r} has {int(bad.sum())} NaN or infinite value(s) (first at {where}); "
        "this model does not accept them"
    )
