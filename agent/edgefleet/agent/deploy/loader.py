"""Loading a stored bundle for serving: verify again, check the target, build the session.

Every load — at daemon start, at activation, at rollback — re-verifies the
extracted directory against the trust store (signature threshold over
``manifest.json`` and the size and sha256 of every listed file; the model
bytes are checked in the same read that hands them to onnxruntime) and
re-checks the device target, so a bundle tampered with on disk or a trust
store that no longer trusts its publisher never serves.

onnxruntime is imported on first use so that ``agent status`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgefleet.agent.deploy.compat import check_target
from edgefleet.agent.deploy.layout import StateLayout
from edgefleet.core.profiles import DeviceProfile
from edgefleet.core.trust import TrustStore


def onnxruntime_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


@dataclass
class BundleLoader:
    """``load(sha256) -> LoadedModel`` for bundles in the store."""

    layout: StateLayout
    trust: TrustStore
    profile: DeviceProfile

    def load(self, sha256: str) -> Any:
        from edgefleet.agent.runtime import MODEL_MEMBER, load_model_dir
        from edgefleet.agent.runtime_verify import verify_bundle_dir

        bundle_dir = self.layout.bundle_dir(sha256)
        manifest = verify_bundle_dir(bundle_dir, self.trust, skip=(MODEL_MEMBER,))
        check_target(
            manifest.model,
            manifest.target,
            profile_name=self.profile.name,
            arch=self.profile.arch,
            onnxruntime_version=onnxruntime_version(),
        )
        return load_model_dir(bundle_dir, manifest, self.profile, bundle_sha256=sha256)

    __call__ = load
