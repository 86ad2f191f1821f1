"""The content-addressed bundle store: ``bundles/SHA/`` holds a verified, extracted bundle.

Invariants:

- A directory named by a sha256 in ``bundles/`` is complete: it only ever
  appears by a rename of a staging directory whose every member was verified
  (``BundleVerifier.verify_and_extract`` into ``staging/ID``, then rename).
- Anything else in ``bundles/`` (a half-extracted temp directory after a
  crash) is garbage and :meth:`ExtractedBundleStore.sweep` removes it.
- A bundle is kept while a slot points at it or the deployment in progress
  names it; :meth:`ExtractedBundleStore.collect` removes the rest, so the store holds
  at most two versions per model (active and previous).
- Reading a stored manifest for display (:meth:`describe`) checks nothing;
  loading goes through the loader, which verifies signatures and hashes again.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

from edgefleet.agent.deploy.atomic_files import durable_rename, remove_path, remove_temp_files
from edgefleet.agent.deploy.layout import SHA256_RE, StateLayout
from edgefleet.agent.deploy.slots import SlotTable
from edgefleet.agent.errors import DeploymentError


def sweep_leftovers(
    layout: StateLayout, deployment_id: str | None = None, bundle_sha256: str | None = None
) -> int:
    """Remove crash leftovers and unreferenced bundles; returns how many entries went.

    Keeps what the deployment in progress (``deployment_id``, its bundle
    ``bundle_sha256``) still needs and whatever a slot points at. The daemon
    calls it at start when no deployment is in progress, without building a
    deployment driver.
    """
    store = ExtractedBundleStore(layout)
    removed = store.sweep(keep_staging=deployment_id, keep_download=deployment_id)
    keep = SlotTable(layout).referenced()
    if bundle_sha256 is not None:
        keep.add(bundle_sha256)
    return len(removed) + len(store.collect(keep))


class ExtractedBundleStore:
    def __init__(self, layout: StateLayout) -> None:
        self.layout = layout

    def has(self, sha256: str) -> bool:
        return (self.layout.bundle_dir(sha256) / "manifest.json").is_file()

    def stored(self) -> list[str]:
        if not self.layout.bundles.is_dir():
            return []
        return sorted(
            p.name
            for p in self.layout.bundles.iterdir()
            if SHA256_RE.fullmatch(p.name) and p.is_dir()
        )

    def describe(self, sha256: str) -> dict[str, Any]:
        """Name, version and target of a stored bundle (display only, unverified)."""
        path = self.layout.bundle_dir(sha256) / "manifest.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            model = data.get("model", {})
            return {
                "name": model.get("name"),
                "version": model.get("version"),
                "task": model.get("task"),
                "target": data.get("target", {}),
            }
        except (OSError, ValueError, AttributeError):
            return {"name": None, "version": None, "task": None, "target": {}}

    def version_of(self, sha256: str) -> int | None:
        version = self.describe(sha256).get("version")
        return version if isinstance(version, int) else None

    def clear_staging(self, deployment_id: str) -> None:
        """Remove what an interrupted extraction for ``deployment_id`` left behind."""
        staging = self.layout.staging
        if not staging.is_dir():
            return
        target = self.layout.staging_path(deployment_id)
        for entry in staging.iterdir():
            # the verifier extracts into ".ID.partial-XXXX" before renaming to ID
            if entry == target or entry.name.startswith(f".{deployment_id}."):
                remove_path(entry)

    def commit_staged(self, deployment_id: str, sha256: str) -> None:
        """Move a verified staging directory to ``bundles/SHA`` (idempotent)."""
        staged = self.layout.staging_path(deployment_id)
        final = self.layout.bundle_dir(sha256)
        if self.has(sha256):
            remove_path(staged)  # the same bundle is stored already (e.g. the previous slot)
            return
        if not staged.is_dir():
            raise DeploymentError(
                f"staged bundle {sha256[:12]} is neither in staging nor in the store"
            )
        remove_path(final)  # a stray, incomplete entry (no manifest) must not block the rename
        durable_rename(staged, final)

    def collect(self, keep: Collection[str]) -> list[str]:
        """Delete stored bundles not in ``keep``; returns their hashes."""
        removed = []
        for sha in self.stored():
            if sha not in keep:
                remove_path(self.layout.bundle_dir(sha))
                removed.append(sha)
        return removed

    def sweep(
        self, keep_staging: str | None = None, keep_download: str | None = None
    ) -> list[Path]:
        """Remove crash leftovers: temp files, partial extractions, stray downloads."""
        removed: list[Path] = []
        layout = self.layout
        for directory in (
            layout.root,
            layout.slots,
            layout.inbox,
            layout.downloads,
            layout.bundles,
        ):
            removed += remove_temp_files(directory)
        if layout.bundles.is_dir():
            for entry in layout.bundles.iterdir():
                if (
                    not (SHA256_RE.fullmatch(entry.name) and entry.is_dir())
                    or not (entry / "manifest.json").is_file()
                ):
                    remove_path(entry)
                    removed.append(entry)
        if layout.staging.is_dir():
            for entry in layout.staging.iterdir():
                if keep_staging is not None and (
                    entry.name == keep_staging or entry.name.startswith(f".{keep_staging}.")
                ):
                    continue
                remove_path(entry)
                removed.append(entry)
        if layout.downloads.is_dir():
            for entry in layout.downloads.iterdir():
                if keep_download is not None and entry.name == f"{keep_download}.efb":
                    continue
                remove_path(entry)
                removed.append(entry)
        return removed
