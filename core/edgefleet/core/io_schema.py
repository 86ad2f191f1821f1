"""The io schema of a model: every input and output by name, type, shape and role.

One definition for the packager (which writes it into the manifest) and the
agent (which checks requests against it). Pure: no onnx, no onnxruntime, no
files. JSON shape of version 2 (``manifest.io_schema``)::

    {
      "version": 2,
      "inputs":  [{"name": "image", "dtype": "float32", "shape": ["N", 3, 32, 32],
                   "batch_axis": 0, "role": "data"}, ...],
      "outputs": [{"name": "probabilities", "dtype": "float32", "shape": ["N", 10],
                   "batch_axis": 0, "role": "probabilities"}, ...],
      "features": [{"name": "age", "input": "input", "column": 0, "kind": "numeric"}, ...],
      "state": [{"input": "h_in", "output": "h_out"}],
      "allow_non_finite": false
    }

A dimension is an integer >= 0 (fixed), a string (symbolic, e.g. ``"N"``) or
null (dynamic, unnamed). ``batch_axis`` is an axis index or null (a scalar
such as a sample rate, or a recurrent state tensor). A feature maps one named
column to ``(input, column)``: ``column`` is an index along the last axis of a
``[N, F]`` input, or null when the whole input is that one feature (one input
per DataFrame column).

Version 1 (the tabular bundles of format 1: no ``version`` key, ``-1`` for
dynamic dimensions, roles ``label``/``probabilities``/``value``, features
without ``input``) parses into the same classes: every feature is column i of
the single input.

Invariants: names are unique among inputs and among outputs; every feature
and state pair names a declared input/output; a batch axis lies inside the
shape; unknown fields (top level and per tensor) survive
``from_dict`` -> ``to_dict`` unchanged.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgefleet.core.errors import BundleError

__all__ = [
    "DTYPES",
    "INPUT_ROLES",
    "IO_SCHEMA_VERSION",
    "NUMPY_NAMES",
    "OUTPUT_ROLES",
    "TASKS",
    "Dim",
    "FeatureRef",
    "IoSchema",
    "StatePair",
    "TensorSpec",
    "describe_shape",
]

IO_SCHEMA_VERSION = 2

# ONNX element types edgefleet carries, by the names used in manifests.
DTYPES = (
    "float16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
    "string",
)
# numpy's name for each element type ("string" tensors hold Python str objects).
NUMPY_NAMES: dict[str, str] = {name: ("object" if name == "string" else name) for name in DTYPES}
TASKS = (
    "classifier",
    "regressor",
    "anomaly",
    "detector",
    "segmenter",
    "embedding",
    "sequence",
    "raw",
)
INPUT_ROLES = ("data", "state")
# "value" is the regression output of tabular bundles (format 1 and its JSONL key).
OUTPUT_ROLES = ("probabilities", "label", "score", "boxes", "embedding", "state", "raw", "value")

Dim = int | str | None


def _fail(message: str) -> BundleError:
    return BundleError(f"io_schema: {message}")


def _dim(raw: object, where: str) -> Dim:
    if raw is None:
        return None
    if isinstance(raw, bool):
        raise _fail(f"{where} has an invalid dimension {raw!r}")
    if isinstance(raw, int):
        if raw == -1:  # version 1 spelling of a dynamic dimension
            return None
        if raw < 0:
            raise _fail(f"{where} has an invalid dimension {raw!r}")
        return raw
    if isinstance(raw, str) and raw and len(raw) <= 64:
        return raw
    raise _fail(f"{where} has an invalid dimension {raw!r}")


def describe_shape(shape: Sequence[Dim]) -> str:
    """``["N", 3, None]`` -> ``[N, 3, ?]`` (for error messages)."""
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


_TENSOR_FIELDS = ("name", "dtype", "shape", "batch_axis", "role")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of the graph."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]
    batch_axis: int | None = 0
    role: str = "data"
    unrecognized_fields: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise _fail("a tensor name must be a non-empty string")
        if self.dtype not in DTYPES:
            raise _fail(f"{self.name!r} has dtype {self.dtype!r}, not one of {', '.join(DTYPES)}")
        object.__setattr__(self, "shape", tuple(_dim(d, repr(self.name)) for d in list(self.shape)))
        axis = self.batch_axis
        if axis is not None and (
            isinstance(axis, bool) or not isinstance(axis, int) or not 0 <= axis < len(self.shape)
        ):
            raise _fail(
                f"{self.name!r} batch axis {axis!r} is outside its shape "
                f"{describe_shape(self.shape)}"
            )
        if not isinstance(self.role, str) or not self.role:
            raise _fail(f"{self.name!r} role must be a non-empty string")

    @property
    def rank(self) -> int:
        return len(self.shape)

    def fixed(self, axis: int) -> int | None:
        """The size of ``axis`` when it is fixed, else None."""
        d = self.shape[axis]
        return d if isinstance(d, int) else None

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the graph is fixed to (e.g. 1), or None when it is free."""
        return None if self.batch_axis is None else self.fixed(self.batch_axis)

    def to_dict(self) -> dict[str, Any]:
        return {
            **copy.deepcopy(dict(self.unrecognized_fields)),
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "batch_axis": self.batch_axis,
            "role": self.role,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, output: bool, version: int) -> TensorSpec:
        if not isinstance(data, Mapping):
            raise _fail("inputs and outputs must be objects")
        for key in ("name", "dtype", "shape"):
            if key not in data:
                raise _fail(f"a tensor lacks {key!r}")
        shape = data["shape"]
        if not isinstance(shape, list):
            raise _fail(f"{data['name']!r} shape must be a list")
        if version < 2:
            # Format 1 tables: batch first, roles label/probabilities/value or none.
            batch_axis: int | None = 0 if shape else None
            role = data.get("role") or ("raw" if output else "data")
        else:
            batch_axis = data.get("batch_axis", 0 if shape else None)
            role = data.get("role") or ("raw" if output else "data")
        roles = OUTPUT_ROLES if output else INPUT_ROLES
        if role not in roles:
            raise _fail(f"{data['name']!r} role {role!r} is not one of {', '.join(roles)}")
        return cls(
            name=data["name"],
            dtype=data["dtype"],
            shape=tuple(shape),
            batch_axis=batch_axis,
            role=role,
            unrecognized_fields={
                k: copy.deepcopy(v) for k, v in data.items() if k not in _TENSOR_FIELDS
            },
        )


_FEATURE_FIELDS = ("name", "input", "column", "kind", "levels")


@dataclass(frozen=True)
class FeatureRef:
    """A named feature: ``column`` of ``input`` (None: the whole input is the feature)."""

    name: str
    input: str
    column: int | None = None
    kind: str = "numeric"
    levels: tuple[Any, ...] | None = None
    unrecognized_fields: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            **copy.deepcopy(dict(self.unrecognized_fields)),
            "name": self.name,
            "input": self.input,
            "column": self.column,
            "kind": self.kind,
        }
        if self.levels is not None:
            d["levels"] = list(self.levels)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], default_input: str, index: int) -> FeatureRef:
        if not isinstance(data, Mapping) or not isinstance(data.get("name"), str):
            raise _fail("a feature must be an object with a name")
        column = data.get("column", index if "input" not in data else None)
        if column is not None and (
            isinstance(column, bool) or not isinstance(column, int) or column < 0
        ):
            raise _fail(f"feature {data['name']!r} column {column!r} is not an index")
        levels = data.get("levels")
        return cls(
            name=data["name"],
            input=str(data.get("input", default_input)),
            column=column,
            kind=str(data.get("kind", "numeric")),
            levels=tuple(levels) if levels is not None else None,
            unrecognized_fields={
                k: copy.deepcopy(v) for k, v in data.items() if k not in _FEATURE_FIELDS
            },
        )


@dataclass(frozen=True)
class StatePair:
    """Recurrent state: ``output`` of one call is fed back as ``input`` of the next."""

    input: str
    output: str

    def to_dict(self) -> dict[str, Any]:
        return {"input": self.input, "output": self.output}


_SCHEMA_FIELDS = ("version", "inputs", "outputs", "features", "state", "allow_non_finite")


@dataclass(frozen=True)
class IoSchema:
    """Inputs, outputs, named features and state pairs of one model."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    features: tuple[FeatureRef, ...] = ()
    state: tuple[StatePair, ...] = ()
    allow_non_finite: bool = False
    version: int = IO_SCHEMA_VERSION
    unrecognized_fields: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not self.inputs:
            raise _fail("no inputs declared")
        if not self.outputs:
            raise _fail("no outputs declared")
        for what, specs in (("input", self.inputs), ("output", self.outputs)):
            names = [s.name for s in specs]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise _fail(f"{what} {dup[0]!r} is declared twice")
        by_name = {s.name: s for s in self.inputs}
        for f in self.features:
            spec = by_name.get(f.input)
            if spec is None:
                raise _fail(f"feature {f.name!r} names unknown input {f.input!r}")
            if f.column is not None:
                width = spec.fixed(spec.rank - 1) if spec.rank else None
                if width is not None and f.column >= width:
                    raise _fail(
                        f"feature {f.name!r} is column {f.column} of {f.input!r}, "
                        f"which has {width} columns"
                    )
        outputs = {s.name for s in self.outputs}
        for pair in self.state:
            if pair.input not in by_name or pair.output not in outputs:
                raise _fail(f"state pair {pair.input}={pair.output} names an unknown tensor")

    # --- lookups ---------------------------------------------------------
    def input(self, name: str) -> TensorSpec | None:
        return next((s for s in self.inputs if s.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((s for s in self.outputs if s.name == name), None)

    def output_with_role(self, role: str) -> TensorSpec | None:
        return next((s for s in self.outputs if s.role == role), None)

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def features_of(self, input_name: str) -> list[FeatureRef]:
        return [f for f in self.features if f.input == input_name]

    @property
    def is_table(self) -> bool:
        """One 2-D input with a fixed width: the shape format-1 bundles carry."""
        return len(self.inputs) == 1 and self.inputs[0].rank == 2 and bool(self.inputs[0].fixed(1))

    # --- encoding --------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            **copy.deepcopy(dict(self.unrecognized_fields)),
            "version": self.version,
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
            "features": [f.to_dict() for f in self.features],
            "state": [p.to_dict() for p in self.state],
            "allow_non_finite": self.allow_non_finite,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IoSchema:
        """Parse version 2, or a format-1 io_schema (no ``version`` key)."""
        if not isinstance(data, Mapping):
            raise _fail("must be an object")
        version = data.get("version", 1)
        if isinstance(version, bool) or version not in (1, IO_SCHEMA_VERSION):
            raise _fail(f"unsupported version {version!r}")
        raw_inputs, raw_outputs = data.get("inputs"), data.get("outputs")
        if not isinstance(raw_inputs, list) or not isinstance(raw_outputs, list):
            raise _fail("inputs and outputs must be lists")
        inputs = tuple(TensorSpec.from_dict(d, output=False, version=version) for d in raw_inputs)
        outputs = tuple(TensorSpec.from_dict(d, output=True, version=version) for d in raw_outputs)
        raw_features = data.get("features") or []
        if not isinstance(raw_features, list):
            raise _fail("features must be a list")
        first = inputs[0].name if inputs else ""
        features = tuple(FeatureRef.from_dict(f, first, i) for i, f in enumerate(raw_features))
        raw_state = data.get("state") or []
        if not isinstance(raw_state, list) or not all(
            isinstance(p, Mapping) and isinstance(p.get("input"), str) for p in raw_state
        ):
            raise _fail("state must be a list of {input, output} objects")
        state = tuple(StatePair(p["input"], str(p.get("output"))) for p in raw_state)
        allow = data.get("allow_non_finite", False)
        if not isinstance(allow, bool):
            raise _fail("allow_non_finite must be true or false")
        return cls(
            inputs=inputs,
            outputs=outputs,
            features=features,
            state=state,
            allow_non_finite=allow,
            version=int(version),
            unrecognized_fields={
                k: copy.deepcopy(v) for k, v in data.items() if k not in _SCHEMA_FIELDS
            },
        )
