"""tortoise's SQLite backend, with transactions that take the write lock when they begin.

SQLite's default ``BEGIN`` is deferred: a transaction that reads, then writes, asks for
the write lock only at its first write, and if another process committed meanwhile
SQLite answers SQLITE_BUSY at once, whatever the busy timeout (the snapshot it read is
stale, waiting cannot help). With a web process and a worker on one file, that made
one-click unsubscribes fail with "database is locked" (bench/one_click.py, two processes:
half of them). ``BEGIN IMMEDIATE`` takes the lock first, so a second writer waits its
busy timeout in line instead. Reads outside transactions are unaffected (WAL).
"""

from __future__ import annotations

import sqlite3

from tortoise.backends.base.client import TransactionContext
from tortoise.backends.sqlite.client import (
    SqliteClient,
    SqliteTransactionContext,
    SqliteTransactionWrapper,
)
from tortoise.exceptions import TransactionManagementError


class ImmediateTransactionWrapper(SqliteTransactionWrapper):
    async def begin(self) -> None:
        try:
            await self._connection.commit()
            await self._connection.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise TransactionManagementError(exc) from exc


class ImmediateSqliteClient(SqliteClient):
    def _in_transaction(self) -> TransactionContext:
        return SqliteTransactionContext(ImmediateTransactionWrapper(self), self._lock)


client_class = ImmediateSqliteClient


def get_client_class(db_info: dict) -> type[SqliteClient]:
    return ImmediateSqliteClient
