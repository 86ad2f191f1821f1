"""The sdist and the wheel: built, checked by twine, installed with each extra in a clean venv.

Built from a copy of the tracked source tree with a ``static`` and a ``templates``
directory added under ``hub/edgefleet/hub``: package data ships because whole package
directories are included, so assets added later need no packaging change (and this test
fails if someone starts listing files one by one).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from edgefleet.core import __version__

ROOT = Path(__file__).resolve().parents[1]
PROFILES = {p.name for p in (ROOT / "device-profiles").glob("*.toml")}
ASSETS = ("edgefleet/hub/static/probe.css", "edgefleet/hub/templates/probe.html")
# extra -> a command that needs it, run from the installed venv
EXTRAS = {
    "": ["-c", "import edgefleet.core.profiles as p; print(p.load_profile('rpi4-arm64').name)"],
    "agent": ["-c", "import onnxruntime, paho.mqtt, edgefleet.agent.config"],
    "hub": ["-c", "import edgefleet.hub.service, edgefleet.hub.embedded_broker"],
    "packager": ["-c", "import skl2onnx, edgefleet.packager"],
}


def run(*args: str | Path, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=900
    )
    assert result.returncode == 0, f"{args}: {result.stdout[-2000:]}{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("pkg")
    src = base / "src"
    tracked = run("git", "ls-files", "-z", cwd=ROOT).split("\0")
    for name in filter(None, tracked):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    for asset in ASSETS:
        path = src / "hub" / asset
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("/* probe */\n")
    out = base / "dist"
    run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, src)
    return {
        "wheel": next(out.glob("*.whl")),
        "sdist": next(out.glob("*.tar.gz")),
    }


@pytest.mark.slow
def test_twine_check_passes(dists: dict[str, Path]) -> None:
    output = run(sys.executable, "-m", "twine", "check", "--strict", *dists.values())
    assert output.count("PASSED") == 2, output


@pytest.mark.slow
def test_the_version_comes_from_one_place(dists: dict[str, Path]) -> None:
    assert dists["wheel"].name == f"edgefleet-{__version__}-py3-none-any.whl"
    assert dists["sdist"].name == f"edgefleet-{__version__}.tar.gz"
    assert "\nversion = " not in (ROOT / "pyproject.toml").read_text()


@pytest.mark.slow
def test_both_carry_profiles_and_package_data(dists: dict[str, Path]) -> None:
    wheel = set(zipfile.ZipFile(dists["wheel"]).namelist())
    assert {f"edgefleet/core/device_profiles/{p}" for p in PROFILES} <= wheel
    assert set(ASSETS) <= wheel
    assert not [n for n in wheel if "__pycache__" in n or n.startswith("tests/")]
    with tarfile.open(dists["sdist"]) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    assert {f"device-profiles/{p}" for p in PROFILES} <= names
    assert {f"hub/{a}" for a in ASSETS} <= names
    assert {"CHANGELOG.md", "README.md", "pyproject.toml"} <= names


@pytest.mark.slow
@pytest.mark.parametrize("extra", sorted(EXTRAS))
def test_wheel_installs_in_a_clean_venv(dists: dict[str, Path], tmp_path: Path, extra: str) -> None:
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    spec = f"{dists['wheel']}[{extra}]" if extra else str(dists["wheel"])
    run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", spec)
    assert run(venv / "bin" / "edgefleet", "--version").split()[-1] == __version__
    run(venv / "bin" / "python", *EXTRAS[extra], cwd=tmp_path)
