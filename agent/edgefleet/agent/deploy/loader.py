"""Loading a stored bundle for serving: verify again, check the target, build the session.

Every load — at daemon start, at activation, at rollback — re-verifies the
extracted directory against the trust store (signature threshold over
``manifest.json`` and the size and sha256 of every listed file; the model
bytes are checked in the same read that hands them to onnxruntime) and
re-checks the device target, so a bundle tampered with on disk or a trust
store that no longer trusts its publisher never serves.

Two ways to run the checks, same checks and same errors:

- in this process, against a loaded :class:`TrustStore` (``agent install``
  without a daemon, ``agent predict``);
- in a short-lived child process reading the trust store from ``trust_path``
  (the daemon: :mod:`edgefleet.agent.verify_process`), so the serving
  process never loads the signature code. :meth:`BundleLoader.prefetch`
  starts the child's work early (the daemon does it before importing
  onnxruntime, so both run at once); a load takes the prefetched answer when
  there is one for its bundle, and starts a fresh child otherwise.

An install verifies its bundle once: the deployment's verifying step checks the
archive (signatures, every member) while extracting it, and the activation that
follows moments later in the same process loads with that step's manifest
(:meth:`BundleLoader.load_verified`: the model bytes are still hashed against it
as they are read) instead of checking the signatures a second time. After a
restart nothing is remembered and a load checks everything again.

onnxruntime is imported on first use so that ``agent status`` stays fast.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.agent.deploy.compat import check_target
from edgefleet.agent.deploy.layout import StateLayout
from edgefleet.core.profiles import DeviceProfile

if TYPE_CHECKING:
    from edgefleet.agent.model.runtime import LoadedModel
    from edgefleet.agent.verify_process import CheckedBundle, VerifyProcess
    from edgefleet.core.trust import TrustStore


def onnxruntime_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


@dataclass
class _Prefetch:
    process: VerifyProcess
    pending: list[str]  # what the answers still in the pipe are for, in order
    answers: dict[str, CheckedBundle | bool | Exception] = field(default_factory=dict)


_TRUST = "trust store"  # the key of the trust-store check among prefetched answers


@dataclass
class BundleLoader:
    """``load(sha256) -> LoadedModel`` for bundles in the store.

    Give ``trust`` to verify in this process, or ``trust_path`` to verify in
    a child process (``trust`` is then not needed).
    """

    layout: StateLayout
    trust: TrustStore | None
    profile: DeviceProfile
    trust_path: Path | None = None
    _prefetch: _Prefetch | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.trust is None and self.trust_path is None:
            raise ValueError("BundleLoader needs a trust store or the path of one")

    @property
    def isolated(self) -> bool:
        """True when the checks run in a child process."""
        return self.trust_path is not None

    def load(self, sha256: str) -> LoadedModel:
        from edgefleet.agent.model.runtime import MODEL_MEMBER

        bundle_dir = self.layout.bundle_dir(sha256)
        model_bytes: bytes | None = None
        manifest: Any
        if self.trust_path is not None:
            checked = self._checked(sha256)
            manifest, model_bytes = checked.manifest, checked.members[MODEL_MEMBER]
        else:
            from edgefleet.agent.runtime_verify import verify_bundle_dir

            assert self.trust is not None
            manifest = verify_bundle_dir(bundle_dir, self.trust, skip=(MODEL_MEMBER,))
        return self._build(sha256, manifest, model_bytes)

    def load_verified(self, sha256: str, manifest: Any) -> LoadedModel:
        """Load a bundle whose archive this process verified for the install under way.

        ``manifest`` is what that verification returned; the model bytes are checked
        against it in the read that hands them to onnxruntime (a directory altered
        since is refused), the signatures are not checked again.
        """
        return self._build(sha256, manifest, None)

    def _build(self, sha256: str, manifest: Any, model_bytes: bytes | None) -> LoadedModel:
        from edgefleet.agent.model.runtime import load_model_dir

        bundle_dir = self.layout.bundle_dir(sha256)
        check_target(
            manifest.model,
            manifest.target,
            profile_name=self.profile.name,
            arch=self.profile.arch,
            onnxruntime_version=onnxruntime_version(),
        )
        return load_model_dir(
            bundle_dir, manifest, self.profile, bundle_sha256=sha256, model_bytes=model_bytes
        )

    __call__ = load

    # --- child-process checks ---------------------------------------------------
    def check_trust(self) -> None:
        """Fail now (AgentConfigError) when the trust store cannot be read.

        In isolated mode only the child reads the trust store; the daemon calls
        this at start so that a broken trust store stops it, as it always did.
        """
        if self.trust_path is None:
            return
        from edgefleet.agent.verify_process import VerifyProcess

        if self._take(_TRUST) is not None:
            return
        with VerifyProcess(self.trust_path) as process:
            process.check_trust()

    def prefetch(self, sha256s: Iterable[str]) -> None:
        """Start checking the trust store and these stored bundles now; loads take the answers."""
        if self.trust_path is None:
            return
        from edgefleet.agent.verify_process import MODEL_MEMBER, VerifyProcess

        with self._lock:
            self._end_prefetch_locked()
            process = VerifyProcess(self.trust_path).start()
            process.send_trust_check()
            pending = [_TRUST]
            for sha in dict.fromkeys(sha256s):
                process.send_load(self.layout.bundle_dir(sha), (MODEL_MEMBER,))
                pending.append(sha)
            self._prefetch = _Prefetch(process, pending)

    def end_prefetch(self) -> None:
        """Drop answers nobody took and let the child exit."""
        with self._lock:
            self._end_prefetch_locked()

    def _end_prefetch_locked(self) -> None:
        prefetch, self._prefetch = self._prefetch, None
        if prefetch is not None:
            prefetch.process.close()

    def _take(self, key: str) -> CheckedBundle | bool | None:
        """The prefetched answer for ``key`` (raising its error); None when there is none."""
        with self._lock:
            prefetch = self._prefetch
            if prefetch is None or (key not in prefetch.answers and key not in prefetch.pending):
                return None
            while key not in prefetch.answers:
                if not prefetch.process.running:
                    # The child died answering an earlier request: what it still
                    # owed is checked again by a fresh one.
                    self._end_prefetch_locked()
                    return None
                pending = prefetch.pending.pop(0)
                answer: CheckedBundle | bool | Exception
                try:
                    answer = (
                        prefetch.process.trust_reply()
                        if pending == _TRUST
                        else prefetch.process.reply()
                    )
                except Exception as e:  # raised to the caller that wants this answer
                    answer = e
                prefetch.answers[pending] = answer
            taken = prefetch.answers.pop(key)
            if not prefetch.pending and not prefetch.answers:
                self._end_prefetch_locked()
        if isinstance(taken, Exception):
            raise taken
        return taken

    def _checked(self, sha256: str) -> CheckedBundle:
        from edgefleet.agent.verify_process import MODEL_MEMBER, VerifyProcess

        taken = self._take(sha256)
        if taken is not None and not isinstance(taken, bool):
            return taken
        assert self.trust_path is not None
        with VerifyProcess(self.trust_path) as process:
            return process.load(self.layout.bundle_dir(sha256), (MODEL_MEMBER,))
