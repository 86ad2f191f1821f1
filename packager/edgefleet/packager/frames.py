"""Models fitted on a pandas DataFrame: one ONNX input per column, name and type kept.

A scikit-learn pipeline whose ``ColumnTransformer`` selects columns by name,
or that reads string columns, cannot take one float matrix. Such a model is
converted with one input per DataFrame column, in ``feature_names_in_``
order:

- each input is 1-D ``[N]`` and keeps the column's type: ``float32`` (float
  columns), ``int64``, ``bool`` or ``string``; integer and bool inputs are
  cast to float inside the graph (skl2onnx's numeric transformers take
  float), then every column becomes the ``[N, 1]`` tensor the converted
  pipeline expects. So a request gives each column by name, as one value per
  row: ``{"age": 41, "city": "Lyon"}``;
- the io schema v2 maps feature ``age`` to ``(input "age", column None)``;
  string columns are categorical with their reference levels.

The column types come from the reference data (``--reference-data`` as
``.csv`` with a header, or ``.parquet`` when pyarrow is installed): a CSV
column whose every cell is an integer is int64, ``true``/``false`` cells are
bool, other numbers (empty cells: NaN) float, anything else string.

Invariants: a frame holds exactly the model's columns (missing and unknown
names are refused together, in one line; a ``label``/``target``/``y`` column
is taken as the labels), never a positional mapping.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.packager.errors import DataFileError
from edgefleet.packager.tables import LABEL_COLUMNS

FRAME_SUFFIXES = (".csv", ".parquet")
_BOOL_TEXT = {"true": True, "false": False}


@dataclass(frozen=True)
class Frame:
    """Columns by name (1-D arrays), their io schema dtypes, optional labels."""

    columns: dict[str, np.ndarray]
    dtypes: dict[str, str]
    labels: np.ndarray | None = None

    @property
    def rows(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0


def selects_by_name(est: Any) -> bool:
    """The estimator holds a ColumnTransformer that picks columns by name."""
    from sklearn.compose import ColumnTransformer

    from edgefleet.packager.estimators import _components

    for part in _components(est):
        if not isinstance(part, ColumnTransformer):
            continue
        for _, _, columns in getattr(part, "transformers_", part.transformers):
            items = [columns] if isinstance(columns, str) else columns
            if isinstance(items, list | tuple) and any(isinstance(c, str) for c in items):
                return True
    return False


def is_frame_model(est: Any, reference: Path | None) -> bool:
    """Convert with one input per column (see the module docstring)?"""
    if getattr(est, "feature_names_in_", None) is None:
        return False
    if selects_by_name(est):
        return True
    if reference is None or reference.suffix.lower() not in FRAME_SUFFIXES:
        return False
    frame = load_frame(reference)
    return any(d == "string" for d in frame.dtypes.values())


def load_frame(path: Path) -> Frame:
    """Read named, typed columns from ``.csv`` or ``.parquet``."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _csv_frame(path)
    if suffix == ".parquet":
        return _parquet_frame(path)
    raise DataFileError(
        f"{path}: a model fitted on a DataFrame needs reference data with named columns "
        "(.csv with a header, or .parquet)"
    )


def _csv_frame(path: Path) -> Frame:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [row for row in csv.reader(f) if row]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataFileError(f"cannot read {path} as CSV: {e}") from e
    if len(rows) < 2:
        raise DataFileError(f"{path}: needs a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise DataFileError(f"{path}: column {dup[0]!r} appears twice in the header")
    for r, row in enumerate(rows[1:]):
        if len(row) != len(header):
            raise DataFileError(
                f"{path}: row {r + 2} has {len(row)} cells, the header {len(header)}"
            )
    columns: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    for c, name in enumerate(header):
        cells = [row[c].strip() for row in rows[1:]]
        columns[name], dtypes[name] = _typed(cells)
    return Frame(columns, dtypes)


def _typed(cells: list[str]) -> tuple[np.ndarray, str]:
    lowered = [c.lower() for c in cells]
    if all(c in _BOOL_TEXT for c in lowered):
        return np.asarray([_BOOL_TEXT[c] for c in lowered], dtype=bool), "bool"
    try:
        return np.asarray([int(c) for c in cells], dtype=np.int64), "int64"
    except ValueError:
        pass
    try:
        return np.asarray([float(c) if c else math.nan for c in cells], np.float64), "float32"
    except ValueError:
        return np.asarray(cells, dtype=object), "string"


def _parquet_frame(path: Path) -> Frame:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataFileError(
            f"{path}: reading .parquet needs pyarrow (pip install pyarrow), or give a .csv"
        ) from None
    try:
        table = pq.read_table(path)
    except Exception as e:  # ArrowInvalid, OSError, ...
        raise DataFileError(f"cannot read {path} as parquet: {str(e).splitlines()[0]}") from e
    columns: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    for name in table.column_names:
        values = table.column(name).to_pylist()
        kind = str(table.schema.field(name).type)
        if kind == "bool":
            columns[name], dtypes[name] = np.asarray(values, dtype=bool), "bool"
        elif kind.startswith(("int", "uint")):
            columns[name], dtypes[name] = np.asarray(values, dtype=np.int64), "int64"
        elif kind.startswith(("float", "double", "halffloat")):
            array = np.asarray([math.nan if v is None else v for v in values], np.float64)
            columns[name], dtypes[name] = array, "float32"
        elif kind in ("string", "large_string"):
            columns[name] = np.asarray(["" if v is None else v for v in values], dtype=object)
            dtypes[name] = "string"
        else:
            raise DataFileError(f"{path}: column {name!r} has type {kind}, not a number or text")
    return Frame(columns, dtypes)


def fit_to_model(frame: Frame, names: list[str], path: Path) -> Frame:
    """The frame's columns in the model's order, labels split off; refuses other names."""
    rest = [n for n in frame.columns if n not in names]
    label = next((n for n in LABEL_COLUMNS if n in rest), None)
    missing = [n for n in names if n not in frame.columns]
    unknown = [n for n in rest if n != label]
    if missing or unknown:
        parts = ([f"missing {', '.join(missing[:8])}"] if missing else []) + (
            [f"unknown {', '.join(unknown[:8])}"] if unknown else []
        )
        raise DataFileError(
            f"{path}: the columns must be the model's ({', '.join(names[:8])}): " + "; ".join(parts)
        )
    labels = None
    if label is not None:
        from edgefleet.packager.tables import _tidy_labels

        labels = _tidy_labels(np.asarray(frame.columns[label]))
    return Frame({n: frame.columns[n] for n in names}, {n: frame.dtypes[n] for n in names}, labels)


def pandas_frame(frame: Frame) -> Any:
    """The pandas DataFrame the original estimator takes (packager side only)."""
    try:
        import pandas as pd
    except ImportError:
        raise DataFileError(
            "checking a DataFrame model against its conversion needs pandas (pip install pandas)"
        ) from None

    return pd.DataFrame({n: frame.columns[n] for n in frame.columns})


def feeds(frame: Frame) -> dict[str, np.ndarray]:
    """onnxruntime inputs: one 1-D array per column in its declared type."""
    out: dict[str, np.ndarray] = {}
    for name, values in frame.columns.items():
        dtype = frame.dtypes[name]
        if dtype == "string":
            out[name] = np.asarray([str(v) for v in values], dtype=object)
        else:
            out[name] = np.asarray(values, dtype={"float32": np.float32}.get(dtype, dtype))
    return out
