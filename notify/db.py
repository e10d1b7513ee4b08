"""Database set-up: one tortoise context per process, and the migrations in ``migrations/``.

We use tortoise-orm 1.x's own migrations rather than aerich: they are generated from the
models and turned into SQL when applied, so one ``migrations/`` folder serves SQLite and
PostgreSQL (aerich writes SQL for one backend). docs/architecture.md says more.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tortoise.backends.base.config_generator import expand_db_url
from tortoise.context import TortoiseContext
from tortoise.migrations.executor import MigrationExecutor

MODELS = ["notify.models"]
APP = "models"


def tortoise_config(database_url: str) -> dict[str, Any]:
    url = database_url
    if url.startswith("postgresql://"):
        url = "asyncpg://" + url[len("postgresql://") :]
    if url.startswith("sqlite://") and "busy_timeout" not in url:
        # A CLI import and a running server share the file: wait for the other's write
        # lock instead of failing at once with "database is locked".
        url += ("&" if "?" in url else "?") + "busy_timeout=5000"
    connection: dict[str, Any] = expand_db_url(url)
    if url.startswith("sqlite://"):
        # Write transactions begin IMMEDIATE: see notify.sqlite_backend.
        connection["engine"] = "notify.sqlite_backend"
    else:
        credentials = connection["credentials"]
        # tortoise's default pool is 5 connections a process, for every concurrent request
        # and the sender: one-click POSTs queued for a connection (bench/one_click.py:
        # +45% with 16). A URL's own ?maxsize= wins.
        credentials.setdefault("maxsize", POOL_SIZE)
        # libpq's ?host=, which tortoise drops: a directory names a Unix-domain socket,
        # ?host=/var/run/postgresql, for a server that accepts local connections only.
        host = parse_qs(urlsplit(url).query).get("host")
        if host:
            credentials["host"] = host[-1]
        credentials["connection_class"] = _pooled_connection_class()
    return {
        "connections": {"default": connection},
        "apps": {APP: {"models": MODELS, "migrations": "migrations",
                       "default_connection": "default"}},
        "use_tz": True,
        "timezone": "UTC",
    }


#: Connections per process in the PostgreSQL pool, unless the URL says ?maxsize=N.
POOL_SIZE = 16


class _OutageWithoutTraceback(logging.Filter):
    """asyncpg's pool reconnects in the background while the server is away and logs a
    traceback at every try; an outage is expected, so it becomes one line with the reason.
    Anything else keeps its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] and is_unavailable(record.exc_info[1]):
            error = record.exc_info[1]
            record.msg = f"{record.getMessage()} ({type(error).__name__}: {error})"
            record.args = None
            record.exc_info = record.exc_text = None
        return True


logging.getLogger("asyncpg.pool").addFilter(_OutageWithoutTraceback())


@functools.cache
def _pooled_connection_class() -> type:
    import asyncpg  # the postgres extra: only for a PostgreSQL URL

    class PooledConnection(asyncpg.Connection):
        """A pooled connection that skips asyncpg's reset query on release.

        The reset (RESET ALL, UNLISTEN *, CLOSE ALL, pg_advisory_unlock_all()) was a fifth
        of a preference read's time (bench/preference_reads.py). notify sets no session
        state on pooled connections: settings are SET LOCAL, the one advisory lock
        (migrations) is released explicitly, nothing LISTENs. An open transaction is
        still rolled back by asyncpg whatever this returns.
        """

        def get_reset_query(self) -> str:
            return ""

    return PooledConnection


#: For tortoise's own CLI (``tortoise makemigrations``), named in pyproject.toml.
TORTOISE_ORM = tortoise_config("sqlite://:memory:")


async def open_db(database_url: str, *, create: bool = False) -> TortoiseContext:
    """Open the database. Use the result as ``with ctx:`` where code touches models.

    ``create`` makes a missing PostgreSQL database (SQLite creates its file by itself).
    """
    config = tortoise_config(database_url)
    if create and not database_url.startswith("sqlite"):
        await _create_if_missing(database_url)
    ctx = TortoiseContext()
    try:
        with ctx:
            await ctx.init(config=config)
    except BaseException:
        await ctx.close_connections()
        raise
    return ctx


async def _create_if_missing(url: str) -> None:
    """Create the PostgreSQL database named in ``url`` unless it exists.

    Asked through the maintenance database, so no connection to a missing database is
    ever attempted (asyncpg leaves an unretrieved error behind after such an attempt).
    """
    import asyncpg  # the postgres extra; only needed for a PostgreSQL URL

    creds = tortoise_config(url)["connections"]["default"]["credentials"]
    name = creds["database"]
    conn = await asyncpg.connect(host=creds.get("host"), port=creds.get("port"),
                                 user=creds.get("user"), password=creds.get("password"),
                                 database="postgres")
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            quoted = name.replace('"', '""')
            await conn.execute(f'CREATE DATABASE "{quoted}"')
    finally:
        await conn.close()


async def close_db(ctx: TortoiseContext) -> None:
    await ctx.close_connections()


async def apply_migrations(
    ctx: TortoiseContext, progress: Callable[[str, str, str], object] | None = None
) -> list[str]:
    """Apply pending migrations; returns the names applied (empty when up to date)."""
    with ctx:
        async with _migration_lock(ctx):
            executor = MigrationExecutor(ctx.db(), {APP: TORTOISE_ORM["apps"][APP]})
            steps = await executor.plan()
            await executor.migrate(progress=progress)
    return [f"{step.migration.app_label}.{step.migration.name}" for step in steps]


#: Any fixed number: the PostgreSQL advisory lock that serialises migrations.
_MIGRATION_LOCK = 0x6E6F7469  # "noti"


@contextlib.asynccontextmanager
async def _migration_lock(ctx: TortoiseContext) -> AsyncIterator[None]:
    """Several ``notify serve`` processes starting at once migrate one after the other.

    On PostgreSQL a session advisory lock, held on one connection for the whole run; the
    others wait, then find nothing left to apply. SQLite serialises writers by itself.
    """
    db = ctx.db()
    if db.capabilities.dialect != "postgres":
        yield
        return
    async with db.acquire_connection() as connection:
        await connection.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        try:
            yield
        finally:
            await connection.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)


#: errno values of a database server that is away (refused, reset, unreachable, timed out).
_AWAY_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE,
                errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT, errno.ENOTCONN}


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says the database server is away for now.

    Tortoise 1.x passes the driver's errors through unwrapped, and wraps some in its own
    (OperationalError, TransactionManagementError), so the chain is searched. What counts:
    the server refusing or dropping the connection (asyncpg's 08xxx errors, socket errors,
    a connect timeout), the server shutting down or starting up (57P01 admin shutdown,
    57P02 crash shutdown, 57P03 "the database system is starting up"), too many connections
    (53300), and an asyncpg connection that was closed under us. A bad query is not.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if _is_away(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _is_away(exc: BaseException) -> bool:
    from tortoise.exceptions import DBConnectionError, OperationalError

    if isinstance(exc, (DBConnectionError, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError):
        # asyncio joins the failures of several addresses into one OSError without errno.
        return exc.errno in _AWAY_ERRNOS or (exc.errno is None and "connect" in str(exc).lower())
    if isinstance(exc, OperationalError) and "database is locked" in str(exc):
        return True  # SQLite: another process held the write lock past busy_timeout
    try:
        import asyncpg  # the postgres extra
    except ImportError:  # pragma: no cover - SQLite-only installations
        return False
    from asyncpg import exceptions as pg

    # 08xxx connection errors, 57xxx operator intervention (shutdown, crash, starting up,
    # cancelled), 53xxx insufficient resources (too many connections, disk full).
    if isinstance(exc, (pg.PostgresConnectionError, pg.OperatorInterventionError,
                        pg.InsufficientResourcesError)):
        return True
    # "connection is closed", "pool is closing": the connection went away mid-use. Other
    # interface errors are our own misuse, a bug to see in the log.
    if isinstance(exc, asyncpg.InterfaceError):
        return "clos" in str(exc)
    # A pooled connection whose server ended the session while it sat idle (57P01 read
    # as it was handed out) fails its next query with "cannot switch to state ...;
    # another operation is in progress" (seen in tests/test_faults.py).
    return isinstance(exc, pg._base.InternalClientError) and "another operation" in str(exc)
