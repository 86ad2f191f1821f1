"""Running ONNX variants and measuring them: outputs, task metrics, latency, size.

Metrics: classification uses accuracy against the reference labels; without
labels, agreement with the float32 model's labels stands in (and the report
says so). Regression uses R² against the labels, or against the float32
model's values without labels.

Latency is single-row inference (what a device endpoint serves) with the
profile's thread settings (spinning off, as the agent runs), measured on this
machine. Variants alternate run by run so a noisy neighbour slows them all
alike. Timings are for comparing variants, not a device prediction.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgefleet.packager.errors import ConversionError

if TYPE_CHECKING:
    import onnxruntime as ort

    from edgefleet.packager.graph import OnnxSignature

CPU = "CPUExecutionProvider"


@dataclass(frozen=True)
class Outputs:
    """Model outputs by role; absent roles are ``None``."""

    labels: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    values: np.ndarray | None = None

    def take(self, rows: np.ndarray) -> Outputs:
        """The same outputs for a subset of rows (index array or boolean mask)."""

        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return a[rows] if a is not None else None

        return Outputs(pick(self.labels), pick(self.probabilities), pick(self.values))


@dataclass(frozen=True)
class SessionSettings:
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    providers: tuple[str, ...] = (CPU,)

    def to_dict(self) -> dict[str, Any]:
        return {
            "intra_op_threads": self.intra_op_threads,
            "inter_op_threads": self.inter_op_threads,
            "providers": list(self.providers),
        }


def available_providers(wanted: Sequence[str]) -> tuple[str, ...]:
    """The profile's providers this machine has, in the profile's order (CPU always last)."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    chosen = tuple(p for p in wanted if p in have and p != CPU)
    return (*chosen, CPU)


def make_session(model: bytes, settings: SessionSettings) -> ort.InferenceSession:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = settings.inter_op_threads
    options.log_severity_level = 3
    # As on the device (agent runtime): idle pool threads sleep instead of spinning.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(model, options, providers=list(settings.providers))
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConversionError(f"onnxruntime cannot load the model: {first}") from e


def outputs_of(session: ort.InferenceSession, signature: OnnxSignature, x32: np.ndarray) -> Outputs:
    names = [o.name for o in signature.outputs if o.role]
    try:
        result = dict(zip(names, session.run(names, {signature.input.name: x32}), strict=True))
    except Exception as e:
        raise ConversionError(f"onnxruntime failed to run the model: {e}") from e
    found: dict[str, np.ndarray] = {}
    for spec in signature.outputs:
        if spec.role:
            found[spec.role] = np.asarray(result[spec.name])
    values = found.get("value")
    probabilities = found.get("probabilities")
    return Outputs(
        labels=found.get("label"),
        probabilities=probabilities.astype(np.float64) if probabilities is not None else None,
        values=as_values(values) if values is not None else None,
    )


def as_values(values: Any) -> np.ndarray:
    """Regression values as float64: [N] for one target, [N, k] for several."""
    a = np.asarray(values, dtype=np.float64)
    a = a.reshape(a.shape[0], -1) if a.ndim else a.reshape(1, 1)
    return a[:, 0] if a.shape[1] == 1 else a


def run_onnx(
    model: bytes,
    signature: OnnxSignature,
    x32: np.ndarray,
    settings: SessionSettings | None = None,
) -> Outputs:
    """Load ``model`` in onnxruntime and run it on ``x32``."""
    return outputs_of(make_session(model, settings or SessionSettings()), signature, x32)


def same_labels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise label equality; string labels compare as text."""
    if a.dtype.kind in "OUS" or b.dtype.kind in "OUS":
        return np.asarray([str(x) == str(y) for x, y in zip(a, b, strict=True)], dtype=bool)
    return np.asarray(a) == np.asarray(b)


def accuracy(truth: np.ndarray, predicted: np.ndarray) -> float:
    same = same_labels(truth, predicted)
    return float(np.mean(same)) if same.size else 0.0


def r2(truth: np.ndarray, predicted: np.ndarray) -> float:
    truth = np.asarray(truth, dtype=np.float64).reshape(-1)
    predicted = np.asarray(predicted, dtype=np.float64).reshape(-1)
    total = float(np.sum((truth - truth.mean()) ** 2))
    residual = float(np.sum((truth - predicted) ** 2))
    if total == 0.0:
        return 1.0 if residual == 0.0 else 0.0
    return 1.0 - residual / total


def metric_drop(base: float, metric: float) -> float:
    """What a variant's ``metric`` lost against float32's ``base`` (a gain is no drop)."""
    return max(0.0, base - metric)


def drop_problem(drop: float, max_drop: float, metric: str = "metric") -> str | None:
    """Why ``drop`` refuses a variant under ``--max-accuracy-drop`` (None: it does not).

    The one rule for labelled tasks, tables and tensors alike: when labels are
    given, this drop decides and agreement with float32 is only reported.
    """
    if drop > max_drop + 1e-12:
        return f"{metric} drop {drop:.4f} > {max_drop:g}"
    return None


def metric_name(task: str, has_labels: bool) -> str:
    if task == "classification":
        return "accuracy" if has_labels else "agreement_with_float32"
    return "r2" if has_labels else "r2_vs_float32"


def score(task: str, outputs: Outputs, truth: np.ndarray) -> float:
    """The task metric of ``outputs`` against ``truth`` (labels or float32 outputs)."""
    if task == "classification":
        assert outputs.labels is not None
        return accuracy(truth, outputs.labels)
    assert outputs.values is not None
    return r2(truth, outputs.values)


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p95_ms: float
    samples: int

    def to_dict(self) -> dict[str, Any]:
        return {"p50_ms": self.p50_ms, "p95_ms": self.p95_ms, "samples": self.samples}


def measure_latency(
    sessions: Mapping[str, ort.InferenceSession],
    input_name: str,
    x32: np.ndarray,
    *,
    budget_s: float = 1.5,
    min_samples: int = 60,
    max_samples: int = 600,
) -> dict[str, Latency]:
    """Single-row latency of every session.

    Runs alternate between variants row by row (and the order flips every row)
    so that CPU contention from other processes lands on all variants alike;
    timing each variant in its own block would let one unlucky second decide.
    """
    feeds = [{input_name: x32[i : i + 1]} for i in range(min(len(x32), 256))]
    return measure_feed_latency(
        sessions, feeds, budget_s=budget_s, min_samples=min_samples, max_samples=max_samples
    )


def measure_feed_latency(
    sessions: Mapping[str, ort.InferenceSession],
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    budget_s: float = 1.5,
    min_samples: int = 60,
    max_samples: int = 600,
) -> dict[str, Latency]:
    """Latency of every session on ``feeds`` (one request each, by input name), alternating
    as :func:`measure_latency` explains."""
    if not feeds:
        raise ValueError("latency needs at least one row")
    rows = list(feeds)
    items = list(sessions.items())
    start = time.perf_counter()
    for i in range(10):  # warm-up: first runs allocate buffers and pick kernels
        for _, session in items:
            session.run(None, dict(rows[i % len(rows)]))
    per_sweep = (time.perf_counter() - start) / 10 or 1e-6
    samples = int(min(max_samples, max(min_samples, budget_s / per_sweep)))
    timings: dict[str, list[float]] = {name: [] for name in sessions}
    for i in range(samples):
        feed = dict(rows[i % len(rows)])
        for name, session in items if i % 2 == 0 else reversed(items):
            t0 = time.perf_counter()
            session.run(None, feed)
            timings[name].append(time.perf_counter() - t0)
    return {
        name: Latency(
            p50_ms=float(np.percentile(t, 50) * 1e3),
            p95_ms=float(np.percentile(t, 95) * 1e3),
            samples=len(t),
        )
        for name, t in timings.items()
    }
