"""Measuring the quantization variants and choosing one.

Every candidate variant is built, run on the evaluation rows and timed; then
:func:`choose_variant` (pure) applies the rule:

- ``--quantize auto``: the smallest variant whose metric drop against float32
  is at most ``max_drop`` (absolute), whose p50 latency is at most
  ``max_slowdown`` (1.10) times float32's and which is batch-independent
  (a row scored alone gives what it gives inside a batch; dynamic int8
  scales activations per batch and is refused unless ``allow_batch_dependent``);
  dynamic int8 only where no static variant qualifies; float32 when none
  qualifies. When the profile's first execution provider is not available on
  this machine (e.g. CUDA for a Jetson profile measured on a laptop), or the
  profile's architecture is not this machine's, latency is recorded but not
  used to decide: such a timing says nothing about the device.
- an explicit variant is chosen if it meets ``max_drop``; otherwise the pack
  is refused with the numbers (:class:`AccuracyDropError`).

Invariants: float32 is always measured and always eligible; a variant that
fails to build is listed with the reason, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx

from edgefleet.packager.errors import (
    AccuracyDropError,
    QuantizationError,
    QuantizationNotApplicableError,
)
from edgefleet.packager.graph import OnnxSignature
from edgefleet.packager.quantize import BuiltVariant, VariantPlan, build_variant
from edgefleet.packager.validate import (
    Latency,
    Outputs,
    SessionSettings,
    drop_problem,
    make_session,
    measure_latency,
    metric_drop,
    metric_name,
    outputs_of,
    same_labels,
    score,
)

MAX_SLOWDOWN = 1.10
BATCH_DEPENDENCE_ROWS = 16
BATCH_DEPENDENCE_TOL = 1e-5
Progress = Callable[[str], None]


@dataclass(frozen=True)
class VariantRow:
    """One line of the variant table (manifest ``quantization.variants`` and the report)."""

    name: str
    status: str  # "chosen" | "eligible" | "rejected" | "failed"
    reason: str = ""
    format: str | None = None
    size_bytes: int | None = None
    metric: float | None = None
    metric_drop: float | None = None
    label_agreement: float | None = None
    max_probability_diff: float | None = None
    max_value_diff: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    batch_dependence: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.name,
            "status": self.status,
            "reason": self.reason,
            "format": self.format,
            "size_bytes": self.size_bytes,
            "metric": self.metric,
            "metric_drop": self.metric_drop,
            "label_agreement": self.label_agreement,
            "max_probability_diff": self.max_probability_diff,
            "max_value_diff": self.max_value_diff,
            "p50_ms": self.p50_ms,
            "p95_ms": self.p95_ms,
            "settings": dict(self.settings),
            "batch_dependence": self.batch_dependence,
        }


_ARCH_NAMES = {"amd64": "x86_64", "x86_64": "x86_64", "arm64": "aarch64", "aarch64": "aarch64"}


def arch_name(machine: str) -> str:
    """``platform.machine()`` spelt as profiles spell ``arch`` (AMD64 -> x86_64, ...)."""
    return _ARCH_NAMES.get(machine.lower(), machine.lower())


def latency_not_gated_because(
    profile: Any, providers: Sequence[str], machine: str | None = None
) -> str | None:
    """Why this machine's timings cannot qualify or refuse a variant for ``profile``
    (None: they can): its first provider is missing here, or its CPU architecture differs."""
    import platform

    here = machine if machine is not None else platform.machine()
    if providers[0] != profile.execution_providers[0]:
        return f"{profile.execution_providers[0]} is not available on this machine"
    if arch_name(here) != profile.arch:
        return (
            f"latency measured on {here}, the profile's architecture is {profile.arch}: int8 "
            "and float kernels differ between them"
        )
    return None


def choose_variant(
    rows: Sequence[VariantRow],
    *,
    max_drop: float,
    max_slowdown: float = MAX_SLOWDOWN,
    gate_latency: bool = True,
    prefer: str | None = None,
    allow_batch_dependent: bool = False,
) -> tuple[list[VariantRow], str, str]:
    """Pure: mark each row eligible/rejected, pick one; returns (rows, chosen, reason).

    ``prefer`` (an explicitly requested variant) wins whenever it is eligible.
    """
    base = next(r for r in rows if r.name == "float32")
    marked: list[VariantRow] = []
    for row in rows:
        if row.status == "failed":
            marked.append(row)
            continue
        problems = []
        too_much = drop_problem(row.metric_drop or 0.0, max_drop)
        if row.name != "float32" and too_much is not None:
            problems.append(too_much)
        if (
            gate_latency
            and row.name != "float32"
            and row.p50_ms is not None
            and base.p50_ms is not None
            and row.p50_ms > max_slowdown * base.p50_ms
        ):
            problems.append(
                f"p50 {row.p50_ms:.3f} ms > {max_slowdown:.2f} x float32 {base.p50_ms:.3f} ms"
            )
        dependence = row.batch_dependence or 0.0
        if dependence > BATCH_DEPENDENCE_TOL and not allow_batch_dependent:
            problems.append(
                f"batch-dependent: a row scored alone differs by {dependence:.3g} from the "
                "same row in a batch (--allow-batch-dependent)"
            )
        status = "rejected" if problems else "eligible"
        marked.append(replace(row, status=status, reason="; ".join(problems) or row.reason))
    if prefer is None and any(r.name == "static" and r.status == "eligible" for r in marked):
        marked = [
            replace(
                r,
                status="rejected",
                reason="static int8 qualifies; dynamic int8 is used only where no static "
                "variant does",
            )
            if r.name == "dynamic" and r.status == "eligible"
            else r
            for r in marked
        ]
    eligible = [r for r in marked if r.status == "eligible"]
    # Smallest wins; on equal size the earlier (float32 first) is kept.
    best = min(eligible, key=lambda r: (r.size_bytes or 0, marked.index(r)))
    preferred = [r for r in eligible if r.name == prefer]
    if preferred:
        best = preferred[0]
    if best.name == "float32":
        others = [f"{r.name}: {r.reason}" for r in marked if r.name != "float32" and r.reason]
        reason = "float32: " + ("; ".join(others) if others else "no smaller variant qualified")
    else:
        ratio = (best.size_bytes or 0) / max(1, base.size_bytes or 1)
        reason = (
            f"{best.name}: {ratio:.0%} of float32's size, metric drop "
            f"{best.metric_drop or 0.0:.4f} <= {max_drop:g}"
        )
        if best.p50_ms is not None and base.p50_ms is not None:
            reason += f", p50 {best.p50_ms:.3f} ms vs {base.p50_ms:.3f} ms float32"
            if not gate_latency:
                reason += " (timed here, not a criterion for this profile)"
    final = [replace(r, status="chosen") if r is best else r for r in marked]
    return final, best.name, reason


@dataclass(frozen=True)
class Selection:
    """What measuring the variants produced."""

    chosen: str
    reason: str
    rows: tuple[VariantRow, ...]
    built: dict[str, BuiltVariant]
    outputs: dict[str, Outputs]
    latency: dict[str, Latency]
    not_applicable: dict[str, str]
    metric: str
    latency_gated: bool

    def row(self, name: str) -> VariantRow:
        return next(r for r in self.rows if r.name == name)


def evaluate_variants(
    model: onnx.ModelProto,
    signature: OnnxSignature,
    plan: VariantPlan,
    *,
    requested: str,
    task: str,
    x_eval: np.ndarray,
    y_eval: np.ndarray | None,
    x_calibration: np.ndarray,
    int8_format: str,
    settings: SessionSettings,
    gate_latency: bool,
    max_drop: float,
    allow_batch_dependent: bool = False,
    progress: Progress = lambda _: None,
) -> Selection:
    """Build, run, time and choose among ``plan.candidates``."""
    built: dict[str, BuiltVariant] = {}
    failed: dict[str, str] = {}
    not_applicable = dict(plan.not_applicable)
    for name in plan.candidates:
        progress(f"building {name} variant")
        try:
            built[name] = build_variant(
                name,
                model,
                input_name=signature.input.name,
                calibration=x_calibration,
                int8_format=int8_format,
            )
        except QuantizationNotApplicableError as e:
            if requested != "auto":
                raise
            not_applicable[name] = str(e)
        except QuantizationError as e:
            if requested != "auto":
                raise
            failed[name] = str(e)
    progress("running variants on the evaluation rows")
    sessions = {name: make_session(b.model, settings) for name, b in built.items()}
    outputs = {name: outputs_of(s, signature, x_eval) for name, s in sessions.items()}
    progress("timing variants")
    latency = measure_latency(sessions, signature.input.name, x_eval)
    base = outputs["float32"]
    has_labels = y_eval is not None
    if task == "classification":
        truth = y_eval if y_eval is not None else base.labels
    else:
        truth = y_eval if y_eval is not None else base.values
    assert truth is not None
    base_metric = score(task, base, truth)
    rows: list[VariantRow] = []
    for name in plan.candidates:
        if name in failed:
            rows.append(VariantRow(name, "failed", failed[name]))
            continue
        if name not in built:
            continue
        out = outputs[name]
        metric = score(task, out, truth)
        agreement, prob_diff, value_diff = _differences(base, out)
        rows.append(
            VariantRow(
                name=name,
                status="measured",
                format=built[name].format,
                size_bytes=len(built[name].model),
                metric=metric,
                metric_drop=metric_drop(base_metric, metric) if name != "float32" else 0.0,
                label_agreement=agreement,
                max_probability_diff=prob_diff,
                max_value_diff=value_diff,
                p50_ms=latency[name].p50_ms,
                p95_ms=latency[name].p95_ms,
                settings=built[name].settings,
                batch_dependence=(
                    None
                    if name == "float32"
                    else batch_dependence(sessions[name], signature, x_eval[:BATCH_DEPENDENCE_ROWS])
                ),
            )
        )
        progress(
            f"measured {name}: {len(built[name].model) / 1024:.1f} KiB, "
            f"{metric_name(task, has_labels)} {metric:.4f}, p50 {latency[name].p50_ms:.3f} ms"
        )
    explicit = requested not in ("auto", "none")
    marked, chosen, reason = choose_variant(
        rows,
        max_drop=max_drop,
        gate_latency=gate_latency and not explicit,
        prefer=requested if explicit else None,
        allow_batch_dependent=allow_batch_dependent,
    )
    if explicit and chosen != requested:
        row = next(r for r in marked if r.name == requested)
        if row.reason.startswith("batch-dependent"):
            raise AccuracyDropError(f"--quantize {requested} refused: {row.reason}")
        raise AccuracyDropError(
            f"--quantize {requested} loses too much: {row.reason} "
            f"(float32 {base_metric:.4f}, {requested} {row.metric:.4f}); "
            "raise --max-accuracy-drop or use --quantize auto"
        )
    return Selection(
        chosen=chosen,
        reason=reason,
        rows=tuple(marked),
        built=built,
        outputs=outputs,
        latency=latency,
        not_applicable=not_applicable,
        metric=metric_name(task, has_labels),
        latency_gated=gate_latency and not explicit,
    )


def batch_dependence(session: Any, signature: OnnxSignature, rows: np.ndarray) -> float:
    """Largest difference (scaled by max(1, |value|)) between a row's probabilities or
    values scored alone and the same row inside the batch ``rows``."""
    if len(rows) < 2:
        return 0.0
    together = outputs_of(session, signature, rows)
    worst = 0.0
    for i in range(len(rows)):
        alone = outputs_of(session, signature, rows[i : i + 1])
        for a, b in (
            (together.probabilities, alone.probabilities),
            (together.values, alone.values),
        ):
            if a is None or b is None:
                continue
            row = np.asarray(a[i : i + 1], dtype=np.float64)
            scale = max(1.0, float(np.max(np.abs(row)))) if row.size else 1.0
            worst = max(worst, float(np.max(np.abs(row - np.asarray(b, np.float64)))) / scale)
    return worst


def _differences(base: Outputs, other: Outputs) -> tuple[float | None, ...]:
    agreement = prob = value = None
    if base.labels is not None and other.labels is not None:
        agreement = float(np.mean(same_labels(base.labels, other.labels)))
    if base.probabilities is not None and other.probabilities is not None:
        prob = float(np.max(np.abs(base.probabilities - other.probabilities)))
    if base.values is not None and other.values is not None:
        value = float(np.max(np.abs(base.values - other.values)))
    return agreement, prob, value
