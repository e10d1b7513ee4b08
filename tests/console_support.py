"""Helpers for the console tests: sign in through the real form, read CSRF tokens."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from support import ADMIN_KEY

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_in(html: str) -> str:
    found = CSRF.search(html)
    assert found, "no CSRF field on the page"
    return found[1]


async def sign_in(client, key: str = ADMIN_KEY):  # noqa: ANN001, ANN201
    """Sign in as the browser does; returns the answer to the sign-in POST."""
    page = await client.get("/console/sign-in")
    assert page.status == 200, await page.text()
    return await client.post("/console/sign-in", data={
        "csrf": csrf_in(await page.text()), "key": key, "next": "/console"},
        allow_redirects=False)


async def csrf_for(client, path: str = "/console") -> str:  # noqa: ANN001
    page = await client.get(path)
    assert page.status == 200, await page.text()
    return csrf_in(await page.text())


class Labels(HTMLParser):
    """Collects every form control and the ids that a <label for> names."""

    def __init__(self) -> None:
        super().__init__()
        self.controls: list[dict[str, str | None]] = []
        self.labelled: set[str] = set()
        self._in_label = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "label":
            if found.get("for"):
                self.labelled.add(found["for"] or "")
            self._in_label += 1
        elif tag in ("input", "select", "textarea") and found.get("type") not in (
                "hidden", "submit"):
            self.controls.append({**found, "wrapped": "1" if self._in_label else None})

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self._in_label -= 1

    def unlabelled(self) -> list[str]:
        return [str(c.get("name")) for c in self.controls
                if not c["wrapped"] and c.get("id") not in self.labelled
                and not c.get("aria-label")]
