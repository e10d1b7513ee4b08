"""Requests in flight at a shutdown: finished within NOTIFY_SHUTDOWN_TIMEOUT, then cut off.

On SIGTERM aiohttp stops listening and waits ``shutdown_timeout`` for the requests in
flight; then it only cancels their reading of the body and waits as long again before it
cancels their tasks. A request stuck on a hung relay would hold the process for twice the
timeout, past what a process manager allows. So the requests' tasks are tracked here and
cancelled when the timeout runs out, and the process exits within about the timeout.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

log = logging.getLogger(__name__)

TASKS = web.AppKey("in_flight", set)


@web.middleware
async def track(request: web.Request, handler) -> web.StreamResponse:  # noqa: ANN001
    tasks = request.app[TASKS]
    task = asyncio.current_task()
    tasks.add(task)
    try:
        return await handler(request)
    finally:
        tasks.discard(task)


def cut_off_at_shutdown(app: web.Application, timeout: float) -> None:
    app[TASKS] = set()

    async def start_the_clock(app: web.Application) -> None:
        asyncio.get_running_loop().call_later(timeout, _cancel, app[TASKS], timeout)

    app.on_shutdown.append(start_the_clock)


def _cancel(tasks: set[asyncio.Task], timeout: float) -> None:
    if tasks:
        log.warning("%d requests still running %ss after the shutdown began: cut off",
                    len(tasks), timeout)
    for task in list(tasks):
        task.cancel()
