"""The public pages in a real browser: headless Chromium, driven by Playwright, against the
real app on a real TCP port, on SQLite and PostgreSQL, with JavaScript on and off.

The pages carry no script (the CSP forbids it), so both modes must behave alike; running
them without JavaScript proves that nothing depends on it.

Chromium is Debian's (/usr/bin/chromium), not Playwright's download. Without it, or
without the playwright package, these tests skip with a message; under ``CI=true`` they
fail instead.

All tests of this module share one event loop (``loop_scope="module"``) so that they can
share one browser: a Playwright connection belongs to the loop that opened it. Each test
still gets its own app, database and browser context (cookies, cache, JavaScript switch).
"""

from __future__ import annotations

import contextlib
import dataclasses
import email
import email.policy
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from browsers import find_chromium, launched
from support import APP

from notify.settings import Settings
from notify.web.app import make_app

with contextlib.suppress(ImportError):  # find_chromium explains what to install
    from playwright.async_api import Browser, Locator, Page, expect

LABELS = {
    "email_notifications": "Email notifications",
    "sms_notifications": "SMS notifications",
    "newsletter": "Newsletter",
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.asyncio(loop_scope="module")


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> str:
    return find_chromium()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(chromium: str) -> AsyncIterator[Browser]:
    async with launched(chromium) as found:
        yield found


@pytest_asyncio.fixture(loop_scope="module", params=[True, False], ids=["js", "nojs"])
async def page(browser: Browser, request: pytest.FixtureRequest) -> AsyncIterator[Page]:
    """A fresh browser context (English browser), JavaScript on or off."""
    context = await browser.new_context(java_script_enabled=request.param, locale="en-US")
    try:
        yield await context.new_page()
    finally:
        await context.close()


@dataclasses.dataclass
class Server:
    url: str
    settings: Settings
    http: aiohttp.ClientSession

    async def api(self, method: str, path: str, **kwargs: Any) -> Any:
        async with self.http.request(method, self.url + path, headers=APP, **kwargs) as resp:
            assert resp.status < 300, await resp.text()
            return await resp.json()

    async def user(self, user_id: str, **fields: Any) -> dict:
        body = {"email": f"{user_id}@example.com", "email_verified": True,
                "phone": "+4915123456789", "name": user_id.title(), **fields}
        return await self.api("PUT", f"/v1/users/{user_id}", json=body)

    async def links(self, user_id: str) -> dict:
        return await self.api("GET", f"/v1/users/{user_id}/links")

    async def states(self, user_id: str) -> dict[str, str | None]:
        found = await self.api("GET", f"/v1/users/{user_id}/consents")
        return {c["topic"]: c["state"] for c in found["consents"]}

    async def events(self, user_id: str) -> list[dict]:
        """The user's ledger, newest first."""
        return (await self.api("GET", f"/v1/users/{user_id}/consent-events",
                               params={"limit": 100}))["events"]


@pytest_asyncio.fixture(loop_scope="module")
async def server(settings: Settings) -> AsyncIterator[Server]:
    """The app on a real port on 127.0.0.1, with NOTIFY_PUBLIC_URL pointing at it.

    The socket is bound before the app is built, so the links in pages and emails carry
    the real port, and no other process can take the port in between.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings = dataclasses.replace(settings, public_url=url)
    runner = web.AppRunner(make_app(settings), access_log=None)
    try:
        await runner.setup()
        await web.SockSite(runner, sock).start()
        async with aiohttp.ClientSession() as http:
            yield Server(url, settings, http)
    finally:
        await runner.cleanup()
        sock.close()


# -- helpers -------------------------------------------------------------------------------


def checkbox(page: Page, topic: str) -> Locator:
    return page.get_by_role("checkbox", name=LABELS[topic], exact=True)


async def expect_ticked(page: Page, ticked: set[str]) -> None:
    for topic in LABELS:
        if topic in ticked:
            await expect(checkbox(page, topic)).to_be_checked()
        else:
            await expect(checkbox(page, topic)).not_to_be_checked()


def confirmation_link(outbox: Path, server_url: str) -> str:
    """The /confirm/ link from the only email in the outbox (its text/plain part)."""
    [path] = sorted(outbox.glob("*.eml"))
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert message["To"].addresses[0].addr_spec == "alice@example.com"
    text = message.get_body(preferencelist=("plain",)).get_content()
    [url] = re.findall(r"https?://\S+/confirm/\S+", text)
    assert url.startswith(server_url + "/confirm/")
    return url


# -- scenarios -----------------------------------------------------------------------------


async def test_preference_center_saves_and_unsubscribes_from_everything(server, page):
    await server.user("alice")
    preferences = (await server.links("alice"))["preferences"]
    assert preferences.startswith(server.url + "/preferences/")

    await page.goto(preferences)
    await expect(page).to_have_title("Your preferences")
    await expect(page.get_by_role("heading", name="Your preferences")).to_be_visible()
    await expect(page.get_by_role("status")).to_have_count(0)
    await expect_ticked(page, set())

    await checkbox(page, "email_notifications").check()
    await checkbox(page, "sms_notifications").check()
    await page.get_by_role("button", name="Save", exact=True).click()
    await expect(page.get_by_role("status")).to_have_text("Your preferences were saved.")
    await expect_ticked(page, {"email_notifications", "sms_notifications"})

    await page.goto(preferences)  # a fresh GET, not the answer to the POST
    await expect(page.get_by_role("status")).to_have_count(0)
    await expect_ticked(page, {"email_notifications", "sms_notifications"})
    assert await server.states("alice") == {
        "email_notifications": "subscribed", "sms_notifications": "subscribed",
        "newsletter": None,
    }
    events = await server.events("alice")
    assert sorted((e["topic"], e["from_state"], e["to_state"], e["source"]) for e in events) == [
        ("email_notifications", None, "subscribed", "preference_center"),
        ("sms_notifications", None, "subscribed", "preference_center"),
    ]
    for event in events:  # the evidence is the browser's own
        assert (event["actor"], event["ip"]) == ("user", "127.0.0.1")
        assert "Chrome" in event["user_agent"]

    await page.get_by_role("button", name="Unsubscribe from everything").click()
    await expect(page.get_by_role("status")).to_have_text("Your preferences were saved.")
    await page.goto(preferences)
    await expect_ticked(page, set())
    assert await server.states("alice") == {
        "email_notifications": "unsubscribed", "sms_notifications": "unsubscribed",
        "newsletter": None,  # never asked: "everything" records nothing for it
    }
    newest = (await server.events("alice"))[:2]
    assert sorted((e["topic"], e["from_state"], e["to_state"], e["source"]) for e in newest) == [
        ("email_notifications", "subscribed", "unsubscribed", "preference_center"),
        ("sms_notifications", "subscribed", "unsubscribed", "preference_center"),
    ]


async def test_newsletter_waits_for_confirmation_by_email(server, page):
    await server.user("alice")
    preferences = (await server.links("alice"))["preferences"]
    outbox = server.settings.outbox_dir

    await page.goto(preferences)
    await checkbox(page, "newsletter").check()
    await page.get_by_role("button", name="Save", exact=True).click()
    await expect(page.get_by_role("status")).to_have_text(
        "Your preferences were saved. We sent you an email to confirm your new subscription.")
    await page.goto(preferences)
    await expect_ticked(page, {"newsletter"})
    await expect(page.get_by_text("waiting for your confirmation")).to_have_count(1)
    assert (await server.states("alice"))["newsletter"] == "pending"
    [requested] = await server.events("alice")
    assert (requested["to_state"], requested["source"]) == ("pending", "preference_center")

    confirm = confirmation_link(outbox, server.url)
    await page.goto(confirm)
    await expect(page.get_by_role("heading", name="Confirm your subscription")).to_be_visible()
    await expect(page.get_by_text("Please confirm that you want to receive: Newsletter")
                 ).to_be_visible()
    button = page.get_by_role("button", name="Confirm", exact=True)
    await expect(button).to_be_visible()
    # Opening the link (as a mail scanner would) confirmed nothing.
    assert (await server.states("alice"))["newsletter"] == "pending"
    assert len(await server.events("alice")) == 1

    await button.click()
    await expect(page.get_by_role("heading", name="Subscription confirmed")).to_be_visible()
    await expect(page.get_by_role("status")).to_contain_text("You will receive: Newsletter.")
    assert (await server.states("alice"))["newsletter"] == "subscribed"
    confirmed = (await server.events("alice"))[0]
    assert (confirmed["topic"], confirmed["from_state"], confirmed["to_state"],
            confirmed["source"]) == ("newsletter", "pending", "subscribed", "confirmation")

    await page.goto(preferences)
    await expect_ticked(page, {"newsletter"})
    await expect(page.get_by_text("waiting for your confirmation")).to_have_count(0)
    assert len(list(outbox.glob("*.eml"))) == 1  # nothing else was sent


async def test_unsubscribe_page_unsubscribes_on_click_and_undo_restores(server, page):
    await server.user("alice")
    await server.api("PUT", "/v1/users/alice/consents/email_notifications",
                     json={"subscribed": True})
    unsubscribe = (await server.links("alice"))["unsubscribe"]["email_notifications"]
    assert unsubscribe.startswith(server.url + "/u/")

    await page.goto(unsubscribe)
    await expect(page.get_by_role("heading", name="Unsubscribe")).to_be_visible()
    await expect(page.get_by_role("listitem")).to_have_text(["Email notifications"])
    assert (await server.states("alice"))["email_notifications"] == "subscribed"
    assert len(await server.events("alice")) == 1  # the GET changed nothing

    await page.get_by_role("button", name="Unsubscribe", exact=True).click()
    await expect(page.get_by_role("heading", name="You are unsubscribed")).to_be_visible()
    await expect(page.get_by_role("listitem")).to_have_text(["Email notifications"])
    await expect(page.get_by_role("status")).to_have_count(0)  # not "already unsubscribed"
    assert (await server.states("alice"))["email_notifications"] == "unsubscribed"
    withdrawn = (await server.events("alice"))[0]
    assert (withdrawn["from_state"], withdrawn["to_state"], withdrawn["source"]) == (
        "subscribed", "unsubscribed", "unsubscribe_page")

    await page.get_by_role("button", name="Undo").click()
    await expect(page.get_by_role("heading", name="Welcome back")).to_be_visible()
    await expect(page.get_by_role("status")).to_have_text("Your subscription was restored.")
    assert (await server.states("alice"))["email_notifications"] == "subscribed"
    restored = (await server.events("alice"))[0]
    assert (restored["from_state"], restored["to_state"], restored["source"],
            restored["note"]) == ("unsubscribed", "subscribed", "unsubscribe_page", "undo")

    # The page's link leads to the preference center, which shows the restored state.
    await page.get_by_role("link", name="Manage all your email and SMS preferences").click()
    await expect(page.get_by_role("heading", name="Your preferences")).to_be_visible()
    await expect_ticked(page, {"email_notifications"})


async def test_german_user_sees_german_pages(server, page):
    await server.user("bernd", locale="de")  # the browser asks for English: the user wins
    found = await server.links("bernd")

    await page.goto(found["preferences"])
    await expect(page.locator("html")).to_have_attribute("lang", "de")
    await expect(page).to_have_title("Ihre Einstellungen")
    await expect(page.get_by_role("heading", name="Ihre Einstellungen")).to_be_visible()
    await page.get_by_role("checkbox", name="E-Mail-Benachrichtigungen").check()
    await page.get_by_role("button", name="Speichern").click()
    await expect(page.get_by_role("status")).to_have_text(
        "Ihre Einstellungen wurden gespeichert.")
    await expect(page.get_by_role("checkbox", name="E-Mail-Benachrichtigungen")).to_be_checked()
    await expect(page.get_by_role("button", name="Von allem abmelden")).to_be_visible()

    await page.goto(found["unsubscribe"]["email_notifications"])
    await expect(page.get_by_role("heading", name="Abmelden")).to_be_visible()
    await page.get_by_role("button", name="Abmelden").click()
    await expect(page.get_by_role("heading", name="Sie sind abgemeldet")).to_be_visible()
    await expect(page.get_by_role("button", name="Rückgängig machen")).to_be_visible()
    assert (await server.states("bernd"))["email_notifications"] == "unsubscribed"


async def test_screenshot_of_the_preference_center(server, page, tmp_path):
    await server.user("alice")
    await server.api("PUT", "/v1/users/alice/consents/email_notifications",
                     json={"subscribed": True})
    await page.goto((await server.links("alice"))["preferences"])
    await expect(checkbox(page, "email_notifications")).to_be_checked()

    path = tmp_path / "preferences.png"
    await page.screenshot(path=path, full_page=True)
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 0 and height > 0 and len(data) > 1000
