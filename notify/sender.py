"""The sender: the background loop that ``notify worker`` runs, and ``notify serve`` too
unless ``--no-sender``.

It owns polling, stopping and error isolation. The delivery outbox it will drain (claim
due deliveries, re-check eligibility, send, record) is built by the campaigns issue; until
then each pass finds no work. Any number of workers may run over one PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

log = logging.getLogger(__name__)

Job = Callable[[], Awaitable[int]]


class Sender:
    def __init__(self, *, poll_seconds: float = 1.0, jobs: list[Job] | None = None) -> None:
        self.poll_seconds = poll_seconds
        self.jobs = list(jobs or [])
        self.passes = 0
        self._stop = asyncio.Event()

    async def run_once(self) -> int:
        """One pass over every job; returns how many items they handled."""
        handled = 0
        for job in self.jobs:
            try:
                handled += await job()
            except Exception:
                # One failing job must not stop the others or the loop; it is retried on
                # the next pass.
                log.exception("sender job %s failed", getattr(job, "__name__", job))
        self.passes += 1
        return handled

    async def run(self) -> None:
        log.info("sender started (poll every %.1fs)", self.poll_seconds)
        while not self._stop.is_set():
            handled = await self.run_once()
            if handled == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.poll_seconds)
        log.info("sender stopped")

    def stop(self) -> None:
        self._stop.set()


@contextlib.asynccontextmanager
async def running(sender: Sender) -> AsyncIterator[Sender]:
    task = asyncio.create_task(sender.run(), name="notify-sender")
    try:
        yield sender
    finally:
        sender.stop()
        await task
