"""``edgefleet pack`` for a model registered with an io schema v2: a format-2 bundle.

Steps, each refusing with one line rather than writing a doubtful bundle:

1. ``--quantize`` must be ``none``, ``auto``, ``static`` or ``dynamic``:
   int8 variants kept only when faithful (:mod:`.tensor_quantize`); a
   classifier registered with ``--labels`` is judged by its accuracy drop
   (``--max-accuracy-drop``) on the held-out samples;
2. the registered graph is normalised for the profile's onnxruntime (opsets,
   IR version) and must still load there;
3. fidelity: the packaged graph (optimised offline at onnxruntime's basic
   level, :mod:`.graph_optimize`) and the registered file run on the reference
   samples (at most :data:`FIDELITY_SAMPLES`); per output the max abs diff,
   max relative error and cosine similarity; float outputs must agree within
   ``1e-4 * max(1, max |value|)``, other outputs exactly;
4. the smoke set (:mod:`edgefleet.core.tensor_smoke`): a few samples stored
   compactly, or a seed when even one sample is too big, with the packaged
   model's outputs (all values, or evenly spread ones for a large output);
5. the drift reference: a model with one input per DataFrame column gets
   ``reference.json`` over its columns (string columns categorical); any other
   model every reference sample summarised per channel (:mod:`.tensor_drift`),
   plus the chosen model's output monitors; when nothing can be profiled
   ``reference_path`` is null and the manifest says why;
6. budgets: ``manifest.json`` at most 64 KiB, the bundle at most the model
   plus 512 KiB and within the profile's ``max_bundle_bytes``; the bundle is
   written under a temporary name and only renamed when all hold.
"""

from __future__ import annotations

import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.core.bundle_writer import write_bundle
from edgefleet.core.io_batch import BatchError, run_batched
from edgefleet.core.io_schema import NUMPY_NAMES, IoSchema
from edgefleet.core.manifest import MODEL_PATH, TENSOR_FORMAT_VERSION, Manifest
from edgefleet.core.profiles import DeviceProfile
from edgefleet.core.tensor_smoke import compact, inputs_from_smoke, sample_indices
from edgefleet.packager.errors import (
    BundleTooLargeError,
    ConversionError,
    FidelityError,
    OutputFolderError,
)
from edgefleet.packager.graph import opsets, target_for
from edgefleet.packager.graph_optimize import optimise
from edgefleet.packager.loading import load_onnx_bytes
from edgefleet.packager.onnx_io import check_runs, graph_io
from edgefleet.packager.registry.records import ModelVersion
from edgefleet.packager.registry.store import Registry
from edgefleet.packager.selection import arch_name
from edgefleet.packager.tensor_data import batch_count, npz_bytes
from edgefleet.packager.tensor_drift import REFERENCE_PATH, drift_reference
from edgefleet.packager.tensor_quantize import choose_variant
from edgefleet.packager.validate import (
    SessionSettings,
    available_providers,
    make_session,
    measure_feed_latency,
)

SMOKE_PATH = "smoke.npz"
FIDELITY_SAMPLES = 64
CHUNK = 8
SMOKE_SAMPLES = 4
SMOKE_INPUT_BUDGET = 256 * 1024
MAX_MANIFEST_BYTES = 64 * 1024
MAX_OVERHEAD_BYTES = 512 * 1024
FIDELITY_TOL = 1e-4

COLUMN_DRIFT_NOTE = (
    "drift reference over the DataFrame columns: string columns are categorical with "
    "their reference levels (unseen levels counted apart)"
)

Progress = Callable[[str], None]


def _column_drift_reference(
    schema: IoSchema, samples: dict[str, np.ndarray], n: int, session: Any
) -> bytes | None:
    """A drift reference for one-input-per-column models (frame_convert), else None."""
    from edgefleet.packager.frame_convert import column_reference

    label = schema.output_with_role("label")
    labels = None
    if label is not None and schema.features:
        outputs = run_all(session, schema, samples, n)
        labels = np.asarray(outputs[schema.output_names.index(label.name)]).reshape(-1)
    return column_reference(schema, samples, labels)


def _dtype(name: str) -> np.dtype[Any]:
    return np.dtype(NUMPY_NAMES[name])


def _take(schema: IoSchema, arrays: dict[str, np.ndarray], index: np.ndarray) -> dict[str, Any]:
    out = {}
    for spec in schema.inputs:
        arr = arrays[spec.name]
        out[spec.name] = arr if spec.batch_axis is None else np.take(arr, index, spec.batch_axis)
    return out


def _feeds(schema: IoSchema, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        s.name: (arrays[s.name].astype(object) if s.dtype == "string" else arrays[s.name])
        for s in schema.inputs
    }


def run_all(session: Any, schema: IoSchema, arrays: dict[str, np.ndarray], n: int) -> list[Any]:
    """Outputs of ``n`` samples, fed in chunks of :data:`CHUNK` (looped for batch-1 graphs)."""
    names = schema.output_names

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return list(session.run(names, feeds))
        except Exception as e:  # onnxruntime's exception types are not a stable API
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise ConversionError(f"onnxruntime failed to run the model: {first}") from e

    batched = any(s.batch_axis is not None for s in schema.inputs)
    chunks = [np.arange(i, min(n, i + CHUNK)) for i in range(0, n, CHUNK)] if batched else [None]
    parts: list[list[np.ndarray]] = [[] for _ in names]
    for index in chunks:
        feeds = _feeds(schema, arrays if index is None else _take(schema, arrays, index))
        try:
            outs = run_batched(schema, feeds, run, names)
        except BatchError as e:
            raise ConversionError(f"cannot run the reference samples: {e}") from e
        for k, out in enumerate(outs):
            parts[k].append(np.asarray(out))
    result = []
    for spec, p in zip(schema.outputs, parts, strict=True):
        result.append(
            p[0] if len(p) == 1 or spec.batch_axis is None else np.concatenate(p, spec.batch_axis)
        )
    return result


def fidelity(schema: IoSchema, reference: list[Any], packaged: list[Any]) -> dict[str, Any]:
    """Per output: max abs diff, max relative error, cosine; ``passed`` overall."""
    per_output: dict[str, Any] = {}
    passed = True
    for spec, a, b in zip(schema.outputs, reference, packaged, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            per_output[spec.name] = {"shape": [list(a.shape), list(b.shape)], "passed": False}
            passed = False
            continue
        if a.dtype.kind in "fiub" and b.dtype.kind in "fiub":
            x, y = a.astype(np.float64).reshape(-1), b.astype(np.float64).reshape(-1)
            diff = float(np.max(np.abs(x - y))) if x.size else 0.0
            scale = max(1.0, float(np.max(np.abs(x)))) if x.size else 1.0
            rel = float(np.max(np.abs(x - y) / np.maximum(np.abs(x), 1e-12))) if x.size else 0.0
            norms = float(np.linalg.norm(x) * np.linalg.norm(y))
            cosine = float(np.dot(x, y) / norms) if norms > 0 else (1.0 if diff == 0 else 0.0)
            ok = diff <= FIDELITY_TOL * scale if a.dtype.kind == "f" else diff == 0.0
            per_output[spec.name] = {
                "max_abs_diff": diff,
                "max_rel_err": min(rel, 1e300),
                "cosine": cosine,
                "passed": bool(ok),
            }
        else:
            ok = bool(np.array_equal(a.astype(str), b.astype(str)))
            per_output[spec.name] = {"equal": ok, "passed": ok}
        passed &= bool(per_output[spec.name]["passed"])
    return {"outputs": per_output, "passed": passed, "tolerance": FIDELITY_TOL}


def _smoke(
    schema: IoSchema, samples: dict[str, np.ndarray], n: int, session: Any, atol: float
) -> tuple[bytes, dict[str, Any]]:
    """The ``smoke.npz`` bytes and the manifest summary (see the module docstring)."""
    stored: dict[str, np.ndarray] = {}
    per_sample = 0
    for spec in schema.inputs:
        arr = samples[spec.name]
        one = arr if spec.batch_axis is None else np.take(arr, [0], spec.batch_axis)
        per_sample += compact(one).nbytes if spec.batch_axis is not None else 0
    fixed = sum(compact(samples[s.name]).nbytes for s in schema.inputs if s.batch_axis is None)
    room = SMOKE_INPUT_BUDGET - fixed
    k = min(SMOKE_SAMPLES, n, room // per_sample if per_sample else n)
    generated: list[str] = []
    if k >= 1:
        chosen = _take(schema, samples, np.arange(k))
        for name, arr in chosen.items():
            stored[f"in:{name}"] = compact(arr)
    else:
        k = 1
        for i, spec in enumerate(schema.inputs):
            arr = samples[spec.name]
            one = arr if spec.batch_axis is None else np.take(arr, [0], spec.batch_axis)
            if spec.dtype == "string" or one.nbytes <= 4096:
                stored[f"in:{spec.name}"] = compact(one)
                continue
            low = float(np.min(arr)) if arr.size else 0.0
            high = float(np.max(arr)) if arr.size else 1.0
            stored[f"gen:{spec.name}"] = np.asarray([1000 + i, low, high], dtype=np.float64)
            stored[f"genshape:{spec.name}"] = np.asarray(one.shape, dtype=np.int64)
            generated.append(spec.name)
    dtypes = {s.name: _dtype(s.dtype) for s in schema.inputs}
    feeds = inputs_from_smoke(stored, dtypes)
    outputs = run_all(session, schema, feeds, k)
    for spec, out in zip(schema.outputs, outputs, strict=True):
        value = np.asarray(out)
        if value.dtype.kind == "O":
            value = value.astype(str)
        index = sample_indices(value.size)
        if index.size < value.size:
            stored[f"idx:{spec.name}"] = index
            value = value.reshape(-1)[index]
        stored[f"out:{spec.name}"] = value
    stored["atol"] = np.asarray(atol, dtype=np.float64)
    data = npz_bytes(stored, compressed=True)
    return data, {
        "samples": int(k),
        "atol": atol,
        "atol_scale": "max(1, max |expected|) per output",
        "generated_inputs": {
            name: {
                "generator": "splitmix64",
                "seed": int(stored[f"gen:{name}"][0]),
                "low": float(stored[f"gen:{name}"][1]),
                "high": float(stored[f"gen:{name}"][2]),
                "shape": [int(d) for d in stored[f"genshape:{name}"]],
            }
            for name in generated
        },
        "bytes": len(data),
    }


def _add_latency(
    quantization: dict[str, Any],
    schema: IoSchema,
    samples: dict[str, np.ndarray],
    session_of: Callable[[bytes], Any],
    packaged: bytes,
    chosen: bytes,
    target_arch: str,
) -> None:
    """p50/p95 of one sample on the float graph and the chosen variant (this machine)."""
    feeds = _feeds(schema, _take(schema, samples, np.arange(1)))
    models = {"float32": packaged}
    if chosen is not packaged:
        models[quantization["variant"]] = chosen
    try:
        timed = measure_feed_latency(
            {name: session_of(data) for name, data in models.items()},
            [feeds],
            budget_s=0.5,
            min_samples=20,
            max_samples=200,
        )
    except Exception:  # a run that failed here already failed the fidelity check above
        return
    for row in quantization["variants"]:  # the float graph and the chosen candidate
        if row["variant"] in timed and (row["variant"] == "float32" or row["status"] == "chosen"):
            row.update(timed[row["variant"]].to_dict())
    here = platform.machine()
    where = (
        "this machine, the target's architecture but not the device"
        if arch_name(here) == target_arch
        else f"this machine's architecture, not the target's {target_arch}"
    )
    quantization["latency_measured_on"] = f"{here} ({where}), one sample, alternating variants"


def pack_tensor(
    registry: Registry,
    mv: ModelVersion,
    profile: DeviceProfile,
    keys: list[Ed25519PrivateKey],
    *,
    quantize: str,
    min_cosine: float = 0.99,
    max_abs_diff: float | None = None,
    max_accuracy_drop: float = 0.01,
    allow_batch_dependent: bool = False,
    preprocess: str | None = None,
    out_dir: Path,
    lineage: dict[str, Any],
    progress: Progress,
) -> tuple[Path, Any]:
    """Write ``out_dir/NAME-V-PROFILE.efb`` (see the module docstring); path and write info."""
    assert mv.io_schema is not None
    schema = IoSchema.from_dict(mv.io_schema)
    samples = registry.read_tensor_reference(mv)
    n = batch_count(schema, samples, f"reference data of {mv.ref}")

    progress(f"preparing {mv.ref} for onnxruntime >= {profile.min_onnxruntime}")
    from edgefleet.packager.graph import normalise_opsets

    registered = registry.read_model(mv)
    model = normalise_opsets(
        load_onnx_bytes(registered, mv.ref), target_for(profile.min_onnxruntime)
    )
    registered_schema, registered_samples = schema, samples
    folded_info = None
    if preprocess is not None:
        from edgefleet.packager.preprocess import fold, parse_preprocess

        pre = parse_preprocess(preprocess)
        progress("folding the image preprocessing into the graph")
        folded = fold(model, schema, samples, pre)
        model, schema = folded.model, folded.schema
        samples, registered_samples = folded.raw_samples, folded.float_samples
        folded_info = pre.to_dict()
    progress("optimising the graph (onnxruntime basic level)")
    optimised = optimise(model.SerializeToString(), target_for(profile.min_onnxruntime))
    # The quantizers get the graph as registered: the basic level fuses MatMul + Add into
    # Gemm, whose bias static QDQ stores as int32 and whose [1, N] bias onnxruntime's
    # quantizer fails on; the device optimises a quantized graph at session start.
    packaged = optimised.model
    check_runs(packaged, f"{mv.ref} (packaged)")
    inputs, outputs = graph_io(model)
    if [t.name for t in inputs] != schema.input_names or [
        t.name for t in outputs
    ] != schema.output_names:
        raise ConversionError(f"normalising {mv.ref} changed its inputs or outputs")

    progress("checking fidelity on the reference samples")
    providers = available_providers(profile.execution_providers)
    settings = SessionSettings(profile.intra_op_threads, profile.inter_op_threads, providers)
    take = min(n, FIDELITY_SAMPLES)
    evaluation = _take(schema, samples, np.arange(take))
    packaged_session = make_session(packaged, settings)
    want = run_all(
        make_session(registered, settings),
        registered_schema,
        _take(registered_schema, registered_samples, np.arange(take)),
        take,
    )
    got = run_all(packaged_session, schema, evaluation, take)
    report = fidelity(schema, want, got)
    report.update(samples=take, compared_with="the registered ONNX file")
    if folded_info is not None:
        report["preprocess"] = folded_info
    if not report["passed"]:
        bad = [k for k, v in report["outputs"].items() if not v["passed"]]
        raise FidelityError(
            f"the packaged graph changed output {bad[0]!r}: {report['outputs'][bad[0]]}"
        )

    if quantize != "none":
        progress("measuring quantized variants")

    sessions: dict[int, Any] = {id(packaged): packaged_session}

    def session_of(data: bytes) -> Any:
        if id(data) not in sessions:
            sessions[id(data)] = make_session(data, settings)
        return sessions[id(data)]

    def outputs_of(data: bytes, index: np.ndarray) -> list[Any]:
        return run_all(session_of(data), schema, _take(schema, samples, index), len(index))

    choice = choose_variant(
        model,
        packaged,
        schema,
        n,
        requested=quantize,
        int8_format=profile.int8_format,
        min_cosine=min_cosine,
        max_abs_diff=max_abs_diff,
        allow_batch_dependent=allow_batch_dependent,
        labels=registry.read_tensor_labels(mv) if mv.task == "classifier" else None,
        class_names=mv.labels,
        max_accuracy_drop=max_accuracy_drop,
        profile_quantization=profile.quantization,
        feeds_for=lambda index: _feeds(schema, _take(schema, samples, index)),
        outputs_of=outputs_of,
    )
    chosen_session = session_of(choice.model)
    _add_latency(
        choice.quantization, schema, samples, session_of, packaged, choice.model, profile.arch
    )
    progress("building the smoke set")
    smoke_bytes, smoke_info = _smoke(schema, samples, n, chosen_session, choice.smoke_atol)
    progress("profiling the reference samples for drift")
    reference_json = _column_drift_reference(schema, samples, n, chosen_session)
    if reference_json is not None:
        drift_info: dict[str, Any] = {"reference": REFERENCE_PATH, "note": COLUMN_DRIFT_NOTE}
    else:
        reference_json, drift_info = drift_reference(
            schema,
            samples,
            n,
            lambda index: outputs_of(choice.model, index),
            mv.labels,
            mv.task,
        )
    manifest = Manifest(
        format_version=TENSOR_FORMAT_VERSION,
        model={
            "name": mv.name,
            "version": mv.version,
            "task": mv.task,
            "labels": mv.labels,
            "framework": mv.framework,
            "framework_versions": dict(mv.framework_versions),
            "estimator": mv.estimator,
            "opsets": opsets(model),
            "ir_version": int(model.ir_version),
        },
        target=profile.manifest_target(),
        io_schema=schema.to_dict(),
        quantization=choice.quantization,
        validation={
            "fidelity": report,
            "smoke": smoke_info,
            "drift": drift_info,
            "size_bytes": len(choice.model),
            "float32_size_bytes": len(packaged),
            "graph_optimization": optimised.info,
            "measured_on": platform.machine(),
        },
        lineage=lineage,
        reference_path=None if reference_json is None else REFERENCE_PATH,
        smoke_path=SMOKE_PATH,
    )
    if len(manifest.canonical_bytes()) > MAX_MANIFEST_BYTES - 1024:  # files[] is added on write
        raise BundleTooLargeError(
            f"manifest.json would be {len(manifest.canonical_bytes())} bytes, over "
            f"{MAX_MANIFEST_BYTES}"
        )
    progress("signing and writing the bundle")
    members = {MODEL_PATH: choice.model, SMOKE_PATH: smoke_bytes}
    if reference_json is not None:
        members[REFERENCE_PATH] = reference_json
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputFolderError(f"cannot create output folder {out_dir}: {e.strerror}") from e
    final = out_dir / f"{mv.name}-{mv.version}-{profile.name}.efb"
    return final, _write(final, manifest, members, keys, profile, len(choice.model))


def _write(
    final: Path,
    manifest: Manifest,
    members: dict[str, Any],
    keys: list[Ed25519PrivateKey],
    profile: DeviceProfile,
    model_bytes: int,
) -> Any:
    fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".part")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        info = write_bundle(tmp, manifest, members, keys)
        limit = min(profile.max_bundle_bytes, model_bytes + MAX_OVERHEAD_BYTES)
        if info.size > limit:
            raise BundleTooLargeError(
                f"bundle would be {info.size} bytes, over "
                + (
                    f"profile {profile.name}'s max_bundle_bytes {profile.max_bundle_bytes}"
                    if limit == profile.max_bundle_bytes
                    else f"the model's {model_bytes} bytes plus {MAX_OVERHEAD_BYTES}"
                )
            )
        if len(info.manifest.canonical_bytes()) > MAX_MANIFEST_BYTES:
            raise BundleTooLargeError(f"manifest.json would be over {MAX_MANIFEST_BYTES} bytes")
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return info
