"""notify.db: the database URL's forms."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from support import PG_ADMIN

from notify.db import close_db, open_db, tortoise_config

SOCKET_DIR = "/var/run/postgresql"


def credentials(url: str) -> dict:
    return tortoise_config(url)["connections"]["default"]["credentials"]


def test_libpq_host_parameter_names_the_host_or_socket_directory():
    assert credentials("postgres://u@localhost:5432/db?host=/run/pg")["host"] == "/run/pg"
    assert credentials("postgresql://u@localhost/db?host=db.internal")["host"] == "db.internal"
    assert credentials("postgres://u@localhost:5432/db")["host"] == "localhost"


@pytest.mark.postgres
def test_a_postgres_url_with_a_socket_directory_connects_through_the_socket(postgres_ready):
    # The admin URL's server, reached through its socket when it has one here (Debian's
    # directory); a server elsewhere, or one without local connections, is not this test's.
    admin = urlsplit(PG_ADMIN)
    port = admin.port or 5432
    if not (Path(SOCKET_DIR) / f".s.PGSQL.{port}").exists():
        pytest.skip(f"PostgreSQL has no Unix-domain socket {SOCKET_DIR}/.s.PGSQL.{port}")
    query = "&".join(filter(None, [admin.query, f"host={SOCKET_DIR}"]))
    url = urlunsplit(("postgres", admin.netloc, admin.path, query, ""))

    async def peer() -> list[dict]:
        try:
            ctx = await open_db(url)
        except asyncpg.InvalidAuthorizationSpecificationError as exc:
            pytest.skip(f"the socket refuses this user ({exc}): no trust for local connections")
        try:
            with ctx:
                from tortoise import connections
                return await connections.get("default").execute_query_dict(
                    "SELECT inet_server_addr() AS addr")
        finally:
            await close_db(ctx)

    # No server address: the connection is not TCP, it is the Unix-domain socket.
    assert asyncio.run(peer()) == [{"addr": None}]
