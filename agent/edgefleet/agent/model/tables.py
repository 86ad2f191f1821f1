"""Input tables for batch prediction and the rows written back (``agent predict``).

Pure parsing and formatting over text/bytes streams; the command does the file
handling. Formats:

- CSV with a header row. When the header has every feature the manifest
  names, columns are picked by name in the model's feature order (other
  columns, e.g. an id, are ignored). When it names only some of them, the
  file is refused with the missing and unknown names (a positional reading
  would mix features up). When it names none, the CSV must have exactly the
  model's number of columns, taken in order. A first row made only of
  numbers is data, not a header: refused unless ``no_header`` (then every
  row is data, taken in order). Empty cells are NaN.
- ``.npy``: a 2-D (or 1-D, one row) numeric array; never unpickled.
- JSON lines: one row per line, either a list of numbers in feature order or
  an object keyed by feature name. Blank lines are skipped.

Invariants: every refusal is an :class:`InputSchemaError` naming the line and
column (``line 18, column 'f3': 'abc' is not a number``); readers return a
float64 2-D array and leave the dtype cast to the model's validation.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
from collections.abc import Iterator, Sequence
from typing import IO, Any

import numpy as np

from edgefleet.agent.errors import InputSchemaError
from edgefleet.agent.model.runtime import LoadedModel, Prediction

INPUT_FORMATS = ("csv", "npy", "jsonl")
OUTPUT_FORMATS = ("jsonl", "csv")
_EXTENSIONS = {
    ".csv": "csv",
    ".npy": "npy",
    ".npz": "npz",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}


def format_for(filename: str, explicit: str | None, choices: Sequence[str]) -> str:
    """The format named explicitly, else the one the file extension implies."""
    if explicit is not None:
        return explicit
    lower = filename.lower()
    for ext, fmt in _EXTENSIONS.items():
        if lower.endswith(ext) and fmt in choices:
            return fmt
    raise InputSchemaError(
        f"cannot tell the format of {filename!r} from its name; pass --format "
        f"({'|'.join(choices)})",
        kind="request",
    )


def _number(text: str, line: int, column: str) -> float:
    cell = text.strip()
    if not cell:
        return math.nan
    try:
        return float(cell)
    except ValueError:
        raise InputSchemaError(
            f"line {line}, column {column!r}: {cell[:40]!r} is not a number", kind="data"
        ) from None


def _looks_like_data(cells: Sequence[str]) -> bool:
    """A first row whose every cell is a number (or empty) is data, not a header."""
    if not cells:
        return False
    for cell in cells:
        text = cell.strip()
        if not text:
            continue
        try:
            float(text)
        except ValueError:
            return False
    return any(cell.strip() for cell in cells)


def _pick_columns(
    header: list[str], features: Sequence[str], n_features: int | None
) -> tuple[list[int], list[str]]:
    """Columns by header name (see the module docstring): indexes and names."""
    named = [f for f in features if f in header]
    if features and len(named) == len(features):
        return [header.index(name) for name in features], list(features)
    if named:
        # Some names match: the file means the model's features, so a positional
        # reading would silently mix them up.
        missing = [f for f in features if f not in header]
        unknown = [h for h in header if h not in features]
        raise InputSchemaError(
            f"the CSV header does not name the model's features: missing {', '.join(missing)}"
            + (f"; unknown {', '.join(unknown)}" if unknown else ""),
            kind="features",
        )
    width = n_features if n_features is not None else len(header)
    if len(header) != width:
        missing = [f for f in features if f not in header]
        hint = f" (missing columns: {', '.join(missing[:5])})" if missing else ""
        raise InputSchemaError(
            f"the CSV has {len(header)} columns; the model needs {width} features{hint}",
            kind="features",
        )
    return list(range(width)), header


def read_csv(
    stream: IO[str], features: Sequence[str], n_features: int | None, *, no_header: bool = False
) -> np.ndarray:
    reader = csv.reader(stream)
    try:
        first = next(reader)
    except StopIteration:
        raise InputSchemaError(
            "the CSV file is empty (a header row is needed)", kind="empty"
        ) from None
    except csv.Error as e:
        raise InputSchemaError(f"line 1: malformed CSV: {e}", kind="data") from e
    pending: list[list[str]] = []
    if no_header:
        width = n_features if n_features is not None else len(first)
        header = [f"column {i}" for i in range(len(first))]
        if len(first) != width:
            raise InputSchemaError(
                f"the CSV has {len(first)} columns; the model needs {width} features",
                kind="features",
            )
        picks, names = list(range(width)), header
        pending.append(first)
    else:
        header = [h.strip() for h in first]
        if _looks_like_data(header):
            raise InputSchemaError(
                f"line 1 looks like data ({','.join(header)[:60]}), not a header row; "
                "pass --no-header for a file without one",
                kind="features",
            )
        picks, names = _pick_columns(header, features, n_features)
    rows: list[list[float]] = []
    try:
        for row in itertools.chain(pending, reader):
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(header):
                raise InputSchemaError(
                    f"line {line}: {len(row)} cells, the header has {len(header)}", kind="data"
                )
            rows.append([_number(row[i], line, names[k]) for k, i in enumerate(picks)])
    except csv.Error as e:
        raise InputSchemaError(f"line {reader.line_num}: malformed CSV: {e}", kind="data") from e
    return _table(rows, len(picks))


def read_npy(data: bytes) -> np.ndarray:
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputSchemaError(f"not a readable .npy array: {e}", kind="data") from e
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        raise InputSchemaError("the .npy array must hold numbers", kind="dtype")
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2:
        raise InputSchemaError(f"the .npy array must be 2-D, not {arr.ndim}-D", kind="shape")
    return arr.astype(np.float64, copy=False)


def read_jsonl(stream: IO[str], features: Sequence[str]) -> np.ndarray:
    rows: list[list[float]] = []
    width: int | None = None
    for line_no, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as e:
            raise InputSchemaError(f"line {line_no}: not JSON: {e}", kind="json") from e
        if isinstance(value, dict):
            if not features:
                raise InputSchemaError(
                    f"line {line_no}: the model names no features; give rows as lists",
                    kind="features",
                )
            missing = [f for f in features if f not in value]
            if missing:
                raise InputSchemaError(
                    f"line {line_no}: missing feature(s) {', '.join(missing[:5])}", kind="features"
                )
            cells: list[Any] = [value[f] for f in features]
            names = list(features)
        elif isinstance(value, list):
            cells = value
            names = list(features) if len(features) == len(value) else []
        else:
            raise InputSchemaError(
                f"line {line_no}: a row must be a list of numbers or an object", kind="data"
            )
        row: list[float] = []
        for k, cell in enumerate(cells):
            column = names[k] if names else str(k)
            if cell is None:
                row.append(math.nan)
            elif type(cell) in (int, float):
                row.append(float(cell))
            else:
                raise InputSchemaError(
                    f"line {line_no}, column {column!r}: {cell!r:.40} is not a number", kind="data"
                )
        if width is None:
            width = len(row)
        elif len(row) != width:
            raise InputSchemaError(
                f"line {line_no}: {len(row)} values, earlier rows have {width}", kind="features"
            )
        rows.append(row)
    return _table(rows, width or 0)


def _table(rows: list[list[float]], width: int) -> np.ndarray:
    if not rows:
        raise InputSchemaError("the input has no rows", kind="empty")
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), width)


def read_table(
    fmt: str, stream: IO[bytes], model: LoadedModel, *, no_header: bool = False
) -> np.ndarray:
    features = model.schema.feature_names
    if fmt == "npy":
        return read_npy(stream.read())
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    try:
        if fmt == "csv":
            return read_csv(text, features, model.n_features, no_header=no_header)
        return read_jsonl(text, features)
    except UnicodeDecodeError as e:
        raise InputSchemaError(f"the input is not UTF-8 text: {e}", kind="data") from e
    finally:
        text.detach()


# --- output ------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _finite_or_none(value: Any) -> float | None:
    """A plain float (None for NaN/inf), written with the shortest digits of its own
    precision: a float32 0.91377759 stays ``0.9137776``, not ``0.9137775897979736``."""
    number = float(str(value)) if isinstance(value, np.floating) else float(value)
    return number if math.isfinite(number) else None


def prediction_rows(
    model: LoadedModel, prediction: Prediction, first_row: int
) -> Iterator[dict[str, Any]]:
    """One plain dict per row: ``row``, then ``label`` + ``probabilities`` or ``value``."""
    labels = prediction.labels
    probabilities = prediction.probabilities
    values = prediction.values
    for i in range(len(prediction)):
        row: dict[str, Any] = {"row": first_row + i}
        if labels is not None:
            row["label"] = _plain(labels[i])
        if probabilities is not None:
            row["probabilities"] = [_finite_or_none(p) for p in probabilities[i]]
        if values is not None:
            row["value"] = (
                [_finite_or_none(v) for v in values[i]]
                if values.ndim == 2
                else _finite_or_none(values[i])
            )
        if labels is None and values is None and probabilities is None:
            row["output"] = np.asarray(prediction.outputs[0])[i].tolist()
        yield row


class RowWriter:
    """Writes prediction rows as JSON lines or CSV (header from the model's outputs)."""

    def __init__(self, fmt: str, stream: IO[str], model: LoadedModel) -> None:
        self.fmt = fmt
        self.stream = stream
        self.rows = 0
        self._csv: Any = None
        if fmt == "csv":
            header = ["row"]
            if model.schema.output_index("label") is not None:
                header.append("label")
            if model.schema.output_index("probabilities") is not None:
                header += [f"p_{label}" for label in (model.labels or [])]
            if model.schema.output_index("value") is not None:
                header.append("value")
            self._csv = csv.writer(stream, lineterminator="\n")
            self._csv.writerow(header)

    def write(self, rows: Iterator[dict[str, Any]]) -> None:
        for row in rows:
            self.rows += 1
            if self._csv is None:
                self.stream.write(json.dumps(row, separators=(",", ":")) + "\n")
                continue
            cells: list[Any] = [row["row"]]
            if "label" in row:
                cells.append(row["label"])
            cells += ["" if p is None else repr(p) for p in row.get("probabilities", [])]
            if "value" in row:
                cells.append("" if row["value"] is None else repr(row["value"]))
            self._csv.writerow(cells)
