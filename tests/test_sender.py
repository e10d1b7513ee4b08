"""The sender loop: runs its jobs, survives a failing one, and stops when asked."""

from __future__ import annotations

import asyncio
import logging

from notify.sender import Sender, running


async def test_a_failing_job_does_not_stop_the_others(caplog):
    calls: list[str] = []

    async def broken() -> int:
        calls.append("broken")
        raise RuntimeError("boom")

    async def works() -> int:
        calls.append("works")
        return 2

    sender = Sender(jobs=[broken, works])
    with caplog.at_level(logging.ERROR):
        assert await sender.run_once() == 2
    assert calls == ["broken", "works"]
    assert "sender job broken failed" in caplog.text


async def test_runs_until_stopped_and_polls_when_idle():
    passes = asyncio.Event()
    count = 0

    async def idle() -> int:
        nonlocal count
        count += 1
        if count >= 3:
            passes.set()
        return 0

    sender = Sender(poll_seconds=0.01, jobs=[idle])
    async with running(sender):
        await asyncio.wait_for(passes.wait(), 5)
    assert sender.passes >= 3
    stopped_at = sender.passes
    await asyncio.sleep(0.05)
    assert sender.passes == stopped_at


async def test_the_app_runs_a_sender_only_when_asked(aiohttp_client, settings):
    from notify.web.app import SENDER, make_app

    quiet = await aiohttp_client(make_app(settings))
    assert SENDER not in quiet.app
    await quiet.close()
    busy = await aiohttp_client(make_app(settings, start_sender=True))
    for _ in range(100):
        if busy.app[SENDER].passes:
            break
        await asyncio.sleep(0.01)
    assert busy.app[SENDER].passes >= 1
    await busy.close()
    assert busy.app[SENDER]._stop.is_set()
