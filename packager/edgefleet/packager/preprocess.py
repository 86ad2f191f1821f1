"""``pack --preprocess image:...|audio:...``: input preprocessing folded into the signed graph.

``image:layout=nhwc,dtype=uint8,mean=M1:M2:M3,std=S1:S2:S3[,input=NAME]``
prepends ``Cast -> Transpose (NHWC only) -> Sub(mean) -> Div(std)`` to the
model's image input (``[N, C, H, W]`` float, the only rank-4 input unless
``input=`` names one), so a device sends raw camera bytes as a binary
``uint8`` tensor in its own layout. The input keeps its name; its dtype and
shape become the raw ones. ``mean`` and ``std`` are in the units of the raw
pixels (0..255 for uint8), one value per channel or one for all.

Fidelity is checked on the combined graph: the float reference samples are
turned into raw pixels (``round(x * std + mean)``, clipped to the dtype's
range), the combined graph runs on those, and the registered graph on the
same pixels normalised in numpy; the raw pixels then become the bundle's
smoke, reference and drift samples.

``audio:dtype=int16[,scale=32768][,input=NAME]`` does the same for PCM: it
prepends ``Cast -> Div(scale)`` to the model's float32 audio input (the only
float32 input with a batch axis unless ``input=`` names one), so a device
sends its int16 samples as they come off the microphone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgefleet.core.io_schema import IoSchema, TensorSpec
from edgefleet.packager.errors import DataFileError

RAW_DTYPES = {
    "uint8": TensorProto.UINT8,
    "uint16": TensorProto.UINT16,
    "float32": TensorProto.FLOAT,
}
_SUFFIX = "__normalized"


@dataclass(frozen=True)
class ImagePreprocess:
    layout: str
    dtype: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "image", **dataclasses.asdict(self)}


def _floats(raw: str, key: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in raw.split(":"))
    except ValueError as e:
        raise DataFileError(f"--preprocess {key}={raw!r}: numbers separated by ':'") from e
    if not values or not all(np.isfinite(values)):
        raise DataFileError(f"--preprocess {key}={raw!r}: finite numbers separated by ':'")
    return values


@dataclass(frozen=True)
class AudioPreprocess:
    dtype: str
    scale: float
    input: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "audio", **dataclasses.asdict(self)}


AUDIO_DTYPES = {"int16": TensorProto.INT16, "int32": TensorProto.INT32}
_KEYS = {"image": ("layout", "dtype", "mean", "std", "input"), "audio": ("dtype", "scale", "input")}


def parse_preprocess(spec: str) -> ImagePreprocess | AudioPreprocess:
    """``image:layout=nhwc,dtype=uint8,mean=...,std=...`` or ``audio:dtype=int16``;
    DataFileError names what is wrong."""
    kind, _, rest = spec.partition(":")
    if kind not in _KEYS:
        raise DataFileError(f"--preprocess {spec!r}: 'image:...' or 'audio:...'")
    fields: dict[str, str] = {}
    for part in filter(None, rest.split(",")):
        key, eq, value = part.partition("=")
        if not eq or key not in _KEYS[kind] or key in fields:
            raise DataFileError(
                f"--preprocess: {part!r} is not one of " + ", ".join(f"{k}=" for k in _KEYS[kind])
            )
        fields[key] = value
    if kind == "audio":
        dtype = fields.get("dtype", "int16")
        if dtype not in AUDIO_DTYPES:
            raise DataFileError(f"--preprocess dtype={dtype!r}: one of {', '.join(AUDIO_DTYPES)}")
        scale = _floats(fields.get("scale", "32768"), "scale")[0]
        if scale <= 0:
            raise DataFileError("--preprocess scale must be positive")
        return AudioPreprocess(dtype, scale, fields.get("input"))
    layout = fields.get("layout", "nchw")
    dtype = fields.get("dtype", "uint8")
    if layout not in ("nhwc", "nchw"):
        raise DataFileError(f"--preprocess layout={layout!r}: nhwc or nchw")
    if dtype not in RAW_DTYPES:
        raise DataFileError(f"--preprocess dtype={dtype!r}: one of {', '.join(RAW_DTYPES)}")
    mean = _floats(fields.get("mean", "0"), "mean")
    std = _floats(fields.get("std", "1"), "std")
    if any(s == 0 for s in std):
        raise DataFileError("--preprocess std must not be 0")
    return ImagePreprocess(layout, dtype, mean, std, fields.get("input"))


def _pick(candidates: list[TensorSpec], wanted: str | None, what: str) -> TensorSpec:
    """The one candidate input (named ``wanted`` when given)."""
    if wanted is not None:
        candidates = [s for s in candidates if s.name == wanted]
    if len(candidates) != 1:
        raise DataFileError(
            f"--preprocess {what}"
            + (f" named {wanted!r}" if wanted else " (name it with input=NAME)")
        )
    return candidates[0]


def _target(schema: IoSchema, pre: ImagePreprocess) -> TensorSpec:
    spec = _pick(
        [s for s in schema.inputs if s.rank == 4 and s.dtype == "float32"],
        pre.input,
        "image needs one float32 [N, C, H, W] input",
    )
    if spec.batch_axis != 0 or spec.fixed(1) is None:
        raise DataFileError(
            f"--preprocess image: input {spec.name!r} must be [N, C, H, W] with a fixed C"
        )
    return spec


def _per_channel(values: tuple[float, ...], channels: int, key: str) -> np.ndarray:
    if len(values) not in (1, channels):
        raise DataFileError(
            f"--preprocess {key} has {len(values)} values; the input has {channels} channels"
        )
    arr = np.array(values if len(values) == channels else values * channels, np.float32)
    return arr.reshape(1, channels, 1, 1)


@dataclass(frozen=True)
class Folded:
    model: onnx.ModelProto
    schema: IoSchema
    raw_samples: dict[str, np.ndarray]  # what the combined graph takes
    float_samples: dict[str, np.ndarray]  # the same pixels normalised, for the registered graph


def _rewire(model: onnx.ModelProto, name: str, inner: str) -> None:
    """Every use of input ``name`` (subgraphs too) reads ``inner`` instead."""
    for node in model.graph.node:
        node.input[:] = [inner if i == name else i for i in node.input]
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                for sub in attr.g.node:
                    sub.input[:] = [inner if i == name else i for i in sub.input]


def _prepend(
    model: onnx.ModelProto, nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto]
) -> None:
    graph = model.graph
    graph.initializer.extend(inits)
    old_nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + old_nodes)


def _retype(
    model: onnx.ModelProto,
    schema: IoSchema,
    spec: TensorSpec,
    dtype: str,
    elem: int,
    shape: list[Any],
) -> IoSchema:
    for value in model.graph.input:
        if value.name == spec.name:
            value.CopyFrom(helper.make_tensor_value_info(spec.name, elem, shape))
    new_spec = dataclasses.replace(spec, dtype=dtype, shape=tuple(shape))
    return dataclasses.replace(
        schema, inputs=tuple(new_spec if s.name == spec.name else s for s in schema.inputs)
    )


def fold_audio(
    model: onnx.ModelProto,
    schema: IoSchema,
    samples: dict[str, np.ndarray],
    pre: AudioPreprocess,
) -> Folded:
    """PCM in: ``Cast -> Div(scale)`` before the float32 audio input."""
    spec = _pick(
        [s for s in schema.inputs if s.dtype == "float32" and s.batch_axis is not None],
        pre.input,
        "audio needs one float32 batched input",
    )
    name, inner = spec.name, spec.name + _SUFFIX
    _rewire(model, name, inner)
    scale = np.array(pre.scale, np.float32)
    _prepend(
        model,
        [
            helper.make_node("Cast", [name], [name + "__f"], to=TensorProto.FLOAT),
            helper.make_node("Div", [name + "__f", name + "__scale"], [inner]),
        ],
        [numpy_helper.from_array(scale, name + "__scale")],
    )
    shape = list(spec.shape)
    new_schema = _retype(model, schema, spec, pre.dtype, AUDIO_DTYPES[pre.dtype], shape)
    info = np.iinfo(np.dtype(pre.dtype))
    raw = np.clip(np.rint(np.asarray(samples[name], np.float64) * pre.scale), info.min, info.max)
    raw = raw.astype(pre.dtype)
    normalised = (raw.astype(np.float32) / scale).astype(np.float32)
    return Folded(model, new_schema, {**samples, name: raw}, {**samples, name: normalised})


def fold(
    model: onnx.ModelProto,
    schema: IoSchema,
    samples: dict[str, np.ndarray],
    pre: ImagePreprocess | AudioPreprocess,
) -> Folded:
    """Prepend the preprocessing nodes; the samples for both graphs (module docstring)."""
    if isinstance(pre, AudioPreprocess):
        return fold_audio(model, schema, samples, pre)
    spec = _target(schema, pre)
    channels = spec.fixed(1)
    assert channels is not None
    mean = _per_channel(pre.mean, channels, "mean")
    std = _per_channel(pre.std, channels, "std")
    name, inner = spec.name, spec.name + _SUFFIX
    _rewire(model, name, inner)
    n, c, h, w = spec.shape
    raw_shape = [n, h, w, c] if pre.layout == "nhwc" else [n, c, h, w]
    nodes = [helper.make_node("Cast", [name], [name + "__f"], to=TensorProto.FLOAT)]
    current = name + "__f"
    if pre.layout == "nhwc":
        nodes.append(helper.make_node("Transpose", [current], [name + "__t"], perm=[0, 3, 1, 2]))
        current = name + "__t"
    nodes += [
        helper.make_node("Sub", [current, name + "__mean"], [name + "__s"]),
        helper.make_node("Div", [name + "__s", name + "__std"], [inner]),
    ]
    _prepend(
        model,
        nodes,
        [
            numpy_helper.from_array(mean, name + "__mean"),
            numpy_helper.from_array(std, name + "__std"),
        ],
    )
    new_schema = _retype(model, schema, spec, pre.dtype, RAW_DTYPES[pre.dtype], raw_shape)
    x = np.asarray(samples[name], np.float64)
    pixels = x * std + mean
    if pre.dtype != "float32":
        info = np.iinfo(np.dtype(pre.dtype))
        pixels = np.clip(np.rint(pixels), info.min, info.max)
    raw = pixels.astype(pre.dtype)
    normalised = ((raw.astype(np.float32) - mean) / std).astype(np.float32)
    if pre.layout == "nhwc":
        raw = np.ascontiguousarray(raw.transpose(0, 2, 3, 1))
    return Folded(
        model,
        new_schema,
        {**samples, name: raw},
        {**samples, name: normalised},
    )
