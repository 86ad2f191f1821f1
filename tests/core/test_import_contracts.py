"""The import contracts of docs/architecture.md hold, and they would catch a violation.

The contracts live in ``.importlinter`` at the repository root; import-linter
builds the import graph statically (function-level imports count too).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The console script may not be on PATH; calling the click command directly works anywhere.
LINT_IMPORTS = (
    "import sys; from importlinter.cli import lint_imports_command; "
    "sys.exit(lint_imports_command())"
)


def lint_imports(cwd: Path, config: Path, pythonpath: Path | None = None) -> tuple[int, str]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    result = subprocess.run(
        # --no-cache: do not leave an .import_linter_cache folder in the repository.
        [sys.executable, "-c", LINT_IMPORTS, "--config", str(config), "--no-cache", "--no-logo"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result.returncode, result.stdout + result.stderr


@pytest.mark.subprocess
def test_repository_keeps_its_import_contracts() -> None:
    code, output = lint_imports(REPO, REPO / ".importlinter")
    assert code == 0, output
    assert "4 kept, 0 broken" in output, output


def write_module(root: Path, dotted: str, source: str = "") -> None:
    path = root.joinpath(*dotted.split(".")) / "__init__.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source, encoding="utf-8")


@pytest.mark.subprocess
def test_contracts_catch_violations(tmp_path: Path) -> None:
    # A miniature edgefleet that breaks every contract, found first on PYTHONPATH.
    src = tmp_path / "src"
    write_module(src, "edgefleet.core", "")
    write_module(src, "edgefleet.core.bad", "def f():\n    import edgefleet.hub\n")
    write_module(src, "edgefleet.agent", "import edgefleet.packager\n")
    write_module(src, "edgefleet.agent.model", "from sklearn import tree\n")
    write_module(src, "edgefleet.packager", "")
    write_module(src, "edgefleet.hub", "")
    write_module(src, "edgefleet.hub.uses_demo", "import edgefleet.demo\n")
    write_module(src, "edgefleet.demo", "")
    config = tmp_path / ".importlinter"
    shutil.copy(REPO / ".importlinter", config)

    code, output = lint_imports(tmp_path, config, pythonpath=src)
    assert code != 0, output
    assert "0 kept, 4 broken" in output, output
    assert "edgefleet.core.bad -> edgefleet.hub" in output
    assert "edgefleet.agent -> edgefleet.packager" in output
    assert "edgefleet.agent.model -> sklearn" in output
    assert "edgefleet.hub.uses_demo -> edgefleet.demo" in output
