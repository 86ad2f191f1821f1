"""The endpoint's memory budget: limits derived from the device profile, and the in-flight count.

Pure (no I/O, no threads, no clock). One unit everywhere: **decoded tensor
bytes**, the bytes of the numpy arrays a request becomes (its inputs as
decoded, its outputs and prediction ids). A request is charged *before* its
body is read, with an upper bound computed from what its head says; JSON
requests cost more resident memory per tensor byte than binary tensors do
(Python objects while parsing, text while answering), which is what
:data:`MEMORY_PER_TENSOR_BYTE` covers. A binary tensor request is charged its
JSON header from the head, then what that header declares
(:func:`edgefleet.agent.endpoint.binary.declared_charge`) before its binary
part is read, against the same :class:`TensorBudget`.

Derivation from the profile's ``agent_memory_budget_mb`` (docs/agent-endpoint.md
has the table per shipped profile)::

    reserve         = PROCESS_RESERVE_BYTES + 2 * max_bundle_bytes
    request memory  = max(MIN_REQUEST_MEMORY_BYTES, budget - reserve)
    in-flight       = request memory // MEMORY_PER_TENSOR_BYTE     (tensor bytes)
    per request     = in-flight                                    (one request may use it all)
    max body        = min(configured max_body_bytes, per request // JSON_TENSOR_BYTES_PER_BODY_BYTE)
    max batch rows  = per request // MIN_ROW_TENSOR_BYTES

Invariants of :class:`TensorBudget`: ``in_use`` never exceeds ``limits.inflight``
(:meth:`TensorBudget.try_acquire` refuses instead), never goes below zero, and
a charge above ``limits.per_request`` is never admitted (the caller answers 413).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

MIB = 1024 * 1024
# What the agent process holds before any request: interpreter, numpy,
# onnxruntime, the endpoint, telemetry buffer and hub sync (about 66 MB for the
# stand-alone daemon on x86_64, 80 MB with the MQTT sync; docs/agent-endpoint.md).
PROCESS_RESERVE_BYTES = 80 * MIB
# Below this the endpoint could not take even a modest batch; a profile whose
# budget leaves less still gets it (its budget is then simply too small).
MIN_REQUEST_MEMORY_BYTES = 16 * MIB
# Peak resident bytes per charged tensor byte of a JSON request: the body,
# json.loads's Python objects, the decoded and cast arrays, the outputs, the
# prediction ids, the response text and what the allocator keeps. Measured
# from 7 (largest admitted iris batches of one-digit values, the shape with
# the smallest charge per byte of text, taking turns) to 11.6 (the same with
# single-row requests served in between; bench/agent.py "attacks").
MEMORY_PER_TENSOR_BYTE = 12
# A JSON number takes at least two body bytes ("1,") and decodes to at most
# eight (int64/float64 before the cast to the model's dtype).
JSON_TENSOR_BYTES_PER_BODY_BYTE = 4
# A row costs at least one 4-byte feature, an 8-byte label or value and its
# prediction id (16 bytes as text in the answer).
MIN_ROW_TENSOR_BYTES = 28
# Bytes charged per row for its prediction id.
PREDICTION_ID_BYTES = 16
# Bytes per element of an output whose dtype is a string (a pointer and a short object).
STRING_ELEMENT_BYTES = 64


@dataclass(frozen=True)
class EndpointLimits:
    """Request limits of one endpoint; sizes in bytes, tensor sizes in decoded tensor bytes."""

    max_body_bytes: int
    max_batch_rows: int
    per_request: int  # tensor bytes one request may be charged (above: 413)
    inflight: int  # tensor bytes all admitted requests together may be charged (above: wait)

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_batch_rows", "per_request", "inflight"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer")
        if self.per_request > self.inflight:
            raise ValueError("per_request must not exceed inflight")

    @classmethod
    def derive(
        cls, agent_memory_budget_mb: int, max_bundle_bytes: int, max_body_bytes: int
    ) -> EndpointLimits:
        """The limits for a process budget of ``agent_memory_budget_mb`` (module docstring)."""
        reserve = PROCESS_RESERVE_BYTES + 2 * max_bundle_bytes
        memory = max(MIN_REQUEST_MEMORY_BYTES, agent_memory_budget_mb * MIB - reserve)
        inflight = memory // MEMORY_PER_TENSOR_BYTE
        return cls(
            max_body_bytes=max(
                1024, min(max_body_bytes, inflight // JSON_TENSOR_BYTES_PER_BODY_BYTE)
            ),
            max_batch_rows=max(1, inflight // MIN_ROW_TENSOR_BYTES),
            per_request=inflight,
            inflight=inflight,
        )

    def to_dict(self) -> dict[str, int]:
        return {
            "max_body_bytes": self.max_body_bytes,
            "max_batch_rows": self.max_batch_rows,
            "per_request_tensor_bytes": self.per_request,
            "inflight_tensor_bytes": self.inflight,
        }


def row_tensor_bytes(output_elements: Iterable[tuple[int, int]]) -> int:
    """Tensor bytes one row adds to the answer: ``(elements per row, bytes per element)`` of
    every output, plus its prediction id."""
    return PREDICTION_ID_BYTES + sum(n * size for n, size in output_elements)


def json_request_charge(
    body_bytes: int, *, n_features: int | None, row_bytes: int, max_batch_rows: int
) -> int:
    """Upper bound of the tensor bytes a JSON inference request of ``body_bytes`` becomes.

    Inputs: at most :data:`JSON_TENSOR_BYTES_PER_BODY_BYTE` per body byte. Outputs:
    ``row_bytes`` (:func:`row_tensor_bytes`) for each row the body can hold: a row takes
    at least two body bytes per feature, and never more than ``max_batch_rows``.
    """
    if body_bytes <= 0:
        return 0
    rows = min(max_batch_rows, body_bytes // (2 * max(1, n_features or 1)) + 1)
    return JSON_TENSOR_BYTES_PER_BODY_BYTE * body_bytes + rows * row_bytes


def tensor_bytes(shape: Sequence[int], itemsize: int) -> int:
    """Decoded bytes of one tensor (a binary request declares shape and datatype up front)."""
    return math.prod(shape) * itemsize


class TensorBudget:
    """Tensor bytes charged by admitted requests (one thread uses it: the event loop)."""

    def __init__(self, limits: EndpointLimits) -> None:
        self.limits = limits
        self.in_use = 0
        self.peak = 0

    def is_small(self, charge: int) -> bool:
        """At most 1/16 of the in-flight budget: such a request may pass waiting big ones."""
        return charge <= self.limits.inflight // 16

    def fits_one_request(self, charge: int) -> bool:
        """Could a request of ``charge`` ever run? (False: answer 413.)"""
        return charge <= self.limits.per_request

    def try_acquire(self, charge: int) -> bool:
        """Charge ``charge`` if it fits beside what runs now; False: the request waits."""
        if charge < 0:
            raise ValueError("a charge is never negative")
        if not self.fits_one_request(charge) or self.in_use + charge > self.limits.inflight:
            return False
        self.in_use += charge
        self.peak = max(self.peak, self.in_use)
        return True

    def release(self, charge: int) -> None:
        if charge < 0 or charge > self.in_use:
            raise ValueError(f"cannot release {charge} of {self.in_use} charged bytes")
        self.in_use -= charge

    @property
    def available(self) -> int:
        return self.limits.inflight - self.in_use
