"""Open Inference Protocol v2 (KServe / Triton) JSON <-> numpy, for one :class:`LoadedModel`.

Pure functions, no I/O. Request decoding follows the OIP v2 REST spec:
``{"id"?, "parameters"?, "inputs": [{"name", "shape", "datatype", "parameters"?,
"data"}], "outputs"?: [{"name", "parameters"?}]}`` with ``data`` flat in
row-major order or nested to match ``shape``.

Decisions where the spec leaves room (documented in docs/agent-endpoint.md):

- Unknown ``parameters`` are ignored. The binary tensor extension
  (``binary_data_size`` on an input, ``binary_data`` on an output,
  ``binary_data_output`` on the request) is :mod:`~edgefleet.agent.endpoint.binary`'s;
  here, a JSON-only body, an input declaring binary data is refused.
- Numbers are accepted for any numeric datatype and cast to the model's dtype
  (tables, format 1); a format-2 model's inputs must carry exactly the
  datatype of their ONNX type; booleans and strings are not numbers; integer
  datatypes refuse fractional data and values outside their range.
  ``NaN``/``Infinity`` literals parse, then the model's io schema decides
  (refused as ``non_finite`` unless the manifest allows them).
- Every response carries one extra ``BYTES`` output, ``prediction_id``, one id
  per row, to send late labels to ``/v2/models/{m}/feedback``.

Every refusal is an :class:`InputSchemaError` whose ``kind`` feeds telemetry:
``json``, ``request``, ``binary``, ``datatype``, ``data`` here, plus the
runtime's ``name``/``dtype``/``shape``/``features``/``non_finite``/``empty``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgefleet.agent.errors import InputSchemaError
from edgefleet.agent.model.runtime import LoadedModel, Prediction

PREDICTION_ID_OUTPUT = "prediction_id"
PLATFORM = "onnxruntime_onnx"
MAX_RANK = 8
MAX_FEEDBACK_ITEMS = 10_000

# io_schema dtype name -> OIP datatype.
OIP_DATATYPES: dict[str, str] = {
    "float32": "FP32",
    "float64": "FP64",
    "float16": "FP16",
    "int64": "INT64",
    "int32": "INT32",
    "int16": "INT16",
    "int8": "INT8",
    "uint64": "UINT64",
    "uint32": "UINT32",
    "uint16": "UINT16",
    "uint8": "UINT8",
    "bool": "BOOL",
    "string": "BYTES",
}
NUMPY_FOR_OIP: dict[str, np.dtype[Any]] = {
    oip: np.dtype(object) if name == "string" else np.dtype(name)
    for name, oip in OIP_DATATYPES.items()
}

BINARY_REFUSAL = (
    "binary_data_size needs the binary tensor extension's Inference-Header-Content-Length "
    "header; without it the body is JSON only"
)


def _bad(message: str, kind: str = "request") -> InputSchemaError:
    return InputSchemaError(message, kind=kind)


def parse_json_body(body: bytes | bytearray) -> Any:
    """The JSON document of ``body``; InputSchemaError(kind="json") if it is not JSON."""
    try:
        return json.loads(body)
    except RecursionError as e:
        raise _bad("request body is not valid JSON: nested too deeply", "json") from e
    except ValueError as e:  # includes JSONDecodeError and UnicodeDecodeError
        raise _bad(f"request body is not valid JSON: {e}", "json") from e


def _check_parameters(raw: Any, where: str, binary_keys: Sequence[str]) -> None:
    if raw is None:
        return
    if type(raw) is not dict:
        raise _bad(f"{where} 'parameters' must be an object")
    for key in binary_keys:
        value = raw.get(key)
        if value is not None and value is not False:
            raise _bad(BINARY_REFUSAL, "binary")


def shape_of(raw: Any, name: str) -> list[int]:
    # [] is a scalar (a sample rate, a gain): format-2 models may declare them.
    if type(raw) is not list or len(raw) > MAX_RANK:
        raise _bad(f"input {name!r}: 'shape' must be a list of 0 to {MAX_RANK} integers")
    for dim in raw:
        if type(dim) is not int or dim < 0:
            raise _bad(f"input {name!r}: 'shape' must hold non-negative integers, got {dim!r}")
    return raw


def _numbers_array(data: list[Any], datatype: str, name: str) -> np.ndarray:
    try:
        arr = np.array(data)
    except (ValueError, TypeError, OverflowError, RecursionError) as e:
        raise _bad(f"input {name!r}: 'data' is not a rectangular array of numbers", "data") from e
    kind = arr.dtype.kind
    if datatype == "BOOL":
        if kind != "b" and arr.size:
            raise _bad(f"input {name!r}: datatype BOOL needs true/false values", "data")
        return arr.astype(np.bool_)
    if kind in "iuf" and _holds_bool(data):
        # numpy turns [1.5, true] into [1.5, 1.0]: a JSON true is never a number.
        raise _bad(f"input {name!r}: datatype {datatype} needs numbers, got true/false", "data")
    if kind in "iu":
        target = NUMPY_FOR_OIP[datatype]
        if target.kind in "iu" and arr.size:
            # A cast would wrap silently (300 as UINT8 is 44): out of range is an error.
            info = np.iinfo(target)
            low, high = int(arr.min()), int(arr.max())
            if low < info.min or high > info.max:
                bad = low if low < info.min else high
                raise _bad(f"input {name!r}: {bad} is out of range for datatype {datatype}", "data")
        return arr
    if kind == "f" and datatype.startswith("FP"):
        return arr
    if kind == "f":
        raise _bad(
            f"input {name!r}: datatype {datatype} needs integers, got floating-point numbers",
            "data",
        )
    if kind == "b":
        raise _bad(f"input {name!r}: datatype {datatype} needs numbers, got true/false", "data")
    if arr.size == 0 and kind != "O":
        return arr.astype(np.float64)
    raise _bad(f"input {name!r}: datatype {datatype} needs numbers in 'data'", "data")


_is_bool = bool.__instancecheck__


def _holds_bool(data: list[Any]) -> bool:
    """Any JSON true/false among the numbers of a (nested) list (a C-speed scan per level)."""
    if not data:
        return False
    if type(data[0]) is list:
        return any(_holds_bool(row) for row in data)
    return any(map(_is_bool, data))


def datatype_of(raw: Mapping[str, Any], name: str) -> str:
    datatype = raw.get("datatype")
    if datatype not in NUMPY_FOR_OIP:
        raise _bad(
            f"input {name!r}: datatype {datatype!r} is not one of {', '.join(NUMPY_FOR_OIP)}",
            "datatype",
        )
    return str(datatype)


def decode_tensor(raw: Any, index: int) -> tuple[str, np.ndarray]:
    """One request input as ``(name, array shaped as declared)``."""
    if type(raw) is not dict:
        raise _bad(f"inputs[{index}] must be an object")
    name = raw.get("name")
    if type(name) is not str:
        raise _bad(f"inputs[{index}]: 'name' must be a string")
    _check_parameters(raw.get("parameters"), f"input {name!r}", ("binary_data_size",))
    datatype = datatype_of(raw, name)
    shape = shape_of(raw.get("shape"), name)
    data = raw.get("data")
    if type(data) is not list:
        raise _bad(f"input {name!r}: 'data' must be a list (JSON tensors only)", "data")
    if datatype == "BYTES":
        arr = _strings_array(data, name)
    else:
        arr = _numbers_array(data, datatype, name)
        target = NUMPY_FOR_OIP[datatype]
        if arr.dtype != target:
            with np.errstate(over="ignore", invalid="ignore"):
                arr = arr.astype(target)
    want = math.prod(shape)
    if arr.size != want:
        raise _bad(
            f"input {name!r}: 'data' has {arr.size} values but shape {shape} needs {want}", "data"
        )
    if list(arr.shape) != shape:
        if arr.ndim != 1:
            raise _bad(
                f"input {name!r}: nested 'data' has shape {list(arr.shape)}, not {shape}", "data"
            )
        arr = arr.reshape(shape)
    return name, arr


def _strings_array(data: list[Any], name: str) -> np.ndarray:
    try:
        arr = np.array(data, dtype=object)
    except (ValueError, TypeError, RecursionError) as e:
        raise _bad(f"input {name!r}: 'data' is not a rectangular array of strings", "data") from e
    for value in arr.flat:
        if type(value) is not str:
            raise _bad(f"input {name!r}: datatype BYTES needs strings in 'data'", "data")
    return arr


@dataclass(frozen=True, slots=True)
class InferCall:
    """A decoded inference request, ready for :func:`run_infer`."""

    request_id: str | None
    feeds: dict[str, np.ndarray]
    outputs: tuple[int, ...] | None  # indices into the model outputs; -1 = prediction_id


def decode_infer_request(body: bytes, model: LoadedModel) -> InferCall:
    return decode_infer_doc(parse_json_body(body), model)


TensorDecoder = Callable[[Any, int], tuple[str, np.ndarray]]


def decode_infer_doc(
    doc: Any, model: LoadedModel, decode: TensorDecoder = decode_tensor
) -> InferCall:
    """A parsed request; ``decode`` turns ``inputs[i]`` into ``(name, array)`` (the binary
    extension passes one that reads binary tensors)."""
    if type(doc) is not dict:
        raise _bad("request body must be a JSON object with 'inputs'")
    request_id = doc.get("id")
    if request_id is not None and type(request_id) is not str:
        raise _bad("'id' must be a string")
    _check_parameters(doc.get("parameters"), "request", ())
    raw_inputs = doc.get("inputs")
    if type(raw_inputs) is not list or not raw_inputs:
        raise _bad("'inputs' must be a non-empty list of tensors")
    feeds: dict[str, np.ndarray] = {}
    for i, raw in enumerate(raw_inputs):
        name, arr = decode(raw, i)
        if name in feeds:
            raise _bad(f"input {name!r} is given twice", "name")
        if model.schema.io is not None:
            _check_datatype(model, name, raw["datatype"])
        feeds[name] = arr
    outputs = _requested_outputs(doc.get("outputs"), model)
    return InferCall(request_id, feeds, outputs)


def _check_datatype(model: LoadedModel, name: str, datatype: str) -> None:
    """io schema v2 models: the OIP datatype must be the input's ONNX type, no casting."""
    spec = model.schema.io.input(name) if model.schema.io is not None else None
    if spec is not None and OIP_DATATYPES[spec.dtype] != datatype:
        raise _bad(
            f"input {name!r}: datatype {datatype} does not match the model's "
            f"{OIP_DATATYPES[spec.dtype]}",
            "datatype",
        )


def _requested_outputs(raw: Any, model: LoadedModel) -> tuple[int, ...] | None:
    if raw is None:
        return None
    if type(raw) is not list:
        raise _bad("'outputs' must be a list")
    indices: list[int] = []
    for i, item in enumerate(raw):
        if type(item) is not dict or type(item.get("name")) is not str:
            raise _bad(f"outputs[{i}] must be an object with a string 'name'")
        _check_parameters(item.get("parameters"), f"output {item['name']!r}", ())
        name = item["name"]
        if name == PREDICTION_ID_OUTPUT:
            indices.append(-1)
        elif name in model.output_names:
            indices.append(model.output_names.index(name))
        else:
            raise _bad(
                f"model {model.name!r} has no output {name!r} "
                f"(outputs: {', '.join([*model.output_names, PREDICTION_ID_OUTPUT])})",
                "name",
            )
    return tuple(dict.fromkeys(indices))


def run_infer(model: LoadedModel, call: InferCall) -> tuple[np.ndarray, Prediction]:
    """Validate and run; returns the validated primary input (for telemetry) and the prediction."""
    feeds = call.feeds
    if len(feeds) == 1 and len(model.input_names) == 1:
        ((name, arr),) = feeds.items()
        if name != model.input_names[0]:
            raise InputSchemaError(
                f"model {model.name!r} has no input named {name!r} "
                f"(inputs: {', '.join(model.input_names)})",
                kind="name",
            )
        X = model.validate(arr)
        return X, model.predict_validated(X)
    prediction = model.predict_inputs(feeds)
    from edgefleet.agent.model.tensors import drift_rows

    return drift_rows(model, feeds), prediction


_ENCODER_LENIENT = json.JSONEncoder(separators=(",", ":"))
_json_str = json.encoder.encode_basestring  # type: ignore[attr-defined]


# Values formatted per slice: a big batch never holds one Python object per value
# of a whole output at once (a float as an object and as text costs ~80 bytes).
_TEXT_SLICE = 16_384


def data_pieces(array: Any) -> list[bytes]:
    """The flat JSON array body (without brackets) of an output tensor, in encoded slices.

    float32 is written with 9 significant digits, which round-trips every
    float32 exactly and costs half of ``repr``; NaN/inf (not JSON) become null.
    """
    flat_arr = np.asarray(array).ravel()
    pieces: list[bytes] = []
    for start in range(0, max(len(flat_arr), 1), _TEXT_SLICE):
        chunk = flat_arr[start : start + _TEXT_SLICE]
        if start:
            pieces.append(b",")
        pieces.append(_slice_text(chunk).encode())
    return pieces


def _slice_text(arr: np.ndarray) -> str:
    kind = arr.dtype.kind
    flat = arr.tolist()
    if kind == "f":
        text = (
            ",".join([format(v, ".9g") for v in flat])
            if arr.dtype.itemsize == 4
            else ",".join(map(repr, flat))
        )
        if "n" in text:  # "nan" or "inf" slipped in: JSON has no such numbers
            text = ",".join(repr(v) if math.isfinite(v) else "null" for v in flat)
        return text
    if kind in "iu":
        return ",".join(map(str, flat))
    if kind == "b":
        return ",".join(["true" if v else "false" for v in flat])
    return ",".join([_json_str(v if isinstance(v, str) else str(v)) for v in flat])


def _shape_text(shape: tuple[int, ...]) -> str:
    return ",".join(map(str, shape))


class ResponseEncoder:
    """Writes OIP inference responses for one model; the constant parts are built once."""

    def __init__(self, model: LoadedModel) -> None:
        # Keeps only strings built from the model, never the model itself: the
        # endpoint caches encoders in a WeakKeyDictionary keyed by the model, and
        # a value holding its key kept every replaced model (its onnxruntime
        # session and thread pool) alive forever.
        self._head = (
            '{"model_name":'
            + _json_str(model.name)
            + ',"model_version":'
            + _json_str(str(model.version))
            + ',"outputs":['
        ).encode()
        self._outputs = [
            '{"name":'
            + _json_str(o.name)
            + ',"datatype":"'
            + OIP_DATATYPES[o.dtype_name]
            + '","shape":['
            for o in model.schema.outputs
        ]
        self._ids = '{"name":"' + PREDICTION_ID_OUTPUT + '","datatype":"BYTES","shape":['

    def _ids_part(self, ids: list[str]) -> list[bytes]:
        # Ids are [a-z0-9_] only: no escaping needed.
        pieces = [(self._ids + str(len(ids)) + '],"data":["').encode()]
        for start in range(0, len(ids), _TEXT_SLICE):
            if start:
                pieces.append(b'","')
            pieces.append('","'.join(ids[start : start + _TEXT_SLICE]).encode())
        pieces.append(b'"]}')
        return pieces

    def encode(self, prediction: Prediction, call: InferCall) -> bytes:
        outputs = prediction.outputs
        selected = range(len(outputs)) if call.outputs is None else call.outputs
        pieces: list[bytes] = [self._head]
        for n, i in enumerate(selected):
            if n:
                pieces.append(b",")
            if i < 0:
                pieces += self._ids_part(prediction.ids)
            else:
                out = outputs[i]
                pieces.append((self._outputs[i] + _shape_text(out.shape) + '],"data":[').encode())
                pieces += data_pieces(out)
                pieces.append(b"]}")
        if call.outputs is None:
            if len(pieces) > 1:
                pieces.append(b",")
            pieces += self._ids_part(prediction.ids)
        pieces.append(
            b"]}"
            if call.request_id is None
            else ('],"id":' + _json_str(call.request_id) + "}").encode()
        )
        return b"".join(pieces)


def encode_infer_response(model: LoadedModel, prediction: Prediction, call: InferCall) -> bytes:
    return ResponseEncoder(model).encode(prediction, call)


def model_metadata(model: LoadedModel) -> dict[str, Any]:
    """The OIP model metadata object (io schema in OIP datatypes; -1 = any size)."""
    schema = model.schema
    outputs = [
        {"name": o.name, "datatype": OIP_DATATYPES[o.dtype_name], "shape": list(o.shape)}
        for o in schema.outputs
    ]
    outputs.append({"name": PREDICTION_ID_OUTPUT, "datatype": "BYTES", "shape": [-1]})
    return {
        "name": model.name,
        "versions": [str(model.version)],
        "platform": PLATFORM,
        "inputs": [
            {"name": i.name, "datatype": OIP_DATATYPES[i.dtype_name], "shape": list(i.shape)}
            for i in schema.inputs
        ],
        "outputs": outputs,
        "parameters": _metadata_parameters(model),
    }


def _metadata_parameters(model: LoadedModel) -> dict[str, Any]:
    """Task and feature count; for format-2 models also class names, roles and batch axes."""
    params: dict[str, Any] = {"task": model.task, "n_features": model.n_features or 0}
    if model.task in ("classifier", "classification") and model.labels is not None:
        # The classification extension: an output may ask for the top K of these.
        params["class_count"] = len(model.labels)
    io_schema = model.schema.io
    if io_schema is None:
        return params
    if model.labels is not None:
        params["class_names"] = list(model.labels)
    params["output_roles"] = {o.name: o.role for o in io_schema.outputs}
    params["batch_axes"] = {i.name: i.batch_axis for i in io_schema.inputs}
    if io_schema.state:
        params["state"] = {p.input: p.output for p in io_schema.state}
    return params


def encode_json(doc: Mapping[str, Any]) -> bytes:
    return _ENCODER_LENIENT.encode(doc).encode()


@dataclass(frozen=True, slots=True)
class FeedbackItem:
    prediction_id: str
    label: Any


def decode_feedback(body: bytes | bytearray, model: LoadedModel) -> list[FeedbackItem]:
    """``{"prediction_id", "label"}`` or ``{"feedback": [{...}, ...]}``; labels checked."""
    doc = parse_json_body(body)
    if type(doc) is not dict:
        raise _bad("feedback must be a JSON object")
    if "feedback" in doc:
        raw_items = doc["feedback"]
        if type(raw_items) is not list or not raw_items:
            raise _bad("'feedback' must be a non-empty list")
        if len(raw_items) > MAX_FEEDBACK_ITEMS:
            raise _bad(f"at most {MAX_FEEDBACK_ITEMS} feedback items per request")
    else:
        raw_items = [doc]
    items: list[FeedbackItem] = []
    labels = model.labels
    for i, raw in enumerate(raw_items):
        if type(raw) is not dict:
            raise _bad(f"feedback[{i}] must be an object")
        pid = raw.get("prediction_id")
        if type(pid) is not str or not pid or len(pid) > 64:
            raise _bad(f"feedback[{i}]: 'prediction_id' must be a prediction id string")
        if "label" not in raw:
            raise _bad(f"feedback[{i}]: 'label' is missing")
        label = raw["label"]
        if labels is not None:
            if type(label) not in (int, str) or label not in labels:
                raise _bad(
                    f"feedback[{i}]: label {label!r} is not one of the model's labels", "label"
                )
        elif type(label) not in (int, float) or not math.isfinite(label):
            raise _bad(f"feedback[{i}]: 'label' must be a finite number", "label")
        items.append(FeedbackItem(pid, label))
    return items
