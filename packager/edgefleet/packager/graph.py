"""ONNX graph inspection and the small rewrites the packager applies.

Pure functions on ``onnx.ModelProto`` (they copy, never mutate their input):

- :func:`target_for` maps a profile's minimum onnxruntime to the highest ONNX
  opset, ai.onnx.ml opset and IR version that runtime implements;
- :func:`normalise_opsets` keeps one ``opset_import`` per domain (skl2onnx
  1.20 writes the default domain twice and onnxruntime's quantizer then fails
  with "Failed to find proper ai.onnx domain") and lowers the IR version to
  what the target runtime reads;
- :func:`describe_io` names the model's single 2-D float32 input and gives
  each output a role (``label``, ``probabilities`` or ``value``);
- :func:`op_counts` counts operators by domain, subgraphs included;
- :func:`gemm_to_matmul` rewrites constant-weight ``Gemm`` nodes as
  ``MatMul`` + ``Add`` (onnxruntime's dynamic quantizer skips Gemm);
- :func:`add_argmax_label` gives a probabilities-only classifier a ``label``
  output so every classifier bundle has the same outputs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgefleet.core.errors import ProfileError
from edgefleet.packager.errors import UnsupportedModelError

ML_DOMAIN = "ai.onnx.ml"

# onnxruntime minor version -> (ai.onnx opset, ai.onnx.ml opset, IR version) it implements,
# from onnxruntime's published compatibility matrix. Newer runtimes read older models, so
# a profile newer than the table uses its last row.
_ORT_TABLE: dict[tuple[int, int], tuple[int, int, int]] = {
    (1, 14): (18, 3, 8),
    (1, 15): (19, 3, 9),
    (1, 16): (19, 3, 9),
    (1, 17): (20, 4, 9),
    (1, 18): (21, 4, 10),
    (1, 19): (21, 4, 10),
    (1, 20): (21, 4, 10),
    (1, 21): (22, 4, 10),
    (1, 22): (22, 4, 10),
    (1, 23): (23, 5, 11),
}

_DTYPES: dict[int, str] = {
    TensorProto.FLOAT: "float32",
    TensorProto.DOUBLE: "float64",
    TensorProto.FLOAT16: "float16",
    TensorProto.INT64: "int64",
    TensorProto.INT32: "int32",
    TensorProto.STRING: "string",
    TensorProto.BOOL: "bool",
}


@dataclass(frozen=True)
class OnnxTarget:
    """What the oldest onnxruntime a profile allows can load."""

    onnxruntime: str
    opset: int
    ml_opset: int
    ir_version: int

    def converter_opsets(self, ceiling: int) -> dict[str, int]:
        """skl2onnx ``target_opset``, also capped by what the converter was tested with."""
        return {"": min(self.opset, ceiling), ML_DOMAIN: self.ml_opset}


def target_for(min_onnxruntime: str) -> OnnxTarget:
    """The ONNX versions to emit for a profile's ``min_onnxruntime`` (e.g. ``"1.17"``)."""
    parts = tuple(int(p) for p in min_onnxruntime.split(".")[:2])
    if parts < min(_ORT_TABLE):
        raise ProfileError(
            f"min_onnxruntime {min_onnxruntime} is too old: edgefleet packs for onnxruntime "
            f"{'.'.join(map(str, min(_ORT_TABLE)))} or newer"
        )
    key = max(k for k in _ORT_TABLE if k <= parts)
    opset, ml_opset, ir = _ORT_TABLE[key]
    # Never claim more than the installed onnx package knows how to check.
    opset = min(opset, onnx.defs.onnx_opset_version())
    ir = min(ir, onnx.IR_VERSION)
    return OnnxTarget(min_onnxruntime, opset, ml_opset, ir)


def opsets(model: onnx.ModelProto) -> dict[str, int]:
    """``{domain: version}`` with the default domain spelt ``"ai.onnx"``."""
    out: dict[str, int] = {}
    for entry in model.opset_import:
        domain = entry.domain or "ai.onnx"
        out[domain] = max(out.get(domain, 0), int(entry.version))
    return out


def normalise_opsets(model: onnx.ModelProto, target: OnnxTarget) -> onnx.ModelProto:
    """One opset_import per domain, opsets within ``target``, IR version readable by it."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    versions: dict[str, int] = {}
    for entry in model.opset_import:
        versions[entry.domain] = max(versions.get(entry.domain, 0), int(entry.version))
    if versions.get("", 0) > target.opset:
        out = _convert_default_opset(out, versions[""], target)
        versions[""] = target.opset
    if versions.get(ML_DOMAIN, 0) > target.ml_opset:
        raise UnsupportedModelError(
            f"the model needs ai.onnx.ml opset {versions[ML_DOMAIN]}, but onnxruntime "
            f"{target.onnxruntime} implements {target.ml_opset}"
        )
    del out.opset_import[:]
    for domain in sorted(versions):
        out.opset_import.append(helper.make_opsetid(domain, versions[domain]))
    needed = helper.find_min_ir_version_for(list(out.opset_import), ignore_unknown=True)
    out.ir_version = max(min(out.ir_version, target.ir_version), needed)
    if out.ir_version > target.ir_version:
        raise UnsupportedModelError(
            f"the model needs ONNX IR version {out.ir_version}, but onnxruntime "
            f"{target.onnxruntime} reads up to {target.ir_version}"
        )
    return out


def _convert_default_opset(
    model: onnx.ModelProto, current: int, target: OnnxTarget
) -> onnx.ModelProto:
    from onnx import version_converter

    # The version converter trips over duplicate imports; give it one per domain.
    seen: dict[str, int] = {}
    for entry in model.opset_import:
        seen[entry.domain] = max(seen.get(entry.domain, 0), int(entry.version))
    del model.opset_import[:]
    for domain, version in seen.items():
        model.opset_import.append(helper.make_opsetid(domain, version))
    try:
        return version_converter.convert_version(model, target.opset)
    except Exception as e:
        raise UnsupportedModelError(
            f"the model uses opset {current}; onnxruntime {target.onnxruntime} implements "
            f"up to {target.opset} and converting down failed: {str(e).splitlines()[0]}"
        ) from e


def op_counts(model: onnx.ModelProto) -> Counter[tuple[str, str]]:
    """``{(domain, op_type): count}`` over the graph and all subgraphs."""
    counts: Counter[tuple[str, str]] = Counter()

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            counts[(node.domain or "ai.onnx", node.op_type)] += 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                for sub in attr.graphs:
                    walk(sub)

    walk(model.graph)
    return counts


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: list[int]  # -1 for dynamic dimensions
    role: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.role is not None:
            d["role"] = self.role
        return d


@dataclass(frozen=True)
class OnnxSignature:
    """The single input and the role-tagged outputs of a packable model."""

    input: TensorSpec
    outputs: tuple[TensorSpec, ...]

    @property
    def task(self) -> str:
        roles = {o.role for o in self.outputs}
        return "classification" if roles & {"label", "probabilities"} else "regression"

    def output(self, role: str) -> TensorSpec | None:
        return next((o for o in self.outputs if o.role == role), None)


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        raise UnsupportedModelError(
            f"output {value.name!r} is a {kind}, not a tensor (convert with zipmap=False)"
        )
    tensor = value.type.tensor_type
    dtype = _DTYPES.get(tensor.elem_type, f"elem_type {tensor.elem_type}")
    shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
    return TensorSpec(value.name, dtype, shape)


def describe_io(model: onnx.ModelProto) -> OnnxSignature:
    """Input spec and outputs with roles; refuses graphs that are not one 2-D float32 input."""
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise UnsupportedModelError(
            f"edgefleet packs models with one input, this one has {len(inputs)}"
        )
    spec = _spec(inputs[0])
    if spec.dtype != "float32" or len(spec.shape) != 2 or spec.shape[1] <= 0:
        raise UnsupportedModelError(
            f"input {spec.name!r} must be float32 of shape [N, features], "
            f"got {spec.dtype} {spec.shape}"
        )
    outputs = [_spec(o) for o in model.graph.output]
    roles: list[str | None] = []
    for o in outputs:
        if o.dtype in ("int64", "int32", "string") and len(o.shape) == 1:
            role: str | None = "label"
        elif o.name == "value" and o.dtype in ("float32", "float64") and len(o.shape) == 2:
            role = "value"  # several regression targets (convert.name_value_output)
        elif o.name == "score" and o.dtype in ("float32", "float64") and len(o.shape) == 1:
            role = "value"  # an outlier detector's score beside its label (convert.py)
        elif o.dtype in ("float32", "float64") and len(o.shape) == 2 and o.shape[1] != 1:
            role = "probabilities"
        elif o.dtype in ("float32", "float64") and (
            len(o.shape) == 1 or (len(o.shape) == 2 and o.shape[1] == 1)
        ):
            role = "value"
        else:
            role = None
        roles.append(role)
    for wanted in ("label", "probabilities", "value"):
        if roles.count(wanted) > 1:
            raise UnsupportedModelError(f"the model has several {wanted} outputs")
    if "value" in roles and ("label" in roles or "probabilities" in roles):
        # A [N, 1] float next to a label is a one-column score, not a regression value.
        roles = [
            None if r == "value" and o.name != "score" else r
            for o, r in zip(outputs, roles, strict=True)
        ]
    if not any(roles):
        raise UnsupportedModelError(
            "no output looks like a label, class probabilities or a regression value"
        )
    tagged = tuple(
        TensorSpec(o.name, o.dtype, [-1, *o.shape[1:]], r)
        for o, r in zip(outputs, roles, strict=True)
    )
    return OnnxSignature(TensorSpec(spec.name, spec.dtype, [-1, spec.shape[1]]), tagged)


def add_argmax_label(model: onnx.ModelProto, probabilities: str) -> onnx.ModelProto:
    """Append ``label = ArgMax(probabilities, axis=1)`` (int64, shape [N])."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    name = "label" if all(o.name != "label" for o in out.graph.output) else "label_argmax"
    out.graph.node.append(
        helper.make_node("ArgMax", [probabilities], [name], axis=1, keepdims=0, name=name)
    )
    out.graph.output.append(helper.make_tensor_value_info(name, TensorProto.INT64, [None]))
    return out


def gemm_to_matmul(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Rewrite ``Gemm(A, B, C)`` with constant B and alpha=beta=1, transA=0 as MatMul + Add.

    Returns the new model and how many nodes were rewritten.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    weights = {init.name: init for init in graph.initializer}
    new_nodes = []
    transposed: set[str] = set()
    rewritten = 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = (
            node.op_type == "Gemm"
            and (node.domain or "") == ""
            and attrs.get("transA", 0) == 0
            and float(attrs.get("alpha", 1.0)) == 1.0
            and float(attrs.get("beta", 1.0)) == 1.0
            and len(node.input) >= 2
            and node.input[1] in weights
        )
        if not plain:
            new_nodes.append(node)
            continue
        rewritten += 1
        # Unnamed nodes are legal, but the quantizer derives node names from ours.
        base = node.name or f"gemm_{rewritten}"
        b_name = node.input[1]
        if attrs.get("transB", 0):
            transposed.add(b_name)
            b = numpy_helper.to_array(weights[b_name]).T.copy()
            b_name = f"{b_name}_transposed_{rewritten}"
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(b), b_name))
        has_bias = len(node.input) >= 3 and node.input[2] != ""
        mm_out = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        new_nodes.append(
            helper.make_node("MatMul", [node.input[0], b_name], [mm_out], name=f"{base}_mm")
        )
        if has_bias:
            new_nodes.append(
                helper.make_node(
                    "Add", [mm_out, node.input[2]], [node.output[0]], name=f"{base}_add"
                )
            )
    del graph.node[:]
    graph.node.extend(new_nodes)
    # Drop weights only the rewritten Gemms used (their transposed copies replace them).
    used = {name for node in graph.node for name in node.input}
    used |= {o.name for o in graph.output}
    kept = [i for i in graph.initializer if i.name in used or i.name not in transposed]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return out, rewritten
