"""docs/architecture.md is the map of the code: it names only folders and modules that exist,
and it lists every package folder there is.

A path in backticks that starts with a role (``core/signed_manifest.py``, ``agent/deploy/``)
is relative to that role's package (``core/edgefleet/core/...``).
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MAP = REPO / "docs" / "architecture.md"
ROLES = ("core", "packager", "agent", "hub", "demo")
NAMED = re.compile(r"`((?:" + "|".join(ROLES) + r")/[\w/.]*)`")


def named_paths(text: str) -> set[str]:
    return {m.group(1) for m in NAMED.finditer(text) if m.group(1).endswith((".py", "/"))}


def on_disk(named: str) -> Path:
    role, _, rest = named.partition("/")
    return REPO / role / "edgefleet" / role / rest


def package_folders() -> set[str]:
    """Every folder of a role's package that holds Python modules, as the map writes it."""
    found = set()
    for role in ROLES:
        root = REPO / role / "edgefleet" / role
        for folder in [root, *root.rglob("*")]:
            if folder.is_dir() and any(folder.glob("*.py")):
                rel = folder.relative_to(root).as_posix()
                found.add(f"{role}/" if rel == "." else f"{role}/{rel}/")
    return found


def test_the_map_names_only_folders_and_modules_that_exist() -> None:
    named = named_paths(MAP.read_text())
    assert len(named) > 50  # the map really lists the code
    missing = sorted(n for n in named if not on_disk(n).exists())
    assert missing == [], f"docs/architecture.md names what is not there: {missing}"


def test_every_package_folder_is_on_the_map() -> None:
    named = named_paths(MAP.read_text())
    unlisted = sorted(package_folders() - named)
    assert unlisted == [], f"package folders missing from docs/architecture.md: {unlisted}"


def test_the_map_names_the_seams_of_the_code() -> None:
    named = named_paths(MAP.read_text())
    for module in (
        "core/signed_manifest.py",
        "core/io_schema.py",
        "core/evidence.py",
        "core/protocol/bounds.py",
        "core/protocol/deployment_phases.py",
        "agent/deploy/deployment_queue.py",
        "agent/model/",
        "agent/endpoint/budget.py",
    ):
        assert module in named, module


def test_a_wrong_name_is_caught() -> None:
    """The check can fail: a module that does not exist is reported."""
    named = named_paths("see `core/no_such_module.py` and `hub/fleet/`")
    assert named == {"core/no_such_module.py", "hub/fleet/"}
    assert not on_disk("core/no_such_module.py").exists()
    assert on_disk("hub/fleet/").is_dir()


def test_the_glossary_gives_each_word_one_row() -> None:
    text = MAP.read_text()
    glossary = text.split("## Glossary", 1)[1].split("\n## ", 1)[0]
    words = [
        row.split("|")[1].strip()
        for row in glossary.splitlines()
        if row.startswith("| ") and not row.startswith("| word") and "---" not in row
    ]
    assert len(words) >= 20
    assert len(words) == len(set(words)), words
