"""``registry import``: an MLflow model as the next registry version.

Sources: a local model folder holding an ``MLmodel`` file, ``runs:/RUN_ID/PATH``,
``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` against the tracking server
of ``--tracking-uri`` (else ``MLFLOW_TRACKING_URI``, else MLflow's default).

What is taken (first match wins for the flavor):

- the model, from the ``sklearn``, ``lightgbm``, ``xgboost`` (scikit-learn API
  models, loaded with MLflow's own loader and saved as joblib for the normal
  registration) or ``onnx`` flavor (its ``.onnx`` file). Another flavor is
  refused with one line naming the flavors found;
- the input example, as reference rows when ``--reference-data`` is not given
  (a CSV with the example's column names);
- the run (from the ``MLmodel`` run id, when a tracking server answers): its
  metrics and params, and tags ``mlflow_run_id``, ``mlflow_experiment``,
  ``mlflow_datasets`` (``name@digest`` of the run's dataset inputs) and
  ``git_commit`` (MLflow's ``mlflow.source.git.commit`` tag) for lineage;
- the signature: checked against the converted model and carried into the
  registered version (column names and types of a DataFrame model's inputs,
  feature names of a table model), see :mod:`mlflow_signature`; a signature
  that disagrees with the model is refused with one line naming the column.
  The raw signature is kept as tag ``mlflow_signature_inputs``.

MLflow is the optional extra ``edgefleet[mlflow]``; nothing else imports it.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgefleet.packager.errors import DataFileError, UnsupportedModelError
from edgefleet.packager.estimators import one_line
from edgefleet.packager.registry.intake import RegistrationInput
from edgefleet.packager.registry.mlflow_signature import parse_signature

FLAVORS = ("sklearn", "lightgbm", "xgboost", "onnx")
URI_SCHEMES = ("runs:/", "models:/")


@dataclass(frozen=True)
class ImportRequest:
    source: str
    name: str
    tracking_uri: str | None = None
    reference_path: Path | None = None
    labels_path: Path | None = None
    extra_tags: dict[str, Any] = field(default_factory=dict)


def _mlflow() -> Any:
    try:
        import mlflow
    except ImportError:
        raise UnsupportedModelError(
            "registry import needs MLflow: pip install 'edgefleet[mlflow]'"
        ) from None
    return mlflow


def _local_model_dir(mlflow: Any, source: str, workdir: Path) -> Path:
    if source.startswith(URI_SCHEMES):
        try:
            path = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(workdir))
        except Exception as e:  # MlflowException, connection errors, ...
            raise DataFileError(one_line(f"cannot fetch {source} from MLflow: {e}")) from e
        folder = Path(path)
    else:
        folder = Path(source)
        if folder.is_file() and folder.name == "MLmodel":
            folder = folder.parent
    if not (folder / "MLmodel").is_file():
        raise DataFileError(f"{source} holds no MLmodel file (not an MLflow model)")
    return folder


def _pick_flavor(flavors: dict[str, Any], source: str) -> str:
    for flavor in FLAVORS:
        if flavor in flavors:
            return flavor
    found = ", ".join(sorted(flavors)) or "none"
    raise UnsupportedModelError(
        f"MLflow model {source} has flavors {found}: edgefleet imports {', '.join(FLAVORS)}"
    )


def _model_file(mlflow: Any, flavor: str, folder: Path, conf: dict[str, Any], work: Path) -> Path:
    if flavor == "onnx":
        return folder / str(conf.get("data", "model.onnx"))
    loader = {
        "sklearn": lambda: mlflow.sklearn.load_model(str(folder)),
        "lightgbm": lambda: mlflow.lightgbm.load_model(str(folder)),
        "xgboost": lambda: mlflow.xgboost.load_model(str(folder)),
    }[flavor]
    try:
        obj = loader()
    except Exception as e:
        raise UnsupportedModelError(
            one_line(f"MLflow could not load the {flavor} flavor of {folder}: {e}")
        ) from e
    import joblib

    path = work / "model.joblib"
    joblib.dump(obj, path)
    return path


def _example_csv(
    model: Any, folder: Path, work: Path, names: list[str] | None = None
) -> Path | None:
    """The input example as a CSV with a header, or None when there is none.

    A numpy example has no column names: it takes ``names`` (the signature's
    columns) when they fit, else ``f0..fN``.
    """
    info = getattr(model, "saved_input_example_info", None) or {}
    name = info.get("artifact_path")
    if not name or not (folder / name).is_file():
        return None
    try:
        doc = json.loads((folder / name).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataFileError(f"cannot read the input example of {folder}: {e}") from e
    if isinstance(doc, dict) and "dataframe_split" in doc:
        doc = doc["dataframe_split"]
    if isinstance(doc, dict) and "columns" in doc and "data" in doc:
        columns, rows = [str(c) for c in doc["columns"]], doc["data"]
    elif isinstance(doc, dict) and "inputs" in doc or isinstance(doc, list):
        # A numpy example: rows of numbers, no column names.
        rows = doc["inputs"] if isinstance(doc, dict) else doc
        if not rows or not isinstance(rows[0], list):
            return None
        width = len(rows[0])
        columns = names if names and len(names) == width else [f"f{i}" for i in range(width)]
    else:
        return None
    path = work / "input_example.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows([_cell(v) for v in row] for row in rows)
    return path


def _cell(value: Any) -> Any:
    return str(value).lower() if isinstance(value, bool) else value


def run_details(
    mlflow: Any, run_id: str
) -> tuple[dict[str, float], dict[str, Any], dict[str, Any]]:
    """(metrics, params, lineage tags) of a run; empty when no tracking server knows it."""
    client = mlflow.MlflowClient()
    try:
        run = client.get_run(run_id)
    except Exception:
        # A model folder copied away from its tracking store: import without the run.
        return {}, {}, {"mlflow_run_id": run_id}
    tags: dict[str, Any] = {"mlflow_run_id": run_id}
    try:
        tags["mlflow_experiment"] = client.get_experiment(run.info.experiment_id).name
    except Exception:
        tags["mlflow_experiment"] = run.info.experiment_id
    commit = run.data.tags.get("mlflow.source.git.commit")
    if commit:
        tags["git_commit"] = commit
    inputs = getattr(run, "inputs", None)
    datasets = [
        f"{d.dataset.name}@{d.dataset.digest}"
        for d in (getattr(inputs, "dataset_inputs", None) or [])
    ]
    if datasets:
        tags["mlflow_datasets"] = ", ".join(datasets)
    metrics = {k: float(v) for k, v in run.data.metrics.items()}
    return metrics, dict(run.data.params), tags


@contextmanager
def _tracking(mlflow: Any, uri: str | None) -> Iterator[None]:
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
    yield


@contextmanager
def prepared_import(req: ImportRequest) -> Iterator[RegistrationInput]:
    """A :class:`RegistrationInput` for the MLflow model (files valid inside the block)."""
    mlflow = _mlflow()
    from mlflow.models import Model

    with (
        tempfile.TemporaryDirectory(prefix="edgefleet-mlflow-") as tmp,
        _tracking(mlflow, req.tracking_uri),
    ):
        work = Path(tmp)
        folder = _local_model_dir(mlflow, req.source, work / "download")
        try:
            model = Model.load(str(folder / "MLmodel"))
        except Exception as e:
            raise DataFileError(one_line(f"cannot read {folder / 'MLmodel'}: {e}")) from e
        flavor = _pick_flavor(dict(model.flavors), req.source)
        path = _model_file(mlflow, flavor, folder, dict(model.flavors[flavor]), work)
        metrics: dict[str, float] = {}
        params: dict[str, Any] = {}
        tags: dict[str, Any] = {"mlflow_flavor": flavor, "mlflow_source": req.source}
        if model.run_id:
            metrics, params, run_tags = run_details(mlflow, model.run_id)
            tags.update(run_tags)
        signature = None
        if model.signature is not None and model.signature.inputs is not None:
            items = model.signature.inputs.to_dict()
            tags["mlflow_signature_inputs"] = json.dumps(items)
            signature = parse_signature(items)
        names = [c.name for c in signature.columns] if signature else None
        reference = req.reference_path or _example_csv(model, folder, work, names)
        tags.update(req.extra_tags)
        yield replace(
            RegistrationInput(model_path=path, name=req.name),
            metrics=metrics,
            params=params,
            tags=tags,
            reference_path=reference,
            labels_path=req.labels_path,
            signature=signature,
        )
