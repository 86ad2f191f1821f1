"""An MLflow signature's inputs, checked against the model and carried into its io schema.

MLflow writes a model's input signature as JSON (``signature.inputs.to_dict()``):
either named columns (``{"name": "age", "type": "long"}``) or tensors
(``{"type": "tensor", "tensor-spec": {"dtype": "float64", "shape": [-1, 30]}}``).
Pure: no MLflow import; the caller hands the parsed JSON.

Column types map to the types a DataFrame model's inputs take (``frames``):
``double`` and ``float`` -> ``float32`` (the converted graph computes in
float32), ``long`` and ``integer`` -> ``int64``, ``boolean`` -> ``bool``,
``string`` -> ``string``. Other MLflow types (binary, datetime, arrays,
objects) are refused.

Rules (one line naming the column when they fail):

- a DataFrame model (one input per column): the signature names exactly the
  model's columns; text stays text and numbers stay numbers; between number
  types the signature wins (an integer column the input example happened to
  hold becomes ``float32`` when the signature says ``double``), provided the
  reference rows fit the declared type;
- a table model (one ``[N, F]`` float input): a column signature has F
  numeric columns (their names become the feature names when the model has
  none of its own, and must equal them when it has); a tensor signature is
  numeric, 2-D, F wide.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from edgefleet.packager.errors import UnsupportedModelError
from edgefleet.packager.registry.records import FeatureSpec

# MLflow column type -> the io schema dtype of a DataFrame model's input.
COLUMN_TYPES = {
    "double": "float32",
    "float": "float32",
    "long": "int64",
    "integer": "int64",
    "boolean": "bool",
    "string": "string",
}
_NUMERIC_TENSOR = ("float", "int", "uint")


@dataclass(frozen=True)
class SignatureColumn:
    name: str
    mlflow_type: str

    @property
    def dtype(self) -> str:
        return COLUMN_TYPES[self.mlflow_type]


@dataclass(frozen=True)
class SignatureTensor:
    name: str | None
    dtype: str  # numpy name, e.g. float64
    shape: tuple[int, ...]  # -1: any size


@dataclass(frozen=True)
class InputSignature:
    """Either ``columns`` (a column signature) or ``tensors`` (a tensor signature)."""

    columns: tuple[SignatureColumn, ...] = ()
    tensors: tuple[SignatureTensor, ...] = ()


def _refuse(message: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"MLflow signature: {message}")


def parse_signature(items: Sequence[Mapping[str, Any]]) -> InputSignature:
    """The JSON of ``signature.inputs.to_dict()``; refuses types edgefleet cannot feed."""
    columns: list[SignatureColumn] = []
    tensors: list[SignatureTensor] = []
    for i, item in enumerate(items):
        kind = str(item.get("type", ""))
        name = item.get("name")
        if kind == "tensor":
            spec = item.get("tensor-spec") or {}
            shape = tuple(int(d) for d in spec.get("shape") or ())
            tensors.append(SignatureTensor(name, str(spec.get("dtype", "")), shape))
            continue
        label = str(name) if name is not None else f"#{i}"
        if kind not in COLUMN_TYPES:
            raise _refuse(
                f"column {label!r} has type {kind or 'unknown'}; edgefleet feeds "
                f"{', '.join(COLUMN_TYPES)}"
            )
        if name is None:
            raise _refuse(f"column {label} has no name")
        columns.append(SignatureColumn(str(name), kind))
    if columns and tensors:
        raise _refuse("mixes columns and tensors")
    return InputSignature(tuple(columns), tuple(tensors))


def frame_dtypes(
    sig: InputSignature, model_columns: Sequence[str], dtypes: Mapping[str, str]
) -> dict[str, str]:
    """The input dtypes of a DataFrame model under ``sig`` (see the module docstring).

    ``dtypes`` are the model's own input types (from its reference rows).
    """
    if not sig.columns:
        raise _refuse(
            "is a tensor signature; the model was fitted on a DataFrame and takes named columns"
        )
    declared = {c.name: c for c in sig.columns}
    for name in model_columns:
        if name not in declared:
            raise _refuse(f"lacks column {name!r}, which the model reads")
    for c in sig.columns:
        if c.name not in dtypes:
            raise _refuse(f"column {c.name!r} is not a column of the model")
    out: dict[str, str] = {}
    for name in model_columns:
        c, own = declared[name], dtypes[name]
        if (c.dtype == "string") != (own == "string"):
            raise _refuse(
                f"column {name!r} is {c.mlflow_type}, the model reads it as "
                f"{'text' if own == 'string' else 'a number'}"
            )
        out[name] = c.dtype
    return out


def fit_column(name: str, mlflow_type: str, dtype: str, values: np.ndarray) -> np.ndarray:
    """Reference values of column ``name`` as the declared ``dtype``; refuses what does not fit."""
    if dtype == "string":
        return values
    numbers = np.asarray(values, dtype=np.float64)
    if dtype == "float32":
        return numbers
    finite = numbers[np.isfinite(numbers)]
    if finite.size != numbers.size or not np.all(finite == np.round(finite)):
        raise _refuse(f"column {name!r} is {mlflow_type}, the reference rows hold fractions or NaN")
    if dtype == "bool":
        if not np.all(np.isin(numbers, (0.0, 1.0))):
            raise _refuse(f"column {name!r} is boolean, the reference rows hold other numbers")
        return numbers.astype(bool)
    return numbers.astype(np.int64)


def table_features(
    sig: InputSignature, features: tuple[FeatureSpec, ...]
) -> tuple[FeatureSpec, ...]:
    """The features of a table model under ``sig``: checked, named by the signature."""
    width = len(features)
    if sig.tensors:
        if len(sig.tensors) != 1:
            raise _refuse(f"has {len(sig.tensors)} tensors; the model takes one [N, {width}] table")
        t = sig.tensors[0]
        label = repr(t.name) if t.name else "input"
        if not t.dtype.startswith(_NUMERIC_TENSOR):
            raise _refuse(f"tensor {label} is {t.dtype}; the model takes numbers")
        if len(t.shape) != 2 or t.shape[1] not in (-1, width):
            raise _refuse(
                f"tensor {label} has shape {list(t.shape)}; the model takes [-1, {width}]"
            )
        return features
    for c in sig.columns:
        if c.dtype == "string":
            raise _refuse(f"column {c.name!r} is string; the model takes numbers only")
    names = [c.name for c in sig.columns]
    generic = all(f.name == f"f{i}" for i, f in enumerate(features))
    if generic:
        if len(names) != width:
            raise _refuse(f"has {len(names)} columns; the model takes {width}")
        return tuple(replace(f, name=n) for f, n in zip(features, names, strict=True))
    own = [f.name for f in features]
    for name in own:
        if name not in names:
            raise _refuse(f"lacks column {name!r}, which the model reads")
    for name in names:
        if name not in own:
            raise _refuse(f"column {name!r} is not a column of the model")
    if names != own:
        raise _refuse(f"lists the columns in another order than the model ({', '.join(own[:6])})")
    return features
