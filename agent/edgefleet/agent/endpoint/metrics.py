"""Counters behind ``GET /metrics`` and their Prometheus text rendering (format 0.0.4).

Invariants:

- The event-loop thread updates these objects, and a worker thread that writes
  a job's answer itself accounts for it first (the status, the model's
  counters and latency, refusals): that accounting, the loop's, and rendering
  hold :attr:`EndpointMetrics.lock`; every other field is the loop's alone, so
  plain ints suffice.
- Label values are bounded: model names and versions that were actually
  served, error kinds from a fixed vocabulary (anything else is counted as
  ``other``), HTTP status codes. Nothing a client sends becomes a label.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Iterable

# Upper bounds in seconds; a Pi Zero batch-1 MLP sits around 1 ms.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)

ERROR_KINDS = frozenset(
    {
        "name",
        "dtype",
        "shape",
        "features",
        "non_finite",
        "empty",
        "datatype",
        "data",
        "json",
        "request",
        "binary",
        "label",
        "runtime",
        "schema",
        "too_large",
    }
)


class Histogram:
    __slots__ = ("counts", "total", "n")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        self.total += seconds
        self.n += 1


class ModelStats:
    """Counters of one served (model, version)."""

    __slots__ = ("requests", "rows", "latency", "errors", "feedback_matched", "feedback_unknown")

    def __init__(self) -> None:
        self.requests = 0
        self.rows = 0
        self.latency = Histogram()
        self.errors: dict[str, int] = {}
        self.feedback_matched = 0
        self.feedback_unknown = 0


class EndpointMetrics:
    def __init__(self) -> None:
        # Held while an answer is accounted (loop or worker thread) and while rendering.
        self.lock = threading.Lock()
        self.started_at = time.time()
        self.http_responses: dict[int, int] = {}
        self.models: dict[tuple[str, int], ModelStats] = {}
        self.unknown_model_requests = 0
        self.sink_failures = 0
        self.connections_open = 0
        self.connections_total = 0
        self.connections_refused = 0
        self.connections_evicted = 0
        self.budget_in_use = 0  # tensor bytes charged by admitted requests
        self.budget_waits = 0

    def model(self, name: str, version: int) -> ModelStats:
        key = (name, version)
        stats = self.models.get(key)
        if stats is None:
            stats = self.models[key] = ModelStats()
        return stats

    def response(self, status: int) -> None:
        self.http_responses[status] = self.http_responses.get(status, 0) + 1

    def error(self, stats: ModelStats, kind: str) -> None:
        kind = kind if kind in ERROR_KINDS else "other"
        stats.errors[kind] = stats.errors.get(kind, 0) + 1

    def render(self, served: Iterable[tuple[str, int]], ready: bool) -> bytes:
        with self.lock:
            return self._render(served, ready)

    def _render(self, served: Iterable[tuple[str, int]], ready: bool) -> bytes:
        lines: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")

        family("edgefleet_agent_up", "gauge", "1 while the endpoint runs.")
        lines.append("edgefleet_agent_up 1")
        family("edgefleet_agent_ready", "gauge", "1 when the agent accepts inference requests.")
        lines.append(f"edgefleet_agent_ready {int(ready)}")
        family("edgefleet_agent_start_time_seconds", "gauge", "Endpoint start, Unix time.")
        lines.append(f"edgefleet_agent_start_time_seconds {self.started_at:.3f}")
        family("edgefleet_agent_model_served", "gauge", "1 for each model version being served.")
        for name, version in sorted(served):
            lines.append(f"edgefleet_agent_model_served{{{_labels(name, version)}}} 1")
        family("edgefleet_agent_http_responses_total", "counter", "HTTP responses by status.")
        for code, n in sorted(self.http_responses.items()):
            lines.append(f'edgefleet_agent_http_responses_total{{code="{code}"}} {n}')
        family("edgefleet_agent_inference_requests_total", "counter", "Successful inference calls.")
        for (name, version), s in sorted(self.models.items()):
            lines.append(
                f"edgefleet_agent_inference_requests_total{{{_labels(name, version)}}} {s.requests}"
            )
        family("edgefleet_agent_inference_rows_total", "counter", "Rows predicted.")
        for (name, version), s in sorted(self.models.items()):
            lines.append(
                f"edgefleet_agent_inference_rows_total{{{_labels(name, version)}}} {s.rows}"
            )
        family(
            "edgefleet_agent_inference_errors_total",
            "counter",
            "Refused or failed requests by kind.",
        )
        for (name, version), s in sorted(self.models.items()):
            for kind, n in sorted(s.errors.items()):
                lines.append(
                    f'edgefleet_agent_inference_errors_total{{{_labels(name, version)},kind="{kind}"}} {n}'
                )
        family(
            "edgefleet_agent_inference_latency_seconds",
            "histogram",
            "Validation plus model run time per request.",
        )
        for (name, version), s in sorted(self.models.items()):
            base = _labels(name, version)
            cumulative = 0
            for bound, count in zip(LATENCY_BUCKETS_S, s.latency.counts, strict=False):
                cumulative += count
                lines.append(
                    f'edgefleet_agent_inference_latency_seconds_bucket{{{base},le="{bound}"}} {cumulative}'
                )
            lines.append(
                f'edgefleet_agent_inference_latency_seconds_bucket{{{base},le="+Inf"}} {s.latency.n}'
            )
            lines.append(
                f"edgefleet_agent_inference_latency_seconds_sum{{{base}}} {s.latency.total:.6f}"
            )
            lines.append(f"edgefleet_agent_inference_latency_seconds_count{{{base}}} {s.latency.n}")
        family(
            "edgefleet_agent_feedback_total", "counter", "Late labels by whether the id was known."
        )
        for (name, version), s in sorted(self.models.items()):
            base = _labels(name, version)
            lines.append(
                f'edgefleet_agent_feedback_total{{{base},matched="true"}} {s.feedback_matched}'
            )
            lines.append(
                f'edgefleet_agent_feedback_total{{{base},matched="false"}} {s.feedback_unknown}'
            )
        family(
            "edgefleet_agent_unknown_model_requests_total",
            "counter",
            "Requests naming a model or version not served.",
        )
        lines.append(f"edgefleet_agent_unknown_model_requests_total {self.unknown_model_requests}")
        family(
            "edgefleet_agent_telemetry_sink_failures_total",
            "counter",
            "Telemetry sink calls that raised (the response was sent anyway).",
        )
        lines.append(f"edgefleet_agent_telemetry_sink_failures_total {self.sink_failures}")
        family("edgefleet_agent_connections_open", "gauge", "Open client connections.")
        lines.append(f"edgefleet_agent_connections_open {self.connections_open}")
        family("edgefleet_agent_connections_total", "counter", "Accepted client connections.")
        lines.append(f"edgefleet_agent_connections_total {self.connections_total}")
        family(
            "edgefleet_agent_connections_refused_total",
            "counter",
            "Connections answered 503: max_connections authenticated, none idle.",
        )
        lines.append(f"edgefleet_agent_connections_refused_total {self.connections_refused}")
        family(
            "edgefleet_agent_connections_evicted_total",
            "counter",
            "Connections closed to make room: unauthenticated ones waiting longest, "
            "idle authenticated ones.",
        )
        lines.append(f"edgefleet_agent_connections_evicted_total {self.connections_evicted}")
        family(
            "edgefleet_agent_tensor_budget_bytes",
            "gauge",
            "Decoded tensor bytes charged by the requests admitted now.",
        )
        lines.append(f"edgefleet_agent_tensor_budget_bytes {self.budget_in_use}")
        family(
            "edgefleet_agent_tensor_budget_waits_total",
            "counter",
            "Requests that waited for room in the tensor budget.",
        )
        lines.append(f"edgefleet_agent_tensor_budget_waits_total {self.budget_waits}")
        return ("\n".join(lines) + "\n").encode()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(name: str, version: int) -> str:
    return f'model="{_escape(name)}",version="{version}"'
