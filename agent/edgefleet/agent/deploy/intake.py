"""Bundle intake: the install steps before any slot pointer moves (downloading, verifying,
staged).

Each step does its state's side effects on the state directory and says how it
ended with a :class:`StepOutcome`; the driver (:mod:`edgefleet.agent.deploy.driver`)
persists the transition and fires the event. The steps never touch serving, the
slots or ``deploy.json``, so a failure here always ends in ``failed`` or ``rejected``
with the old version still serving.

Every step is idempotent, so a crash anywhere in it is recovered by running it again
from its start:

- downloading: refuse a declared or actual size over the profile's
  ``max_bundle_bytes``; move the inbox copy to ``downloads/ID.efb``, or link a file
  of the state directory there (the hub sync's download: its file stays the sync's,
  no second copy is written), or copy any other local file; an already complete
  download is kept;
- verifying: clear ``staging/ID``, verify signatures, hashes and the budget while
  extracting into it (in this process, or in a child process when there is a
  ``checker``: the daemon's); then the profile, arch, onnxruntime and version checks;
- a step that fails for lack of disk space says so (``failure="disk_full"`` in its
  changes) and leaves no partial file behind, so whoever asked can retry later;
- staged: rename ``staging/ID`` to ``bundles/SHA`` (content-addressed) and delete the
  download; the outcome records the slots as they are (``from_slots``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.agent.deploy.atomic_files import (
    copy_durably,
    durable_rename,
    is_disk_full,
    link_or_copy,
    remove_path,
)
from edgefleet.agent.deploy.compat import check_target, check_version
from edgefleet.agent.deploy.layout import StateLayout
from edgefleet.agent.deploy.machine import Event
from edgefleet.agent.deploy.record import DeploymentRecord
from edgefleet.agent.deploy.slots import SlotTable
from edgefleet.agent.deploy.store import ExtractedBundleStore
from edgefleet.agent.errors import BundleRejectedError, DeploymentError, ModelLoadError
from edgefleet.core.errors import StorageError, VerificationError
from edgefleet.core.profiles import DeviceProfile

if TYPE_CHECKING:
    from edgefleet.core.trust import TrustStore

# ``checker(bundle_file, dest_dir)``: verify and extract (BundleVerifier.verify_and_extract
# semantics), returning an object with ``manifest`` and ``sha256``.
BundleChecker = Callable[[Path, Path], Any]


@dataclass(frozen=True)
class StepOutcome:
    """How a step ended: the event to fire, its reason and the record fields it found.

    ``pause_point`` names the crash-test point reached after the step's side effects
    (``verifying+``); only steps that finished their work have one.
    """

    event: Event
    reason: str | None = None
    changes: Mapping[str, Any] = field(default_factory=dict)
    pause_point: str | None = None


class BundleIntake:
    """Fetches, verifies and stores the bundle of an install."""

    def __init__(
        self,
        layout: StateLayout,
        *,
        profile: DeviceProfile,
        store: ExtractedBundleStore,
        slots: SlotTable,
        onnxruntime_version: str,
        trust: TrustStore | None = None,
        checker: BundleChecker | None = None,
    ) -> None:
        if trust is None and checker is None:
            raise ValueError("BundleIntake needs a trust store or a bundle checker")
        self.layout = layout
        self.profile = profile
        self.store = store
        self.slots = slots
        self.onnxruntime_version = onnxruntime_version
        self.trust = trust
        self.checker = checker
        # The manifest the last verifying step accepted, by bundle sha256: the activation
        # that follows loads with it instead of verifying the bundle a second time.
        self._verified: dict[str, Any] = {}

    def take_verified(self, sha256: str) -> Any | None:
        """The manifest this process verified for ``sha256`` (once), else None."""
        return self._verified.pop(sha256, None)

    def download(self, record: DeploymentRecord) -> StepOutcome:
        budget = self.profile.max_bundle_bytes
        if record.size is not None and record.size > budget:
            return StepOutcome(
                Event.DOWNLOAD_REJECTED,
                f"bundle is {record.size} bytes, over the budget of {budget} bytes",
            )
        dest = self.layout.download_path(record.id)
        if not dest.exists():
            source = Path(record.source) if record.source else None
            if source is None or not source.is_file():
                return StepOutcome(Event.DOWNLOAD_FAILED, f"bundle file {source} is gone")
            size = source.stat().st_size
            if size > budget:
                return StepOutcome(
                    Event.DOWNLOAD_REJECTED,
                    f"bundle is {size} bytes, over the budget of {budget} bytes",
                )
            try:
                self._fetch(source, dest, owned=record.source_is_inbox)
            except OSError as e:
                remove_path(dest)
                return StepOutcome(
                    Event.DOWNLOAD_FAILED, f"cannot fetch {source}: {e}", _failure(e)
                )
        return StepOutcome(Event.DOWNLOADED, pause_point="downloading+")

    def _fetch(self, source: Path, dest: Path, *, owned: bool) -> None:
        """Put ``source`` at ``dest``: moved when the deployment owns it (an inbox copy),
        linked when it is another file of the state directory (the hub sync's), else
        copied (a file of the caller's)."""
        if owned:
            durable_rename(source, dest)
        elif source.resolve().is_relative_to(self.layout.root.resolve()):
            link_or_copy(source, dest)
        else:
            copy_durably(source, dest)

    def check_bundle(self, download: Path, staging: Path) -> Any:
        """Verify and extract ``download`` into ``staging``; the verified bundle."""
        if self.checker is not None:
            return self.checker(download, staging)
        from edgefleet.core.bundle_verifier import BundleVerifier

        assert self.trust is not None
        verifier = BundleVerifier(self.trust, max_bundle_bytes=self.profile.max_bundle_bytes)
        return verifier.verify_and_extract(download, staging)

    def verify(self, record: DeploymentRecord) -> StepOutcome:
        download = self.layout.download_path(record.id)
        if not download.is_file():
            return StepOutcome(Event.VERIFY_FAILED, "the downloaded bundle is gone")
        self.store.clear_staging(record.id)
        try:
            verified = self.check_bundle(download, self.layout.staging_path(record.id))
        except VerificationError as e:
            return StepOutcome(Event.VERIFY_REJECTED, str(e))
        except (StorageError, OSError, ModelLoadError) as e:
            return StepOutcome(Event.VERIFY_FAILED, str(e), _failure(e))
        manifest = verified.manifest
        found: dict[str, Any] = {
            "model": manifest.name,
            "version": manifest.version,
            "bundle_sha256": verified.sha256,
        }
        try:
            check_target(
                manifest.model,
                manifest.target,
                profile_name=self.profile.name,
                arch=self.profile.arch,
                onnxruntime_version=self.onnxruntime_version,
            )
            installed = self.slots.get(manifest.name).active
            check_version(
                manifest.name,
                manifest.version,
                verified.sha256,
                None if installed is None else self.store.version_of(installed),
                installed,
                allow_downgrade=record.allow_downgrade,
            )
        except BundleRejectedError as e:
            return StepOutcome(Event.VERIFY_REJECTED, str(e), found)
        self._verified = {verified.sha256: manifest}
        return StepOutcome(Event.VERIFIED, changes=found, pause_point="verifying+")

    def stage(self, record: DeploymentRecord) -> StepOutcome:
        assert record.model is not None and record.bundle_sha256 is not None
        try:
            self.store.commit_staged(record.id, record.bundle_sha256)
        except (DeploymentError, OSError) as e:
            return StepOutcome(Event.ABANDONED, str(e))
        remove_path(self.layout.download_path(record.id))
        return StepOutcome(
            Event.ACTIVATE,
            changes={"from_slots": self.slots.get(record.model)},
            pause_point="staged+",
        )


def _failure(error: BaseException) -> dict[str, Any]:
    """The record changes that say why a step failed, when that is known."""
    from edgefleet.agent.deploy.deployment_queue import DISK_FULL

    return {"failure": DISK_FULL} if is_disk_full(error) else {}
