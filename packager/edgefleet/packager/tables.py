"""Reading tabular data files: reference data, labels and dataset descriptions.

Formats (by extension):

- ``.npy``: one 2-D numeric array (features) or, for labels, one 1-D array;
- ``.npz``: features under ``X``/``x``/``features``/``data`` (or the only
  array), optional labels under ``y``/``labels``/``target``, optional
  ``feature_names``;
- ``.csv``: a header row, then numbers (empty cells are NaN). For labels, one
  column with a header. For features, a column named ``label``, ``target`` or
  ``y`` is taken as the labels when the file has exactly one column more than
  the model has inputs.

Invariants: :func:`load_table` returns float64 features, one row per sample;
nothing is pickled (``allow_pickle=False``) so a data file cannot run code.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.packager.errors import DataFileError
from edgefleet.packager.registry.artifacts import sha256_path
from edgefleet.packager.registry.records import DatasetInfo

_X_KEYS = ("X", "x", "features", "data")
_Y_KEYS = ("y", "labels", "target")
LABEL_COLUMNS = ("label", "target", "y")


@dataclass(frozen=True)
class Table:
    """Features (float64, 2-D), optional column names, optional labels (1-D)."""

    x: np.ndarray
    columns: list[str] | None
    y: np.ndarray | None = None


def load_table(path: Path) -> Table:
    """Read a features file (see the module docstring for the formats)."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        table = Table(_load_npy(path), None)
    elif suffix == ".npz":
        table = _load_npz(path)
    elif suffix == ".csv":
        columns, rows = _read_csv(path)
        table = Table(_numeric_rows(path, rows, len(columns)), columns)
    else:
        raise DataFileError(
            f"unknown data file type {suffix or '(no extension)'!r} for {path}: "
            "expected .npz, .npy or .csv with a header"
        )
    x = table.x
    if x.ndim != 2:
        raise DataFileError(f"{path}: features must be a 2-D table, got shape {list(x.shape)}")
    if x.shape[0] == 0:
        raise DataFileError(f"{path}: the table has no rows")
    return table


def split_label_column(table: Table, n_features: int, path: Path) -> Table:
    """Move a ``label``/``target``/``y`` column out of a CSV table one column too wide."""
    if table.columns is None or table.y is not None or table.x.shape[1] != n_features + 1:
        return table
    for name in LABEL_COLUMNS:
        if name in table.columns:
            index = table.columns.index(name)
            keep = [i for i in range(table.x.shape[1]) if i != index]
            columns = [table.columns[i] for i in keep]
            return Table(table.x[:, keep], columns, _tidy_labels(table.x[:, index]))
    return table


def check_finite(x: np.ndarray, path: Path) -> None:
    """Refuse NaN and infinities: reference data calibrates int8 models and builds drift edges."""
    bad = ~np.isfinite(x)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise DataFileError(
            f"{path}: {int(bad.sum())} NaN or infinite values (first at row {row}, "
            f"column {col}); reference data is used for calibration and must be finite"
        )


def load_labels(path: Path) -> np.ndarray:
    """Read a labels file: ``.npy`` (1-D), ``.csv`` (one column, header), ``.txt`` (one per line)."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        y = _load_npy(path, numeric=False)
    elif suffix == ".npz":
        with _open_npz(path) as z:
            key = next((k for k in _Y_KEYS if k in z.files), None)
            if key is None and len(z.files) == 1:
                key = z.files[0]
            if key is None:
                raise DataFileError(f"{path}: no labels array (expected one of {_Y_KEYS})")
            y = z[key]
    elif suffix in (".csv", ".txt"):
        values = _read_lines(path, header=suffix == ".csv")
        y = np.asarray(values, dtype=object)
    else:
        raise DataFileError(f"unknown labels file type {suffix!r} for {path}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataFileError(f"{path}: labels must be one column, got shape {list(y.shape)}")
    return _tidy_labels(y)


def describe_dataset(path: Path) -> DatasetInfo:
    """Path, SHA-256 and, for formats we read, rows and columns of a training dataset."""
    if not path.is_file():
        raise DataFileError(f"dataset {path} does not exist or is not a file")
    try:
        sha = sha256_path(path)
    except OSError as e:
        raise DataFileError(f"cannot read dataset {path}: {e.strerror or e}") from e
    rows: int | None = None
    columns: int | None = None
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.reader(f)
                header = next(reader, [])
                columns = len(header)
                rows = sum(1 for row in reader if row)
        elif suffix == ".npy":
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
            rows, columns = shape[0], (shape[1] if len(shape) > 1 else 1)
        elif suffix == ".npz":
            with _open_npz(path) as z:
                key = next((k for k in _X_KEYS if k in z.files), z.files[0] if z.files else None)
                if key is not None:
                    shape = z[key].shape
                    rows, columns = shape[0], (shape[1] if len(shape) > 1 else 1)
    except (OSError, ValueError, UnicodeDecodeError):
        # A dataset we cannot parse is still recorded by hash; its shape stays unknown.
        rows = columns = None
    return DatasetInfo(str(path), sha, rows, columns)


# -- reading and tidying ----------------------------------------------------


def _load_npy(path: Path, *, numeric: bool = True) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataFileError(f"cannot read {path} as .npy: {e}") from e
    return _as_float(array, path) if numeric else array


def _open_npz(path: Path) -> Any:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataFileError(f"cannot read {path} as .npz: {e}") from e


def _load_npz(path: Path) -> Table:
    with _open_npz(path) as z:
        files = list(z.files)
        x_key = next((k for k in _X_KEYS if k in files), None)
        if x_key is None:
            rest = [k for k in files if k not in _Y_KEYS and k != "feature_names"]
            if len(rest) != 1:
                raise DataFileError(
                    f"{path}: cannot tell which array holds the features "
                    f"(has {', '.join(files) or 'nothing'}; name it X)"
                )
            x_key = rest[0]
        x = _as_float(z[x_key], path)
        y_key = next((k for k in _Y_KEYS if k in files), None)
        y = _tidy_labels(z[y_key]) if y_key else None
        columns = [str(c) for c in z["feature_names"]] if "feature_names" in files else None
    if y is not None and len(y) != x.shape[0]:
        raise DataFileError(f"{path}: {len(y)} labels for {x.shape[0]} rows")
    return Table(x, columns, y)


def _as_float(array: np.ndarray, path: Path) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        raise DataFileError(f"{path}: features must be numbers, got dtype {array.dtype}")
    return np.asarray(array, dtype=np.float64)


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [row for row in csv.reader(f) if row]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataFileError(f"cannot read {path} as CSV: {e}") from e
    if not rows:
        raise DataFileError(f"{path}: the CSV file is empty")
    header = [h.strip() for h in rows[0]]
    if all(_is_number(h) for h in header):
        raise DataFileError(f"{path}: the CSV file needs a header row with column names")
    return header, rows[1:]


def _numeric_rows(path: Path, rows: list[list[str]], width: int) -> np.ndarray:
    out = np.empty((len(rows), width), dtype=np.float64)
    for r, row in enumerate(rows):
        if len(row) != width:
            raise DataFileError(f"{path}: row {r + 2} has {len(row)} cells, the header {width}")
        for c, cell in enumerate(row):
            text = cell.strip()
            if not text:
                out[r, c] = math.nan
                continue
            try:
                out[r, c] = float(text)
            except ValueError:
                raise DataFileError(
                    f"{path}: row {r + 2}, column {c + 1} is not a number: {text[:40]!r}"
                ) from None
    return out


def _read_lines(path: Path, *, header: bool) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [row for row in csv.reader(f) if row]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataFileError(f"cannot read labels {path}: {e}") from e
    if header:
        rows = rows[1:]
    if any(len(row) != 1 for row in rows):
        raise DataFileError(f"{path}: labels must be a single column")
    return [row[0].strip() for row in rows]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _tidy_labels(y: np.ndarray) -> np.ndarray:
    """Integer-valued labels become int64, other numbers float64, the rest strings."""
    if y.dtype.kind in "biu":
        return y.astype(np.int64)
    if y.dtype.kind == "f":
        if np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            return y.astype(np.int64)
        return y.astype(np.float64)
    values = [str(v) for v in y]
    if values and all(_is_number(v) for v in values):
        return _tidy_labels(np.asarray([float(v) for v in values]))
    return np.asarray(values, dtype=str)
