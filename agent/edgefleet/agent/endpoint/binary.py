"""The binary tensor data extension of OIP v2 (Triton's), and its ``classification`` extension.

Pure over bytes, no sockets. A binary request is a JSON header of
``Inference-Header-Content-Length`` bytes followed by the raw tensors of the
inputs whose ``parameters.binary_data_size`` is set, in the order they are
listed; a response carries binary outputs the same way when the request asks
for them (``binary_data`` on an output, or ``binary_data_output`` on the
request, which is what tritonclient sends when no output is named).

Layout of each binary tensor: its elements in row-major order, little-endian;
``BOOL`` one byte (0 or 1); ``BYTES`` every element as a 4-byte little-endian
length followed by that many bytes of UTF-8.

Admission (docs/agent-endpoint.md): the head alone is checked first (header
length present, at most the body, the binary part within one request's
budget); then, once the JSON header is buffered and before any byte of the
binary part is read, :func:`declared_charge` prices what the header declares
(every binary input's ``shape x itemsize``, and the outputs for its batch) in
the same decoded tensor bytes as JSON requests. Declared sizes that disagree
with the shapes, or that do not add up to the binary part, are a 400 naming
the input.

``classification``: an output may ask for ``parameters.classification = K``
on a declared classifier; it then comes back as a ``BYTES`` tensor ``[N, K]``
of ``"score:index:label"`` strings, best first (``:label`` only when the model
names its classes).
"""

from __future__ import annotations

import json
import math
import struct
import sys
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgefleet.agent.endpoint.budget import STRING_ELEMENT_BYTES, tensor_bytes
from edgefleet.agent.endpoint.oip import (
    NUMPY_FOR_OIP,
    OIP_DATATYPES,
    PREDICTION_ID_OUTPUT,
    InferCall,
    data_pieces,
    datatype_of,
    decode_infer_doc,
    decode_tensor,
    parse_json_body,
    shape_of,
)
from edgefleet.agent.errors import InputSchemaError
from edgefleet.agent.model.runtime import LoadedModel, Prediction

HEADER_FIELD = "inference-header-content-length"
CLASSIFIER_TASKS = ("classifier", "classification")
_LENGTH = struct.Struct("<I")
_LITTLE_ENDIAN = sys.byteorder == "little"
_encode_str = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]


def _bad(message: str, kind: str = "request") -> InputSchemaError:
    return InputSchemaError(message, kind=kind)


def header_length(headers: Mapping[str, str], body_length: int) -> int | None:
    """The JSON header's length of a binary request (None: a JSON request); 400 if invalid."""
    raw = headers.get(HEADER_FIELD)
    if raw is None:
        return None
    raw = raw.strip()
    if not raw.isdigit() or not raw.isascii() or len(raw) > 18:
        raise _bad("Inference-Header-Content-Length must be a non-negative integer", "binary")
    length = int(raw)
    if length > body_length:
        raise _bad(
            f"Inference-Header-Content-Length {length} is larger than the body "
            f"of {body_length} bytes",
            "binary",
        )
    return length


def is_classifier(model: LoadedModel) -> bool:
    return model.task in CLASSIFIER_TASKS


# --- what a header declares --------------------------------------------------------------


def _binary_size(raw: Mapping[str, Any], name: str) -> int | None:
    params = raw.get("parameters")
    if type(params) is not dict or "binary_data_size" not in params:
        return None
    size = params["binary_data_size"]
    if type(size) is not int or size < 0:
        raise _bad(f"input {name!r}: 'binary_data_size' must be a non-negative integer", "binary")
    return size


def _header_doc(header: bytes) -> dict[str, Any]:
    doc = parse_json_body(header)
    if type(doc) is not dict or type(doc.get("inputs")) is not list or not doc["inputs"]:
        raise _bad("the JSON header must be an object with a non-empty 'inputs' list")
    return doc


def _declared_inputs(doc: Mapping[str, Any]) -> list[tuple[str, str, list[int], int]]:
    """``(name, datatype, shape, binary_data_size)`` of every binary input, checked."""
    found = []
    for i, raw in enumerate(doc["inputs"]):
        if type(raw) is not dict or type(raw.get("name")) is not str:
            raise _bad(f"inputs[{i}] must be an object with a string 'name'")
        name = raw["name"]
        size = _binary_size(raw, name)
        if size is None:
            continue
        datatype = datatype_of(raw, name)
        shape = shape_of(raw.get("shape"), name)
        if datatype != "BYTES":
            want = tensor_bytes(shape, NUMPY_FOR_OIP[datatype].itemsize)
            if size != want:
                raise _bad(
                    f"input {name!r}: binary_data_size is {size} bytes but {datatype} "
                    f"shape {shape} takes {want}",
                    "binary",
                )
        elif size < 4 * math.prod(shape):
            raise _bad(
                f"input {name!r}: binary_data_size {size} is too small for "
                f"{math.prod(shape)} BYTES elements",
                "binary",
            )
        found.append((name, datatype, shape, size))
    return found


def declared_charge(
    header: bytes, binary_bytes: int, *, row_bytes: int, max_batch_rows: int
) -> int:
    """Decoded tensor bytes a binary request declares: its binary inputs and its outputs.

    The JSON inputs inside the header are priced with the header itself at
    admission. Raises InputSchemaError (answered 400) when the declared sizes
    disagree with the shapes or with the binary part of the body.
    """
    declared = _declared_inputs(_header_doc(header))
    total = sum(size for *_, size in declared)
    if total != binary_bytes:
        raise _bad(
            f"the inputs declare {total} bytes of binary data but the body carries {binary_bytes}",
            "binary",
        )
    charge = 0
    rows = 1
    for _, datatype, shape, size in declared:
        if datatype == "BYTES":
            charge += size + STRING_ELEMENT_BYTES * math.prod(shape)
        else:
            charge += size
        if shape:
            rows = max(rows, shape[0])
    # Outputs twice: the arrays and their encoded copy in the answer.
    return charge + 2 * min(rows, max_batch_rows) * row_bytes


# --- decoding ---------------------------------------------------------------------------


def _bytes_elements(blob: memoryview, count: int, name: str) -> np.ndarray:
    out = np.empty(count, dtype=object)
    pos = 0
    for k in range(count):
        if pos + 4 > len(blob):
            raise _bad(f"input {name!r}: BYTES element {k} runs past its binary data", "data")
        (length,) = _LENGTH.unpack_from(blob, pos)
        pos += 4
        if pos + length > len(blob):
            raise _bad(f"input {name!r}: BYTES element {k} runs past its binary data", "data")
        try:
            out[k] = bytes(blob[pos : pos + length]).decode("utf-8")
        except UnicodeDecodeError as e:
            raise _bad(f"input {name!r}: BYTES element {k} is not UTF-8", "data") from e
        pos += length
    if pos != len(blob):
        raise _bad(
            f"input {name!r}: {len(blob) - pos} bytes left over after {count} BYTES elements",
            "data",
        )
    return out


def _binary_tensor(raw: Mapping[str, Any], blob: memoryview, name: str) -> np.ndarray:
    datatype = raw["datatype"]
    shape = shape_of(raw.get("shape"), name)
    if "data" in raw:
        raise _bad(f"input {name!r}: give either 'data' or binary_data_size, not both")
    if datatype == "BYTES":
        return _bytes_elements(blob, math.prod(shape), name).reshape(shape)
    dtype = NUMPY_FOR_OIP[datatype].newbyteorder("<")
    arr = np.frombuffer(blob, dtype=np.uint8 if datatype == "BOOL" else dtype)
    if datatype == "BOOL":
        if arr.size and int(arr.max()) > 1:
            raise _bad(f"input {name!r}: BOOL bytes must be 0 or 1", "data")
        arr = arr.view(np.bool_)
    elif not dtype.isnative:
        arr = arr.astype(dtype.newbyteorder("="))
    if not arr.flags.aligned:
        # The header's length puts the tensor at any byte offset; kernels expect
        # aligned elements (a copy of the tensor, still no per-element work).
        arr = arr.copy()
    return arr.reshape(shape)


class _Decoder:
    """Decodes the inputs of one request: binary ones from the body, the others from JSON."""

    def __init__(self, blob: memoryview, binary: bool) -> None:
        self.blob = blob
        self.binary = binary
        self.offset = 0

    def __call__(self, raw: Any, index: int) -> tuple[str, np.ndarray]:
        if type(raw) is not dict or type(raw.get("name")) is not str:
            return decode_tensor(raw, index)  # its message names what is wrong
        name = raw["name"]
        size = _binary_size(raw, name)
        if size is None:
            return decode_tensor(raw, index)
        if not self.binary:
            raise _bad(
                f"input {name!r} has binary_data_size but the request has no "
                "Inference-Header-Content-Length header",
                "binary",
            )
        if raw.get("datatype") not in NUMPY_FOR_OIP:
            return decode_tensor({k: v for k, v in raw.items() if k != "parameters"}, index)
        end = self.offset + size
        if end > len(self.blob):
            raise _bad(f"input {name!r}: binary data runs past the end of the body", "binary")
        arr = _binary_tensor(raw, self.blob[self.offset : end], name)
        self.offset = end
        return name, arr


@dataclass(frozen=True, slots=True)
class Wire:
    """How the answer is written: which outputs go binary, which become classifications."""

    binary: frozenset[int]  # output indices (-1: prediction_id)
    classify: Mapping[int, int]  # output index -> K

    @property
    def plain(self) -> bool:
        return not self.binary and not self.classify


PLAIN = Wire(frozenset(), {})


@dataclass(frozen=True, slots=True)
class _Layout:
    """What a JSON header whose inputs are all numeric binary tensors decodes to, but the
    bytes: ``(name, dtype, shape, size)`` per input, in body order."""

    request_id: str | None
    inputs: tuple[tuple[str, np.dtype[Any], tuple[int, ...], int], ...]
    outputs: tuple[int, ...] | None
    wire: Wire
    size: int


# Per served model, the layouts of the JSON headers it was sent last: a client sends the
# same header with every request of one shape (tritonclient does), and decoding the same
# bytes the same way again costs a JSON parse and every check of the schema. Bounded in
# count and header size; dropped with the model.
_LAYOUTS: weakref.WeakKeyDictionary[LoadedModel, dict[bytes, _Layout]] = weakref.WeakKeyDictionary()
_LAYOUTS_PER_MODEL = 16
_LAYOUT_HEADER_BYTES = 4096


def decode_request(
    body: bytes | bytearray, hlen: int | None, model: LoadedModel
) -> tuple[InferCall, Wire]:
    """An inference request (JSON, or JSON header + binary tensors) and how to answer it."""
    key: bytes | None = None
    if hlen is None:
        header, blob = body, memoryview(b"")
    else:
        header, blob = bytes(body[:hlen]), memoryview(body)[hlen:]
        if hlen <= _LAYOUT_HEADER_BYTES:
            key = bytes(header)
            layouts = _LAYOUTS.get(model)
            layout = None if layouts is None else layouts.get(key)
            if layout is not None and layout.size == len(blob):
                return _from_layout(layout, blob), layout.wire
    doc = parse_json_body(header)
    if type(doc) is not dict:
        raise _bad("request body must be a JSON object with 'inputs'")
    decoder = _Decoder(blob, hlen is not None)
    call = decode_infer_doc(doc, model, decoder)
    if decoder.offset != len(blob):
        raise _bad(
            f"the inputs declare {decoder.offset} bytes of binary data but the body "
            f"carries {len(blob)}",
            "binary",
        )
    wire = _wire(doc, call, model)
    if key is not None:
        _remember(model, key, doc, call, wire, len(blob))
    return call, wire


def _remember(
    model: LoadedModel,
    header: bytes,
    doc: dict[str, Any],
    call: InferCall,
    wire: Wire,
    size: int,
) -> None:
    """Keep the layout of a header that decoded without error, when every input is a
    numeric binary tensor that decoding only viewed (its dtype as sent, its shape)."""
    inputs = []
    for raw in doc["inputs"]:
        size_of = _binary_size(raw, raw["name"])
        arr = call.feeds[raw["name"]]
        if (
            size_of is None
            or raw["datatype"] in ("BOOL", "BYTES")
            or arr.dtype != NUMPY_FOR_OIP[raw["datatype"]].newbyteorder("<")
        ):
            return
        inputs.append((raw["name"], arr.dtype, arr.shape, size_of))
    layouts = _LAYOUTS.get(model)
    if layouts is None:
        layouts = _LAYOUTS.setdefault(model, {})
    if len(layouts) >= _LAYOUTS_PER_MODEL:
        layouts.clear()
    layouts[header] = _Layout(call.request_id, tuple(inputs), call.outputs, wire, size)


def _from_layout(layout: _Layout, blob: memoryview) -> InferCall:
    feeds: dict[str, np.ndarray] = {}
    offset = 0
    for name, dtype, shape, size in layout.inputs:
        arr = np.frombuffer(blob[offset : offset + size], dtype=dtype)
        if not arr.flags.aligned:
            arr = arr.copy()  # as _binary_tensor does
        feeds[name] = arr.reshape(shape)
        offset += size
    return InferCall(layout.request_id, feeds, layout.outputs)


def _flag(params: Any, key: str, where: str) -> bool:
    if type(params) is not dict or key not in params:
        return False
    value = params[key]
    if type(value) is not bool:
        raise _bad(f"{where}: '{key}' must be true or false")
    return value


def _wire(doc: Mapping[str, Any], call: InferCall, model: LoadedModel) -> Wire:
    default = _flag(doc.get("parameters"), "binary_data_output", "request")
    raw_outputs = doc.get("outputs")
    if raw_outputs is None:
        every = [*range(len(model.output_names)), -1]
        return Wire(frozenset(every) if default else frozenset(), {})
    binary: set[int] = set()
    classify: dict[int, int] = {}
    for raw in raw_outputs:  # decode_infer_doc checked the list and the names
        name = raw["name"]
        index = -1 if name == PREDICTION_ID_OUTPUT else model.output_names.index(name)
        params = raw.get("parameters")
        where = f"output {name!r}"
        wants_binary = (
            _flag(params, "binary_data", where)
            if type(params) is dict and "binary_data" in params
            else default
        )
        if wants_binary:
            binary.add(index)
        k = params.get("classification") if type(params) is dict else None
        if k is not None and k is not False and k != 0:
            classify[index] = _class_count(k, index, model, where)
    return Wire(frozenset(binary), classify)


def _class_count(k: Any, index: int, model: LoadedModel, where: str) -> int:
    if not is_classifier(model):
        raise _bad(
            f"{where}: classification needs a model declared as a classifier "
            f"(this one is {model.task!r})"
        )
    spec = model.schema.outputs[index] if index >= 0 else None
    if spec is None or spec.dtype_name not in ("float16", "float32", "float64"):
        raise _bad(f"{where}: classification needs a floating-point score output")
    if type(k) is not int or k < 1:
        raise _bad(f"{where}: 'classification' must be a positive integer")
    classes = spec.shape[-1] if spec.shape else -1
    if classes > 0 and k > classes:
        raise _bad(f"{where}: classification of {k} classes, but the model has {classes}")
    return k


# --- encoding ---------------------------------------------------------------------------


def classifications(scores: np.ndarray, k: int, labels: list[Any] | None) -> np.ndarray:
    """``[N, K]`` strings ``"score:index[:label]"``, best first (Triton's format)."""
    arr = np.asarray(scores, dtype=np.float64)
    flat = arr.reshape(-1, arr.shape[-1]) if arr.ndim else arr.reshape(1, 1)
    k = min(k, flat.shape[1])
    order = np.argsort(-flat, axis=1, kind="stable")[:, :k]
    named = labels is not None and len(labels) == flat.shape[1]
    out = np.empty(order.shape, dtype=object)
    for r, row in enumerate(order):
        for c, j in enumerate(row):
            text = f"{flat[r, j]:f}:{int(j)}"
            out[r, c] = f"{text}:{labels[j]}" if named and labels is not None else text
    return out.reshape((*arr.shape[:-1], k)) if arr.ndim else out


def _raw_bytes(arr: np.ndarray) -> bytes:
    if arr.dtype.kind == "O" or arr.dtype.kind == "U":
        parts = []
        for value in arr.ravel().tolist():
            data = value if isinstance(value, bytes) else str(value).encode()
            parts.append(_LENGTH.pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    if arr.dtype.kind == "b":
        return np.ascontiguousarray(arr, dtype=np.uint8).tobytes()
    if _LITTLE_ENDIAN and arr.dtype.byteorder != ">":
        return arr.tobytes()  # already little-endian; tobytes writes row-major
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


def _ids_bytes(ids: list[str]) -> bytes:
    """The prediction ids as a BYTES tensor (what _raw_bytes makes of them, without the
    object array)."""
    parts = []
    for value in ids:
        data = value.encode()
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def _json_data(arr: np.ndarray) -> bytes:
    return b"[" + b"".join(data_pieces(arr)) + b"]"


# Per served model: the answer's opening and each output entry's opening up to its shape
# (they are the same for every answer; dropped with the model).
_OPENINGS: weakref.WeakKeyDictionary[LoadedModel, tuple[bytes, dict[tuple[str, str], bytes]]] = (
    weakref.WeakKeyDictionary()
)


def _openings(model: LoadedModel) -> tuple[bytes, dict[tuple[str, str], bytes]]:
    found = _OPENINGS.get(model)
    if found is None:
        opening = (
            b'{"model_name":'
            + _json_str(model.name)
            + b',"model_version":'
            + _json_str(str(model.version))
            + b',"outputs":['
        )
        found = _OPENINGS[model] = (opening, {})
    return found


def encode_response(
    model: LoadedModel, prediction: Prediction, call: InferCall, wire: Wire
) -> tuple[bytes, int | None]:
    """The answer and its JSON header length (None when nothing went binary)."""
    selected = [*range(len(prediction.outputs)), -1] if call.outputs is None else list(call.outputs)
    opening, heads = _openings(model)
    entries: list[bytes] = []
    blobs: list[bytes] = []
    for i in selected:
        data: bytes | None = None
        if i < 0:
            name, datatype = PREDICTION_ID_OUTPUT, "BYTES"
            ids = prediction.ids
            if i in wire.binary:
                arr = None
                shape: tuple[int, ...] = (len(ids),)
                data = _ids_bytes(ids)
            else:
                arr = np.array(ids, dtype=object)
                shape = arr.shape
        else:
            name = model.output_names[i]
            arr = np.asarray(prediction.outputs[i])
            datatype = OIP_DATATYPES[model.schema.outputs[i].dtype_name]
            if i in wire.classify:
                arr = classifications(arr, wire.classify[i], model.labels)
                datatype = "BYTES"
            shape = arr.shape
        head = heads.get((name, datatype))
        if head is None:
            head = heads[(name, datatype)] = (
                b'{"name":'
                + _json_str(name)
                + b',"datatype":"'
                + datatype.encode()
                + b'","shape":['
            )
        head += ",".join(map(str, shape)).encode() + b"]"
        if i in wire.binary:
            if data is None:
                assert arr is not None
                data = _raw_bytes(arr)
            blobs.append(data)
            entries.append(head + b',"parameters":{"binary_data_size":%d}}' % len(data))
        else:
            assert arr is not None
            entries.append(head + b',"data":' + _json_data(arr) + b"}")
    header = (
        opening
        + b",".join(entries)
        + b"]"
        + (b"" if call.request_id is None else b',"id":' + _json_str(call.request_id))
        + b"}"
    )
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def _json_str(text: str) -> bytes:
    """``json.dumps(text)`` for a string (its C encoder, without the dispatch)."""
    return _encode_str(text).encode()
