"""From the accepted directive to installed bundles: the ledger, the download, the hand-over.

:class:`Convergence` performs the steps :func:`~edgefleet.agent.sync.reconcile.next_action`
picks (refuse, download, install, rollback), keeps ``sync/ledger.json`` and at most one
:class:`~edgefleet.agent.sync.download.BundleDownload`, and settles ledger entries from
the deployment driver's outcomes. It does no MQTT itself: fetch requests leave through
the ``send_fetch`` callback, and ``may_request`` says whether asking is allowed now.
Every method runs on the sync worker (one caller at a time).

Invariants: the ledger is saved after every change of an entry; a download is dropped
(files included) as soon as no unmet assignment names its bundle; at most one request
is with the driver at a time (see :mod:`edgefleet.agent.sync.reconcile`). A handed-over
install's file stays in ``sync/downloads`` (the driver links it, nothing is copied)
until its outcome is known.

A full disk is not a verdict on the bundle: a download or an install that ran out of
space removes what it had written, moves the entry to ``waiting`` with a retry time
from ``SyncSettings.disk_full_backoff`` (one attempt more each time), records a
``failed_disk_full`` event and logs one line; the state report says
``failed_disk_full`` for the model meanwhile, and the old version keeps serving.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgefleet.agent.deploy.atomic_files import atomic_write_json, is_disk_full, remove_path
from edgefleet.agent.sync.deployer import Deployer
from edgefleet.agent.sync.download import BundleDownload, DownloadMismatchError
from edgefleet.agent.sync.reconcile import (
    DONE,
    DOWNLOADING,
    FAILED,
    HANDED,
    REFUSED,
    WAITING,
    Action,
    Key,
    LedgerEntry,
    Step,
    key_of,
    next_action,
    prune,
    wanted,
)
from edgefleet.agent.sync.reporter import DownloadView, EventSink, event_body, record_event
from edgefleet.agent.sync.settings import SyncSettings
from edgefleet.core.directive import Assignment, Directive
from edgefleet.core.protocol import ChunkFrame, FetchRequest
from edgefleet.core.protocol.deployment_phases import DeploymentPhase

log = logging.getLogger("edgefleet.agent.sync")


class LedgerFile:
    """``sync/ledger.json``; an unreadable file is logged and starts an empty ledger."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[Key, LedgerEntry]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            entries = [LedgerEntry.from_dict(d) for d in data.get("entries", [])]
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            log.error("%s unreadable (%s); starting with an empty ledger", self.path, e)
            remove_path(self.path)
            return {}
        return {e.key: e for e in entries}

    def save(self, ledger: dict[Key, LedgerEntry]) -> None:
        atomic_write_json(self.path, {"entries": [e.to_dict() for e in ledger.values()]})


class Convergence:
    def __init__(
        self,
        settings: SyncSettings,
        deployer: Deployer,
        events: EventSink | None,
        sync_dir: Path,
        *,
        send_fetch: Callable[[FetchRequest], None],
        may_request: Callable[[float], bool],
    ) -> None:
        self.settings = settings
        self.deployer = deployer
        self.events = events
        self.downloads_dir = Path(sync_dir) / "downloads"
        self._file = LedgerFile(Path(sync_dir) / "ledger.json")
        self.ledger: dict[Key, LedgerEntry] = self._file.load()
        self.directive: Directive | None = None  # the accepted one, expired or not
        self.download: BundleDownload | None = None
        self.counts: Counter[str] = Counter()
        self._in_force = True
        self._send_fetch = send_fetch
        self._may_request = may_request

    # --- directive and driver -------------------------------------------------------
    def adopt(self, directive: Directive) -> None:
        """A newly accepted directive: forget entries for assignments it no longer names."""
        self.directive = directive
        pruned = prune(self.ledger, [key_of(a) for a in wanted(directive)])
        if pruned != self.ledger:
            self.ledger = pruned
            self._save()

    def settle_handed(self, now: float) -> None:
        """Turn the driver's outcomes into ledger states."""
        changed = False
        for key, entry in list(self.ledger.items()):
            if entry.state != HANDED or entry.request_id is None:
                continue
            outcome = self.deployer.outcome(entry.request_id)
            if outcome is None:
                continue
            changed = True
            if outcome.disk_full:
                self._wait_for_space(entry, now, outcome.reason or "disk full")
                continue
            state = DONE if outcome.succeeded else FAILED
            self.ledger[key] = entry.moved(state, now, result=outcome.state, reason=outcome.reason)
            self._drop_handed_file(entry.bundle_sha256)
            log.info(
                "deployment %s of %s:%d ended %s",
                entry.request_id,
                entry.model,
                entry.version,
                outcome.state,
            )
        if changed:
            self._save()

    def advance(self, now: float, *, in_force: bool | None = None) -> None:
        """Take steps toward the directive until one has to wait.

        ``in_force`` False (an expired directive) starts nothing new; None keeps the
        last answer.
        """
        if in_force is not None:
            self._in_force = in_force
        directive = self.directive if self._in_force else None
        for _ in range(16):  # each REFUSE settles one assignment; bound the loop anyway
            download = self.download
            action = next_action(
                directive,
                self.deployer.installed(),
                self.ledger,
                deployer_idle=self.deployer.idle(),
                downloaded={download.sha} if download and download.finished else set(),
                max_bundle_bytes=self.settings.max_bundle_bytes,
                now=now,
            )
            self._drop_unwanted_download(action)
            if action is None or action.step is Step.WAIT:
                return
            if not self._perform(action, now):
                return

    @property
    def busy(self) -> bool:
        return any(e.state in (DOWNLOADING, HANDED, WAITING) for e in self.ledger.values())

    def _drop_unwanted_download(self, action: Action | None) -> None:
        download = self.download
        if download is None:
            return
        if action is not None and action.assignment.bundle_sha256 == download.sha:
            return
        if any(e.state == HANDED and e.bundle_sha256 == download.sha for e in self.ledger.values()):
            # The deployment thread may still link this file: it goes with the outcome.
            if action is not None and action.step is Step.DOWNLOAD:
                download.close()
                self.download = None
            return
        log.info("dropping the download of %s: no longer wanted", download.sha[:12])
        download.discard()
        self.download = None

    def _perform(self, action: Action, now: float) -> bool:
        """Do one step; True when the next step may be looked at right away."""
        a = action.assignment
        if action.step is Step.REFUSE:
            self._settle(a, REFUSED, now, result="rejected", reason=action.reason)
            log.warning("assignment %s:%d refused: %s", a.model, a.version, action.reason)
            self._event(a, "rejected", now, action.reason)
            return True
        if action.step is Step.DOWNLOAD:
            self._start_download(a, self.ledger.get(key_of(a)), now)
        elif action.step is Step.ROLLBACK:
            request_id = self.deployer.submit_rollback(a.model, now=now, rollout_id=a.rollout_id)
            self._settle(a, HANDED, now, request_id=request_id)
            log.info("%s:%d is the previous slot: rollback %s", a.model, a.version, request_id)
        elif action.step is Step.INSTALL:
            download = self.download
            assert download is not None and download.finished
            request_id = self.deployer.submit_install(
                download.final_path,
                allow_downgrade=a.allow_downgrade,
                now=now,
                rollout_id=a.rollout_id,
            )
            # The file stays here until the outcome: the driver links it (no copy), and
            # after a full disk it is handed over again from here.
            self._settle(a, HANDED, now, request_id=request_id, retry_at=None)
            log.info("%s:%d handed to the deployment driver (%s)", a.model, a.version, request_id)
        return False

    def _settle(self, a: Assignment, state: str, now: float, **changes: Any) -> None:
        entry = self.ledger.get(key_of(a))
        if entry is None:
            entry = LedgerEntry.start(a, state, now, **changes)
        else:
            entry = entry.moved(state, now, **changes)
        self.ledger[key_of(a)] = entry
        self._save()

    def _save(self) -> None:
        try:
            self._file.save(self.ledger)
        except OSError as e:
            if not is_disk_full(e):
                raise
            # The ledger in memory is right; it is written again with the next change.
            log.error("sync ledger not saved: disk full (%s)", e)

    def _drop_handed_file(self, sha: str) -> None:
        """The deployment of ``sha`` ended: the sync's file of it is not needed any more."""
        download = self.download
        if download is not None and download.sha == sha:
            download.discard()
            self.download = None
        else:
            remove_path(self.downloads_dir / f"{sha}.efb")

    def _wait_for_space(self, entry: LedgerEntry, now: float, reason: str) -> None:
        """The disk was full for ``entry``: wait (growing delays), keep the bundle file."""
        policy = replace(self.settings.disk_full_backoff, attempt=entry.retries)
        delay = policy.delay_s()
        self.ledger[entry.key] = entry.moved(
            WAITING,
            now,
            reason=reason,
            result=DeploymentPhase.FAILED_DISK_FULL.value,
            retries=entry.retries + 1,
            retry_at=now + delay,
            request_id=None,
        )
        self._save()
        log.warning(
            "%s:%d: disk full (%s); trying again in %.0f s (attempt %d)",
            entry.model,
            entry.version,
            reason,
            delay,
            entry.retries + 2,
        )
        assignment = self._assignment_for(entry.bundle_sha256)
        if assignment is not None:
            self._event(
                assignment,
                DeploymentPhase.FAILED_DISK_FULL.value,
                now,
                reason,
                retry_in_s=round(delay, 1),
            )

    def _event(
        self, a: Assignment, state: str, now: float, reason: str | None, **extra: Any
    ) -> None:
        body = event_body(
            a.model,
            state,
            now,
            version=a.version,
            reason=reason,
            rollout_id=a.rollout_id,
            bundle_sha256=a.bundle_sha256,
            extra=extra,
        )
        record_event(self.events, body)

    # --- download ---------------------------------------------------------------------
    def download_view(self) -> DownloadView | None:
        d = self.download
        return None if d is None else DownloadView(d.sha, d.fraction)

    def _start_download(self, a: Assignment, entry: LedgerEntry | None, now: float) -> None:
        if self.download is not None and self.download.sha == a.bundle_sha256:
            return
        s = self.settings
        download = BundleDownload(
            self.downloads_dir,
            a.bundle_sha256,
            a.size,
            chunk_size=s.chunk_size,
            window_bytes=s.window_bytes,
            request_timeout_s=s.request_timeout_s,
            persist_every=s.persist_every_chunks,
        )
        self.download = download
        resumed = download.resumed_chunks > 0 or download.finished
        if not download.complete:
            # Ask first, write the ledger while the chunks travel: on a slow SD card the
            # fsyncs would otherwise delay every download start.
            self.request_chunks(now)
        if entry is None or entry.state != DOWNLOADING:
            attempts = (entry.attempts if entry else 0) + (0 if resumed else 1)
            self._settle(a, DOWNLOADING, now, attempts=max(1, attempts))
        log.info(
            "downloading %s:%d (%s, %d bytes)%s",
            a.model,
            a.version,
            a.bundle_sha256[:12],
            a.size,
            f", resuming with {download.resumed_chunks} chunks held" if resumed else "",
        )
        if download.finished:
            self.advance(now)
        elif download.complete:
            self._finish_download(download, now)

    def request_chunks(self, now: float) -> None:
        download = self.download
        if download is None or download.finished or not self._may_request(now):
            return
        while (request := download.next_request(now)) is not None:
            self._send_fetch(request)
            self.counts["fetches"] += 1

    def forget_outstanding(self) -> None:
        if self.download is not None:
            self.download.forget_outstanding()

    def accept(self, frame: ChunkFrame, now: float) -> bool:
        """Store a chunk; True when it was new. Finishes the download on its last chunk.

        ProtocolError (the hub's) passes through for the caller to count.
        """
        download = self.download
        if download is None or download.finished:
            self.counts["chunks_unexpected"] += 1
            return False
        try:
            if not download.accept(frame):
                return False
        except OSError as e:
            if not is_disk_full(e):
                raise
            self._download_out_of_space(download, now, e)
            return False
        if download.complete:
            self._finish_download(download, now)
        else:
            self.request_chunks(now)
        return True

    def _download_out_of_space(self, download: BundleDownload, now: float, error: OSError) -> None:
        """A chunk did not fit on the disk: drop the partial download, wait, start over."""
        download.discard()  # the part file is what filled the disk: free it
        self.download = None
        entry = next(
            (
                e
                for e in self.ledger.values()
                if e.bundle_sha256 == download.sha and e.state == DOWNLOADING
            ),
            None,
        )
        if entry is not None:
            self._wait_for_space(entry, now, f"download of {download.sha[:12]}: {error}")

    def _finish_download(self, download: BundleDownload, now: float) -> None:
        entry = next(
            (
                e
                for e in self.ledger.values()
                if e.bundle_sha256 == download.sha and e.state == DOWNLOADING
            ),
            None,
        )
        assignment = self._assignment_for(download.sha)
        try:
            download.finish()
        except DownloadMismatchError as e:
            self.download = None
            attempts = entry.attempts if entry else 1
            if assignment is None:
                return
            if attempts < self.settings.max_download_attempts:
                log.warning("%s; fetching it again (attempt %d)", e, attempts + 1)
                self._event(assignment, "download_failed", now, str(e))
                self._settle(assignment, DOWNLOADING, now, attempts=attempts + 1)
                self._start_download(assignment, self.ledger[key_of(assignment)], now)
                return
            log.error("%s; giving up on this bundle", e)
            self._settle(assignment, FAILED, now, result="rejected", reason=str(e))
            self._event(assignment, "rejected", now, str(e))
            return
        summary = download.summary()
        log.info(
            "downloaded %s: %d bytes received for %d (%d duplicate)",
            download.sha[:12],
            summary["received_bytes"],
            summary["size"],
            summary["duplicate_bytes"],
        )
        if assignment is not None:
            self._event(assignment, "downloaded", now, None, transfer=summary)
        self.advance(now)

    def _assignment_for(self, sha: str) -> Assignment | None:
        if self.directive is None:
            return None
        return next((a for a in self.directive.assignments if a.bundle_sha256 == sha), None)

    def close(self) -> None:
        """At a clean stop: keep every chunk received (the worker is not running)."""
        download = self.download
        if download is None or download.finished:
            return
        try:
            download.persist()
        except OSError as e:
            log.warning("download progress not saved at stop: %s", e)
        download.close()
