"""Shared fixtures. Every database test runs twice: on SQLite and on PostgreSQL.

PostgreSQL is the real server on 127.0.0.1:5432 (``NOTIFY_TEST_POSTGRES`` overrides the
admin URL). Each run creates its own throwaway databases and drops them at the end. When
the server cannot be reached the PostgreSQL variants skip with a message, except under
``CI=true``, where that fails the run.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from support import APP, PG_ADMIN, TABLES, environ_for
from tortoise.backends.base import executor as tortoise_executor

from notify.db import apply_migrations, close_db, open_db
from notify.settings import Settings, load_settings
from notify.web.app import make_app
from notify.web.endpoints import DB


def pg_url(database: str) -> str:
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + database


async def _pg_admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _postgres_unavailable() -> str | None:
    try:
        asyncio.run(_pg_admin("SELECT 1"))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"PostgreSQL at {PG_ADMIN} is unreachable ({exc}); set NOTIFY_TEST_POSTGRES"
    return None


@pytest.fixture(scope="session")
def postgres_ready() -> None:
    reason = _postgres_unavailable()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def fresh_pg_database(postgres_ready: None) -> Iterator[object]:
    """A factory of empty PostgreSQL databases, all dropped at the end of the run."""
    created: list[str] = []

    def make() -> str:
        name = f"notify_test_{uuid.uuid4().hex[:12]}"
        asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
        created.append(name)
        return pg_url(name)

    yield make
    for name in created:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _migrate(url: str) -> None:
    ctx = await open_db(url)
    try:
        await apply_migrations(ctx)
    finally:
        await close_db(ctx)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file; each test gets a copy."""
    path = tmp_path_factory.mktemp("template") / "notify.sqlite3"
    asyncio.run(_migrate(f"sqlite://{path}"))
    return path


@pytest.fixture(scope="session")
def pg_migrated(fresh_pg_database) -> str:  # noqa: ANN001
    """One migrated PostgreSQL database for the run; tables are emptied after each test."""
    url = fresh_pg_database()
    asyncio.run(_migrate(url))
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    # Tortoise caches compiled SQL per connection name across contexts; a cache filled on
    # one backend would hand its placeholders to the other.
    tortoise_executor.EXECUTOR_CACHE.clear()
    if request.param == "sqlite":
        target = tmp_path / "notify.sqlite3"
        shutil.copy(request.getfixturevalue("sqlite_template"), target)
        yield f"sqlite://{target}"
        return
    url = request.getfixturevalue("pg_migrated")
    yield url
    tables = ", ".join(TABLES)
    asyncio.run(_pg_admin_on(url, f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a database with no tables at all (the SQLite file does not exist yet)."""
    tortoise_executor.EXECUTOR_CACHE.clear()
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'empty.sqlite3'}"
    return request.getfixturevalue("fresh_pg_database")()


async def _pg_admin_on(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url.replace("asyncpg://", "postgres://"), timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return load_settings(environ=environ_for(database_url, tmp_path / "data"))


@pytest.fixture
async def client(aiohttp_client, settings: Settings):  # noqa: ANN001, ANN201
    return await aiohttp_client(make_app(settings))


@pytest.fixture
def orm(client):  # noqa: ANN001, ANN201
    """The app's database context: ``with orm: await User.all()`` in a test."""
    return client.app[DB]


@pytest.fixture
async def alice(client) -> AsyncIterator[dict]:  # noqa: ANN001
    """A user with an email and a phone."""
    resp = await client.put("/v1/users/alice", json={
        "email": "alice@example.com", "email_verified": True,
        "phone": "+4915123456789", "locale": "de", "name": "Alice",
    }, headers=APP)
    assert resp.status == 201, await resp.text()
    yield await resp.json()


@pytest.fixture(scope="session")
def private_pg() -> Iterator[object]:
    """A PostgreSQL server of this run's own, for tests that stop and crash it (the shared
    one on 5432 is never touched). Needs Debian's initdb and pg_ctl."""
    from pgserver import PrivatePostgres, binaries

    bindir = binaries()
    if bindir is None:
        reason = ("no PostgreSQL server binaries in /usr/lib/postgresql/*/bin for the fault "
                  "tests: apt-get install postgresql")
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        pytest.skip(reason)
    server = PrivatePostgres(bindir)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.remove()
