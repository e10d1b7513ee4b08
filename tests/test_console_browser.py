"""The console in a real browser: headless Chromium (Debian's), driven by Playwright,
against the real app on a real port with its sender running and mail going by SMTP to
aiosmtpd on loopback, on SQLite and PostgreSQL.

One scenario walks the issue's "done when": sign in (by keyboard), publish a policy
version after previewing its notice and audience, create the notice campaign, send a
test, send it and watch the live progress reach 100%, look a user up and withdraw a topic
with a note. On SQLite it also writes the README's screenshots of the dashboard and the
campaign page (docs/screenshots/), so they always show the console as it is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email
import email.policy
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiosmtpd.controller import Controller
from browsers import find_chromium, launched
from support import ADMIN, ADMIN_KEY, APP, environ_for, free_port

from notify.settings import Settings, load_settings
from notify.web.app import make_app

with contextlib.suppress(ImportError):  # find_chromium explains what to install
    from playwright.async_api import Browser, Page, expect

SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
#: Users who get the notice: verified addresses, not suppressed.
RECEIVERS = 24

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def chromium() -> str:
    return find_chromium()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(chromium: str) -> AsyncIterator[Browser]:
    # The email previews are sandboxed frames, which this Chromium puts in a process of
    # their own; headless input to the page was then now and then dropped while they
    # loaded (a click that never submitted). One process.
    async with launched(chromium, ["--disable-features=IsolateSandboxedIframes"]) as found:
        yield found


class Sink:
    """An SMTP relay on loopback that keeps what it is given."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: ANN001, N802
        self.messages.append(email.message_from_bytes(envelope.content,
                                                      policy=email.policy.default))
        return "250 2.0.0 queued"


@pytest.fixture
def relay() -> Iterator[tuple[Sink, int]]:
    sink = Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield sink, controller.port
    finally:
        controller.stop()


@dataclasses.dataclass
class Server:
    url: str
    settings: Settings
    http: aiohttp.ClientSession

    async def api(self, method: str, path: str, headers: dict = APP, **kwargs: Any) -> Any:
        async with self.http.request(method, self.url + path, headers=headers,
                                     **kwargs) as resp:
            assert resp.status < 300, await resp.text()
            return await resp.json()


@pytest_asyncio.fixture(loop_scope="module")
async def server(database_url: str, tmp_path: Path, relay) -> AsyncIterator[Server]:  # noqa: ANN001
    """The app with its sender, on a real port on 127.0.0.1, mailing through the relay."""
    _, port = relay
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings = load_settings(environ=environ_for(
        database_url, tmp_path / "data", NOTIFY_PUBLIC_URL=url, NOTIFY_EMAIL_TRANSPORT="smtp",
        NOTIFY_SMTP_HOST="127.0.0.1", NOTIFY_SMTP_PORT=str(port), NOTIFY_SMTP_TLS="none",
        NOTIFY_POSTAL_ADDRESS="Example Ltd, 1 Main St, Berlin"))
    runner = web.AppRunner(make_app(settings, start_sender=True), access_log=None)
    try:
        await runner.setup()
        await web.SockSite(runner, sock).start()
        async with aiohttp.ClientSession() as http:
            yield Server(url, settings, http)
    finally:
        await runner.cleanup()
        sock.close()


async def population(server: Server) -> None:
    """RECEIVERS users with verified addresses (a few subscribed, most never asked: a
    material notice reaches them all), one unverified, one suppressed."""
    for i in range(RECEIVERS):
        await server.api("PUT", f"/v1/users/u-{i}", json={
            "email": f"u{i}@example.com", "email_verified": True, "name": f"User {i}",
            "locale": "de" if i % 3 == 0 else "en"})
        if i % 4 == 0:
            await server.api("PUT", f"/v1/users/u-{i}/consents/email_notifications",
                             json={"subscribed": True})
    await server.api("PUT", "/v1/users/unverified", json={"email": "unverified@example.com"})
    await server.api("PUT", "/v1/users/blocked", json={"email": "blocked@example.com",
                                                       "email_verified": True})
    await server.api("POST", "/v1/suppressions", headers=ADMIN, json={
        "address": "blocked@example.com", "note": "asked by letter"})


async def test_console_publishes_sends_watches_and_withdraws(server, browser, relay,
                                                             database_url):
    sink, _ = relay
    await population(server)
    context = await browser.new_context(locale="en-US", viewport={"width": 1280,
                                                                  "height": 900})
    page = await context.new_page()
    try:
        await walk(page, server, sink, screenshots=database_url.startswith("sqlite"))
    finally:
        await context.close()


async def walk(page: Page, server: Server, sink: Sink, *, screenshots: bool) -> None:
    # Sign in with the keyboard only: the skip link, then the key field, then Enter.
    await page.goto(server.url + "/console")
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await page.keyboard.press("Tab")
    await page.keyboard.press("Tab")
    await expect(page.get_by_label("Admin API key")).to_be_focused()
    await page.keyboard.type(ADMIN_KEY)
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()

    # Publish a policy version: describe it, preview notice and audience, publish.
    await page.get_by_role("link", name="Policy versions").click()
    await page.get_by_label("Version label").fill("2026-12")
    await page.get_by_label("Title").fill("Clearer retention periods")
    await page.get_by_label("Summary of changes").fill("We keep tickets for two years.")
    await page.get_by_label("URL of the full text").fill("https://example.com/privacy/2026-12")
    await page.get_by_label("Takes effect at (UTC)").fill("2026-12-01T00:00")
    await page.get_by_label("Yes: tell everyone").check()
    await page.get_by_role("button", name="Preview the notice").click()
    await expect(page.get_by_role("heading", name="Preview: policy version 2026-12")
                 ).to_be_visible()
    await expect(page.get_by_test_id("who")).to_contain_text(
        "Everyone with a deliverable email address")
    await expect(page.get_by_test_id("eligible")).to_have_text(str(RECEIVERS))
    await expect(page.get_by_role("row", name="Left out: the address is not verified"
                                  )).to_contain_text("unverified")
    await expect(page.get_by_role("row", name="Left out: the address bounced")
                 ).to_contain_text("blocked")
    english = page.frame_locator("iframe[title*='in en']")
    await expect(english.get_by_text("We keep tickets for two years.")).to_be_visible()
    await expect(page.get_by_role("heading", name="German:")).to_be_visible()
    assert (await server.api("GET", "/v1/policies", headers=ADMIN))["policies"] == []
    await page.get_by_role("button", name="Publish version 2026-12").click()
    await expect(page.get_by_role("heading", name="Policy version 2026-12")).to_be_visible()

    # The notice campaign: create the draft (the link followed by keyboard), see its
    # audience, send a test.
    await page.get_by_role("link", name="Create the notice campaign").press("Enter")
    await page.wait_for_url("**/console/campaigns/new?**")
    await expect(page.get_by_label("Kind", exact=True)).to_have_value("policy_notice")
    await page.get_by_role("button", name="Create the draft and preview its audience").click()
    await expect(page.get_by_role("heading", name="Step 2: audience preview")).to_be_visible()
    await expect(page.get_by_test_id("eligible")).to_have_text(str(RECEIVERS))
    await page.get_by_label("Send a test to").fill("team@example.org")
    await page.get_by_role("button", name="Send test").click()
    await expect(page.get_by_role("status")).to_have_text("Test sent to team@example.org.")
    [test] = [m for m in sink.messages if m["To"] == "team@example.org"]
    assert test["Subject"].startswith("[Test]")

    # Send, and watch the live progress (polled by the page's script) reach 100%.
    await page.get_by_role("button", name="Send now").click()
    await expect(page.get_by_test_id("percent")).to_have_text("100%", timeout=60_000)
    await expect(page.locator("[data-field=status]")).to_have_text("done", timeout=30_000)
    await expect(page.locator("[data-field=counts]")).to_contain_text(f"sent: {RECEIVERS}")
    notices = [m for m in sink.messages if m["To"] != "team@example.org"]
    assert len(notices) == RECEIVERS
    assert "blocked@example.com" not in {str(m["To"]) for m in notices}
    if screenshots:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=SCREENSHOTS / "console-campaign.png", full_page=True)

    # Support: look a user up by email and withdraw a topic with a note.
    await page.get_by_role("link", name="Users").click()
    await page.get_by_label("User id or email address").fill("u4@example.com")
    await page.get_by_role("button", name="Look up").click()
    await expect(page.get_by_role("heading", name="User u-4")).to_be_visible()
    # Looked up by a POST: the address is in no URL, the page is named by the id.
    assert page.url.endswith("/console/users/u-4"), page.url
    await expect(page.get_by_test_id("state-email_notifications")).to_have_text("subscribed")
    await page.get_by_label("Topic").select_option("email_notifications")
    await page.get_by_label("Note (required)").fill("Asked by phone, ticket 4711")
    await page.get_by_role("button", name="Withdraw").click()
    await expect(page.get_by_role("status")).to_have_text("Withdrawn: 1 topic(s) changed.")
    await expect(page.get_by_test_id("state-email_notifications")).to_have_text("unsubscribed")
    await expect(page.get_by_role("row", name="support")).to_contain_text(
        "Asked by phone, ticket 4711")
    events = (await server.api("GET", "/v1/users/u-4/consent-events"))["events"]
    assert (events[0]["source"], events[0]["note"]) == ("support", "Asked by phone, ticket 4711")
    assert events[0]["actor"].startswith("admin-")

    # The dashboard counts the sends and the withdrawal, in charts with text alternatives.
    await page.get_by_role("link", name="Dashboard").click()
    await expect(page.get_by_role("img", name="Sends per minute, last 24 hours")
                 ).to_be_visible()
    await expect(page.get_by_role("img", name="Unsubscribes by source, last 30 days")
                 ).to_be_visible()
    await expect(page.get_by_role("row", name="support")).to_contain_text("1")
    if screenshots:
        await page.screenshot(path=SCREENSHOTS / "console-dashboard.png", full_page=True)

    # Everything above is in the audit log, under the signed-in key's name.
    audit = (await server.api("GET", "/v1/audit", headers=ADMIN))["entries"]
    assert [e["action"] for e in reversed(audit)] == [
        "suppression.add", "console.sign_in", "policy.publish", "campaign.create",
        "campaign.test", "campaign.send", "consent.withdraw"]
