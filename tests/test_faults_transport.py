"""The way out fails for a while: the SMTP relay is down, the file outbox's disk is full.

The backlog waits with growing pauses (never burned into ``failed``) and drains once the
way is open again; nothing is marked sent that was not handed over or written, and a full
disk leaves no partial file behind. The real sender loop runs against the real channels.
"""

from __future__ import annotations

import asyncio
import email
import os
import subprocess
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from population import populate
from sinks import CountingRelay, smtp_env, start_relay
from support import HASH_KEY, environ_for, free_port

from notify import campaigns, store
from notify.channels.factory import email_channel
from notify.db import close_db, open_db
from notify.jobs import jobs
from notify.models import Delivery
from notify.postman import Postman
from notify.sender import Sender, running
from notify.settings import Settings, load_settings

USERS = 30


async def _newsletter(settings: Settings, users: int) -> int:
    await populate(users, HASH_KEY, cycle=("subscribed",))
    campaign = await campaigns.create(settings, campaigns.Spec(
        name="news", kind="newsletter", topic="newsletter",
        variables={"subject": "News", "body": "Hello"}), "test")
    await campaigns.send(settings, campaign.id, "test")
    return campaign.id


async def _until(condition, what: str, within: float = 20) -> None:  # noqa: ANN001
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


async def _all_tried() -> bool:
    return not await Delivery.filter(attempts=0).exists()


async def _all_sent() -> bool:
    return not await Delivery.exclude(status="sent").exists()


async def test_a_relay_that_is_down_keeps_the_backlog_waiting_then_drains_it(database_url,
                                                                             tmp_path):
    port = free_port()
    settings = load_settings(environ=environ_for(database_url, tmp_path / "data", **smtp_env(
        port, NOTIFY_RETRY_FIRST_PAUSE_SECONDS="1", NOTIFY_SMTP_TIMEOUT="2")))
    relay = CountingRelay()
    ctx = await open_db(database_url)
    channel = email_channel(settings)
    try:
        with ctx:
            await _newsletter(settings, USERS)
            sender = Sender(poll_seconds=0.1, jobs=jobs(settings, Postman(settings, channel)))
            async with running(sender):
                await _until(_all_tried, "a first try of every delivery")
                waiting = await Delivery.all()
                await asyncio.sleep(1.5)  # the relay stays down past the first retry
                controller = start_relay(relay, port)
                try:
                    await _until(_all_sent, "the backlog to drain")
                finally:
                    controller.stop()
            done = await Delivery.all()
    finally:
        await channel.close()
        await close_db(ctx)
    # While the relay was down: queued for a later try with the reason, not failed.
    assert {d.status for d in waiting} == {"queued"}
    assert all(d.last_error.startswith("connection to the relay failed") for d in waiting)
    assert all(d.next_attempt_at > d.updated_at + timedelta(seconds=0.5) for d in waiting)
    # Growing pauses, not a busy loop: about 1 s, then 2 s, so two or three tries each.
    assert {d.status for d in done} == {"sent"}
    assert all(2 <= d.attempts <= 3 for d in done), Counter(d.attempts for d in done)
    assert len(relay.received) == USERS and set(relay.received.values()) == {1}


def _mount_tmpfs(path: Path, size: str, remount: bool = False) -> None:
    options = f"remount,size={size}" if remount else f"size={size}"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True,
                   capture_output=True, timeout=30)


@pytest.fixture
def small_outbox(tmp_path: Path) -> Path:
    """The outbox directory on a 64 KiB tmpfs: a disk that fills after a few messages."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for the full-disk test needs root")
    outbox = tmp_path / "data" / "outbox"
    outbox.mkdir(parents=True)
    _mount_tmpfs(outbox, "64k")
    yield outbox
    subprocess.run(["umount", "-l", str(outbox)], check=True, timeout=30)


def _messages(outbox: Path) -> Counter:
    """Recipients of the complete messages in the outbox."""
    found: Counter = Counter()
    for path in outbox.glob("*.eml"):
        message = email.message_from_bytes(path.read_bytes())
        assert message.get_payload() and message["List-Unsubscribe"], path.name
        found[message["To"]] += 1
    return found


async def test_a_full_outbox_disk_is_a_clear_error_and_drains_once_space_is_freed(
        database_url, tmp_path, small_outbox):
    settings = load_settings(environ=environ_for(database_url, tmp_path / "data",
                                                 NOTIFY_RETRY_FIRST_PAUSE_SECONDS="1"))
    users = 40
    ctx = await open_db(database_url)
    try:
        with ctx:
            await _newsletter(settings, users)
            channel = email_channel(settings)
            sender = Sender(poll_seconds=0.1, jobs=jobs(settings, Postman(settings, channel)))
            async with running(sender):
                await _until(_all_tried, "a first try of every delivery")
                full = await Delivery.all().prefetch_related("user")
                on_disk = _messages(small_outbox)
                leftovers = [p.name for p in small_outbox.iterdir() if p.suffix != ".eml"]
                _mount_tmpfs(small_outbox, "2m", remount=True)  # space is freed
                await _until(_all_sent, "the rest to be written")
            done = await Delivery.all()
    finally:
        await close_db(ctx)
    sent = {d.user.email for d in full if d.status == "sent"}
    waiting = [d for d in full if d.status != "sent"]
    assert sent and waiting, "the disk filled up part of the way through"
    # Marked sent exactly when written, complete; no partial file under any name.
    assert on_disk == Counter(sent)
    assert leftovers == []
    assert {d.status for d in waiting} == {"queued"}
    assert all("ENOSPC" in d.last_error and str(small_outbox) in d.last_error
               for d in waiting), waiting[0].last_error
    assert all(d.next_attempt_at > store.now() - timedelta(seconds=5) for d in waiting)
    assert {d.status for d in done} == {"sent"}
    assert _messages(small_outbox) == Counter({f"u{i:06d}@example.com": 1 for i in range(users)})
    assert not [p for p in small_outbox.iterdir() if p.suffix != ".eml"]
