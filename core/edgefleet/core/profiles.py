"""Device profiles: what a class of device can run, and within which budgets.

A profile is one TOML file in a profiles directory, named after the profile
(``rpi5.toml`` holds ``name = "rpi5"``). The packager reads it to pick the
quantization and to size the bundle; the agent reads it for onnxruntime
session options and its storage and telemetry budgets; the hub reads it to
group devices.

Invariants a loaded :class:`DeviceProfile` guarantees:

- every field has the documented type and range (``bool`` is not an integer);
- the execution-provider list is non-empty, has no duplicates and ends with
  ``CPUExecutionProvider`` so a session can always be created;
- thread counts are at least 1 and ``intra_op_threads`` never exceeds ``cores``;
- ``fp16`` is only preferred when an accelerator provider is listed (fp16 on
  the onnxruntime CPU provider is slower than fp32, not faster);
- the storage budget holds two bundles (active and previous slot) plus the
  telemetry budget;
- ``agent_memory_budget_mb`` (optional in the file: a quarter of ``memory_mb``
  when absent) is at most ``memory_mb``; the agent derives its endpoint limits
  from it (docs/agent-endpoint.md).

Search order for a profile name (docs/device-profiles.md): the ``profiles_dir`` argument
(``--profiles DIR``), then every directory in ``$EDGEFLEET_PROFILES``
(``os.pathsep``-separated), then the copy shipped in the wheel. The first
directory holding ``NAME.toml`` wins, so a custom directory may override one
shipped profile and still see the others.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from edgefleet.core.errors import ProfileError

ENV_VAR = "EDGEFLEET_PROFILES"

ARCHES = ("aarch64", "x86_64")
QUANTIZATIONS = ("int8", "fp16", "none")
INT8_FORMATS = ("S8S8", "U8S8")
CPU_PROVIDER = "CPUExecutionProvider"
# Providers that can run fp16 kernels efficiently; the CPU provider cannot.
FP16_PROVIDERS = frozenset(
    {"CUDAExecutionProvider", "TensorrtExecutionProvider", "DmlExecutionProvider"}
)

MIB = 1024 * 1024
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_VERSION_RE = re.compile(r"^\d+\.\d+(\.\d+)?$")
_PROVIDER_RE = re.compile(r"^[A-Za-z0-9]+ExecutionProvider$")

# TOML layout: section -> keys. Key names equal the dataclass field names so an
# error message names the same field the user sees in the file.
_LAYOUT: Mapping[str, tuple[str, ...]] = {
    "": ("name", "description"),
    "hardware": ("arch", "cores", "memory_mb", "storage_budget_mb"),
    "onnxruntime": (
        "min_onnxruntime",
        "execution_providers",
        "intra_op_threads",
        "inter_op_threads",
    ),
    "model": ("quantization", "int8_format", "max_bundle_bytes"),
    "telemetry": ("telemetry_budget_bytes", "window_s", "max_requests_per_s"),
    "agent": ("agent_memory_budget_mb",),
}
#: Requests per second the hub believes one device serves at most (telemetry bounds).
DEFAULT_MAX_REQUESTS_PER_S = 1000
# Keys a profile file may leave out; the dataclass default applies.
_OPTIONAL = frozenset({"max_requests_per_s", "agent_memory_budget_mb"})


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True)
class DeviceProfile:
    """One device class. Sizes in bytes or MiB as the field name says; times in seconds."""

    name: str
    description: str
    arch: str
    cores: int
    memory_mb: int
    storage_budget_mb: int
    execution_providers: tuple[str, ...]
    intra_op_threads: int
    inter_op_threads: int
    quantization: str
    int8_format: str
    max_bundle_bytes: int
    telemetry_budget_bytes: int
    window_s: int
    min_onnxruntime: str
    source: Path
    max_requests_per_s: int = DEFAULT_MAX_REQUESTS_PER_S
    # Resident memory the agent process may use (MiB); 0 = not given: a quarter of memory_mb.
    agent_memory_budget_mb: int = 0

    def __post_init__(self) -> None:
        if self.agent_memory_budget_mb == 0 and _positive_int(self.memory_mb):
            object.__setattr__(self, "agent_memory_budget_mb", max(1, self.memory_mb // 4))
        # Messages start with "field '...'" so the loader can prefix the file name.
        if not isinstance(self.name, str) or not _NAME_RE.fullmatch(self.name):
            raise ProfileError(
                "field 'name' must be lowercase letters, digits, '-' and '_' (at most 63 characters)"
            )
        if not isinstance(self.description, str):
            raise ProfileError("field 'description' must be a string")
        if self.arch not in ARCHES:
            raise ProfileError(f"field 'arch' must be one of {', '.join(ARCHES)}")
        for name in (
            "cores",
            "memory_mb",
            "storage_budget_mb",
            "intra_op_threads",
            "inter_op_threads",
            "max_bundle_bytes",
            "telemetry_budget_bytes",
            "window_s",
            "max_requests_per_s",
            "agent_memory_budget_mb",
        ):
            if not _positive_int(getattr(self, name)):
                raise ProfileError(f"field '{name}' must be a positive integer")
        if self.agent_memory_budget_mb > self.memory_mb:
            raise ProfileError(
                f"field 'agent_memory_budget_mb' ({self.agent_memory_budget_mb}) must not "
                f"exceed 'memory_mb' ({self.memory_mb})"
            )
        if self.intra_op_threads > self.cores:
            raise ProfileError(
                f"field 'intra_op_threads' ({self.intra_op_threads}) must not exceed "
                f"'cores' ({self.cores})"
            )
        self._check_providers()
        if self.quantization not in QUANTIZATIONS:
            raise ProfileError(f"field 'quantization' must be one of {', '.join(QUANTIZATIONS)}")
        if self.int8_format not in INT8_FORMATS:
            raise ProfileError(f"field 'int8_format' must be one of {', '.join(INT8_FORMATS)}")
        if self.quantization == "fp16" and not FP16_PROVIDERS.intersection(
            self.execution_providers
        ):
            raise ProfileError(
                "field 'quantization' is fp16 but no execution provider runs fp16 "
                f"(need one of {', '.join(sorted(FP16_PROVIDERS))})"
            )
        if not isinstance(self.min_onnxruntime, str) or not _VERSION_RE.fullmatch(
            self.min_onnxruntime
        ):
            raise ProfileError("field 'min_onnxruntime' must be a version like \"1.17\"")
        needed = 2 * self.max_bundle_bytes + self.telemetry_budget_bytes
        if self.storage_budget_mb * MIB < needed:
            raise ProfileError(
                f"field 'storage_budget_mb' ({self.storage_budget_mb}) must hold two bundles "
                f"plus the telemetry budget ({-(-needed // MIB)} MiB)"
            )
        if not isinstance(self.source, Path):
            raise ProfileError("field 'source' must be a path")

    def _check_providers(self) -> None:
        providers = self.execution_providers
        if not isinstance(providers, tuple) or not providers:
            raise ProfileError("field 'execution_providers' must be a non-empty list")
        for provider in providers:
            if not isinstance(provider, str) or not _PROVIDER_RE.fullmatch(provider):
                raise ProfileError(
                    f"field 'execution_providers' has {provider!r}, "
                    "expected names like 'CPUExecutionProvider'"
                )
        if len(set(providers)) != len(providers):
            raise ProfileError("field 'execution_providers' lists a provider twice")
        if providers[-1] != CPU_PROVIDER:
            raise ProfileError(f"field 'execution_providers' must end with {CPU_PROVIDER}")

    @property
    def min_onnxruntime_tuple(self) -> tuple[int, ...]:
        """``"1.17"`` -> ``(1, 17)``, for comparing with an installed version."""
        return tuple(int(part) for part in self.min_onnxruntime.split("."))

    def session_options(self) -> dict[str, int]:
        """The onnxruntime ``SessionOptions`` attributes this profile fixes."""
        return {
            "intra_op_num_threads": self.intra_op_threads,
            "inter_op_num_threads": self.inter_op_threads,
        }

    def manifest_target(self) -> dict[str, Any]:
        """The ``target`` section of a bundle manifest built for this profile."""
        return {
            "profile": self.name,
            "arch": self.arch,
            "min_onnxruntime": self.min_onnxruntime,
            "execution_providers": list(self.execution_providers),
            "session_options": self.session_options(),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view (``--json`` output)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Path):
                value = str(value)
            out[f.name] = value
        return out


def _flatten(path: Path, document: Mapping[str, Any]) -> dict[str, Any]:
    """Map the sectioned TOML document onto dataclass field names, refusing unknown keys."""
    flat: dict[str, Any] = {}
    for key, value in document.items():
        if key in _LAYOUT and key != "":
            if not isinstance(value, dict):
                raise ProfileError(f"{path}: [{key}] must be a table")
            allowed = _LAYOUT[key]
            for sub_key, sub_value in value.items():
                if sub_key not in allowed:
                    # Unknown keys are refused: a misspelt budget must not silently
                    # fall back to nothing.
                    raise ProfileError(f"{path}: field '{key}.{sub_key}' is not known")
                flat[sub_key] = sub_value
        elif key in _LAYOUT[""]:
            flat[key] = value
        else:
            raise ProfileError(f"{path}: field '{key}' is not known")
    for section, keys in _LAYOUT.items():
        for key in keys:
            if key not in flat and key not in _OPTIONAL:
                where = f"{section}.{key}" if section else key
                raise ProfileError(f"{path}: field '{where}' is missing")
    return flat


def parse_profile(path: Path, text: str) -> DeviceProfile:
    """Build a profile from TOML ``text``; ``path`` is used for messages and ``source``."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"{path}: not valid TOML: {e}") from e
    flat = _flatten(path, document)
    if flat.get("agent_memory_budget_mb") == 0:  # 0 only means "absent" in the constructor
        raise ProfileError(f"{path}: field 'agent_memory_budget_mb' must be a positive integer")
    providers = flat["execution_providers"]
    if isinstance(providers, list):
        flat["execution_providers"] = tuple(providers)
    try:
        profile = DeviceProfile(source=path, **flat)
    except ProfileError as e:
        raise ProfileError(f"{path}: {e}") from None
    if profile.name != path.stem:
        raise ProfileError(
            f"{path}: field 'name' ({profile.name!r}) must match the file name ({path.stem!r})"
        )
    return profile


def read_profile_file(path: Path) -> DeviceProfile:
    """Load one profile file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ProfileError(f"{path}: no such profile file") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ProfileError(f"{path}: cannot read profile: {e}") from e
    return parse_profile(path, text)


def shipped_profiles_dir() -> Path:
    """The profiles installed with edgefleet.

    In a wheel they live next to this module (``edgefleet/core/device_profiles``,
    force-included by the build). An editable install has no such folder, so
    fall back to the repository's ``device-profiles/``.
    """
    here = Path(__file__).resolve().parent
    installed = here / "device_profiles"
    if installed.is_dir():
        return installed
    # core/edgefleet/core/profiles.py -> repository root is three levels above the package.
    return here.parents[2] / "device-profiles"


def search_path(profiles_dir: Path | None = None) -> list[Path]:
    """Directories searched for profiles, first wins; explicit ones must exist."""
    dirs: list[Path] = []
    if profiles_dir is not None:
        if not Path(profiles_dir).is_dir():
            raise ProfileError(f"profiles directory {profiles_dir} does not exist")
        dirs.append(Path(profiles_dir))
    for entry in os.environ.get(ENV_VAR, "").split(os.pathsep):
        if not entry:
            continue
        if not Path(entry).is_dir():
            raise ProfileError(f"${ENV_VAR}: profiles directory {entry} does not exist")
        dirs.append(Path(entry))
    shipped = shipped_profiles_dir()
    if shipped.is_dir():
        dirs.append(shipped)
    return dirs


def _looks_like_path(name_or_path: str) -> bool:
    return name_or_path.endswith(".toml") or "/" in name_or_path or os.sep in name_or_path


def load_profile(name_or_path: str, profiles_dir: Path | None = None) -> DeviceProfile:
    """Load a profile by name (searched as the module docstring says) or by file path."""
    if _looks_like_path(name_or_path):
        return read_profile_file(Path(name_or_path))
    if not _NAME_RE.fullmatch(name_or_path):
        raise ProfileError(f"{name_or_path!r} is not a profile name")
    dirs = search_path(profiles_dir)
    for directory in dirs:
        candidate = directory / f"{name_or_path}.toml"
        if candidate.is_file():
            return read_profile_file(candidate)
    known = sorted({p.stem for d in dirs for p in d.glob("*.toml")})
    searched = ", ".join(str(d) for d in dirs) or "nothing"
    raise ProfileError(
        f"unknown device profile {name_or_path!r} (known: {', '.join(known) or 'none'}; "
        f"searched {searched})"
    )


def list_profiles(profiles_dir: Path | None = None) -> list[DeviceProfile]:
    """Every profile on the search path, sorted by name; earlier directories shadow later ones."""
    found: dict[str, DeviceProfile] = {}
    for directory in search_path(profiles_dir):
        for path in sorted(directory.glob("*.toml")):
            if path.stem not in found:
                found[path.stem] = read_profile_file(path)
    return [found[name] for name in sorted(found)]
