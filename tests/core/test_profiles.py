"""Device profiles: the shipped set, the search order, errors naming file and field, the wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from edgefleet.core.errors import ProfileError, UsageError, exit_code_for
from edgefleet.core.profiles import (
    ENV_VAR,
    MIB,
    DeviceProfile,
    list_profiles,
    load_profile,
    shipped_profiles_dir,
)

REPO = Path(__file__).resolve().parents[2]
SHIPPED = (
    "generic-arm64",
    "jetson-orin-nano",
    "rpi-zero-2w",
    "rpi4-arm64",
    "rpi5",
    "x86_64-gateway",
)
ROLE_PACKAGES = ("core", "packager", "agent", "hub")


@pytest.fixture(autouse=True)
def no_env_profiles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)


def write_copy(directory: Path, name: str, *, description: str | None = None) -> Path:
    """Copy a shipped profile into ``directory``, optionally with a marker description."""
    directory.mkdir(parents=True, exist_ok=True)
    text = (REPO / "device-profiles" / f"{name}.toml").read_text(encoding="utf-8")
    if description is not None:
        lines = [
            f'description = "{description}"' if line.startswith("description =") else line
            for line in text.splitlines()
        ]
        text = "\n".join(lines) + "\n"
    path = directory / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


# --- the shipped set -------------------------------------------------------------------


def test_every_shipped_profile_loads() -> None:
    profiles = list_profiles()
    assert tuple(p.name for p in profiles) == SHIPPED
    for profile in profiles:
        assert profile.source.parent == shipped_profiles_dir()
        assert load_profile(profile.name) == profile
        assert profile.execution_providers[-1] == "CPUExecutionProvider"
        assert profile.intra_op_threads <= profile.cores
        assert profile.storage_budget_mb * MIB >= 2 * profile.max_bundle_bytes


def test_shipped_profiles_say_what_the_hardware_is() -> None:
    zero = load_profile("rpi-zero-2w")
    assert (zero.arch, zero.cores, zero.memory_mb) == ("aarch64", 4, 512)
    jetson = load_profile("jetson-orin-nano")
    assert jetson.execution_providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert jetson.quantization == "fp16"
    gateway = load_profile("x86_64-gateway")
    assert (gateway.arch, gateway.int8_format) == ("x86_64", "U8S8")
    for name in ("rpi-zero-2w", "rpi4-arm64", "rpi5", "generic-arm64"):
        profile = load_profile(name)
        assert (profile.arch, profile.quantization, profile.int8_format) == (
            "aarch64",
            "int8",
            "S8S8",
        )
    # Smaller boards never get bigger budgets than larger ones.
    sizes = [load_profile(n).max_bundle_bytes for n in ("rpi-zero-2w", "rpi4-arm64", "rpi5")]
    assert sizes == sorted(sizes)


def test_manifest_target_and_json_view() -> None:
    profile = load_profile("rpi5")
    assert profile.manifest_target() == {
        "profile": "rpi5",
        "arch": "aarch64",
        "min_onnxruntime": profile.min_onnxruntime,
        "execution_providers": ["CPUExecutionProvider"],
        "session_options": {
            "intra_op_num_threads": profile.intra_op_threads,
            "inter_op_num_threads": profile.inter_op_threads,
        },
    }
    view = profile.to_dict()
    assert view["source"] == str(profile.source)
    assert view["execution_providers"] == ["CPUExecutionProvider"]
    assert profile.min_onnxruntime_tuple >= (1, 17)


def test_profile_is_frozen() -> None:
    profile = load_profile("rpi5")
    with pytest.raises(AttributeError):
        profile.cores = 8  # type: ignore[misc]


# --- search order ---------------------------------------------------------------------


def test_profiles_dir_wins_over_env_which_wins_over_shipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli_dir, env_dir = tmp_path / "cli", tmp_path / "env"
    write_copy(cli_dir, "rpi5", description="from cli")
    write_copy(env_dir, "rpi5", description="from env")
    write_copy(env_dir, "rpi4-arm64", description="from env")
    monkeypatch.setenv(ENV_VAR, str(env_dir))

    assert load_profile("rpi5", cli_dir).description == "from cli"
    assert load_profile("rpi5").description == "from env"
    assert load_profile("rpi4-arm64", cli_dir).description == "from env"
    # Not in either directory: the shipped copy.
    assert load_profile("jetson-orin-nano", cli_dir).source.parent == shipped_profiles_dir()

    listed = {p.name: p.description for p in list_profiles(cli_dir)}
    assert set(listed) == set(SHIPPED)
    assert listed["rpi5"] == "from cli"
    assert listed["rpi4-arm64"] == "from env"


def test_env_var_holds_several_directories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    write_copy(first, "rpi5", description="first")
    write_copy(second, "rpi5", description="second")
    custom = write_copy(second, "rpi5", description="second")
    (second / "my-board.toml").write_text(
        custom.read_text(encoding="utf-8").replace('name = "rpi5"', 'name = "my-board"'),
        encoding="utf-8",
    )
    monkeypatch.setenv(ENV_VAR, os.pathsep.join([str(first), str(second)]))
    assert load_profile("rpi5").description == "first"
    assert load_profile("my-board").name == "my-board"


def test_load_by_path(tmp_path: Path) -> None:
    path = write_copy(tmp_path, "rpi-zero-2w", description="by path")
    assert load_profile(str(path)).description == "by path"
    assert load_profile(str(path)).source == path


def test_unknown_name_lists_known_profiles() -> None:
    with pytest.raises(ProfileError, match="unknown device profile 'rpi9'.*rpi5"):
        load_profile("rpi9")


def test_missing_directories_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ProfileError, match="profiles directory .*nowhere does not exist"):
        load_profile("rpi5", tmp_path / "nowhere")
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "gone"))
    with pytest.raises(ProfileError, match=rf"\${ENV_VAR}: .*gone does not exist"):
        load_profile("rpi5")


def test_profile_errors_are_usage_errors() -> None:
    assert issubclass(ProfileError, UsageError)
    assert exit_code_for(ProfileError("x")) == 2


# --- bad files --------------------------------------------------------------------------


def mutate(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


RPI5 = (REPO / "device-profiles" / "rpi5.toml").read_text(encoding="utf-8")
BAD_FILES = {
    "cores-zero": (mutate(RPI5, "cores = 4", "cores = 0"), "'cores' must be a positive integer"),
    "cores-string": (
        mutate(RPI5, "cores = 4", 'cores = "4"'),
        "'cores' must be a positive integer",
    ),
    "cores-bool": (
        mutate(RPI5, "cores = 4", "cores = true"),
        "'cores' must be a positive integer",
    ),
    "missing-field": (mutate(RPI5, "window_s = 300", ""), "'telemetry.window_s' is missing"),
    "unknown-field": (
        mutate(RPI5, "window_s = 300", "window_s = 300\nwindow_sec = 60"),
        "'telemetry.window_sec' is not known",
    ),
    "unknown-top-level": ("vendor = 'x'\n" + RPI5, "field 'vendor' is not known"),
    "section-not-table": (
        "telemetry = 3\n" + RPI5[: RPI5.index("[telemetry]")],
        "[telemetry] must be a table",
    ),
    "bad-arch": (mutate(RPI5, 'arch = "aarch64"', 'arch = "armv7l"'), "'arch' must be one of"),
    "bad-quantization": (
        mutate(RPI5, 'quantization = "int8"', 'quantization = "int4"'),
        "'quantization' must be one of",
    ),
    "bad-int8-format": (
        mutate(RPI5, 'int8_format = "S8S8"', 'int8_format = "U8U8"'),
        "'int8_format' must be one of",
    ),
    "fp16-on-cpu": (
        mutate(RPI5, 'quantization = "int8"', 'quantization = "fp16"'),
        "'quantization' is fp16 but no execution provider runs fp16",
    ),
    "no-cpu-fallback": (
        mutate(
            RPI5, '["CPUExecutionProvider"]', '["CPUExecutionProvider", "CUDAExecutionProvider"]'
        ),
        "'execution_providers' must end with CPUExecutionProvider",
    ),
    "empty-providers": (
        mutate(RPI5, '["CPUExecutionProvider"]', "[]"),
        "'execution_providers' must be a non-empty list",
    ),
    "bad-provider-name": (
        mutate(RPI5, '["CPUExecutionProvider"]', '["cuda", "CPUExecutionProvider"]'),
        "'execution_providers' has 'cuda'",
    ),
    "too-many-threads": (
        mutate(RPI5, "intra_op_threads = 3", "intra_op_threads = 8"),
        "'intra_op_threads' (8) must not exceed 'cores' (4)",
    ),
    "storage-too-small": (
        mutate(RPI5, "storage_budget_mb = 4096", "storage_budget_mb = 200"),
        "'storage_budget_mb' (200) must hold two bundles",
    ),
    "bad-version": (
        mutate(RPI5, 'min_onnxruntime = "1.17"', 'min_onnxruntime = "latest"'),
        "'min_onnxruntime' must be a version",
    ),
    "name-mismatch": (
        mutate(RPI5, 'name = "rpi5"', 'name = "rpi6"'),
        "'name' ('rpi6') must match the file name ('rpi5')",
    ),
    "bad-name": (mutate(RPI5, 'name = "rpi5"', 'name = "Rpi 5"'), "'name' must be lowercase"),
    "not-toml": ("cores = = 4\n", "not valid TOML"),
}


@pytest.mark.parametrize(("text", "message"), BAD_FILES.values(), ids=BAD_FILES.keys())
def test_bad_file_names_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "rpi5.toml").write_text(text, encoding="utf-8")
    with pytest.raises(ProfileError) as caught:
        load_profile("rpi5", tmp_path)
    error = str(caught.value)
    assert error.startswith(f"{tmp_path / 'rpi5.toml'}: "), error
    assert message in error
    assert "\n" not in error


def test_one_bad_file_fails_the_listing(tmp_path: Path) -> None:
    (tmp_path / "broken.toml").write_text("name = 'broken'\n", encoding="utf-8")
    with pytest.raises(ProfileError, match=r"broken\.toml: field 'description' is missing"):
        list_profiles(tmp_path)


def test_dataclass_validates_without_a_file() -> None:
    good = load_profile("rpi5")
    values = {**{f: getattr(good, f) for f in good.__dataclass_fields__}, "window_s": -5}
    with pytest.raises(ProfileError, match="field 'window_s' must be a positive integer"):
        DeviceProfile(**values)


# --- the wheel --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # No build isolation: use the hatchling already installed by the dev extra, offline.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--quiet",
            "--wheel-dir",
            str(out),
            str(REPO),
        ],
        check=True,
        timeout=120,
    )
    (built,) = out.glob("edgefleet-*.whl")
    return built


@pytest.mark.subprocess
def test_wheel_ships_profiles_and_type_markers(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for profile in SHIPPED:
        assert f"edgefleet/core/device_profiles/{profile}.toml" in names
    for package in ROLE_PACKAGES:
        assert f"edgefleet/{package}/py.typed" in names
    # A namespace package: no edgefleet/__init__.py.
    assert "edgefleet/__init__.py" not in names


@pytest.mark.subprocess
def test_installed_wheel_finds_its_own_profiles(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    env["PYTHONPATH"] = str(site)
    code = (
        "from edgefleet.core.profiles import list_profiles, shipped_profiles_dir\n"
        "print(shipped_profiles_dir())\n"
        "print(','.join(p.name for p in list_profiles()))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    shipped, names = result.stdout.splitlines()
    assert Path(shipped) == site / "edgefleet" / "core" / "device_profiles"
    assert tuple(names.split(",")) == SHIPPED
