"""The bundle manifest (``manifest.json``) and member path rules.

Invariants:

- A ``Manifest`` always encodes to canonical JSON (no NaN, no non-JSON values)
  and ``Manifest.from_dict(m.to_dict()) == m``.
- Fields this version does not know are kept in ``unrecognized_fields`` and
  written back unchanged, so an older agent re-encoding a newer packager's
  manifest produces the same bytes (and the same signatures still verify).
- Every path in ``files``, ``smoke_path`` and ``reference_path`` passes
  :func:`check_member_path`: relative, ASCII ``[A-Za-z0-9._-]`` components
  separated by ``/``, no ``.``/``..``/empty/hidden components, at most 100
  bytes (one ustar name field), and never ``manifest.json`` or
  ``signatures.json``.
- ``files`` lists distinct paths, none inside another (``a`` and ``a/b``
  cannot both be files); ``size`` is a non-negative int and
  ``sha256`` 64 lowercase hex characters.
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgefleet.core.bounds import MAX_MODEL_VERSION
from edgefleet.core.canonical import canonical_json, parse_json
from edgefleet.core.errors import BundleError
from edgefleet.core.io_schema import TASKS as TASKS_V2
from edgefleet.core.io_schema import IoSchema

__all__ = [
    "FORMAT_VERSION",
    "FORMAT_VERSIONS",
    "TENSOR_FORMAT_VERSION",
    "MANIFEST_NAME",
    "MODEL_PATH",
    "SIGNATURES_NAME",
    "TASKS",
    "FileEntry",
    "Manifest",
    "MAX_MODEL_VERSION",
    "check_member_path",
]

FORMAT_VERSION = 1
# Format 2 carries io schema v2 (edgefleet.core.io_schema): any ONNX model, tensors
# and declared tasks. Format 1 (tables) is still read and still written for tables.
TENSOR_FORMAT_VERSION = 2
FORMAT_VERSIONS = (FORMAT_VERSION, TENSOR_FORMAT_VERSION)
MANIFEST_NAME = "manifest.json"
SIGNATURES_NAME = "signatures.json"
MODEL_PATH = "model.onnx"
# "anomaly": an outlier detector's label (+1/-1) and score (packager/estimators.py).
TASKS = ("classification", "regression", "anomaly")
MAX_MEMBER_PATH_BYTES = 100

_COMPONENT_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def check_member_path(path: object) -> str:
    """Return ``path`` if it is an acceptable member path, else raise ``BundleError``
    naming the rule it breaks."""
    if not isinstance(path, str) or not path:
        raise BundleError(f"member path {path!r} must be a non-empty string")
    if path.startswith("/"):
        raise BundleError(f"member path {path!r} is absolute")
    if "\\" in path:
        raise BundleError(f"member path {path!r} contains a backslash")
    parts = path.split("/")
    if ".." in parts:
        raise BundleError(f"member path {path!r} contains '..' (path traversal)")
    if path in (MANIFEST_NAME, SIGNATURES_NAME):
        raise BundleError(f"member path {path!r} is reserved")
    if len(path.encode("utf-8")) > MAX_MEMBER_PATH_BYTES:
        raise BundleError(f"member path {path[:40]!r}... is longer than 100 bytes")
    for part in parts:
        if not _COMPONENT_RE.fullmatch(part):
            raise BundleError(
                f"member path {path!r} has an invalid component {part!r} "
                "(allowed: letters, digits, '.', '_', '-', not starting with '.')"
            )
    return path


def _require_int(value: object, what: str, minimum: int = 0, maximum: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise BundleError(f"manifest: {what} must be an integer >= {minimum}, not {value!r}")
    if maximum is not None and value > maximum:
        raise BundleError(f"manifest: {what} must be at most {maximum}, not {value}")
    return value


def _require_mapping(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise BundleError(f"manifest: {what} must be an object")
    return value


@dataclass(frozen=True)
class FileEntry:
    """One bundle member other than manifest.json and signatures.json."""

    path: str
    size: int
    sha256: str
    unrecognized_fields: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        check_member_path(self.path)
        _require_int(self.size, f"files[{self.path}].size")
        if not isinstance(self.sha256, str) or not _SHA256_RE.fullmatch(self.sha256):
            raise BundleError(f"manifest: files[{self.path}].sha256 must be 64 lowercase hex")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FileEntry:
        data = _require_mapping(data, "files[]")
        for key in ("path", "size", "sha256"):
            if key not in data:
                raise BundleError(f"manifest: a files[] entry lacks {key!r}")
        extra = {k: v for k, v in data.items() if k not in ("path", "size", "sha256")}
        return cls(
            path=data["path"], size=data["size"], sha256=data["sha256"], unrecognized_fields=extra
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **copy.deepcopy(dict(self.unrecognized_fields)),
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
        }


_KNOWN_FIELDS = (
    "format_version",
    "bundle_id",
    "model",
    "target",
    "files",
    "io_schema",
    "quantization",
    "validation",
    "lineage",
    "reference_path",
    "smoke_path",
)
_REQUIRED_FIELDS = ("format_version", "bundle_id", "model", "target", "files")


def _new_bundle_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Manifest:
    """What a bundle holds and what it is for; signed as canonical JSON.

    ``model``: name (str), version (int), task ("classification" |
    "regression"), labels, framework, opsets, ir_version. ``target``: profile,
    arch, min_onnxruntime, execution_providers, session_options. ``files`` is
    filled in by the bundle writer. ``reference_path`` is None for a bundle
    without a drift reference.
    """

    format_version: int = FORMAT_VERSION
    bundle_id: str = field(default_factory=_new_bundle_id)
    model: Mapping[str, Any] = field(default_factory=dict)
    target: Mapping[str, Any] = field(default_factory=dict)
    files: list[FileEntry] = field(default_factory=list)
    io_schema: Mapping[str, Any] = field(default_factory=dict)
    quantization: Mapping[str, Any] = field(default_factory=dict)
    validation: Mapping[str, Any] = field(default_factory=dict)
    lineage: Mapping[str, Any] = field(default_factory=dict)
    reference_path: str | None = "reference.json"
    smoke_path: str = "smoke.npz"
    unrecognized_fields: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.format_version, bool) or self.format_version not in FORMAT_VERSIONS:
            raise BundleError(
                f"manifest: unsupported format_version {self.format_version!r} "
                f"(this edgefleet reads {', '.join(map(str, FORMAT_VERSIONS))})"
            )
        if not isinstance(self.bundle_id, str) or not self.bundle_id:
            raise BundleError("manifest: bundle_id must be a non-empty string")
        model = _require_mapping(self.model, "model")
        name = model.get("name")
        if not isinstance(name, str) or not name:
            raise BundleError("manifest: model.name must be a non-empty string")
        _require_int(model.get("version"), "model.version", maximum=MAX_MODEL_VERSION)
        tasks = TASKS if self.format_version == FORMAT_VERSION else TASKS + TASKS_V2
        if model.get("task") not in tasks:
            raise BundleError(f"manifest: model.task must be one of {', '.join(tasks)}")
        for what in ("target", "io_schema", "quantization", "validation", "lineage"):
            _require_mapping(getattr(self, what), what)
        if self.format_version == TENSOR_FORMAT_VERSION:
            IoSchema.from_dict(self.io_schema)  # format 2 promises a well-formed io schema
        if not isinstance(self.files, list):
            object.__setattr__(self, "files", list(self.files))
        seen: set[str] = set()
        for entry in self.files:
            if not isinstance(entry, FileEntry):
                raise BundleError("manifest: files must hold FileEntry values")
            if entry.path in seen:
                raise BundleError(f"manifest: files lists {entry.path!r} twice")
            seen.add(entry.path)
        for path in seen:
            parts = path.split("/")
            for i in range(1, len(parts)):
                if "/".join(parts[:i]) in seen:
                    raise BundleError(
                        f"manifest: {path!r} lies under {'/'.join(parts[:i])!r}, which is a file"
                    )
        if self.reference_path is not None:
            check_member_path(self.reference_path)
        check_member_path(self.smoke_path)
        clash = sorted(set(self.unrecognized_fields) & set(_KNOWN_FIELDS))
        if clash:
            raise BundleError(f"manifest: unrecognized_fields repeats known field {clash[0]!r}")
        try:
            canonical_json(self._json_dict(copy_values=False))
        except (ValueError, TypeError) as e:
            raise BundleError(f"manifest cannot be encoded as canonical JSON: {e}") from e

    # --- accessors -------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.model["name"])

    @property
    def version(self) -> int:
        return int(self.model["version"])

    def file(self, path: str) -> FileEntry | None:
        """The ``files`` entry for ``path``, if listed."""
        for entry in self.files:
            if entry.path == path:
                return entry
        return None

    def required_members(self) -> tuple[str, ...]:
        """Members every bundle must carry: the model, the smoke set and the
        drift reference when there is one."""
        paths = [MODEL_PATH, self.smoke_path]
        if self.reference_path is not None:
            paths.append(self.reference_path)
        return tuple(dict.fromkeys(paths))

    def total_size(self) -> int:
        return sum(entry.size for entry in self.files)

    # --- encoding --------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A deep copy as plain JSON values (changing it leaves the manifest alone)."""
        return self._json_dict(copy_values=True)

    def _json_dict(self, *, copy_values: bool) -> dict[str, Any]:
        def value(v: Mapping[str, Any]) -> dict[str, Any]:
            return copy.deepcopy(dict(v)) if copy_values else dict(v)

        data = value(self.unrecognized_fields)
        data.update(
            {
                "format_version": self.format_version,
                "bundle_id": self.bundle_id,
                "model": value(self.model),
                "target": value(self.target),
                "files": [
                    {
                        **value(e.unrecognized_fields),
                        "path": e.path,
                        "size": e.size,
                        "sha256": e.sha256,
                    }
                    for e in self.files
                ],
                "io_schema": value(self.io_schema),
                "quantization": value(self.quantization),
                "validation": value(self.validation),
                "lineage": value(self.lineage),
                "reference_path": self.reference_path,
                "smoke_path": self.smoke_path,
            }
        )
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        """Parse a manifest object; ``BundleError`` names the first bad field."""
        data = _require_mapping(data, "the manifest")
        missing = [k for k in _REQUIRED_FIELDS if k not in data]
        if missing:
            raise BundleError(f"manifest: missing field {missing[0]!r}")
        files = data["files"]
        if not isinstance(files, list):
            raise BundleError("manifest: files must be a list")
        reference_path = data.get("reference_path", "reference.json")
        return cls(
            format_version=data["format_version"],
            bundle_id=data["bundle_id"],
            model=copy.deepcopy(_require_mapping(data["model"], "model")),
            target=copy.deepcopy(_require_mapping(data["target"], "target")),
            files=[FileEntry.from_dict(item) for item in files],
            io_schema=copy.deepcopy(data.get("io_schema", {})),
            quantization=copy.deepcopy(data.get("quantization", {})),
            validation=copy.deepcopy(data.get("validation", {})),
            lineage=copy.deepcopy(data.get("lineage", {})),
            reference_path=reference_path,
            smoke_path=data.get("smoke_path", "smoke.npz"),
            unrecognized_fields={
                k: copy.deepcopy(v) for k, v in data.items() if k not in _KNOWN_FIELDS
            },
        )

    @classmethod
    def from_json_bytes(cls, data: bytes) -> Manifest:
        """Parse ``manifest.json`` bytes strictly (duplicate keys, NaN refused)."""
        try:
            value = parse_json(data)
        except ValueError as e:
            raise BundleError(f"manifest.json is not valid JSON: {e}") from e
        return cls.from_dict(value)

    def canonical_bytes(self) -> bytes:
        """The bytes that are stored as ``manifest.json`` and signed."""
        return canonical_json(self.to_dict())

    def with_files(self, files: Sequence[FileEntry]) -> Manifest:
        """A copy listing ``files`` (what the writer signs)."""
        return Manifest.from_dict({**self.to_dict(), "files": [f.to_dict() for f in files]})
