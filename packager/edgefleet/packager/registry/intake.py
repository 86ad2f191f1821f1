"""Preparing a registration: read and check every input before anything is written.

:func:`prepare_registration` loads the model (see :mod:`edgefleet.packager.loading`
about pickles), proves that it converts to ONNX, reads and checks the
reference data and labels, hashes the dataset and collects who/when/which
commit. It writes nothing; :meth:`Registry.register` then stores the result
all-or-nothing. So every bad input (unknown model type, a pickle that is not
an estimator, reference data with the wrong number of columns or with NaNs,
labels the model does not know) fails before the registry is touched.
"""

from __future__ import annotations

import getpass
import io
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.core.drift.tensor_summary import SEGMENT_TASKS, class_axis
from edgefleet.core.io_schema import IoSchema
from edgefleet.packager.errors import DataFileError, UnsupportedModelError
from edgefleet.packager.graph import target_for
from edgefleet.packager.loading import LoadedModel, describe_estimator, load_model_file
from edgefleet.packager.onnx_io import (
    Declarations,
    check_runs,
    declare_schema,
    metadata_declarations,
)
from edgefleet.packager.registry.mlflow_signature import (
    InputSignature,
    fit_column,
    frame_dtypes,
    table_features,
)
from edgefleet.packager.registry.records import FeatureSpec
from edgefleet.packager.registry.refs import check_model_name, parse_versioned_ref
from edgefleet.packager.registry.store import NewVersion
from edgefleet.packager.tables import (
    check_finite,
    describe_dataset,
    load_labels,
    load_table,
    split_label_column,
)
from edgefleet.packager.tensor_data import load_samples, npz_bytes


@dataclass(frozen=True)
class RegistrationInput:
    """The ``registry register`` command line, as values."""

    model_path: Path
    name: str
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, Any] = field(default_factory=dict)
    dataset_path: Path | None = None
    parent: str | None = None
    reference_path: Path | None = None
    labels_path: Path | None = None
    trained_at: float | None = None
    # Declarations (docs/registry.md): all optional, never guessed.
    task: str | None = None
    class_names: tuple[str, ...] | None = None
    output_roles: dict[str, str] = field(default_factory=dict)
    state: tuple[tuple[str, str], ...] = ()
    batch_axes: dict[str, int | None] = field(default_factory=dict)
    # The inputs an MLflow signature declares (registry import), checked against the model.
    signature: InputSignature | None = None


@dataclass(frozen=True)
class _Described:
    kind_framework: str
    framework_versions: dict[str, str]
    estimator: str
    task: str
    labels: list[Any] | None
    features: tuple[FeatureSpec, ...]
    io_schema: IoSchema | None = None  # set for models packed as tensors (format 2)
    notice: str | None = None


def prepare_registration(req: RegistrationInput) -> NewVersion:
    """Everything :meth:`Registry.register` needs, validated (see the module docstring)."""
    check_model_name(req.name)
    parent = parse_versioned_ref(req.parent) if req.parent else None
    if req.labels_path is not None and req.reference_path is None:
        raise DataFileError("--labels needs --reference-data (labels belong to reference rows)")
    loaded = load_model_file(req.model_path)
    if loaded.kind == "sklearn":
        from edgefleet.packager.frames import is_frame_model

        if is_frame_model(loaded.obj, req.reference_path):
            return _prepare_frame(req, loaded, parent)
    described = _describe(loaded, str(req.model_path), req)
    if req.signature is not None and described.io_schema is None:
        described = replace(described, features=table_features(req.signature, described.features))
    features = described.features
    reference_x = reference_y = None
    rows = 0
    if req.reference_path is not None and described.io_schema is not None:
        samples, rows = load_samples(req.reference_path, described.io_schema)
        reference_x = npz_bytes(samples)
        if req.labels_path is not None:
            labels = load_labels(req.labels_path)
            if len(labels) != rows:
                raise DataFileError(f"{req.labels_path}: {len(labels)} labels for {rows} samples")
            reference_y = _npy(labels)
    elif req.reference_path is not None:
        x, y, features = _reference(req, described)
        rows = int(x.shape[0])
        reference_x = _npy(x)
        reference_y = _npy(y) if y is not None else None
    trained_at = req.trained_at
    if trained_at is None:
        # Without --trained-at, the model file's modification time is the best evidence.
        trained_at = req.model_path.stat().st_mtime
    return NewVersion(
        name=req.name,
        kind=loaded.kind,
        artifact_format=loaded.artifact_format,
        artifact=loaded.data,
        source_path=str(req.model_path.resolve()),
        framework=described.kind_framework,
        framework_versions=described.framework_versions,
        estimator=described.estimator,
        task=described.task,
        labels=described.labels,
        features=features,
        metrics=dict(req.metrics),
        params=dict(req.params),
        tags=dict(req.tags),
        created_by=_user(),
        trained_at=trained_at,
        dataset=describe_dataset(req.dataset_path) if req.dataset_path else None,
        parent=parent,
        git_commit=git_commit(Path.cwd()),
        reference_x=reference_x,
        reference_y=reference_y,
        reference_rows=rows,
        reference_source=str(req.reference_path.resolve()) if req.reference_path else "",
        io_schema=described.io_schema.to_dict() if described.io_schema else None,
        notice=described.notice,
    )


def _prepare_frame(req: RegistrationInput, loaded: LoadedModel, parent: Any) -> NewVersion:
    """A DataFrame model: registered as its one-input-per-column ONNX graph (frames.py)."""
    import sklearn

    from edgefleet.packager.frame_convert import (
        check_frame_fidelity,
        convert_frame_model,
        frame_schema,
    )
    from edgefleet.packager.frames import fit_to_model, load_frame
    from edgefleet.packager.tensor_data import conform

    est = loaded.obj
    info = describe_estimator(est)
    _check_sklearn_declarations(req, info.task, str(req.model_path))
    if req.reference_path is None:
        raise DataFileError(
            f"{req.model_path} was fitted on a DataFrame with columns picked by name: give "
            "--reference-data as .csv or .parquet with those columns (their types become "
            "the model's inputs)"
        )
    names = [str(n) for n in est.feature_names_in_]
    frame = fit_to_model(load_frame(req.reference_path), names, req.reference_path)
    if req.signature is not None:
        frame = _declared_frame(frame, req.signature, names)
    task = {"classification": "classifier", "regression": "regressor"}.get(info.task)
    if task is None:
        raise UnsupportedModelError(f"a DataFrame {info.task} model is not supported yet")
    model = convert_frame_model(est, frame.dtypes, target_for("99.0"))
    check_frame_fidelity(est, model, frame)
    schema = frame_schema(model, task, frame, est)
    where = str(req.reference_path)
    samples = {
        spec.name: conform(spec, _plain_array(frame.columns[spec.name]), where)
        for spec in schema.inputs
    }
    labels = frame.labels
    if req.labels_path is not None:
        labels = load_labels(req.labels_path)
    if labels is not None and len(labels) != frame.rows:
        raise DataFileError(f"{where}: {len(labels)} labels for {frame.rows} rows")
    data = model.SerializeToString()
    return NewVersion(
        name=req.name,
        kind="onnx",
        artifact_format="onnx",
        artifact=data,
        source_path=str(req.model_path.resolve()),
        framework="scikit-learn",
        framework_versions={"scikit-learn": loaded.trained_with or sklearn.__version__},
        estimator=info.estimator,
        task=task,
        labels=info.labels,
        features=(),
        metrics=dict(req.metrics),
        params=dict(req.params),
        tags=dict(req.tags),
        created_by=_user(),
        trained_at=req.trained_at if req.trained_at is not None else req.model_path.stat().st_mtime,
        dataset=describe_dataset(req.dataset_path) if req.dataset_path else None,
        parent=parent,
        git_commit=git_commit(Path.cwd()),
        reference_x=npz_bytes(samples),
        reference_y=_npy(labels) if labels is not None else None,
        reference_rows=frame.rows,
        reference_source=str(req.reference_path.resolve()),
        io_schema=schema.to_dict(),
        notice=None,
    )


def _declared_frame(frame: Any, sig: InputSignature, names: list[str]) -> Any:
    """The reference frame typed as the signature declares (mlflow_signature's rules)."""
    from edgefleet.packager.frames import Frame

    dtypes = frame_dtypes(sig, names, frame.dtypes)
    types = {c.name: c.mlflow_type for c in sig.columns}
    columns = {n: fit_column(n, types[n], dtypes[n], frame.columns[n]) for n in names}
    return Frame(columns, dtypes, frame.labels)


def _plain_array(values: np.ndarray) -> np.ndarray:
    """Text columns as numpy unicode (stored without pickle), others unchanged."""
    return values.astype(str) if values.dtype == object else values


def _describe(loaded: LoadedModel, label: str, req: RegistrationInput) -> _Described:
    from edgefleet.packager.convert import convert_estimator

    # Prove the model converts now, not on the day someone packs it. Newest target:
    # the profile is chosen at pack time and can only lower the opset.
    newest = target_for("99.0")
    if loaded.kind == "sklearn":
        import sklearn

        info = describe_estimator(loaded.obj)
        _check_sklearn_declarations(req, info.task, label)
        if info.task == "anomaly" and req.labels_path is not None:
            raise DataFileError(
                "--labels does not apply to an anomaly model: its packed metric compares "
                "scores with the float32 model's"
            )
        convert_estimator(loaded.obj, info.n_features, newest)
        versions = {"scikit-learn": loaded.trained_with or sklearn.__version__}
        return _Described(
            "scikit-learn", versions, info.estimator, info.task, info.labels, info.features
        )
    return _describe_onnx(loaded, label, req)


_TABLE_TASK = {"classifier": "classification", "regressor": "regression", "anomaly": "anomaly"}


def _check_sklearn_declarations(req: RegistrationInput, task: str, label: str) -> None:
    declared = _TABLE_TASK.get(req.task or "", req.task)
    if declared is not None and declared != task:
        raise UnsupportedModelError(
            f"{label} holds a scikit-learn {task} model; --task {req.task} contradicts it"
        )
    if req.class_names or req.output_roles or req.state or req.batch_axes:
        raise UnsupportedModelError(
            "--class-names, --output-role, --state and --batch-axis apply to ONNX files; "
            "a scikit-learn estimator carries its own classes and outputs"
        )


def _describe_onnx(loaded: LoadedModel, label: str, req: RegistrationInput) -> _Described:
    from edgefleet.packager.convert import prepare_onnx

    model = loaded.obj
    check_runs(loaded.data, label)
    meta = metadata_declarations(model)
    decl = Declarations(
        task=req.task or meta.task,
        class_names=req.class_names or meta.class_names,
        output_roles=req.output_roles,
        state=req.state,
        batch_axes=req.batch_axes,
    )
    producer = " ".join(p for p in (model.producer_name, model.producer_version) if p)
    versions = {"producer": producer or "unknown", "ir_version": str(model.ir_version)}
    estimator = model.producer_name or "onnx graph"
    if not decl.shapes_io and decl.task in (None, "classifier", "regressor"):
        try:
            converted = prepare_onnx(model, target_for("99.0"))
        except UnsupportedModelError:
            converted = None  # not a table: the io schema v2 path below
        if converted is not None:
            signature = converted.signature
            wanted = _TABLE_TASK.get(decl.task or "", signature.task)
            if wanted == signature.task and (decl.task or _roles_known(model)):
                labels = (
                    _class_names(decl, converted.model, signature)
                    if signature.task == "classification"
                    else None
                )
                features = tuple(FeatureSpec(f"f{i}") for i in range(signature.input.shape[1]))
                return _Described("onnx", versions, estimator, signature.task, labels, features)
    task = decl.task
    notice = None
    if task is None:
        task = "raw"
        notice = (
            f"notice: {label} declares no task (no --task, no task in its metadata): "
            "registered as raw, outputs passed through untouched"
        )
    schema = declare_schema(model, decl, task)
    labels = list(decl.class_names) if decl.class_names else None
    if labels is not None:
        probabilities = schema.output_with_role("probabilities")
        width = probabilities.fixed(probabilities.rank - 1) if probabilities else None
        if probabilities is not None and task in SEGMENT_TASKS:
            # Per-pixel scores: the class axis is found as the drift summary finds it.
            axis = class_axis(probabilities)
            width = None if axis is None else probabilities.fixed(axis)
        if width is not None and width != len(labels):
            raise UnsupportedModelError(
                f"{len(labels)} class names for output {probabilities.name!r} "  # type: ignore[union-attr]
                f"of {width} classes"
            )
    return _Described("onnx", versions, estimator, task, labels, (), schema, notice)


# Output names converters give classifier/regressor outputs (skl2onnx, this packager).
_KNOWN_OUTPUT_NAMES = frozenset(
    {"label", "probabilities", "output_label", "output_probability", "variable", "value"}
)


def _roles_known(model: Any) -> bool:
    """A table-shaped graph whose outputs say what they are: by name or ai.onnx.ml op."""
    if any(o.name in _KNOWN_OUTPUT_NAMES for o in model.graph.output):
        return True
    return any(
        node.domain == "ai.onnx.ml" and node.op_type.endswith(("Classifier", "Regressor"))
        for node in model.graph.node
    )


def _class_names(decl: Declarations, model: Any, signature: Any) -> list[Any] | None:
    found = _onnx_labels(model, signature)
    if not decl.class_names:
        return found
    if found is not None and len(found) != len(decl.class_names):
        raise UnsupportedModelError(
            f"{len(decl.class_names)} class names for a model of {len(found)} classes"
        )
    return list(decl.class_names)


def _onnx_labels(model: Any, signature: Any) -> list[Any] | None:
    """Class labels from an ai.onnx.ml classifier node, else 0..k-1 from the probabilities."""
    from onnx import helper

    for node in model.graph.node:
        for attr in node.attribute:
            if attr.name in ("classlabels_int64s", "classlabels_ints"):
                return [int(v) for v in helper.get_attribute_value(attr)]
            if attr.name == "classlabels_strings":
                return [v.decode() for v in helper.get_attribute_value(attr)]
    probabilities = signature.output("probabilities")
    if probabilities is not None and probabilities.shape[-1] > 0:
        return list(range(probabilities.shape[-1]))
    return None


def _reference(
    req: RegistrationInput, described: _Described
) -> tuple[np.ndarray, np.ndarray | None, tuple[FeatureSpec, ...]]:
    assert req.reference_path is not None
    path = req.reference_path
    n = len(described.features)
    table = split_label_column(load_table(path), n, path)
    if table.x.shape[1] != n:
        raise DataFileError(
            f"{path}: reference data has {table.x.shape[1]} columns, the model takes {n}"
        )
    check_finite(table.x, path)
    features = described.features
    if table.columns is not None:
        features = _named_features(features, table.columns, path)
    y = table.y
    if req.labels_path is not None:
        y = load_labels(req.labels_path)
    if y is not None:
        if len(y) != table.x.shape[0]:
            raise DataFileError(
                f"{req.labels_path or path}: {len(y)} labels for {table.x.shape[0]} reference rows"
            )
        _check_labels(y, described, req.labels_path or path)
    return table.x, y, features


def _named_features(
    features: tuple[FeatureSpec, ...], columns: list[str], path: Path
) -> tuple[FeatureSpec, ...]:
    generic = all(f.name == f"f{i}" for i, f in enumerate(features))
    if generic:
        # The model was trained on a bare array; the CSV header is the best naming we get.
        return tuple(
            FeatureSpec(name, f.kind, f.levels) for name, f in zip(columns, features, strict=True)
        )
    if [f.name for f in features] != columns:
        raise DataFileError(
            f"{path}: columns {columns[:4]}... do not match the model's features "
            f"{[f.name for f in features][:4]}... (same names in the same order needed)"
        )
    return features


def _check_labels(y: np.ndarray, described: _Described, path: Path) -> None:
    if described.task == "regression":
        if y.dtype.kind not in "iuf":
            raise DataFileError(f"{path}: regression labels must be numbers")
        if not np.all(np.isfinite(y.astype(np.float64))):
            raise DataFileError(f"{path}: labels hold NaN or infinite values")
        return
    if described.labels is None:
        return
    known = {str(v) for v in described.labels}
    unknown = sorted({str(v) for v in y} - known)
    if unknown:
        raise DataFileError(
            f"{path}: labels {unknown[:5]} are not classes of the model "
            f"(classes: {sorted(known)[:10]})"
        )


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


def git_commit(cwd: Path) -> str | None:
    """The commit checked out in ``cwd`` (``+dirty`` when it has local changes), if any."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        if head.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = head.stdout.strip()
    return f"{commit}+dirty" if status.returncode == 0 and status.stdout.strip() else commit
