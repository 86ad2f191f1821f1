"""Reference samples of a tensor model: ``samples.npz`` with one array per input name.

Checked once at registration, against the io schema v2:

- the names are exactly the model's inputs (missing and unknown names listed);
- each array has the input's rank, its fixed dimensions (the batch axis of a
  graph fixed to batch 1 may hold any number of samples: they are fed one at
  a time) and an element type that converts without loss of meaning (floats
  into float inputs, integers into integer or float inputs, bools into bool,
  text into string; never floats into an integer input);
- batched inputs agree on the number of samples; no NaN or infinity.

Arrays are stored converted to the declared element type.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from edgefleet.core.io_schema import NUMPY_NAMES, IoSchema, TensorSpec, describe_shape
from edgefleet.packager.errors import DataFileError


def conform(spec: TensorSpec, arr: np.ndarray, where: str) -> np.ndarray:
    """``arr`` as ``spec``'s element type and shape, or DataFileError naming the input."""
    kind = arr.dtype.kind
    want = spec.dtype
    ok = (
        (want == "string" and kind in "US")
        or (want == "bool" and kind == "b")
        or (want.startswith(("int", "uint")) and kind in "iub")
        or (want.startswith("float") and kind in "iubf")
    )
    if not ok:
        raise DataFileError(f"{where}: input {spec.name!r} is {want}, the array holds {arr.dtype}")
    if arr.ndim != spec.rank:
        raise DataFileError(
            f"{where}: input {spec.name!r} has shape {describe_shape(spec.shape)}, "
            f"the array has {list(arr.shape)}"
        )
    for axis, dim in enumerate(spec.shape):
        if not isinstance(dim, int) or dim == arr.shape[axis]:
            continue
        if axis == spec.batch_axis and dim == 1:
            continue  # a fixed-batch-1 graph is fed one sample at a time
        raise DataFileError(
            f"{where}: input {spec.name!r} has shape {describe_shape(spec.shape)}, "
            f"the array has {list(arr.shape)}"
        )
    # Text is kept as numpy unicode (savez needs no pickle for it).
    out = arr.astype(str) if want == "string" else arr.astype(NUMPY_NAMES[want], copy=False)
    if out.dtype.kind == "f" and out.size and not np.isfinite(out).all():
        bad = int((~np.isfinite(out)).sum())
        raise DataFileError(f"{where}: input {spec.name!r} holds {bad} NaN or infinite values")
    return np.require(out, requirements="C")  # ascontiguousarray would make a scalar 1-D


def batch_count(schema: IoSchema, arrays: dict[str, np.ndarray], where: str) -> int:
    """Samples along the batch axes (1 when no input is batched); they must agree."""
    counts = {
        s.name: int(arrays[s.name].shape[s.batch_axis])
        for s in schema.inputs
        if s.batch_axis is not None
    }
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{k}: {v}" for k, v in counts.items())
        raise DataFileError(f"{where}: inputs disagree on the number of samples ({listed})")
    n = next(iter(counts.values()), 1)
    if n == 0:
        raise DataFileError(f"{where}: no samples")
    return n


def check_names(schema: IoSchema, names: list[str], where: str) -> None:
    missing = [n for n in schema.input_names if n not in names]
    unknown = [n for n in names if n not in schema.input_names]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown {', '.join(unknown)}")
        raise DataFileError(
            f"{where}: arrays must be named after the model's inputs "
            f"({', '.join(schema.input_names)}): {'; '.join(parts)}"
        )


def load_samples(path: Path, schema: IoSchema) -> tuple[dict[str, np.ndarray], int]:
    """Read and check ``path`` (see the module docstring); arrays and sample count."""
    if path.suffix.lower() != ".npz":
        raise DataFileError(
            f"{path}: a tensor model takes --reference-data as .npz with one array per "
            f"input name ({', '.join(schema.input_names)})"
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            raw = {name: z[name] for name in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataFileError(f"cannot read {path}: {str(e).splitlines()[0][:200]}") from e
    check_names(schema, list(raw), str(path))
    arrays = {s.name: conform(s, raw[s.name], str(path)) for s in schema.inputs}
    return arrays, batch_count(schema, arrays, str(path))


def npz_bytes(arrays: dict[str, np.ndarray], *, compressed: bool = False) -> bytes:
    buffer = io.BytesIO()
    if compressed:
        np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
    else:
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()
