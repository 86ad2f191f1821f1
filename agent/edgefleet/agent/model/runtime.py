"""Loading a verified model and running it: :class:`LoadedModel` and :class:`Prediction`.

A bundle directory (an extracted, verified ``.efb``: ``manifest.json`` +
``model.onnx`` + ...) becomes a :class:`LoadedModel` holding one onnxruntime
session built with the device profile's threads, ``allow_spinning=0`` for both
thread pools, and the profile's execution providers that this onnxruntime build
actually has (CPU last as the fallback).

Invariants:

- Everything a request needs (names, dtypes, output order, role indices, the
  bound run method) is computed once at load; :meth:`LoadedModel.predict` does
  the schema checks, one ``run`` and builds one small :class:`Prediction`.
- The bytes handed to onnxruntime are the bytes whose size and sha256 were
  checked against the manifest in the same read (no check-then-reopen window):
  read here, or handed over by the daemon's verification process that read
  and hashed them.
- Input problems raise :class:`InputSchemaError` (``kind`` says which rule);
  a model onnxruntime cannot load or whose graph disagrees with the io schema
  raises :class:`ModelLoadError`; onnxruntime failing on a validated input
  raises :class:`InferenceError`. onnxruntime's own exceptions never escape.
- Prediction ids are unique with overwhelming probability: a random
  8-character prefix per loaded model, a per-call counter, and for batches a
  row suffix: ``k3j9x2qa1f`` (one row), ``k3j9x2qa20_0``, ``k3j9x2qa20_1``...
"""

from __future__ import annotations

import base64
import itertools
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from math import isfinite
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import onnxruntime as ort

from edgefleet.agent.errors import InferenceError, InputSchemaError, ModelLoadError
from edgefleet.agent.model.external_data import check_external_data
from edgefleet.agent.model.schema import (
    ORT_TYPES,
    ModelSchema,
    all_finite,
    coerce_input,
    non_finite_error,
)
from edgefleet.agent.runtime_verify import read_member_checked
from edgefleet.core.io_batch import BatchError, batch_size, run_batched

if TYPE_CHECKING:
    from edgefleet.core.manifest import Manifest
    from edgefleet.core.trust import TrustStore

MODEL_MEMBER = "model.onnx"
CPU_PROVIDER = "CPUExecutionProvider"


class SessionProfile(Protocol):
    """The part of a device profile the runtime uses (``DeviceProfile`` satisfies it)."""

    @property
    def execution_providers(self) -> Sequence[str]: ...

    @property
    def intra_op_threads(self) -> int: ...

    @property
    def inter_op_threads(self) -> int: ...


@dataclass(frozen=True)
class ThreadSettings:
    """A :class:`SessionProfile` without a profile file (tests, ``agent predict`` defaults)."""

    intra_op_threads: int = 1
    inter_op_threads: int = 1
    execution_providers: tuple[str, ...] = (CPU_PROVIDER,)

    def __post_init__(self) -> None:
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise ValueError("thread counts must be >= 0 (0 lets onnxruntime decide)")


def select_providers(wanted: Sequence[str], available: Sequence[str] | None = None) -> list[str]:
    """The wanted execution providers this build has, in order, with CPU as the last resort."""
    have = set(ort.get_available_providers() if available is None else available)
    chosen = [p for p in wanted if p in have]
    if CPU_PROVIDER not in chosen:
        chosen.append(CPU_PROVIDER)
    return chosen


_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session_options(
    profile: SessionProfile,
    target_options: Mapping[str, Any] | None = None,
    external_data_dir: Path | None = None,
) -> ort.SessionOptions:
    """Session options from the profile's threads; spinning off so idle threads sleep.

    ``target_options`` is the manifest's ``target.session_options``; the keys
    understood are ``graph_optimization_level`` (disable|basic|extended|all);
    others are ignored (a newer packager may add some). ``external_data_dir``
    is the only folder external data may be read from (the bundle directory):
    without it onnxruntime resolves a model given as bytes against the
    working directory.
    """
    so = ort.SessionOptions()
    if external_data_dir is not None:
        so.add_session_config_entry(
            "session.model_external_initializers_file_folder_path", str(external_data_dir)
        )
    so.intra_op_num_threads = int(profile.intra_op_threads)
    so.inter_op_num_threads = int(profile.inter_op_threads)
    # Spinning threads burn a core of a Pi that the user's own application needs.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    level = (target_options or {}).get("graph_optimization_level")
    if isinstance(level, str) and level in _OPT_LEVELS:
        so.graph_optimization_level = _OPT_LEVELS[level]
    return so


class Prediction:
    """The outputs of one call, in the io schema's output order, plus one id per row.

    The ids are reserved when the prediction is made and spelled out on first
    access (``ids``), so a caller that never reads them does not pay for them.
    """

    __slots__ = (
        "model",
        "version",
        "outputs",
        "_roles",
        "_id_prefix",
        "_id_number",
        "_rows",
        "_ids",
        "_primary",
    )

    def __init__(
        self,
        model: str,
        version: int,
        outputs: Sequence[Any],
        id_prefix: str,
        id_number: int,
        rows: int,
        roles: tuple[int | None, int | None, int | None],
        primary: tuple[int | None, int] = (0, 0),
    ) -> None:
        self.model = model
        self.version = version
        self.outputs = outputs
        self._roles = roles  # indices of the label, probabilities and value outputs
        self._id_prefix = id_prefix
        self._id_number = id_number
        self._rows = rows
        self._ids: list[str] | None = None
        self._primary = primary  # (output index, its batch axis) telemetry counts

    @property
    def ids(self) -> list[str]:
        """Prediction ids: ``<base>`` for one row, ``<base>_<row in hex>`` for a batch."""
        ids = self._ids
        if ids is None:
            base = f"{self._id_prefix}{self._id_number:x}"
            ids = [base] if self._rows == 1 else [f"{base}_{i:x}" for i in range(self._rows)]
            self._ids = ids
        return ids

    @property
    def labels(self) -> np.ndarray | None:
        i = self._roles[0]
        return None if i is None else np.asarray(self.outputs[i])

    @property
    def probabilities(self) -> np.ndarray | None:
        i = self._roles[1]
        return None if i is None else np.asarray(self.outputs[i])

    @property
    def values(self) -> np.ndarray | None:
        """[N] for one regression target, [N, k] for a multi-output regressor."""
        i = self._roles[2]
        if i is None:
            return None
        out = np.asarray(self.outputs[i])
        out = out.reshape(self._rows, -1) if out.size else out.reshape(self._rows, 0)
        return out[:, 0] if out.shape[1] == 1 else out

    @property
    def primary(self) -> np.ndarray:
        """What telemetry counts as the model output: labels, else values, else output 0."""
        for i in self._roles[0], self._roles[2]:
            if i is not None:
                # Several regression targets: telemetry counts the first.
                return np.asarray(self.outputs[i]).reshape(self._rows, -1)[:, 0]
        index, axis = self._primary
        out = None if index is None else np.asarray(self.outputs[index])
        if out is not None and axis:
            out = np.moveaxis(out, axis, 0)
        if out is None or out.shape[:1] != (self._rows,) or out.dtype.kind not in "biuf":
            # No per-sample numeric output (state only, text, unbatched): count zeros.
            return np.zeros(self._rows)
        return out.reshape(self._rows, -1)[:, 0]

    def __len__(self) -> int:
        return self._rows

    def __repr__(self) -> str:
        return f"Prediction(model={self.model!r}, version={self.version}, rows={len(self.ids)})"


class LoadedModel:
    """One model version ready to serve. Thread-safe: onnxruntime sessions allow concurrent runs."""

    def __init__(
        self,
        *,
        name: str,
        version: int,
        task: str,
        labels: Sequence[Any] | None,
        schema: ModelSchema,
        session: ort.InferenceSession,
        bundle_dir: Path | None = None,
        bundle_sha256: str | None = None,
        manifest: Manifest | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.task = task
        self.labels = list(labels) if labels is not None else None
        self.schema = schema
        self.session = session
        self.bundle_dir = bundle_dir
        self.bundle_sha256 = bundle_sha256
        self.manifest = manifest
        self.providers = list(session.get_providers())
        self.loaded_at = time.time()
        _check_graph_matches_schema(name, session, schema)

        self._io = schema.io  # io schema v2 (format-2 bundles): batch axes, state, roles
        self._loops = schema.loops_batches
        # What telemetry counts per sample when there is no label or value output:
        # the first output that has a batch axis (format 1: output 0, batch first).
        self._primary: tuple[int | None, int] = (0, 0)
        if self._io is not None:
            batched = [(k, o.batch_axis) for k, o in enumerate(self._io.outputs)]
            self._primary = next(((k, a) for k, a in batched if a is not None), (None, 0))
        self.input_names = [spec.name for spec in schema.inputs]
        self.output_names = [spec.name for spec in schema.outputs]
        self._input = schema.inputs[0]
        self._single_input = len(schema.inputs) == 1
        self._check_finite = not schema.allow_non_finite
        self._roles = (
            schema.output_index("label"),
            schema.output_index("probabilities"),
            schema.output_index("value"),
        )
        # The C-level run skips the Python wrapper's re-validation of names we
        # already checked (about a quarter of a batch-1 call); fall back to the
        # public method if a future onnxruntime renames it.
        inner = getattr(session, "_sess", None)
        self._run = inner.run if inner is not None else session.run
        # Fast-path facts: an array of exactly this dtype, rank 2 and width
        # needs no conversion, only the finiteness check.
        self._input_name = self._input.name
        self._dtype = self._input.dtype
        self._fast_width = (
            self._input.n_features if self._input.rank == 2 and self._single_input else None
        )
        self._check_float = self._check_finite and self._dtype.kind == "f"
        self._id_prefix = _id_prefix()
        # next() on itertools.count is atomic under the GIL: ids need no lock.
        self._id_counter = itertools.count()

    @property
    def n_features(self) -> int | None:
        return self._input.n_features

    def validate(self, X: Any) -> np.ndarray:
        """``X`` checked and converted for the model's single input."""
        if (
            type(X) is np.ndarray
            and X.dtype is self._dtype
            and X.ndim == 2
            and X.shape[1] == self._fast_width
            and X.shape[0]
            and X.flags.c_contiguous
        ):
            if self._check_float and not all_finite(X):
                raise non_finite_error(self._input, X)
            return X
        if not self._single_input:
            raise InputSchemaError(
                f"model {self.name!r} has inputs {self.input_names}; pass a mapping",
                kind="name",
            )
        return coerce_input(self._input, X, check_finite=self._check_finite)

    def predict(self, X: Any) -> Prediction:
        """Run a batch (2-D, or 1-D for one row) through the model's single input."""
        # The common case (a valid float32 batch) is checked inline: every call
        # saved here is a measurable share of a batch-1 inference.
        if not (
            type(X) is np.ndarray
            and X.dtype is self._dtype
            and X.ndim == 2
            and X.shape[1] == self._fast_width
            and X.shape[0]
            and X.flags.c_contiguous
            and (not self._check_float or isfinite(np.vdot(X, X)))
        ):
            X = self.validate(X)
        return self.predict_validated(X)

    def predict_validated(self, X: np.ndarray) -> Prediction:
        """Like :meth:`predict` for an array that :meth:`validate` already returned."""
        if self._io is not None:
            return self._execute({self._input_name: X}, self._rows({self._input_name: X}))
        try:
            outputs = self._run(self.output_names, {self._input_name: X}, None)
        except Exception as e:  # onnxruntime raises its own pybind11 exception types
            raise self._run_error(e) from e
        return Prediction(
            self.name,
            self.version,
            outputs,
            self._id_prefix,
            next(self._id_counter),
            len(X),
            self._roles,
            self._primary,
        )

    def predict_inputs(self, feeds: Mapping[str, Any]) -> Prediction:
        """Run a batch given as ``{input name: array}`` (models with several inputs)."""
        unknown = sorted(set(feeds) - set(self.input_names))
        if unknown:
            raise InputSchemaError(
                f"model {self.name!r} has no input named {unknown[0]!r} "
                f"(inputs: {', '.join(self.input_names)})",
                kind="name",
            )
        arrays: dict[str, np.ndarray] = {}
        rows: int | None = None
        for spec in self.schema.inputs:
            if spec.name not in feeds:
                raise InputSchemaError(
                    f"model {self.name!r} needs input {spec.name!r}", kind="name"
                )
            arr = coerce_input(spec, feeds[spec.name], check_finite=self._check_finite)
            arrays[spec.name] = arr
            if self._io is not None:
                continue
            if rows is not None and arr.shape[0] != rows:
                raise InputSchemaError(
                    f"input {spec.name!r} has {arr.shape[0]} rows, other inputs have {rows}",
                    kind="shape",
                )
            rows = arr.shape[0]
        if self._io is not None:
            rows = self._rows(arrays)
        assert rows is not None
        return self._execute(arrays, rows)

    def _rows(self, arrays: Mapping[str, np.ndarray]) -> int:
        """Samples along the declared batch axes (io schema v2); they must agree."""
        assert self._io is not None
        try:
            return batch_size(self._io, arrays)
        except BatchError as e:
            raise InputSchemaError(str(e), kind="shape") from e

    def _run_feed(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return list(self._run(self.output_names, feed, None))
        except Exception as e:  # onnxruntime raises its own pybind11 exception types
            raise self._run_error(e) from e

    def _execute(self, feed: dict[str, np.ndarray], rows: int) -> Prediction:
        if self._io is not None and self._loops:
            try:
                outputs = run_batched(self._io, feed, self._run_feed, self.output_names)
            except BatchError as e:
                raise InputSchemaError(f"model {self.name!r}: {e}", kind="shape") from e
        else:
            outputs = self._run_feed(feed)
        return Prediction(
            self.name,
            self.version,
            outputs,
            self._id_prefix,
            next(self._id_counter),
            rows,
            self._roles,
            self._primary,
        )

    def _run_error(self, e: BaseException) -> InferenceError:
        return InferenceError(
            f"onnxruntime failed to run model {self.name!r} version {self.version}: "
            f"{_first_line(e)}"
        )

    def __repr__(self) -> str:
        return f"LoadedModel(name={self.name!r}, version={self.version}, task={self.task!r})"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def _id_prefix() -> str:
    return base64.b32encode(os.urandom(5)).decode("ascii").lower()


def _check_graph_matches_schema(
    name: str, session: ort.InferenceSession, schema: ModelSchema
) -> None:
    graph_inputs = {i.name: i.type for i in session.get_inputs()}
    graph_outputs = {o.name: o.type for o in session.get_outputs()}
    for spec in schema.inputs:
        if spec.name not in graph_inputs:
            raise ModelLoadError(
                f"model {name!r}: io_schema input {spec.name!r} is not in the graph "
                f"(graph inputs: {', '.join(graph_inputs)})"
            )
        if graph_inputs[spec.name] != ORT_TYPES[spec.dtype_name]:
            raise ModelLoadError(
                f"model {name!r}: input {spec.name!r} is {graph_inputs[spec.name]} in the graph "
                f"but {spec.dtype_name} in io_schema"
            )
    missing = set(graph_inputs) - {s.name for s in schema.inputs}
    if missing:
        raise ModelLoadError(f"model {name!r}: graph inputs {sorted(missing)} not in io_schema")
    for out in schema.outputs:
        if out.name not in graph_outputs:
            raise ModelLoadError(
                f"model {name!r}: io_schema output {out.name!r} is not in the graph "
                f"(graph outputs: {', '.join(graph_outputs)})"
            )
        if not graph_outputs[out.name].startswith("tensor("):
            raise ModelLoadError(
                f"model {name!r}: output {out.name!r} is {graph_outputs[out.name]}, not a tensor "
                "(convert classifiers with zipmap disabled)"
            )
        if graph_outputs[out.name] != ORT_TYPES[out.dtype_name]:
            raise ModelLoadError(
                f"model {name!r}: output {out.name!r} is {graph_outputs[out.name]} in the graph "
                f"but {out.dtype_name} in io_schema"
            )


def read_manifest(bundle_dir: Path) -> Manifest:
    """Parse ``bundle_dir/manifest.json`` (no signature check: see :func:`load_bundle`)."""
    from edgefleet.core.manifest import Manifest

    path = Path(bundle_dir) / "manifest.json"
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelLoadError(f"cannot read {path}: {e.strerror or e}") from e
    return Manifest.from_json_bytes(data)


def load_model_dir(
    bundle_dir: Path,
    manifest: Manifest | None,
    profile: SessionProfile,
    *,
    bundle_sha256: str | None = None,
    model_bytes: bytes | None = None,
) -> LoadedModel:
    """Load an extracted bundle the caller has verified (``manifest`` None: read it from the dir).

    The model bytes are still checked against the manifest's sha256 as they are
    read, so a directory altered after verification is refused. A caller that
    already holds the checked bytes (the daemon gets them from its verification
    process, which hashed them) passes them as ``model_bytes``; they are not
    read again.
    """
    bundle_dir = Path(bundle_dir)
    if manifest is None:
        manifest = read_manifest(bundle_dir)
    model_info = dict(manifest.model)
    name = str(model_info.get("name", ""))
    try:
        version = int(model_info.get("version", 0))
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"manifest model.version is not an integer: {e}") from e
    schema = ModelSchema.from_io_schema(manifest.io_schema)
    data = (
        read_member_checked(bundle_dir, manifest, MODEL_MEMBER)
        if model_bytes is None
        else model_bytes
    )
    target = dict(manifest.target or {})
    members = [entry.path for entry in manifest.files] if hasattr(manifest, "files") else []
    check_external_data(data, members, name)
    try:
        session = ort.InferenceSession(
            data,
            sess_options=session_options(
                profile, target.get("session_options"), external_data_dir=bundle_dir.resolve()
            ),
            providers=select_providers(profile.execution_providers),
        )
    except Exception as e:  # onnxruntime's exception types are not a stable API
        raise ModelLoadError(
            f"onnxruntime {ort.__version__} cannot load model {name!r} version {version}: "
            f"{_first_line(e)}"
        ) from e
    return LoadedModel(
        name=name,
        version=version,
        task=str(model_info.get("task", "classification")),
        labels=model_info.get("labels"),
        schema=schema,
        session=session,
        bundle_dir=bundle_dir,
        bundle_sha256=bundle_sha256,
        manifest=manifest,
    )


def load_bundle(path_or_dir: Path, trust: TrustStore, profile: SessionProfile) -> LoadedModel:
    """Verify against ``trust`` and load: an ``.efb`` file or an extracted bundle directory.

    A file is verified and extracted into a temporary directory that is removed
    once the session is built. A directory is re-verified in place (signatures
    over ``manifest.json``, every listed file's size and sha256). Either way a
    failed check raises the verifier's error (a VerificationError, exit 3).
    """
    from edgefleet.agent.runtime_verify import verify_bundle_dir

    path = Path(path_or_dir)
    if path.is_dir():
        manifest = verify_bundle_dir(path, trust, skip=(MODEL_MEMBER,))
        return load_model_dir(path, manifest, profile)
    import tempfile

    from edgefleet.core.bundle_verifier import BundleVerifier

    max_bytes = getattr(profile, "max_bundle_bytes", None)
    verifier = BundleVerifier(trust, max_bundle_bytes=max_bytes)
    with tempfile.TemporaryDirectory(prefix=".efb-load-") as tmp:
        dest = Path(tmp) / "bundle"
        verified = verifier.verify_and_extract(path, dest)
        loaded = load_model_dir(dest, verified.manifest, profile, bundle_sha256=verified.sha256)
    loaded.bundle_dir = None  # the temporary copy is gone; the session holds the model
    return loaded
