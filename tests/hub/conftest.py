"""Hub store fixtures run on both engines: SQLite (a file) and PostgreSQL (a fresh
database on the session's own server, see ``postgres_server``).

``store_location`` is what ``open_store`` takes; ``any_store`` is an open store on it.
Tests using them run twice, ``[sqlite]`` and ``[postgresql]`` (marked ``postgres``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.hub.store import HubStore, open_store

ENGINES = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


@pytest.fixture(params=ENGINES)
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path | str]:
    if request.param == "sqlite":
        yield tmp_path / "hub.db"
        return
    server = request.getfixturevalue("postgres_server")
    name = server.create_database()
    yield str(server.dsn(name))
    server.drop_database(name)  # a database is ~8 MB: do not let them pile up


@pytest.fixture
def any_store(store_location: Path | str) -> Iterator[HubStore]:
    store = open_store(store_location)
    yield store
    store.close()
