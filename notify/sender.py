"""The sender: the background loop that ``notify worker`` runs, and ``notify serve`` too
unless ``--no-sender``.

It owns polling, stopping and error isolation; its jobs (``notify.jobs``) start scheduled
campaigns, drain the outbox, guard reputations and finish campaigns. Any number of workers
may run over one PostgreSQL database (claims are leases taken with SKIP LOCKED); SQLite
has one writer, so one sender runs per SQLite file and a second one is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

from notify.db import is_unavailable

log = logging.getLogger(__name__)

Job = Callable[[], Awaitable[int]]


class Sender:
    def __init__(self, *, poll_seconds: float = 1.0, jobs: list[Job] | None = None) -> None:
        self.poll_seconds = poll_seconds
        self.jobs = list(jobs or [])
        self.passes = 0
        #: The database was away on the last pass (a restart, a failover): sending pauses.
        self.database_away = False
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._cut_off: asyncio.TimerHandle | None = None

    async def run_once(self) -> int:
        """One pass over every job; returns how many items they handled."""
        handled = 0
        away = None
        for job in self.jobs:
            try:
                handled += await job()
            except Exception as exc:
                if is_unavailable(exc):
                    # Every other job needs the database too: end the pass, wait a poll
                    # and try again. Said once, not a traceback per pass.
                    away = exc
                    break
                # One failing job must not stop the others or the loop; it is retried on
                # the next pass.
                log.exception("sender job %s failed", getattr(job, "__name__", job))
        self.passes += 1
        if away is not None and not self.database_away:
            log.warning("database unavailable (%s: %s); sending paused until it answers",
                        type(away).__name__, away)
        elif away is None and self.database_away:
            log.warning("database available again; sending resumed")
        self.database_away = away is not None
        return 0 if away is not None else handled

    async def run(self) -> None:
        log.info("sender started (poll every %.1fs)", self.poll_seconds)
        self._task = asyncio.current_task()
        try:
            while not self._stop.is_set():
                handled = await self.run_once()
                if handled == 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), self.poll_seconds)
        finally:
            if self._cut_off is not None:
                self._cut_off.cancel()
        log.info("sender stopped")

    def stop(self, grace: float | None = None) -> None:
        """Stop after the pass in flight (its sends and their outcomes); with ``grace``,
        cut that pass off after so many seconds, counted from the first call.

        Cut off, a batch records what it had handed over (``postman.finish_batch``); the
        rest of its claims stay ``sending`` and another worker takes them over when their
        lease runs out, so nothing is lost.
        """
        self._stop.set()
        if grace is not None and self._task is not None and self._cut_off is None:
            self._cut_off = asyncio.get_running_loop().call_later(grace, self._cut, grace)

    def _cut(self, grace: float) -> None:
        if self._task is not None and not self._task.done():
            log.warning("the sender did not finish its batch within %ss of the stop; cutting "
                        "it off: its unfinished deliveries are taken over when their lease "
                        "runs out", grace)
            self._task.cancel()


class SenderBusy(Exception):
    """A second sender on one SQLite database."""


@contextlib.contextmanager
def only_sender(database_url: str) -> Iterator[None]:
    """On SQLite, hold a lock file beside the database while a sender runs.

    SQLite has one writer: a second sender would only queue behind the first and make
    both slower, so it is refused with a message saying why. PostgreSQL needs no lock.
    """
    if not database_url.startswith("sqlite://") or database_url.endswith(":memory:"):
        yield
        return
    path = Path(database_url.removeprefix("sqlite://").split("?", 1)[0] + ".sender.lock")
    handle = path.open("a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            raise SenderBusy(
                f"another sender (pid {owner}) already runs on this SQLite database; SQLite "
                "runs one sender: use PostgreSQL for more workers, or start the web "
                "service with --no-sender") from None
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the lock


@contextlib.asynccontextmanager
async def running(sender: Sender, grace: float | None = None) -> AsyncIterator[Sender]:
    """Run the sender in the background; on the way out stop it within ``grace`` seconds
    (of the first ``stop``: a web process asks at the start of its shutdown)."""
    task = asyncio.create_task(sender.run(), name="notify-sender")
    try:
        yield sender
    finally:
        sender.stop(grace)
        await asyncio.wait({task})
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()
