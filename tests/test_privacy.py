"""Privacy of data and logs (issue #8, point 5): nobody is named in logs or URLs, and
erasure leaves no contact data in any table."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from support import ADMIN, APP, environ_for, free_port
from test_cli import CLI, clean_env, stop, wait_for_line

from notify import campaigns
from notify.logs import mask_text
from notify.models import User
from notify.web.endpoints import POSTMAN

EMAIL = "Alice.Example@Mail.example.org"
PHONE = "+4915123456789"


@pytest.mark.parametrize(("raw", "masked"), [
    ("to alice@example.com", "to a***@example.com"),
    ("RCPT TO:<Bob.Smith+news@mail.example.co.uk> refused",
     "RCPT TO:<B***@mail.example.co.uk> refused"),
    ("Key (email)=(carol@example.net) already exists",
     "Key (email)=(c***@example.net) already exists"),
    ("sms to +4915123456789 failed", "sms to +49*********89 failed"),
    ('"POST /u/k1.eyJoIjoiYSJ9.' + "A" * 43 + ' HTTP/1.1" 200',
     '"POST /u/[token] HTTP/1.1" 200'),
    ('"GET /preferences/not-even-a-token?x=1 HTTP/1.1" 400',
     '"GET /preferences/[token]?x=1 HTTP/1.1" 400'),
    ("link k1.eyJoIjoiYSJ9." + "B" * 43 + " sent", "link [token] sent"),
])
def test_mask_text_masks_addresses_numbers_and_tokens(raw, masked):
    assert mask_text(raw) == masked
    assert mask_text(masked) == masked  # masking twice changes nothing


def test_mask_text_leaves_ids_times_and_routes_readable():
    line = '2026-11-26 14:00:01,123 INFO delivery 123456789 "GET /v1/users/u-42 HTTP/1.1" 200'
    assert mask_text(line) == line


def _call(port: int, method: str, path: str, body: object = None,
          headers: dict[str, str] | None = None, form: bytes | None = None) -> tuple[int, str]:
    data = form if form is not None else (json.dumps(body).encode() if body is not None
                                          else None)
    heads = dict(headers or {})
    if body is not None:
        heads["Content-Type"] = "application/json"
    if form is not None:
        heads["Content-Type"] = "application/x-www-form-urlencoded"
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                     method=method, headers=heads)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def served_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'notify.sqlite3'}"
    return request.getfixturevalue("fresh_pg_database")()


def test_logs_name_nobody_through_a_users_whole_life(served_url, tmp_path):
    """A real ``notify serve`` at DEBUG level (every SQL statement and its values logged)
    sees a user created, subscribed, mailed, linked, unsubscribed, bounced, refused a
    duplicate and erased: its log holds none of the address, the number or a token."""
    port = free_port()
    env = clean_env(**environ_for(served_url, tmp_path / "data",
                                  NOTIFY_PUBLIC_URL=f"http://127.0.0.1:{port}",
                                  NOTIFY_LOG_LEVEL="DEBUG"))
    subprocess.run([*CLI, "migrate"], env=env, cwd=tmp_path, check=True, capture_output=True)
    log = tmp_path / "serve.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen([*CLI, "serve", "--port", str(port)], env=env, cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=stderr, text=True)
    tokens: list[str] = []
    try:
        wait_for_line(proc, "serving on")
        user = {"email": EMAIL, "phone": PHONE, "name": "Alice Example"}
        assert _call(port, "PUT", "/v1/users/alice", user, APP)[0] == 201
        for topic in ("newsletter", "email_notifications", "sms_notifications"):
            status, _ = _call(port, "PUT", f"/v1/users/alice/consents/{topic}",
                              {"subscribed": True, "source": "profile_settings"}, APP)
            assert status == 200, topic
        # The same address for someone else: refused, and the database says why in words
        # that quote the address (PostgreSQL's DETAIL), which must not reach the log.
        assert _call(port, "PUT", "/v1/users/bob", {"email": EMAIL.lower()}, APP)[0] == 409
        status, body = _call(port, "GET", "/v1/users/alice/links", headers=APP)
        assert status == 200
        links = json.loads(body)
        urls = [links["preferences"], *links["unsubscribe"].values()]
        tokens = [url.rsplit("/", 1)[1] for url in urls]
        paths = [url.split(str(port), 1)[1] for url in urls]
        assert _call(port, "GET", paths[0])[0] == 200
        assert _call(port, "GET", paths[1])[0] == 200
        assert _call(port, "POST", paths[1], form=b"List-Unsubscribe=One-Click")[0] == 200
        assert _call(port, "POST", "/preferences", form=f"email={EMAIL}".encode())[0] == 200
        tampered = tokens[1][:-3] + "AAA"
        assert _call(port, "GET", f"/u/{tampered}")[0] in (400, 404)
        assert _call(port, "POST", "/webhooks/bounces", {
            "type": "bounce", "email": EMAIL, "permanent": True,
            "detail": f"550 5.1.1 <{EMAIL}> user unknown"}, ADMIN)[0] == 202
        assert _call(port, "DELETE", "/v1/users/alice", headers=ADMIN)[0] == 204
    finally:
        code, _, _ = stop(proc)
    text = log.read_text()
    assert code == 0, text[-2000:]
    # The log is not empty of what happened: the routes are there, masked.
    assert "/u/[token]" in text and "/preferences/[token]" in text
    assert "***@mail.example.org" in text, "the masked address shows what was acted on"
    lowered = text.lower()
    for secret in (EMAIL.lower(), PHONE, PHONE[1:], *tokens, tampered):
        assert secret.lower() not in lowered, f"{secret!r} is in the log"
    # No other address-shaped or token-shaped text slipped through either.
    assert not re.search(r"[\w.+-]+@mail\.example\.org", text.replace("***@", "")), \
        "an unmasked address of the user's domain is in the log"


async def _every_row_as_text(orm) -> dict[str, str]:  # noqa: ANN001
    """Every table the database holds (not only the ones we know of), each as one text."""
    with orm:
        db = orm.db()
        if db.capabilities.dialect == "sqlite":
            _, rows = await db.execute_query(
                "SELECT name FROM sqlite_master WHERE type = 'table'")
        else:
            _, rows = await db.execute_query(
                "SELECT table_name AS name FROM information_schema.tables "
                "WHERE table_schema = 'public'")
        dump = {}
        for row in rows:
            _, found = await db.execute_query(f'SELECT * FROM "{row["name"]}"')
            dump[row["name"]] = json.dumps([dict(r) for r in found], default=str).lower()
        return dump


async def test_erasure_leaves_no_contact_data_in_any_table(client, orm, alice):
    """After a life of consents, messages, a bounce and a complaint, erasure leaves the
    address, number, name and the main app's id in no table; what remains is keyed hashes
    (to keep honouring the withdrawal) and an anonymous ledger (to prove the history)."""
    user_id = "/v1/users/alice"
    for topic in ("newsletter", "email_notifications", "sms_notifications"):
        resp = await client.put(f"{user_id}/consents/{topic}", json={
            "subscribed": True, "source": "profile_settings", "ip": "203.0.113.5",
            "user_agent": "Firefox", "note": "asked by Alice at alice@example.com"},
            headers=APP)
        assert resp.status == 200, await resp.text()
    await client.app[POSTMAN].enqueue(await _user(orm), "preferences_link")
    for report in ({"type": "bounce", "email": "alice@example.com", "permanent": False,
                    "detail": "452 mailbox of alice@example.com full"},
                   {"type": "complaint", "email": "alice@example.com",
                    "detail": "Alice <alice@example.com> reported spam"}):
        assert (await client.post("/webhooks/bounces", json=report, headers=ADMIN)).status == 202
    before = await _every_row_as_text(orm)
    assert "alice@example.com" in before["users"]
    assert any("alice@example.com" in text for name, text in before.items() if name != "users"), \
        "the life above left the address outside the users table too: erasure has work to do"

    assert (await client.delete(user_id, headers=ADMIN)).status == 204
    after = await _every_row_as_text(orm)
    for secret in ("alice@example.com", "+4915123456789", "4915123456789", "alice",
                   "firefox", "203.0.113.5"):
        leaks = [name for name, text in after.items() if secret in text]
        assert not leaks, f"{secret!r} survives erasure in {leaks}"
    # What stays: the anonymous ledger and the hashes that keep honouring the withdrawal.
    assert after["consent_events"].count('"to_state": "unsubscribed"') >= 3
    assert '"reason": "complaint"' in after["suppressions"]


async def _user(orm):  # noqa: ANN001, ANN202
    with orm:
        return await User.get(external_id="alice")


_URL = re.compile(r"(?:https?://|mailto:)[^\s\"'<>]+")
_TOKEN_ROUTE = re.compile(r"/(?:u|preferences|confirm)/[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\."
                          r"[A-Za-z0-9_-]{43}")


async def test_urls_in_messages_carry_only_the_opaque_token(client, orm, alice, settings):
    """§2.5's link in every email: it names nobody. Only the signed token, which holds a
    random handle (never the id, address or name), appears in a URL or a mailto."""
    assert (await client.put("/v1/users/alice/consents/newsletter", json={
        "subscribed": True, "source": "profile_settings"}, headers=APP)).status == 200
    # Double opt-in: the confirmation went at once; confirming makes her a subscriber.
    [confirmation] = settings.outbox_dir.glob("*.eml")
    [confirm] = {u for u in _URL.findall(_decoded(confirmation.read_bytes())) if "/confirm/" in u}
    assert (await client.post(confirm.split(settings.public_url, 1)[1],
                              data={"action": "confirm"})).status == 200
    await client.app[POSTMAN].enqueue(await _user(orm), "preferences_link")
    with orm:
        campaign = await campaigns.create(settings, campaigns.Spec(
            name="news", kind="newsletter", topic="newsletter",
            variables={"subject": "News for {{ name }}", "body": "Hello {{ name }}"}), "test")
        await campaigns.send(settings, campaign.id, "test")
        assert await client.app[POSTMAN].deliver_due() == 2
    messages = sorted(settings.outbox_dir.glob("*.eml"))
    urls = [url for path in messages for url in _URL.findall(_decoded(path.read_bytes()))]
    assert any("/preferences/" in url for url in urls) and any("mailto:" in u for u in urls)
    for url in urls:
        lowered = url.lower()
        for secret in ("alice", "4915123456789", "%40"):
            assert secret not in lowered, f"{secret!r} in {url}"
        if url.startswith("mailto:"):
            continue
        path = url.split(settings.public_url, 1)[1]
        assert _TOKEN_ROUTE.fullmatch(path) or path in ("/policy", "/preferences"), url


def _decoded(raw: bytes) -> str:
    import email
    from email import policy

    message = email.message_from_bytes(raw, policy=policy.default)
    parts = [str(value) for _, value in message.items()]
    parts += [part.get_content() for part in message.walk()
              if part.get_content_maintype() == "text"]
    return "\n".join(parts)
