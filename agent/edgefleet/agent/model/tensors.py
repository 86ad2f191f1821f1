"""Named tensors for batch prediction (``agent predict``): ``.npz`` and JSON lines.

- ``.npz`` in: one array per input name, batched along each input's declared
  axis (inputs without a batch axis, e.g. a sample rate or a state tensor,
  are given whole); missing and unknown names are refused together, in one
  line. Never unpickled.
- ``.npz`` out: one array per output, under its ONNX name (text outputs as
  fixed-width unicode, so the file needs no pickle either).
- JSON lines in: one object per line keyed by input name, each value one
  sample (without the batch axis) as nested lists; out: one object per line
  with ``row`` and every output's sample under its ONNX name. A model with
  one input per DataFrame column takes ``{"age": 41, "city": "Lyon"}``.
- CSV in, for a model with one 1-D input per column only: the header names
  the columns (missing and unknown names refused together), each cell is
  read as its input's type (a number where a number is declared, ``true`` /
  ``false`` / ``1`` / ``0`` for bool, any text for string).

Pure over bytes and text streams; the command does the file handling.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Iterator
from typing import IO, Any

import numpy as np

from edgefleet.agent.errors import InputSchemaError
from edgefleet.agent.model.runtime import LoadedModel, Prediction


def check_names(model: LoadedModel, names: list[str], where: str) -> None:
    missing = [n for n in model.input_names if n not in names]
    unknown = [n for n in names if n not in model.input_names]
    if missing or unknown:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unknown {', '.join(unknown)}"] if unknown else []
        )
        raise InputSchemaError(
            f"{where} must name the model's inputs ({', '.join(model.input_names)}): "
            + "; ".join(parts),
            kind="name",
        )


def read_npz(data: bytes, model: LoadedModel) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise InputSchemaError(f"not a readable .npz file: {e}", kind="data") from e
    check_names(model, list(arrays), "the .npz arrays")
    return arrays


def write_npz(stream: IO[bytes], model: LoadedModel, prediction: Prediction) -> None:
    arrays = {}
    for name, value in zip(model.output_names, prediction.outputs, strict=True):
        arr = np.asarray(value)
        arrays[name] = arr.astype(str) if arr.dtype.kind == "O" else arr
    np.savez(stream, **arrays)  # type: ignore[arg-type]


def _with_batch(model: LoadedModel, name: str, value: Any, line: int) -> np.ndarray:
    spec = next(s for s in model.schema.inputs if s.name == name)
    try:
        arr = np.asarray(value, dtype=object if spec.dtype.kind == "O" else None)
    except (ValueError, TypeError) as e:
        raise InputSchemaError(
            f"line {line}, input {name!r}: not a rectangular array", kind="data"
        ) from e
    if arr.dtype.kind == "O" and spec.dtype.kind != "O":
        raise InputSchemaError(f"line {line}, input {name!r}: not an array of numbers", "data")
    return arr if spec.batch_axis is None else np.expand_dims(arr, spec.batch_axis)


def is_column_model(model: LoadedModel) -> bool:
    """Every input is 1-D and batched: one input per DataFrame column."""
    return all(s.rank == 1 and s.batch_axis == 0 for s in model.schema.inputs)


_BOOL_CELLS = {"true": True, "false": False, "1": True, "0": False}


def _cell(text: str, dtype: str, line: int, name: str) -> Any:
    cell = text.strip()
    try:
        if dtype == "string":
            return text
        if dtype == "bool":
            return _BOOL_CELLS[cell.lower()]
        if dtype.startswith(("int", "uint")):
            return int(cell)
        return float(cell) if cell else math.nan
    except (KeyError, ValueError):
        raise InputSchemaError(
            f"line {line}, column {name!r}: {cell[:40]!r} is not {dtype}", kind="data"
        ) from None


def drift_rows(model: LoadedModel, feeds: dict[str, Any]) -> np.ndarray:
    """What the drift window folds for a call: a column model's feeds as [N, F] rows.

    A model with one input per DataFrame column has a drift reference over its
    features (strings included: the window counts their levels, and the
    ``unseen`` bucket takes a level the reference never had); its rows are the
    inputs in feature order, as an object array when a column holds text.
    Other multi-input models fold their first input (as before).
    """
    features = model.schema.features
    names = [f.name for f in features]
    if features and is_column_model(model) and all(n in feeds for n in names):
        columns = [np.asarray(feeds[n]).reshape(-1) for n in names]
        if any(c.dtype.kind in "OUS" for c in columns):
            return np.stack([c.astype(object) for c in columns], axis=1)
        return np.stack([c.astype(np.float64) for c in columns], axis=1)
    return np.asarray(feeds.get(model.input_names[0], next(iter(feeds.values()))))


def read_csv_columns(stream: IO[str], model: LoadedModel) -> dict[str, np.ndarray]:
    """A CSV with a header, one column per input, as one batch of feeds (module doc)."""
    import csv

    rows = [row for row in csv.reader(stream) if row]
    if not rows:
        raise InputSchemaError("the input has no rows", kind="empty")
    header = [h.strip() for h in rows[0]]
    check_names(model, header, "the CSV header")
    if len(rows) < 2:
        raise InputSchemaError("the input has no rows", kind="empty")
    specs = {s.name: s for s in model.schema.inputs}
    columns: dict[str, list[Any]] = {name: [] for name in header}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise InputSchemaError(
                f"line {line}: {len(row)} cells, the header has {len(header)}", kind="data"
            )
        for name, text in zip(header, row, strict=True):
            columns[name].append(_cell(text, specs[name].dtype_name, line, name))
    return {name: np.asarray(values, dtype=specs[name].dtype) for name, values in columns.items()}


def read_jsonl_samples(stream: IO[str], model: LoadedModel) -> Iterator[dict[str, np.ndarray]]:
    """One feed (every input with a batch of one) per non-blank line."""
    for line_no, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as e:
            raise InputSchemaError(f"line {line_no}: not JSON: {e}", kind="json") from e
        if not isinstance(value, dict):
            raise InputSchemaError(
                f"line {line_no}: a sample must be an object keyed by input name", kind="data"
            )
        check_names(model, list(value), f"line {line_no}")
        yield {name: _with_batch(model, name, value[name], line_no) for name in value}


def _plain(arr: np.ndarray) -> Any:
    if arr.dtype.kind == "f":
        return _finite(arr.tolist())
    if arr.dtype.kind == "O":
        return [str(v) for v in arr.reshape(-1)] if arr.ndim else str(arr.item())
    return arr.tolist()


def _finite(value: Any) -> Any:
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value if math.isfinite(value) else None


def sample_rows(model: LoadedModel, prediction: Prediction, row: int) -> dict[str, Any]:
    """One JSON object: ``row`` and each output's single sample under its name."""
    out: dict[str, Any] = {"row": row}
    io_schema = model.schema.io
    for name, value in zip(model.output_names, prediction.outputs, strict=True):
        arr = np.asarray(value)
        spec = io_schema.output(name) if io_schema is not None else None
        axis = spec.batch_axis if spec is not None else 0
        if axis is not None and arr.ndim > axis and arr.shape[axis] == 1:
            arr = np.asarray(np.take(arr, 0, axis=axis), dtype=arr.dtype)
        out[name] = _plain(arr)
    return out
