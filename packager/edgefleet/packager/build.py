"""``edgefleet pack``: from a registered version to a signed bundle for one profile.

Steps, each refusing with a one-line error rather than producing a doubtful
bundle: resolve the version (retired versions are refused), load the profile
and the signing key (before any slow work), read the reference data (finite,
right width), convert to float32 ONNX for the profile's onnxruntime, prove
fidelity on every reference row, build and measure the quantization variants
(:mod:`edgefleet.packager.selection`), then assemble ``model.onnx``,
``smoke.npz``, ``reference.json`` and the manifest and sign them with every
given key (one signature per distinct key, in the order given).

Reference rows are split once: every fourth row (at most 512) calibrates
static int8; all other rows are the held-out evaluation rows for metrics,
variant choice and the smoke set. The drift reference uses every row.

Invariants: the bundle appears at its final path only if it is complete,
signed and within the profile's ``max_bundle_bytes``; otherwise nothing is
left in the output folder.
"""

from __future__ import annotations

import getpass
import os
import platform
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.core.bundle_sign import load_signing_key as core_load_signing_key
from edgefleet.core.bundle_writer import write_bundle
from edgefleet.core.drift import ReferenceProfile
from edgefleet.core.errors import UsageError
from edgefleet.core.manifest import MODEL_PATH, Manifest
from edgefleet.core.profiles import DeviceProfile, load_profile
from edgefleet.packager.convert import (
    Converted,
    FidelityReport,
    check_fidelity,
    compare_outputs,
    convert_estimator,
    prepare_onnx,
    sklearn_outputs,
)
from edgefleet.packager.errors import (
    BundleTooLargeError,
    DataFileError,
    OutputFolderError,
    PackKeyError,
)
from edgefleet.packager.graph import describe_io, op_counts, opsets, target_for
from edgefleet.packager.loading import load_onnx_bytes, load_sklearn_bytes
from edgefleet.packager.quantize import calibration_rows, plan_variants
from edgefleet.packager.registry.records import ModelVersion, iso_utc
from edgefleet.packager.registry.refs import ModelRef
from edgefleet.packager.registry.store import Registry
from edgefleet.packager.selection import (
    Selection,
    evaluate_variants,
    latency_not_gated_because,
)
from edgefleet.packager.smoke import build_smoke
from edgefleet.packager.tables import check_finite
from edgefleet.packager.validate import (
    Outputs,
    SessionSettings,
    available_providers,
    run_onnx,
    score,
)

Progress = Callable[[str], None]
REFERENCE_PATH = "reference.json"
SMOKE_PATH = "smoke.npz"


@dataclass(frozen=True)
class PackRequest:
    ref: ModelRef
    profile: str
    key_paths: tuple[Path, ...]
    out_dir: Path
    quantize: str = "auto"
    max_accuracy_drop: float = 0.01
    profiles_dir: Path | None = None
    min_cosine: float = 0.99  # tensor models: what a quantized variant must keep per output
    max_abs_diff: float | None = None  # tensor models: the float outputs' largest difference
    allow_batch_dependent: bool = False  # accept per-batch activation scales (dynamic int8)
    preprocess: str | None = None  # tensor models: image preprocessing folded into the graph

    def __post_init__(self) -> None:
        if not self.key_paths:
            raise PackKeyError("pack needs at least one --key")
        if not 0.0 <= self.max_accuracy_drop <= 1.0:
            raise DataFileError("--max-accuracy-drop must be between 0 and 1")
        if not -1.0 <= self.min_cosine <= 1.0:
            raise DataFileError("--min-cosine must be between -1 and 1")
        if self.max_abs_diff is not None and not self.max_abs_diff >= 0.0:
            raise DataFileError("--max-abs-diff must be a number >= 0")


@dataclass(frozen=True)
class PackResult:
    path: Path
    sha256: str
    size: int
    manifest: Manifest
    seconds: float
    signer_keyids: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "bundle": str(self.path),
            "sha256": self.sha256,
            "size": self.size,
            "model": dict(m.model),
            "target": dict(m.target),
            "quantization": dict(m.quantization),
            "validation": dict(m.validation),
            "bundle_id": m.bundle_id,
            "format_version": m.format_version,
            "io_schema": dict(m.io_schema) if m.format_version > 1 else None,
            "signer_keyids": list(self.signer_keyids),
            "seconds": round(self.seconds, 3),
        }


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key at ``path``; missing or unreadable keys are usage errors."""
    try:
        return core_load_signing_key(path)
    except UsageError as e:
        raise PackKeyError(str(e)) from e


def pack(
    registry: Registry,
    req: PackRequest,
    *,
    now: float,
    clock: Callable[[], float],
    progress: Progress = lambda _: None,
) -> PackResult:
    """Build the bundle ``req`` asks for (see the module docstring)."""
    started = clock()
    mv = registry.get(req.ref, allow_retired=False)
    profile = load_profile(req.profile, req.profiles_dir)
    keys = [load_signing_key(path) for path in req.key_paths]
    if req.out_dir.exists() and not req.out_dir.is_dir():
        raise DataFileError(f"--out {req.out_dir} is a file, not a folder")
    if mv.is_tensor:
        from edgefleet.packager.tensor_pack import pack_tensor

        final, info = pack_tensor(
            registry,
            mv,
            profile,
            keys,
            quantize=req.quantize,
            min_cosine=req.min_cosine,
            max_abs_diff=req.max_abs_diff,
            max_accuracy_drop=req.max_accuracy_drop,
            allow_batch_dependent=req.allow_batch_dependent,
            preprocess=req.preprocess,
            out_dir=req.out_dir,
            lineage=_lineage(registry, mv, now),
            progress=progress,
        )
        return PackResult(
            final, info.sha256, info.size, info.manifest, clock() - started, info.signer_keyids
        )
    if req.preprocess is not None:
        raise DataFileError(f"--preprocess applies to tensor models; {mv.ref} is a table model")
    x, y = registry.read_reference(mv)
    label = f"reference data of {mv.ref}"
    if x.ndim != 2 or x.shape[1] != mv.n_features:
        raise DataFileError(f"{label} has shape {list(x.shape)}, the model takes {mv.n_features}")
    check_finite(x, Path(label))
    x32 = x.astype(np.float32)

    progress(f"converting {mv.ref} for onnxruntime >= {profile.min_onnxruntime}")
    target = target_for(profile.min_onnxruntime)
    converted, fidelity, original = _convert(registry, mv, target, x32)

    evaluation = np.arange(len(x32)) % 4 != 0 if len(x32) >= 8 else np.ones(len(x32), bool)
    x_eval, y_eval = x32[evaluation], (y[evaluation] if y is not None else None)
    providers = available_providers(profile.execution_providers)
    settings = SessionSettings(profile.intra_op_threads, profile.inter_op_threads, providers)
    plan = plan_variants(
        req.quantize, profile.quantization, profile.name, op_counts(converted.model)
    )
    not_gated = latency_not_gated_because(profile, providers)
    selection = evaluate_variants(
        converted.model,
        converted.signature,
        plan,
        requested=req.quantize,
        task=mv.task,
        x_eval=x_eval,
        y_eval=y_eval,
        x_calibration=calibration_rows(x32),
        int8_format=profile.int8_format,
        settings=settings,
        gate_latency=not_gated is None,
        max_drop=req.max_accuracy_drop,
        allow_batch_dependent=req.allow_batch_dependent,
        progress=progress,
    )
    chosen = selection.built[selection.chosen]
    packaged_outputs = selection.outputs[selection.chosen]

    progress("building the smoke set and the drift reference")
    chosen_row = selection.row(selection.chosen)
    observed = (
        chosen_row.max_probability_diff
        if mv.task == "classification"
        else chosen_row.max_value_diff
    )
    smoke_bytes, smoke_info = build_smoke(x_eval, packaged_outputs, mv.task, chosen.name, observed)
    reference_json = _reference_profile(mv, x, run_onnx(chosen.model, converted.signature, x32))

    import onnx

    packaged_model = onnx.load_model_from_string(chosen.model)
    signature = describe_io(packaged_model)
    validation = _validation(
        mv, selection, fidelity, original.take(evaluation), y_eval, settings, smoke_info
    )
    validation["dataset"]["evaluation_rows"] = (
        "reference rows with index % 4 != 0" if len(x32) >= 8 else "all reference rows"
    )

    manifest = Manifest(
        model={
            "name": mv.name,
            "version": mv.version,
            "task": mv.task,
            "labels": mv.labels,
            "framework": mv.framework,
            "framework_versions": dict(mv.framework_versions),
            "estimator": mv.estimator,
            "opsets": opsets(packaged_model),
            "ir_version": int(packaged_model.ir_version),
        },
        target=profile.manifest_target(),
        io_schema={
            "inputs": [signature.input.to_dict()],
            "outputs": [o.to_dict() for o in signature.outputs],
            "features": [f.to_dict() for f in mv.features],
            "allow_non_finite": False,
        },
        quantization=_quantization(req, selection, plan.reason, profile),
        validation=validation,
        lineage=_lineage(registry, mv, now),
        reference_path=REFERENCE_PATH,
        smoke_path=SMOKE_PATH,
    )
    members = {MODEL_PATH: chosen.model, SMOKE_PATH: smoke_bytes, REFERENCE_PATH: reference_json}
    progress("signing and writing the bundle")
    try:
        req.out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputFolderError(f"cannot create output folder {req.out_dir}: {e.strerror}") from e
    final = req.out_dir / f"{mv.name}-{mv.version}-{profile.name}.efb"
    info = _write_within_budget(final, manifest, members, keys, profile)
    return PackResult(
        final, info.sha256, info.size, info.manifest, clock() - started, info.signer_keyids
    )


def _convert(
    registry: Registry, mv: ModelVersion, target: Any, x32: np.ndarray
) -> tuple[Converted, FidelityReport, Any]:
    data = registry.read_model(mv)
    if mv.kind == "sklearn":
        # The registry is local and trusted (see loading.py about pickles).
        est = load_sklearn_bytes(data, mv.ref)
        converted = convert_estimator(est, mv.n_features, target)
        original = sklearn_outputs(est, x32)
        compared = f"scikit-learn {type(est).__name__}"
    else:
        model = load_onnx_bytes(data, mv.ref)
        converted = prepare_onnx(model, target)
        original = run_onnx(data, describe_io(model), x32)
        if original.labels is None and original.probabilities is not None:
            # prepare_onnx gave the packaged graph label = ArgMax(probabilities); the
            # original's labels are the same by definition.
            labels = original.probabilities.argmax(axis=1).astype(np.int64)
            original = Outputs(labels, original.probabilities, original.values)
        compared = "the registered ONNX file"
    fidelity = check_fidelity(original, converted, x32, compared)
    return converted, fidelity, original


def _validation(
    mv: ModelVersion,
    selection: Selection,
    fidelity: FidelityReport,
    original: Outputs,
    y_eval: np.ndarray | None,
    settings: SessionSettings,
    smoke_info: dict[str, Any],
) -> dict[str, Any]:
    """The manifest's ``validation``: original vs packaged on the evaluation rows."""
    row = selection.row(selection.chosen)
    truth = y_eval if y_eval is not None else _fallback_truth(mv.task, selection)
    original_metric = score(mv.task, original, truth)
    diff = compare_outputs(original, selection.outputs[selection.chosen], "original")
    return {
        "dataset": {
            "source": "registry reference data",
            "reference_sha256": mv.reference.x_sha256 if mv.reference else None,
            "rows": len(truth),
            "has_labels": y_eval is not None,
        },
        "metric": selection.metric,
        "original": {selection.metric: original_metric},
        "packaged": {selection.metric: row.metric},
        "metric_drop": original_metric - (row.metric or 0.0),
        "label_agreement": diff.label_agreement,
        "max_probability_diff": diff.max_probability_diff,
        "max_value_diff": diff.max_value_diff,
        "fidelity": fidelity.to_dict(),
        "latency_ms": {
            "p50": row.p50_ms,
            "p95": row.p95_ms,
            "float32_p50": selection.row("float32").p50_ms,
            "batch_rows": 1,
            "intra_op_threads": settings.intra_op_threads,
            "inter_op_threads": settings.inter_op_threads,
            "providers": list(settings.providers),
            "measured_on": platform.machine(),
        },
        "size_bytes": row.size_bytes,
        "float32_size_bytes": selection.row("float32").size_bytes,
        "smoke": smoke_info,
        "registered_metrics": dict(mv.metrics),
    }


def _fallback_truth(task: str, selection: Selection) -> np.ndarray:
    base = selection.outputs["float32"]
    truth = base.labels if task == "classification" else base.values
    assert truth is not None
    return truth


def _reference_profile(mv: ModelVersion, x: np.ndarray, outputs: Any) -> bytes:
    kinds = [f.kind for f in mv.features]
    names = [f.name for f in mv.features]
    if mv.task in ("classification", "anomaly"):
        # An outlier detector's primary output (what the agent counts) is its label.
        profile = ReferenceProfile.build(
            x, names, kinds, outputs=outputs.labels, output_kind="class"
        )
    else:
        # One drift column per model: a multi-output regressor's [N, k] values have none.
        values = outputs.values if outputs.values is not None and outputs.values.ndim == 1 else None
        profile = ReferenceProfile.build(x, names, kinds, outputs=values, output_kind="score")
    return profile.to_json().encode("utf-8")


def _quantization(
    req: PackRequest, selection: Selection, plan_reason: str, profile: DeviceProfile
) -> dict[str, Any]:
    chosen = selection.built[selection.chosen]
    measured = [r for r in selection.rows if r.name != "float32"]
    if selection.chosen != "float32":
        method = selection.chosen
    elif not measured and selection.not_applicable and req.quantize == "auto":
        method = "not_applicable"
    else:
        method = "none"
    reason = selection.reason
    if method == "not_applicable":
        reason = "; ".join(sorted(set(selection.not_applicable.values())))
    elif not measured and plan_reason:
        reason = plan_reason
    return {
        "requested": req.quantize,
        "method": method,
        "variant": selection.chosen,
        "format": chosen.format,
        "settings": dict(chosen.settings),
        "reason": reason,
        "not_applicable": dict(selection.not_applicable),
        "criteria": {
            "metric": selection.metric,
            "max_accuracy_drop": req.max_accuracy_drop,
            "max_slowdown": 1.10,
            "latency_gated": selection.latency_gated,
            "latency_not_gated_because": latency_not_gated_because(
                profile, available_providers(profile.execution_providers)
            ),
            "allow_batch_dependent": req.allow_batch_dependent,
        },
        "profile_quantization": profile.quantization,
        "variants": [r.to_dict() for r in selection.rows],
    }


def _lineage(registry: Registry, mv: ModelVersion, now: float) -> dict[str, Any]:
    chain = registry.lineage(ModelRef(mv.name, version=mv.version))
    return {
        "registry": {
            "id": registry.registry_id,
            "model": mv.ref,
            "artifact_sha256": mv.artifact_sha256,
            "artifact_format": mv.artifact_format,
        },
        "dataset": mv.dataset.to_dict() if mv.dataset else None,
        "params": dict(mv.params),
        "tags": dict(mv.tags),
        "metrics": dict(mv.metrics),
        "parent": mv.parent,
        "ancestors": [v.ref for v in chain[1:]],
        "created_at": iso_utc(mv.created_at),
        "created_by": mv.created_by,
        "git_commit": mv.git_commit,
        "trained_at": iso_utc(mv.trained_at),
        "reference": mv.reference.to_dict() if mv.reference else None,
        "packed_at": iso_utc(now),
        "packed_by": _user(),
        "tool_versions": tool_versions(),
    }


def tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in ("edgefleet", "onnx", "onnxruntime", "skl2onnx", "scikit-learn", "numpy"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return out


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


def _write_within_budget(
    final: Path,
    manifest: Manifest,
    members: dict[str, Any],
    keys: list[Ed25519PrivateKey],
    profile: DeviceProfile,
) -> Any:
    # Written under a temporary name first: the size is only known once the tar exists,
    # and an over-budget bundle must never appear under its real name.
    fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".part")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        info = write_bundle(tmp, manifest, members, keys)
        if info.size > profile.max_bundle_bytes:
            raise BundleTooLargeError(
                f"bundle would be {info.size} bytes, over profile {profile.name}'s "
                f"max_bundle_bytes {profile.max_bundle_bytes}"
            )
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return info


__all__ = ["PackRequest", "PackResult", "load_signing_key", "pack"]
