"""Health checks of a newly activated version (RAUC's mark-good / mark-bad).

Two stages:

1. the smoke set: ``smoke.npz`` from the bundle (docs/bundle-format.md) run
   through the loaded model; labels must match exactly, probabilities and
   regression values within ``atol``;
2. live probation: the first ``min_requests`` requests or ``max_seconds``
   seconds, whichever comes first, must stay within ``max_error_rate`` and
   ``max_p95_latency_ms``. It fails early as soon as the errors seen already
   exceed what ``min_requests`` requests may hold. Only the model's and the
   runtime's failures are errors here: a client's mistake (a 4xx) never
   reaches the counters (``counts_against_version`` in
   :mod:`edgefleet.agent.telemetry_sink`), so ``stats`` holds the requests the
   model answered or failed.

:func:`evaluate_probation` is pure (``now`` is an argument);
:func:`run_smoke` only reads the bundle's smoke file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgefleet.agent.config import ProbationSettings
from edgefleet.agent.telemetry.recorder import LiveStats
from edgefleet.agent.telemetry.window_body import label_key

if TYPE_CHECKING:
    from edgefleet.agent.model.served import ServedModel


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    WAIT = "wait"


@dataclass(frozen=True)
class HealthReport:
    verdict: Verdict
    reason: str


def _describe(stats: LiveStats) -> str:
    p95 = "n/a" if stats.p95_latency_ms is None else f"{stats.p95_latency_ms:.1f} ms"
    return f"{stats.requests} requests, {stats.errors} errors, p95 {p95}"


def evaluate_probation(
    settings: ProbationSettings, started_at: float, now: float, stats: LiveStats
) -> HealthReport:
    """Pass, fail or keep waiting, from what the version did since ``started_at``."""
    allowed_errors = math.floor(settings.max_error_rate * max(settings.min_requests, 1))
    if stats.errors > allowed_errors and stats.error_rate > settings.max_error_rate:
        return HealthReport(
            Verdict.FAIL,
            f"probation failed: error rate {stats.error_rate:.1%} over the limit "
            f"{settings.max_error_rate:.1%} ({_describe(stats)})",
        )
    enough = stats.requests >= settings.min_requests
    timed_out = now - started_at >= settings.max_seconds
    if not (enough or timed_out):
        return HealthReport(Verdict.WAIT, f"probation running ({_describe(stats)})")
    if stats.requests and stats.error_rate > settings.max_error_rate:
        return HealthReport(
            Verdict.FAIL,
            f"probation failed: error rate {stats.error_rate:.1%} over the limit "
            f"{settings.max_error_rate:.1%} ({_describe(stats)})",
        )
    if stats.p95_latency_ms is not None and stats.p95_latency_ms > settings.max_p95_latency_ms:
        return HealthReport(
            Verdict.FAIL,
            f"probation failed: p95 latency {stats.p95_latency_ms:.1f} ms over the limit "
            f"{settings.max_p95_latency_ms:.1f} ms ({_describe(stats)})",
        )
    why = "requests" if enough else "seconds"
    return HealthReport(Verdict.PASS, f"probation passed after enough {why} ({_describe(stats)})")


def run_smoke(loaded: ServedModel, bundle_dir: Path, smoke_path: str) -> str | None:
    """Run the smoke set; None when it passes, else the reason it failed."""
    path = Path(bundle_dir) / smoke_path
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as e:
        return f"smoke set {smoke_path} unreadable: {e}"
    if "inputs" not in arrays and any(k.startswith(("in:", "gen:")) for k in arrays):
        return _run_tensor_smoke(loaded, arrays)
    if "inputs" not in arrays:
        return f"smoke set {smoke_path} has no 'inputs'"
    atol = float(arrays["atol"]) if "atol" in arrays else 1e-4
    try:
        prediction = loaded.predict(arrays["inputs"])
    except Exception as e:  # any failure to run the smoke set is a failed check
        return f"smoke set could not run: {e}"
    n = len(arrays["inputs"])
    if "expected_labels" in arrays:
        got = prediction.labels
        if got is None:
            return "smoke set expects labels but the model has no label output"
        want_keys = [label_key(v) for v in np.asarray(arrays["expected_labels"]).tolist()]
        got_keys = [label_key(v) for v in np.asarray(got).reshape(-1).tolist()]
        wrong = sum(1 for a, b in zip(want_keys, got_keys, strict=False) if a != b)
        if len(got_keys) != len(want_keys) or wrong:
            return f"smoke set: {wrong} of {n} labels differ from the expected ones"
    if "expected_probabilities" in arrays and prediction.probabilities is not None:
        diff = _max_diff(prediction.probabilities, arrays["expected_probabilities"])
        if diff is None or diff > atol:
            return f"smoke set: probabilities differ by {diff} (atol {atol})"
    if "expected_values" in arrays:
        got_values = prediction.values
        if got_values is None:
            return "smoke set expects values but the model has no value output"
        diff = _max_diff(got_values, arrays["expected_values"])
        if diff is None or diff > atol:
            return f"smoke set: values differ by {diff} (atol {atol})"
    return None


def _run_tensor_smoke(loaded: ServedModel, arrays: dict[str, np.ndarray]) -> str | None:
    """A format-2 smoke set (edgefleet.core.tensor_smoke): inputs by name, outputs by name."""
    from edgefleet.core.tensor_smoke import check_outputs, inputs_from_smoke

    dtypes = {spec.name: spec.dtype for spec in loaded.schema.inputs}
    try:
        feeds = inputs_from_smoke(arrays, dtypes)
        prediction = loaded.predict_inputs(feeds)
    except Exception as e:  # any failure to run the smoke set is a failed check
        return f"smoke set could not run: {e}"
    return check_outputs(arrays, dict(zip(loaded.output_names, prediction.outputs, strict=True)))


def _max_diff(got: Any, want: Any) -> float | None:
    a = np.asarray(got, dtype=np.float64)
    b = np.asarray(want, dtype=np.float64)
    if a.size != b.size:
        return None
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a.reshape(-1) - b.reshape(-1))))
