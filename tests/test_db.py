"""notify.db: the database URL's forms."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

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
    if not (Path(SOCKET_DIR) / ".s.PGSQL.5432").exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and PostgreSQL has no socket in {SOCKET_DIR}")
        pytest.skip(f"PostgreSQL has no Unix-domain socket in {SOCKET_DIR}")
    url = PG_ADMIN.replace("postgresql://", "postgres://") + f"?host={SOCKET_DIR}"

    async def peer() -> list[dict]:
        ctx = await open_db(url)
        try:
            with ctx:
                from tortoise import connections
                return await connections.get("default").execute_query_dict(
                    "SELECT inet_server_addr() AS addr")
        finally:
            await close_db(ctx)

    # No server address: the connection is not TCP, it is the Unix-domain socket.
    assert asyncio.run(peer()) == [{"addr": None}]
