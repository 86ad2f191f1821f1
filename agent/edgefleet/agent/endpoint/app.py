"""Routing and request handling of the endpoint, independent of sockets.

:meth:`EndpointApp.route` maps a parsed :class:`Request` to either an
:class:`Outcome` (cheap routes and refusals) or a :class:`Job` (inference and
feedback: JSON decoding plus model work), which the server runs inline or on a
worker thread. Routes (docs/agent-endpoint.md, OIP v2 REST)::

    GET  /v2/health/live | /v2/health/ready | /v2
    GET  /v2/models/{m}[/versions/{v}]            model metadata
    GET  /v2/models/{m}[/versions/{v}]/ready
    POST /v2/models/{m}[/versions/{v}]/infer
    POST /v2/models/{m}[/versions/{v}]/feedback   late labels by prediction id
    GET  /metrics                                 Prometheus text

Invariants:

- Every refusal is a 4xx with a JSON body ``{"error": "..."}``; a 5xx only
  means the agent itself failed (onnxruntime failing on validated input, a
  bug), never a client's input. A job never raises: whatever happens becomes
  an :class:`Outcome`.
- With a token configured every route needs ``Authorization: Bearer <token>``
  (compared in constant time); without one (loopback only) none does. The
  token is checked from the head, before the body is read
  (:meth:`EndpointApp.admit`), which also prices the request in decoded tensor
  bytes for the endpoint's :class:`~edgefleet.agent.endpoint.budget.TensorBudget`.
- ``Outcome.after`` (metrics and telemetry) runs on the event-loop thread just
  before the response is written, so a client holding its answer can count on
  it being counted; it is cheap: inference accounting is only queued there and
  handed to the sink at the end of the event-loop pass, after the answers went
  out (:meth:`EndpointApp.flush_telemetry`), one batch per model version.
- An inference's telemetry rows (a tensor model's per-channel drift summary,
  :class:`~edgefleet.agent.endpoint.telemetry_rows.TelemetryRows`) are
  ``Outcome.summary``: work that may wait until the answer is out. The server
  runs it on the worker thread that ran the job, after handing the answer to
  the loop; it returns the callback that queues the inference for the sink on
  the loop thread. Until then the request keeps its connection and its budget
  charge (its input is still held), and feedback (:class:`WaitsForTelemetry`)
  waits, so the ids of an answer are known to the sink before any label for
  them is matched.
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgefleet.agent.endpoint import binary
from edgefleet.agent.endpoint.budget import (
    JSON_TENSOR_BYTES_PER_BODY_BYTE,
    STRING_ELEMENT_BYTES,
    EndpointLimits,
    json_request_charge,
    row_tensor_bytes,
)
from edgefleet.agent.endpoint.http11 import Head, Request
from edgefleet.agent.endpoint.metrics import EndpointMetrics
from edgefleet.agent.endpoint.oip import (
    InferCall,
    ResponseEncoder,
    decode_feedback,
    encode_json,
    model_metadata,
    run_infer,
)
from edgefleet.agent.endpoint.telemetry_rows import TelemetryRows
from edgefleet.agent.errors import InferenceError, InputSchemaError, ModelNotFoundError
from edgefleet.agent.model.runtime import LoadedModel
from edgefleet.agent.model.serving import ServingSet
from edgefleet.agent.telemetry_sink import TelemetrySink

log = logging.getLogger("edgefleet.agent.endpoint")

JSON = b"application/json"
PROMETHEUS = b"text/plain; version=0.0.4; charset=utf-8"
SERVER_NAME = "edgefleet-agent"
EXTENSIONS = ["binary_tensor_data", "classification", "edgefleet_feedback", "edgefleet_metrics"]
_MODELS_PREFIX = "/v2/models/"
OCTET_STREAM = b"application/octet-stream"


@dataclass(slots=True)
class Outcome:
    status: int
    body: bytes
    content_type: bytes = JSON
    close: bool = False
    extra_headers: bytes = b""
    after: Callable[[], None] | None = None
    # Telemetry work that may wait until the answer is out (module docstring): returns
    # what queues the inference for the sink, to be called on the loop thread.
    summary: Callable[[], Callable[[], None]] | None = None


Job = Callable[[], Outcome]


class WaitsForTelemetry:
    """A job that must not start while answered inferences are still being summarised:
    feedback, whose prediction ids the sink must already know."""

    __slots__ = ("job",)

    def __init__(self, job: Job) -> None:
        self.job = job

    def __call__(self) -> Outcome:
        return self.job()


# (model, version, X, predictions, latency_ms, prediction_ids) of one answered request.
PendingInference = tuple[str, int, np.ndarray, np.ndarray, float, list[str]]


def error_body(message: str) -> bytes:
    return encode_json({"error": message})


def error_outcome(status: int, message: str, **kwargs: object) -> Outcome:
    return Outcome(status, error_body(message), **kwargs)  # type: ignore[arg-type]


class EndpointApp:
    def __init__(
        self,
        serving: ServingSet,
        sink: TelemetrySink,
        metrics: EndpointMetrics,
        *,
        token: str | None,
        agent_version: str,
        limits: EndpointLimits | None = None,
    ) -> None:
        self.serving = serving
        self.limits = limits
        self.sink = sink
        self.metrics = metrics
        # Inference accounting waiting for the next flush (loop thread only).
        self._pending: list[PendingInference] = []
        self._flush_scheduled = False
        # How to run flush_telemetry soon; the server sets loop.call_soon. Without
        # a loop, accounting is flushed at once.
        self.schedule: Callable[[Callable[[], None]], object] | None = None
        self._batch_sink = getattr(sink, "record_inferences", None)
        self._auth = f"Bearer {token}".encode() if token else None
        self._telemetry_rows = TelemetryRows()
        # One encoder per served model object; dropped with the model after a swap.
        self._encoders: weakref.WeakKeyDictionary[LoadedModel, ResponseEncoder] = (
            weakref.WeakKeyDictionary()
        )
        self._row_bytes: weakref.WeakKeyDictionary[LoadedModel, int] = weakref.WeakKeyDictionary()
        self._sample_values: weakref.WeakKeyDictionary[LoadedModel, int] = (
            weakref.WeakKeyDictionary()
        )
        self._server_doc = encode_json(
            {"name": SERVER_NAME, "version": agent_version, "extensions": EXTENSIONS}
        )

    # --- admission (from the head, before the body) -------------------------------
    def authorized(self, headers: dict[str, str]) -> bool:
        if self._auth is None:
            return True
        given = headers.get("authorization")
        return given is not None and _compare_digest(given.encode("latin-1"), self._auth)

    def admit(self, head: Head) -> Outcome | int:
        """A refusal (401, 413; the connection closes) or the request's charge in tensor bytes."""
        if not self.authorized(head.headers):
            return error_outcome(
                401,
                "missing or wrong bearer token",
                close=True,
                extra_headers=b'WWW-Authenticate: Bearer realm="edgefleet-agent"\r\n',
            )
        limits = self.limits
        if limits is None or head.length == 0:
            return 0
        model = self._infer_target(head)
        if model is not None and binary.HEADER_FIELD in head.headers:
            return self._admit_binary_head(head, limits)
        if head.length > limits.max_body_bytes:
            return error_outcome(
                413,
                f"request body of {head.length} bytes exceeds the limit of {limits.max_body_bytes}",
                close=True,
            )
        if model is None:
            charge = JSON_TENSOR_BYTES_PER_BODY_BYTE * head.length
        else:
            charge = json_request_charge(
                head.length,
                n_features=model.n_features or self._sample_values_of(model),
                row_bytes=self._row_bytes_of(model),
                max_batch_rows=limits.max_batch_rows,
            )
        if charge > limits.per_request:
            return error_outcome(
                413,
                f"request of {head.length} bytes may decode to {charge} tensor bytes, above "
                f"the per-request budget of {limits.per_request}",
                close=True,
            )
        return charge

    def _admit_binary_head(self, head: Head, limits: EndpointLimits) -> Outcome | int:
        """A binary request's head: its JSON header is priced now, its tensors once declared."""
        try:
            hlen = binary.header_length(head.headers, head.length)
        except InputSchemaError as e:
            return error_outcome(400, str(e), close=True)
        assert hlen is not None
        if hlen > limits.max_body_bytes:
            return error_outcome(
                413,
                f"JSON header of {hlen} bytes exceeds the limit of {limits.max_body_bytes}",
                close=True,
            )
        if head.length - hlen > limits.per_request:
            return error_outcome(
                413,
                f"binary data of {head.length - hlen} bytes exceeds the per-request budget "
                f"of {limits.per_request} tensor bytes",
                close=True,
            )
        return JSON_TENSOR_BYTES_PER_BODY_BYTE * hlen

    def binary_header_wait(self, head: Head) -> int | None:
        """The JSON header length of an admitted binary inference request (else None): the
        connection reads that much of the body, then calls :meth:`admit_binary`."""
        if self.limits is None or binary.HEADER_FIELD not in head.headers:
            return None
        if self._infer_target(head) is None:
            return None
        return binary.header_length(head.headers, head.length)

    def admit_binary(self, head: Head, header: bytes) -> Outcome | int:
        """The whole charge of a binary request from its JSON header, before its tensors
        are read: a refusal (400 bad declaration, 413 over one request's share; the
        connection closes) or the charge that replaces the head's."""
        model = self._infer_target(head)
        limits = self.limits
        if model is None or limits is None:
            return 0
        binary_bytes = head.length - len(header)
        try:
            declared = binary.declared_charge(
                header,
                binary_bytes,
                row_bytes=self._row_bytes_of(model),
                max_batch_rows=limits.max_batch_rows,
            )
        except InputSchemaError as e:
            return error_outcome(400, str(e), close=True)
        charge = JSON_TENSOR_BYTES_PER_BODY_BYTE * len(header) + declared
        if charge > limits.per_request:
            return error_outcome(
                413,
                f"request declares {charge} tensor bytes, above the per-request budget "
                f"of {limits.per_request}",
                close=True,
            )
        return charge

    def _infer_target(self, head: Head) -> LoadedModel | None:
        path = head.target.partition("?")[0]
        if head.method != "POST" or not path.startswith(_MODELS_PREFIX):
            return None
        parts = path[len(_MODELS_PREFIX) :].split("/")
        if parts[-1] != "infer":
            return None
        name = parts[0]
        if "%" in name:
            from urllib.parse import unquote

            name = unquote(name)
        try:
            return self.serving.get(name)
        except ModelNotFoundError:
            return None

    def _sample_values_of(self, model: LoadedModel) -> int:
        """Fewest values one sample of a batched input takes (an image: 3 x 224 x 224), so
        a JSON body of tensors is not priced as if every two bytes were a row."""
        found = self._sample_values.get(model)
        if found is None:
            sizes = [
                math.prod(d for axis, d in enumerate(i.shape) if axis != i.batch_axis and d > 0)
                for i in model.schema.inputs
                if i.batch_axis is not None
            ]
            found = self._sample_values[model] = min(sizes, default=1)
        return found

    def _row_bytes_of(self, model: LoadedModel) -> int:
        found = self._row_bytes.get(model)
        if found is None:
            found = self._row_bytes[model] = row_tensor_bytes(
                (
                    math.prod(d for d in o.shape[1:] if d > 0),
                    STRING_ELEMENT_BYTES
                    if o.dtype_name == "string"
                    else np.dtype(o.dtype_name).itemsize,
                )
                for o in model.schema.outputs
            )
        return found

    # --- routing -------------------------------------------------------------
    def route(self, req: Request) -> Outcome | Job:
        if not self.authorized(req.headers):  # a request parsed without admission (tests)
            return error_outcome(
                401,
                "missing or wrong bearer token",
                extra_headers=b'WWW-Authenticate: Bearer realm="edgefleet-agent"\r\n',
            )
        target = req.target
        q = target.find("?")
        path = target if q < 0 else target[:q]
        if path.startswith(_MODELS_PREFIX):
            return self._model_route(req, path[len(_MODELS_PREFIX) :])
        if path == "/v2/health/live":
            return self._get_only(req) or Outcome(200, b'{"live":true}')
        if path == "/v2/health/ready":
            return self._get_only(req) or self._ready()
        if path in ("/v2", "/v2/"):
            return self._get_only(req) or Outcome(200, self._server_doc)
        if path == "/metrics":
            return self._get_only(req) or self._metrics()
        return error_outcome(404, f"no route for {path[:200]}")

    def _get_only(self, req: Request) -> Outcome | None:
        if req.method == "GET":
            return None
        return error_outcome(
            405, f"{req.method} is not allowed here", extra_headers=b"Allow: GET\r\n"
        )

    def _ready(self) -> Outcome:
        if self.serving.ready and len(self.serving):
            return Outcome(200, b'{"ready":true}')
        reason = "the agent is starting" if not self.serving.ready else "no model is loaded"
        return Outcome(503, encode_json({"ready": False, "error": reason}))

    def _metrics(self) -> Outcome:
        served = [(m.name, m.version) for m in self.serving.snapshot().values()]
        return Outcome(
            200, self.metrics.render(served, self.serving.ready), content_type=PROMETHEUS
        )

    def _model_route(self, req: Request, rest: str) -> Outcome | Job:
        parts = rest.split("/")
        name = parts[0]
        if "%" in name:
            from urllib.parse import unquote  # rare: keep urllib off the serving imports

            name = unquote(name)
        version: str | None = None
        action = ""
        if len(parts) >= 3 and parts[1] == "versions":
            version = parts[2]
            tail = parts[3:]
        else:
            tail = parts[1:]
        if len(tail) == 1:
            action = tail[0]
        elif tail:
            return error_outcome(404, f"no route for {req.target[:200]}")
        if not name or (version is not None and not version):
            return error_outcome(404, f"no route for {req.target[:200]}")
        if action in ("infer", "feedback"):
            if req.method != "POST":
                return error_outcome(
                    405, f"{req.method} is not allowed here", extra_headers=b"Allow: POST\r\n"
                )
        elif action in ("", "ready"):
            refused = self._get_only(req)
            if refused is not None:
                return refused
        else:
            return error_outcome(404, f"no route for {req.target[:200]}")
        try:
            model = self.serving.get(name, version)
        except ModelNotFoundError as e:
            self.metrics.unknown_model_requests += 1
            return error_outcome(404, str(e))
        if action == "":
            return Outcome(200, encode_json(model_metadata(model)))
        if action == "ready":
            return Outcome(200, encode_json({"name": model.name, "ready": True}))
        refusal = _refuse_encoding(req)
        if refusal is None and action == "feedback" and binary.HEADER_FIELD in req.headers:
            refusal = error_outcome(415, "feedback takes a JSON body only")
        if refusal is not None:
            return self._refused(model, refusal, "binary")
        if action == "infer":
            try:
                hlen = binary.header_length(req.headers, len(req.body))
            except InputSchemaError as e:
                return self._refused(model, error_outcome(400, str(e)), e.kind)
            return lambda: self._infer(model, req.body, hlen)
        return WaitsForTelemetry(lambda: self._feedback(model, req.body))

    # --- jobs (may run on a worker thread) ----------------------------------------
    def _infer(
        self, model: LoadedModel, body: bytes | bytearray, hlen: int | None = None
    ) -> Outcome:
        content_type, extra = JSON, b""
        try:
            call, wire = binary.decode_request(body, hlen, model)
            refusal = self._too_many_rows(call)
            if refusal is not None:
                return self._refused(model, refusal, "too_large")
            start = time.perf_counter()
            X, prediction = run_infer(model, call)
            latency = time.perf_counter() - start
            if wire.plain:
                encoder = self._encoders.get(model)
                if encoder is None:
                    encoder = self._encoders[model] = ResponseEncoder(model)
                payload = encoder.encode(prediction, call)
            else:
                payload, header_len = binary.encode_response(model, prediction, call, wire)
                if header_len is not None:
                    content_type = OCTET_STREAM
                    extra = b"Inference-Header-Content-Length: %d\r\n" % header_len
        except InputSchemaError as e:
            return self._refused(model, error_outcome(400, str(e)), e.kind)
        except InferenceError as e:
            log.error("inference failed: %s", e)
            return self._refused(model, error_outcome(500, str(e)), "runtime")
        except Exception as e:  # a bug must cost one request, not the endpoint
            log.exception("unexpected error while serving model %s", model.name)
            return self._refused(
                model, error_outcome(500, f"internal error: {type(e).__name__}"), "runtime"
            )

        def after() -> None:
            stats = self.metrics.model(model.name, model.version)
            stats.requests += 1
            stats.rows += len(prediction.ids)
            stats.latency.observe(latency)

        def summary() -> Callable[[], None]:
            # The drift summary reads the whole input: after the answer, off the loop.
            rows, primary = self._telemetry_rows.rows(model, call.feeds, X, prediction)
            entry = (model.name, model.version, rows, primary, latency * 1000.0, prediction.ids)
            return lambda: self._queue(entry)

        return Outcome(
            200,
            payload,
            content_type=content_type,
            extra_headers=extra,
            after=after,
            summary=summary,
        )

    def summarise(self, outcome: Outcome) -> Callable[[], None] | None:
        """Run ``outcome.summary`` (any thread); what to call next on the loop thread, or
        None when there is nothing to summarise. A failure is logged and counted as a
        sink failure, never raised."""
        if outcome.summary is None:
            return None
        try:
            return outcome.summary()
        except Exception:
            log.exception("telemetry summary failed")
            return self._summary_failed

    def _summary_failed(self) -> None:
        self.metrics.sink_failures += 1

    def _queue(self, entry: PendingInference) -> None:
        """Queue one answered inference for the sink (loop thread)."""
        self._pending.append(entry)
        if not self._flush_scheduled:
            if self.schedule is None:
                self.flush_telemetry()
            else:
                self._flush_scheduled = True
                self.schedule(self.flush_telemetry)

    def _too_many_rows(self, call: InferCall) -> Outcome | None:
        limits = self.limits
        if limits is None:
            return None
        rows = max((arr.shape[0] if arr.ndim else 1) for arr in call.feeds.values())
        if rows <= limits.max_batch_rows:
            return None
        return error_outcome(
            413, f"batch of {rows} rows exceeds the limit of {limits.max_batch_rows} rows"
        )

    def flush_telemetry(self) -> None:
        """Hand the pending inference accounting to the sink.

        Requests answered in the same event-loop pass are flushed together: a
        sink with ``record_inferences`` gets one call per run of the same model
        version (one drift-statistics update instead of one per request);
        others get one ``record_inference`` per request. A failing sink is
        counted, never raised.
        """
        self._flush_scheduled = False
        pending, self._pending = self._pending, []
        batch = self._batch_sink
        i = 0
        while i < len(pending):
            name, version = pending[i][0], pending[i][1]
            j = i + 1
            if batch is not None:
                while j < len(pending) and pending[j][0] == name and pending[j][1] == version:
                    j += 1
            try:
                if batch is None or j == i + 1:
                    self.sink.record_inference(*pending[i])
                else:
                    run = pending[i:j]
                    batch(
                        name,
                        version,
                        np.concatenate([r[2] for r in run]),
                        np.concatenate([r[3] for r in run]),
                        [r[4] for r in run],
                        [pid for r in run for pid in r[5]],
                    )
            except Exception:
                self.metrics.sink_failures += 1
                log.exception("telemetry sink failed")
            i = j

    def _feedback(self, model: LoadedModel, body: bytes | bytearray) -> Outcome:
        try:
            items = decode_feedback(body, model)
        except InputSchemaError as e:
            return self._refused(model, error_outcome(400, str(e)), e.kind)
        matched = 0
        unknown: list[str] = []
        try:
            for item in items:
                if self.sink.record_feedback(model.name, item.prediction_id, item.label):
                    matched += 1
                else:
                    unknown.append(item.prediction_id)
        except Exception:
            log.exception("telemetry sink failed on feedback for model %s", model.name)
            return error_outcome(500, "the telemetry buffer could not store the feedback")

        def after() -> None:
            stats = self.metrics.model(model.name, model.version)
            stats.feedback_matched += matched
            stats.feedback_unknown += len(unknown)

        return Outcome(200, encode_json({"accepted": matched, "unknown": unknown}), after=after)

    def _refused(self, model: LoadedModel, outcome: Outcome, kind: str) -> Outcome:
        def after() -> None:
            self.metrics.error(self.metrics.model(model.name, model.version), kind)
            self.sink.record_error(model.name, model.version, kind)

        outcome.after = after
        return outcome


def _compare_digest(a: bytes, b: bytes) -> bool:
    """Constant-time comparison (hmac's, imported only by endpoints with a token)."""
    import hmac

    return hmac.compare_digest(a, b)


def _refuse_encoding(req: Request) -> Outcome | None:
    """Compressed and multipart bodies are refused (415); the Content-Type is otherwise
    ignored, as Triton does: the Inference-Header-Content-Length header alone says
    whether a body carries binary tensors."""
    headers = req.headers
    encoding = headers.get("content-encoding")
    if encoding is not None and encoding.strip().lower() not in ("", "identity"):
        return error_outcome(415, f"Content-Encoding {encoding[:40]!r} is not supported")
    if headers.get("content-type", "").lower().startswith("multipart/"):
        return error_outcome(415, "multipart bodies are not supported")
    return None


def run_job(job: Job) -> Outcome:
    """Run ``job``; an exception escaping it (a bug) becomes a 500 instead of a dead worker."""
    try:
        return job()
    except Exception as e:
        log.exception("request handler failed")
        return error_outcome(500, f"internal error: {type(e).__name__}")
