"""Which errors mean "the database is away for now" (a 503 and a paused sender) and which
are bugs (a 500 with its traceback in our log). The fault tests meet these for real."""

from __future__ import annotations

import errno

import pytest
from asyncpg import exceptions as pg
from tortoise.exceptions import DBConnectionError, IntegrityError, OperationalError

from notify.db import is_unavailable


def _raised(outer: BaseException, cause: BaseException) -> BaseException:
    try:
        try:
            raise cause
        except BaseException as inner:
            raise outer from inner
    except BaseException as exc:  # noqa: BLE001 - the chain is what is tested
        return exc


@pytest.mark.parametrize("exc", [
    ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed"),
    ConnectionResetError(errno.ECONNRESET, "reset by peer"),
    OSError("Multiple exceptions: [Errno 111] Connect call failed ('::1', 5432)"),
    TimeoutError(),
    DBConnectionError("can't connect"),
    pg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    pg.AdminShutdownError("terminating connection due to administrator command"),
    pg.CannotConnectNowError("the database system is starting up"),
    pg.CrashShutdownError("terminating connection because of crash of another process"),
    pg.TooManyConnectionsError("sorry, too many clients already"),
    pg.InterfaceError("cannot call Transaction.rollback(): the underlying connection is "
                      "closed"),
    pg._base.InternalClientError("cannot switch to state 12; another operation (2) is in "
                                 "progress"),
    OperationalError("database is locked"),
    _raised(OperationalError("wrapped"), pg.AdminShutdownError("shutdown")),
    _raised(ValueError("while rolling back"), ConnectionResetError(errno.ECONNRESET, "x")),
], ids=lambda exc: type(exc).__name__)
def test_an_outage_is_unavailable(exc):
    assert is_unavailable(exc)


@pytest.mark.parametrize("exc", [
    ValueError("a bug"),
    KeyError("user"),
    IntegrityError("duplicate key"),
    OperationalError("no such table: users"),
    pg.UndefinedColumnError("column does not exist"),
    pg.InterfaceError("cannot perform operation: another operation is in progress"),
    FileNotFoundError(errno.ENOENT, "No such file"),
    PermissionError(errno.EACCES, "Permission denied"),
], ids=lambda exc: type(exc).__name__)
def test_a_bug_is_not_unavailable(exc):
    assert not is_unavailable(exc)
