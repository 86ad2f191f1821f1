"""The PostgreSQL test server: its own port and folder, an unprivileged user, and a crash
(kill) it comes back from on the same port with its data."""

from __future__ import annotations

import os
import pwd

import psycopg
import pytest

from edgefleet.core.testing.postgres import TEST_USER, PostgresServer

pytestmark = pytest.mark.postgres


def test_server_runs_as_an_unprivileged_user_on_its_own_port(
    postgres_server: PostgresServer,
) -> None:
    assert postgres_server.port != 5432 and postgres_server.host == "127.0.0.1"
    assert postgres_server.workdir is not None and postgres_server.running
    pid = postgres_server._postmaster_pid()
    assert pid is not None
    owner = pwd.getpwuid(os.stat(f"/proc/{pid}").st_uid).pw_name
    assert owner != "root"
    if os.geteuid() == 0:
        assert owner == TEST_USER


def test_a_killed_server_comes_back_on_the_same_port_with_its_data(
    postgres_server: PostgresServer,
) -> None:
    url = postgres_server.dsn(postgres_server.create_database())
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (x INTEGER)")
        conn.execute("INSERT INTO t VALUES (7)")
    port = postgres_server.port
    postgres_server.kill()
    assert not postgres_server.running
    postgres_server.start()
    assert postgres_server.port == port
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT x FROM t").fetchall() == [(7,)]


def test_a_taken_port_is_refused() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        server = PostgresServer(port=busy.getsockname()[1])
        try:
            with pytest.raises(RuntimeError, match="already in use"):
                server.start()
        finally:
            server.remove()
