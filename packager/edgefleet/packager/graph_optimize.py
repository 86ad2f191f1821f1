"""Offline graph optimisation: onnxruntime's basic level, saved into the bundle.

onnxruntime optimises a graph at every session start; doing the portable part
once at pack time means the device loads a smaller, simpler graph and the
fidelity check runs on exactly what the device will run. Used for tensor
models' float graph (the quantizers get the graph as registered: the basic
level's MatMul + Add -> Gemm fusion makes static QDQ store int32 biases and
onnxruntime's quantizer fails on a [1, N] Gemm bias).

Only ``ORT_ENABLE_BASIC`` is applied: its rewrites (constant folding,
redundant node elimination, Conv+Add/Mul/BatchNorm fusions, ...) run before
graph partitioning, so they hold for every execution provider and CPU, and
the result is a plain ONNX graph. The extended level runs after partitioning
and only on nodes assigned to the packing machine's providers, writing
``com.microsoft`` fused operators for them (CPU fusions a Jetson's CUDA
provider would then run on the CPU); the layout level rewrites convolutions
into the blocked layout of this machine's vector width (AVX2 / AVX-512).
Both stay online on the device, where onnxruntime applies them for its own
hardware at session start.

The optimised graph is kept only when it still loads, has the same inputs and
outputs, stays within the target's opsets and IR version, and has no more
nodes and no more weight bytes (and is not the same graph); otherwise the
graph is packed as it was and the report says why.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgefleet.packager.graph import OnnxTarget, op_counts, opsets

LEVEL = "basic"


@dataclass(frozen=True)
class Optimised:
    """The graph to pack and what optimising it did (``validation.graph_optimization``)."""

    model: bytes
    info: dict[str, Any]


def _io(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    return [i.name for i in model.graph.input if i.name not in _init_names(model)], [
        o.name for o in model.graph.output
    ]


def _weight_bytes(model: onnx.ModelProto) -> int:
    # Weight values, not file or proto size: onnxruntime names every node and stamps its
    # producer when it saves a graph, bytes that are not a larger model.
    total = 0
    for t in model.graph.initializer:
        if t.data_type == onnx.TensorProto.STRING:
            total += sum(len(v) for v in t.string_data)
            continue
        size = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        total += int(np.prod(t.dims, dtype=np.int64)) * size
    return total


def _init_names(model: onnx.ModelProto) -> set[str]:
    return {t.name for t in model.graph.initializer}


def optimise(data: bytes, target: OnnxTarget) -> Optimised:
    """``data`` optimised at the basic level, or unchanged with the reason."""
    import onnxruntime as ort

    before = onnx.load_model_from_string(data)
    info: dict[str, Any] = {
        "level": LEVEL,
        "applied": False,
        "nodes_before": len(before.graph.node),
        "bytes_before": len(data),
    }
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "optimised.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(out)
        options.log_severity_level = 3
        try:
            ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
            optimised = out.read_bytes()
        except Exception as e:  # onnxruntime's exception types are not a stable API
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            return Optimised(data, {**info, "reason": f"onnxruntime could not optimise: {first}"})
    after = onnx.load_model_from_string(optimised)
    used = {domain for domain, _ in op_counts(after)}
    if used <= set(opsets(before)):
        # onnxruntime declares every domain it knows (ai.onnx.ml 5, ...); the graph keeps
        # the registered declarations, which the target was already checked against.
        del after.opset_import[:]
        after.opset_import.extend(before.opset_import)
        optimised = after.SerializeToString()
    info.update(nodes_after=len(after.graph.node), bytes_after=len(optimised))
    why = _refusal(before, after, target)
    nodes, weights = len(after.graph.node), _weight_bytes(after)
    if why is None and (nodes, weights) == (len(before.graph.node), _weight_bytes(before)):
        why = "nothing to optimise at the basic level"
    elif why is None and weights > _weight_bytes(before):
        # Constant folding can materialise weights that nodes compute (the onnx package's
        # SqueezeNet file, weights as ConstantOfShape: 15 KB -> 3.7 MB).
        why = f"the optimised graph holds more weight bytes ({weights} > {_weight_bytes(before)})"
    elif why is None and nodes > len(before.graph.node):
        why = f"the optimised graph has more nodes ({nodes} > {len(before.graph.node)})"
    if why is not None:
        return Optimised(data, {**info, "reason": why})
    return Optimised(optimised, {**info, "applied": True, "reason": ""})


def _refusal(before: onnx.ModelProto, after: onnx.ModelProto, target: OnnxTarget) -> str | None:
    if _io(before) != _io(after):
        return "optimising changed the graph's inputs or outputs"
    if after.ir_version > target.ir_version:
        return f"the optimised graph has IR version {after.ir_version} > {target.ir_version}"
    wanted = opsets(before)
    for domain, version in opsets(after).items():
        if domain not in wanted or version > wanted[domain]:
            return f"the optimised graph needs {domain} opset {version}"
    try:
        onnx.checker.check_model(after)
    except Exception as e:  # onnx.checker raises ValidationError and others
        return f"the optimised graph does not pass onnx.checker: {str(e).splitlines()[0][:200]}"
    return None
