"""Which external-data files an ONNX model would read, found without the onnx package.

An initializer may keep its bytes in another file (``external_data`` entries
``location``/``offset``/``length``). onnxruntime resolves a relative location
of a model loaded from bytes against the process's working directory, so a
signed model naming ``etc/edgefleet/agent.toml`` would read the agent's own
configuration when the agent runs in ``/``. The agent therefore (1) refuses a
model naming any location that is not a member of its bundle
(:func:`check_external_data`) and (2) tells onnxruntime to resolve external
data inside the bundle directory only (``runtime.session_options``).

The agent may not import onnx, so this is a small reader of the protobuf wire
format that descends only into the messages that can hold tensors: the graph,
its nodes' attributes (subgraphs of If/Loop/Scan), sparse initializers,
functions and training graphs. Everything else is skipped by length.
"""

from __future__ import annotations

from collections.abc import Iterable

from edgefleet.agent.errors import ModelLoadError

# message kind -> {field number: kind of the nested message}
_FIELDS: dict[str, dict[int, str]] = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "function": {7: "node"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {13: "entry"},
}
_MAX_DEPTH = 64


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _walk(buf: memoryview, start: int, end: int, kind: str, depth: int, found: list[str]) -> None:
    if depth > _MAX_DEPTH:
        raise ValueError("messages nested too deeply")
    nested = _FIELDS.get(kind, {})
    pos = start
    entry_key = entry_value = None
    while pos < end:
        tag, pos = _varint(buf, pos, end)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            _, pos = _varint(buf, pos, end)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise ValueError("truncated field")
            if kind == "entry" and number in (1, 2):
                text = bytes(buf[pos : pos + length]).decode("utf-8", "replace")
                if number == 1:
                    entry_key = text
                else:
                    entry_value = text
            elif number in nested:
                _walk(buf, pos, pos + length, nested[number], depth + 1, found)
            pos += length
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > end:
            raise ValueError("truncated field")
    if kind == "entry" and entry_key == "location":
        found.append(entry_value or "")


def external_locations(model: bytes, label: str = "model") -> list[str]:
    """Every external-data ``location`` in ``model`` (ModelLoadError if unreadable)."""
    found: list[str] = []
    view = memoryview(model)
    try:
        _walk(view, 0, len(view), "model", 0, found)
    except (ValueError, IndexError) as e:
        raise ModelLoadError(
            f"cannot load model {label!r}: model.onnx is not a readable ONNX file ({e})"
        ) from e
    return found


def check_external_data(model: bytes, members: Iterable[str], label: str) -> bool:
    """Refuse a location that is not a bundle member; True when the model has external data."""
    allowed = set(members) - {"model.onnx"}
    locations = external_locations(model, label)
    for location in locations:
        if location not in allowed:
            raise ModelLoadError(
                f"model {label!r} reads external data from {location!r}, which is not a "
                "member of its bundle"
            )
    return bool(locations)
