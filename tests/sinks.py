"""Helpers of the fault and shutdown tests: an SMTP relay that counts what it accepted, a
prepared campaign, and one-click links."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

from aiosmtpd.controller import Controller
from population import populate
from support import HASH_KEY, environ_for, free_port, in_db
from test_cli import clean_env
from tortoise.backends.base import executor as tortoise_executor

from notify import campaigns, links
from notify.db import apply_migrations, close_db, open_db
from notify.models import Delivery, User
from notify.settings import load_settings


class CountingRelay:
    """An aiosmtpd handler that counts each recipient of each accepted message, after an
    optional pause per message (a slow or hung relay)."""

    def __init__(self, delay: float = 0.0, delays: dict[str, float] | None = None) -> None:
        self.delay = delay
        self.delays = delays or {}  # by recipient
        self.received: Counter = Counter()
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):  # noqa: ANN001, ANN201, N802
        delay = self.delays.get(envelope.rcpt_tos[0], self.delay)
        if delay:
            await asyncio.sleep(delay)
        with self.lock:
            self.received.update(envelope.rcpt_tos)
        return "250 2.0.0 queued"

    @property
    def total(self) -> int:
        with self.lock:
            return sum(self.received.values())


def start_relay(handler: CountingRelay, port: int | None = None) -> Controller:
    controller = Controller(handler, hostname="127.0.0.1", port=port or free_port())
    controller.start()
    return controller


def smtp_env(port: int, **extra: str) -> dict[str, str]:
    return {"NOTIFY_EMAIL_TRANSPORT": "smtp", "NOTIFY_SMTP_HOST": "127.0.0.1",
            "NOTIFY_SMTP_PORT": str(port), "NOTIFY_SMTP_TLS": "none",
            "NOTIFY_POSTAL_ADDRESS": "Example Ltd, 1 Main St, Springfield", **extra}


def prepare(url: str, data: Path, users: int, **extra: str) -> tuple[dict[str, str], int]:
    """A migrated database with ``users`` newsletter subscribers and a sending newsletter
    campaign; returns the processes' environment and the campaign's id."""
    env = clean_env(**environ_for(url, data, **extra))
    settings = load_settings(environ=env)
    # Tortoise caches compiled SQL across contexts: a test on the other backend before this
    # one would hand over its placeholders (conftest's database_url does the same).
    tortoise_executor.EXECUTOR_CACHE.clear()

    async def go() -> int:
        ctx = await open_db(url, create=True)
        try:
            await apply_migrations(ctx)
            with ctx:
                await populate(users, HASH_KEY, cycle=("subscribed",))
                campaign = await campaigns.create(settings, campaigns.Spec(
                    name="load", kind="newsletter", topic="newsletter",
                    variables={"subject": "News", "body": "Hello"}), "test")
                await campaigns.send(settings, campaign.id, "test")
                return campaign.id
        finally:
            await close_db(ctx)

    return env, asyncio.run(go())


def one_click_paths(url: str, env: dict[str, str], count: int, *,
                    last: bool = False) -> dict[str, str]:
    """The one-click unsubscribe path of the newsletter for the first ``count`` users (the
    last ``count`` with ``last``), by the user's email address."""
    settings = load_settings(environ=env)

    async def go() -> dict[str, str]:
        found = {}
        for user in await User.all().order_by("-id" if last else "id").limit(count):
            link = (await links.for_message(settings, user, "newsletter", 0))[1]
            found[user.email] = link.removeprefix(settings.public_url)
        return found

    return in_db(url, go)


def post_one_click(base: str, path: str, accept: str | None = None
                   ) -> tuple[int | None, dict[str, str], str]:
    """POST an RFC 8058 one-click; (status, headers, body), status None without an answer."""
    request = urllib.request.Request(base + path, data=b"List-Unsubscribe=One-Click",
                                     method="POST")
    if accept:
        request.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None, {}, ""  # the server was not there, or died mid-request


def statuses(url: str, campaign_id: int) -> Counter:
    async def read() -> Counter:
        return Counter(await Delivery.filter(campaign_id=campaign_id)
                       .values_list("status", flat=True))
    return in_db(url, read)


def wait_for(condition, what: str, timeout: float = 60.0, alive=()) -> None:  # noqa: ANN001
    """Poll ``condition`` until true; fail early if a process in ``alive`` exits."""
    import pytest

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        for proc in alive:
            if proc.poll() is not None:
                pytest.fail(f"a process exited early with {proc.returncode} while waiting "
                            f"for {what}")
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")
