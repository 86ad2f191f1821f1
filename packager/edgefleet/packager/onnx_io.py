"""Any ONNX graph onnxruntime can run: its io schema v2, from the graph and the declarations.

Registration of a model that is not a table goes through here:

- :func:`inline_external_data` checks every external-data ``location`` of the
  file (relative, inside the model's own folder, an existing regular file)
  and loads the data into the model, so the registry and every bundle hold
  one self-contained ``model.onnx``;
- :func:`check_runs` loads the graph in onnxruntime (opsets, subgraphs,
  kernels): a file onnxruntime refuses is refused here with one line;
- :func:`graph_io` reads the inputs and outputs (name, element type, fixed
  and symbolic dimensions);
- :func:`declare_schema` applies what the user declared (``--task``,
  ``--output-role``, ``--state``, ``--batch-axis``) and never guesses a role:
  an output nobody declared is ``raw``.

Default batch axis of an input or output (see docs/registry.md): 0 when the
first dimension is dynamic or fixed to 1 (a fixed-batch graph the agent feeds
one sample at a time), none for scalars, for other fixed first dimensions
and for state tensors; ``--batch-axis NAME=K|none`` overrides it for any
input or output.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from edgefleet.core.io_schema import OUTPUT_ROLES, TASKS, Dim, IoSchema, StatePair, TensorSpec
from edgefleet.packager.errors import UnsupportedModelError

# ONNX TensorProto element types -> io schema dtype names.
ELEM_TYPES: dict[int, str] = {
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.INT16: "int16",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.UINT16: "uint16",
    onnx.TensorProto.UINT32: "uint32",
    onnx.TensorProto.UINT64: "uint64",
    onnx.TensorProto.BOOL: "bool",
    onnx.TensorProto.STRING: "string",
}
# Roles a task gives its only output when the user names none (declared, not guessed).
_SINGLE_OUTPUT_ROLE = {
    "classifier": "probabilities",
    "regressor": "value",
    "anomaly": "score",
    "detector": "boxes",
    "embedding": "embedding",
}
MAX_INLINE_BYTES = 2**31 - 1  # protobuf's limit for one serialised model


@dataclass(frozen=True)
class Declarations:
    """What ``registry register`` was told about an ONNX file (all optional)."""

    task: str | None = None
    class_names: tuple[str, ...] | None = None
    output_roles: Mapping[str, str] | None = None
    state: Sequence[tuple[str, str]] = ()
    batch_axes: Mapping[str, int | None] | None = None

    @property
    def shapes_io(self) -> bool:
        """Declarations that only the io schema v2 path can honour."""
        return bool(self.output_roles or self.state or self.batch_axes)


def _external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    return [t for t in _get_all_tensors(model) if uses_external_data(t)]


def external_locations(model: onnx.ModelProto) -> list[str]:
    """Every external-data ``location`` the model names (subgraphs included)."""
    out = []
    for tensor in _external_tensors(model):
        entries = {e.key: e.value for e in tensor.external_data}
        out.append(entries.get("location", ""))
    return out


def check_location(location: str, folder: Path, label: str) -> Path:
    """The file ``location`` names inside ``folder``, or UnsupportedModelError."""
    if not location or location.startswith(("/", "\\")) or os.path.isabs(location):
        raise UnsupportedModelError(
            f"{label}: external data location {location!r} is not a relative path "
            "inside the model's folder"
        )
    parts = location.replace("\\", "/").split("/")
    if ".." in parts:
        raise UnsupportedModelError(
            f"{label}: external data location {location!r} climbs out of the model's folder"
        )
    root = folder.resolve()
    path = (root / location).resolve()
    if root != path and root not in path.parents:
        raise UnsupportedModelError(
            f"{label}: external data location {location!r} points outside the model's folder"
        )
    if not path.is_file():
        raise UnsupportedModelError(
            f"{label}: external data file {location!r} does not exist next to the model"
        )
    return path


def inline_external_data(model: onnx.ModelProto, folder: Path, label: str) -> bool:
    """Check and load external data into ``model`` (in place); True when there was some."""
    tensors = _external_tensors(model)
    if not tensors:
        return False
    for location in external_locations(model):
        check_location(location, folder, label)
    from onnx.external_data_helper import load_external_data_for_model

    try:
        load_external_data_for_model(model, str(folder.resolve()))
    except Exception as e:  # onnx raises ValueError/OSError with long texts
        raise UnsupportedModelError(f"{label}: cannot read its external data: {_line(e)}") from e
    if model.ByteSize() > MAX_INLINE_BYTES:
        raise UnsupportedModelError(f"{label}: the model with its external data is over 2 GiB")
    return True


def _line(e: BaseException) -> str:
    text = str(e).strip()
    for marker in ("] : ", " : FAIL : ", " : INVALID_GRAPH : ", " : INVALID_ARGUMENT : "):
        # onnxruntime prefixes "[ONNXRuntimeError] : 1 : FAIL : ..."; keep the reason.
        if marker in text:
            text = text.rsplit(marker, 1)[-1]
    first = text.splitlines()[0] if text else type(e).__name__
    return first[:300]


def check_runs(data: bytes, label: str) -> None:
    """Load the graph in onnxruntime (every node needs a kernel); one-line error otherwise."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's exception types are not a stable API
        raise UnsupportedModelError(
            f"onnxruntime {ort.__version__} cannot load {label}: {_line(e)}"
        ) from e


@dataclass(frozen=True)
class GraphTensor:
    name: str
    dtype: str
    shape: tuple[Dim, ...]


def _tensor(value: onnx.ValueInfoProto, what: str) -> GraphTensor:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        raise UnsupportedModelError(
            f"{what} {value.name!r} is a {kind}, not a tensor (edgefleet carries tensors only)"
        )
    tensor = value.type.tensor_type
    dtype = ELEM_TYPES.get(tensor.elem_type)
    if dtype is None:
        name = onnx.TensorProto.DataType.Name(tensor.elem_type)
        raise UnsupportedModelError(f"{what} {value.name!r} has element type {name}")
    dims: list[Dim] = []
    for d in tensor.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(d.dim_param[:64])
        else:
            dims.append(None)
    return GraphTensor(value.name, dtype, tuple(dims))


def graph_io(model: onnx.ModelProto) -> tuple[list[GraphTensor], list[GraphTensor]]:
    """The graph's real inputs (initializers excluded) and outputs."""
    initializers = {i.name for i in model.graph.initializer}
    inputs = [_tensor(v, "input") for v in model.graph.input if v.name not in initializers]
    outputs = [_tensor(v, "output") for v in model.graph.output]
    if not inputs:
        raise UnsupportedModelError("the graph has no inputs")
    return inputs, outputs


def _default_batch_axis(t: GraphTensor) -> int | None:
    if not t.shape:
        return None
    first = t.shape[0]
    return 0 if not isinstance(first, int) or first == 1 else None


def _names(kind: str, wanted: Sequence[str], have: Sequence[str], option: str) -> None:
    unknown = [n for n in wanted if n not in have]
    if unknown:
        raise UnsupportedModelError(
            f"{option} names unknown {kind} {', '.join(map(repr, unknown))} "
            f"(the model's {kind}s: {', '.join(have)})"
        )


def declare_schema(model: onnx.ModelProto, decl: Declarations, task: str) -> IoSchema:
    """The io schema v2 of ``model`` under ``decl`` (``task`` already decided)."""
    if task not in TASKS:
        raise UnsupportedModelError(f"--task must be one of {', '.join(TASKS)}, not {task!r}")
    inputs, outputs = graph_io(model)
    in_names = [t.name for t in inputs]
    out_names = [t.name for t in outputs]
    roles = dict(decl.output_roles or {})
    axes = dict(decl.batch_axes or {})
    _names("output", list(roles), out_names, "--output-role")
    _names("input", [a for a, _ in decl.state], in_names, "--state")
    _names("output", [b for _, b in decl.state], out_names, "--state")
    _names("input or output", list(axes), [*in_names, *out_names], "--batch-axis")
    for name, role in roles.items():
        if role not in OUTPUT_ROLES:
            raise UnsupportedModelError(
                f"--output-role {name}={role}: role must be one of {', '.join(OUTPUT_ROLES)}"
            )
    state_in = {a for a, _ in decl.state}
    state_out = {b for _, b in decl.state}
    if len(outputs) == 1 and not roles and task in _SINGLE_OUTPUT_ROLE:
        roles[out_names[0]] = _SINGLE_OUTPUT_ROLE[task]
    in_specs = []
    for t in inputs:
        axis = axes[t.name] if t.name in axes else _default_batch_axis(t)
        if t.name in state_in and t.name not in axes:
            axis = None
        if axis is not None and not 0 <= axis < len(t.shape):
            raise UnsupportedModelError(
                f"--batch-axis {t.name}={axis}: the input has {len(t.shape)} dimensions"
            )
        role = "state" if t.name in state_in else "data"
        in_specs.append(TensorSpec(t.name, t.dtype, t.shape, axis, role))
    out_specs = []
    for t in outputs:
        role = "state" if t.name in state_out else roles.get(t.name, "raw")
        axis = None if role == "state" else _default_batch_axis(t)
        if t.name in axes:
            axis = axes[t.name]
            if axis is not None and not 0 <= axis < len(t.shape):
                raise UnsupportedModelError(
                    f"--batch-axis {t.name}={axis}: the output has {len(t.shape)} dimensions"
                )
        out_specs.append(TensorSpec(t.name, t.dtype, t.shape, axis, role))
    return IoSchema(
        inputs=tuple(in_specs),
        outputs=tuple(out_specs),
        state=tuple(StatePair(a, b) for a, b in decl.state),
    )


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    """The model's ``metadata_props`` as a dict (later keys win)."""
    return {p.key: p.value for p in model.metadata_props}


def metadata_declarations(model: onnx.ModelProto) -> Declarations:
    """Task and class names a producer wrote into ``metadata_props``, when present.

    Keys read: ``edgefleet.task`` or ``task``; ``edgefleet.class_names``,
    ``class_names`` or ``labels`` (a JSON list or comma-separated text).
    """
    import json

    props = metadata(model)
    task = props.get("edgefleet.task") or props.get("task")
    raw = props.get("edgefleet.class_names") or props.get("class_names") or props.get("labels")
    names: tuple[str, ...] | None = None
    if raw:
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw.split(",")
        if isinstance(value, dict):  # {"0": "cat", ...} as some exporters write it
            value = [value[k] for k in sorted(value, key=lambda k: int(k) if k.isdigit() else k)]
        if isinstance(value, list):
            names = tuple(str(v).strip() for v in value)
    return Declarations(task=task if task in TASKS else None, class_names=names)
