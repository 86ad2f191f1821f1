"""Where drift references and validation metrics come from.

Aggregation needs, per ``model:version``, the :class:`ReferenceProfile` the devices binned
against and the bundle's validation metrics. Both come from callables so the fleet code
does not depend on how the hub keeps bundles:

``reference_loader(model, version) -> ReferenceProfile | None``
``validation_loader(model, version) -> Mapping[str, Any] | None`` (the manifest's
``validation`` object, or already-flat metrics such as ``{"accuracy": 0.95}``)

:func:`bundle_loaders` builds both from the hub's bundle store (``reference.json`` read from
the published ``.efb``, ``validation`` from its manifest). :class:`References` memoises
them and keeps a copy in the fleet database, so ``hub drift --db FILE`` works without the
bundle store. Invariant: a profile read from the cache is checked by
``ReferenceProfile.from_json`` (its ``profile_id`` must match its content).
"""

from __future__ import annotations

import logging
import tarfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from edgefleet.core.drift import ReferenceProfile
from edgefleet.core.errors import DriftError, EdgefleetError
from edgefleet.hub.errors import HubStoreError
from edgefleet.hub.fleet.window_store import FleetWindowStore

log = logging.getLogger(__name__)

ReferenceLoader = Callable[[str, int], ReferenceProfile | None]
ValidationLoader = Callable[[str, int], Mapping[str, Any] | None]
MAX_REFERENCE_BYTES = 64 * 1024 * 1024


class BundleIndex(Protocol):
    """The part of the hub store the bundle loaders need."""

    def find_bundles(self, model: str, version: int) -> list[Any]: ...


def validation_metrics(validation: Mapping[str, Any] | None) -> dict[str, float]:
    """Flat metrics from a manifest ``validation`` object (or already-flat metrics).

    The packager writes ``{"metric": "accuracy", "packaged": {"accuracy": x},
    "latency_ms": {"p95": y}, ...}``; the packaged model's numbers are what devices run.
    """
    if not validation:
        return {}
    out: dict[str, float] = {}
    packaged = validation.get("packaged")
    for source in (packaged if isinstance(packaged, Mapping) else {}, validation):
        value = source.get("accuracy")
        if isinstance(value, int | float) and not isinstance(value, bool):
            out.setdefault("accuracy", float(value))
    latency = validation.get("latency_ms")
    if isinstance(latency, Mapping) and isinstance(latency.get("p95"), int | float):
        out["latency_p95_ms"] = float(latency["p95"])
    flat_p95 = validation.get("latency_p95_ms")
    if isinstance(flat_p95, int | float) and not isinstance(flat_p95, bool):
        out.setdefault("latency_p95_ms", float(flat_p95))
    return out


def read_bundle_member(path: Path, member: str, max_bytes: int = MAX_REFERENCE_BYTES) -> bytes:
    """One member of a published (already verified) bundle."""
    try:
        with tarfile.open(path, "r:") as tar:
            info = tar.getmember(member)
            if not info.isfile() or info.size > max_bytes:
                raise HubStoreError(f"{path}: {member} is not a regular file within limits")
            handle = tar.extractfile(info)
            if handle is None:
                raise HubStoreError(f"{path}: cannot read {member}")
            return handle.read()
    except KeyError as e:
        raise HubStoreError(f"{path}: bundle has no {member}") from e
    except (OSError, tarfile.TarError) as e:
        raise HubStoreError(f"{path}: cannot read bundle: {e}") from e


def bundle_loaders(
    index: BundleIndex, bundle_file: Callable[[str], Path]
) -> tuple[ReferenceLoader, ValidationLoader]:
    """Loaders reading the hub's published bundles (the most recently published one wins
    when several target profiles share a model version).

    ``bundle_file(sha256)`` is the bundle's local file; with several hubs it is written
    from the store on demand (``PublishedBundleStore.local_path``), so a hub that never
    published or served a bundle still finds its reference.
    """

    def latest(model: str, version: int) -> Any | None:
        bundles = index.find_bundles(model, version)
        return max(bundles, key=lambda b: b.published_at) if bundles else None

    def reference(model: str, version: int) -> ReferenceProfile | None:
        bundle = latest(model, version)
        if bundle is None:
            return None
        # A null reference_path is a bundle without drift reference (a tensor model with
        # nothing to profile), not "reference.json"; only a manifest without the key
        # (written before the field existed) means the default.
        member = bundle.manifest.get("reference_path", "reference.json")
        if member is None:
            return None
        data = read_bundle_member(bundle_file(bundle.sha256), str(member))
        return ReferenceProfile.from_json(data)

    def validation(model: str, version: int) -> Mapping[str, Any] | None:
        bundle = latest(model, version)
        if bundle is None:
            return None
        value = bundle.manifest.get("validation")
        return value if isinstance(value, Mapping) else None

    return reference, validation


class References:
    """Memoised reference profiles and validation metrics, cached in the fleet database."""

    def __init__(
        self,
        reference_loader: ReferenceLoader | None = None,
        validation_loader: ValidationLoader | None = None,
        *,
        cache: FleetWindowStore | None = None,
        write_cache: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.reference_loader = reference_loader
        self.validation_loader = validation_loader
        self.cache = cache
        self.write_cache = write_cache
        self.clock = clock
        self._memo: dict[tuple[str, int], tuple[ReferenceProfile | None, dict[str, float]]] = {}
        self._lock = threading.Lock()

    def profile(self, model: str, version: int) -> ReferenceProfile | None:
        return self._get(model, version)[0]

    def validation(self, model: str, version: int) -> dict[str, float]:
        return self._get(model, version)[1]

    def forget(self) -> None:
        with self._lock:
            self._memo.clear()

    def _get(self, model: str, version: int) -> tuple[ReferenceProfile | None, dict[str, float]]:
        key = (model, version)
        with self._lock:
            hit = self._memo.get(key)
        if hit is not None:
            return hit
        profile, validation = self._load(model, version)
        if profile is not None:
            with self._lock:
                self._memo[key] = (profile, validation)
        return profile, validation

    def _load(self, model: str, version: int) -> tuple[ReferenceProfile | None, dict[str, float]]:
        profile: ReferenceProfile | None = None
        raw_validation: Mapping[str, Any] | None = None
        if self.reference_loader is not None:
            try:
                profile = self.reference_loader(model, version)
                if self.validation_loader is not None:
                    raw_validation = self.validation_loader(model, version)
            except EdgefleetError as e:
                log.warning("no reference for %s:%s from the bundle store: %s", model, version, e)
                profile = None
        validation = validation_metrics(raw_validation)
        if profile is not None:
            if self.cache is not None and self.write_cache:
                self.cache.put_reference(
                    model, version, profile.to_json(), validation, self.clock()
                )
            return profile, validation
        if self.cache is not None:
            cached = self.cache.get_reference(model, version)
            if cached is not None:
                try:
                    return ReferenceProfile.from_json(cached[0]), dict(cached[1])
                except DriftError as e:
                    log.warning("cached reference for %s:%s is unusable: %s", model, version, e)
        return None, validation
