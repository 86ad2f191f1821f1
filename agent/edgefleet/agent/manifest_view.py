"""What the serving process keeps of a manifest another process verified: :class:`ManifestView`.

The daemon checks bundles in a short-lived child process
(:mod:`edgefleet.agent.verify_process`) so that the long-running serving
process never loads the signature code (``cryptography``, the tar reader);
``edgefleet.core.manifest`` pulls those in at import. The child parses and
verifies ``manifest.json`` with the core classes and reports
``Manifest.to_dict()``; :meth:`ManifestView.from_dict` turns that back into
an object with the attributes the agent reads (``model``, ``target``,
``io_schema``, ``files``, ``reference_path``, ``smoke_path``, ``name``,
``version``), so the runtime and the deployment driver take either.

Invariants:

- A view is only ever built from the dict of a manifest that passed every
  check (signatures, canonical form, file hashes) in the verifying process;
  :meth:`from_dict` re-checks only the shape the agent relies on, so a
  broken reply fails loudly instead of serving something half-read.
- ``to_dict()`` gives back the dict it was built from (a deep copy).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgefleet.core.errors import BundleError


@dataclass(frozen=True)
class FileView:
    """One ``files`` entry: member path, size in bytes, sha256 hex."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ManifestView:
    """The verified manifest's fields, without the core manifest class."""

    bundle_id: str
    model: Mapping[str, Any]
    target: Mapping[str, Any]
    files: tuple[FileView, ...]
    io_schema: Mapping[str, Any] = field(default_factory=dict)
    reference_path: str | None = "reference.json"
    smoke_path: str = "smoke.npz"
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        name = self.model.get("name")
        version = self.model.get("version")
        if not isinstance(name, str) or not name:
            raise BundleError("verified manifest: model.name must be a non-empty string")
        if not isinstance(version, int) or isinstance(version, bool):
            raise BundleError("verified manifest: model.version must be an integer")

    @property
    def name(self) -> str:
        return str(self.model["name"])

    @property
    def version(self) -> int:
        return int(self.model["version"])

    def file(self, path: str) -> FileView | None:
        for entry in self.files:
            if entry.path == path:
                return entry
        return None

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(dict(self.raw))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ManifestView:
        try:
            files = tuple(
                FileView(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in data["files"]
            )
            model, target = data["model"], data["target"]
            io_schema = data.get("io_schema", {})
            reference_path = data.get("reference_path", "reference.json")
            smoke_path = data.get("smoke_path", "smoke.npz")
            if not (
                isinstance(model, Mapping)
                and isinstance(target, Mapping)
                and isinstance(io_schema, Mapping)
                and (reference_path is None or isinstance(reference_path, str))
                and isinstance(smoke_path, str)
            ):
                raise TypeError("unexpected field types")
            return cls(
                bundle_id=str(data["bundle_id"]),
                model=dict(model),
                target=dict(target),
                files=files,
                io_schema=dict(io_schema),
                reference_path=reference_path,
                smoke_path=smoke_path,
                raw=copy.deepcopy(dict(data)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"verified manifest could not be read back: {e!r}") from e
