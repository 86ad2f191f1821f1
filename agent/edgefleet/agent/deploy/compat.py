"""Can this device run this bundle? Pure checks on a verified manifest.

Checked at install (before anything is staged) and again at every load:

- ``target.profile`` names this device's profile and ``target.arch`` its
  architecture (a bundle is quantized and sized for one device class; the
  hub assigns by profile, so a mismatch is a mistake or an attack);
- ``target.min_onnxruntime`` is not newer than the onnxruntime installed;
- the model name is usable as a slot name;
- the version is newer than the installed one, unless a downgrade was
  explicitly allowed (the TUF rollback attack); the same version
  under a different bundle hash is refused for the same reason.

Every failure is a :class:`BundleRejectedError` (exit 3) whose message is the
reason shown in ``status`` and sent in telemetry.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from edgefleet.agent.deploy.layout import MODEL_NAME_RE
from edgefleet.agent.errors import BundleRejectedError

_VERSION_RE = re.compile(r"^(\d+)(?:\.(\d+))?(?:\.(\d+))?")


def version_tuple(text: str) -> tuple[int, int, int]:
    """``"1.17"`` -> (1, 17, 0); ``"1.32.0+cpu"`` -> (1, 32, 0)."""
    m = _VERSION_RE.match(str(text).strip())  # a prefix: "1.32.0+cpu"
    if m is None:
        raise ValueError(f"not a version: {text!r}")
    return (int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0))


def check_target(
    model: Mapping[str, Any],
    target: Mapping[str, Any],
    *,
    profile_name: str,
    arch: str,
    onnxruntime_version: str,
) -> None:
    """Refuse a bundle built for another device class or a newer onnxruntime."""
    name = model.get("name")
    if not isinstance(name, str) or not MODEL_NAME_RE.fullmatch(name):
        raise BundleRejectedError(f"model name {name!r} cannot be installed (letters, digits, ._-)")
    wanted_profile = target.get("profile")
    if wanted_profile != profile_name:
        raise BundleRejectedError(
            f"bundle is built for profile {wanted_profile!r}, this device is {profile_name!r}"
        )
    wanted_arch = target.get("arch")
    if wanted_arch != arch:
        raise BundleRejectedError(
            f"bundle is built for arch {wanted_arch!r}, this device is {arch!r}"
        )
    needed = target.get("min_onnxruntime")
    if needed is not None:
        try:
            too_new = version_tuple(str(needed)) > version_tuple(onnxruntime_version)
        except ValueError:
            raise BundleRejectedError(
                f"bundle names an unreadable min_onnxruntime {needed!r}"
            ) from None
        if too_new:
            raise BundleRejectedError(
                f"bundle needs onnxruntime >= {needed}, this device has {onnxruntime_version}"
            )


def check_version(
    model: str,
    new_version: int,
    new_sha256: str,
    installed_version: int | None,
    installed_sha256: str | None,
    *,
    allow_downgrade: bool,
) -> None:
    """Refuse going back (or sideways to another bundle of the same version)."""
    if installed_sha256 is not None and new_sha256 == installed_sha256:
        raise BundleRejectedError(
            f"{model} version {new_version} (bundle {new_sha256[:12]}) is already active"
        )
    if installed_version is None or allow_downgrade:
        return
    if new_version < installed_version:
        raise BundleRejectedError(
            f"{model} version {new_version} is older than the installed version "
            f"{installed_version} (a downgrade must be allowed explicitly)"
        )
    if new_version == installed_version:
        raise BundleRejectedError(
            f"{model} version {new_version} is already installed from another bundle "
            "(a replacement must be allowed explicitly)"
        )
