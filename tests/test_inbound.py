"""``notify inbound``: real messages delivered by SMTP to the listener, started in-process on
127.0.0.1 inside the app's database context (and once as the real command). Every
database test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import email
import os
import select
import signal
import smtplib
import socket
import subprocess
import sys
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import pytest
from support import HASH_KEY, environ_for, free_port, in_db, snapshot

from notify import inbound, links, store
from notify.consent import ConsentSource
from notify.models import (
    AddressKind,
    BounceScore,
    Consent,
    ConsentEvent,
    Delivery,
    DeliveryStatus,
    Suppression,
    User,
)
from notify.postman import message_id
from notify.settings import Settings
from notify.tokens import AddressPurpose, address_token

EMAIL = "alice@example.com"
DATE = "Thu, 26 Nov 2026 11:38:25 +0000"


# --- Messages as real mail systems write them ---------------------------------------------


def original_headers(settings: Settings, delivery: int) -> str:
    """The headers of the message notify sent for ``delivery`` (the agreed conventions)."""
    return (
        f"Return-Path: <{links.verp_address(settings, delivery)}>\r\n"
        "Received: from mail.example.com (mail.example.com [198.51.100.7])\r\n"
        "\tby mx.example.org with ESMTPS id 4F2A1C0123; " + DATE + "\r\n"
        f"From: {settings.mail_from}\r\n"
        f"To: Alice <{EMAIL}>\r\n"
        "Subject: Our November newsletter\r\n"
        f"Date: {DATE}\r\n"
        f"Message-ID: {message_id(settings, delivery)}\r\n"
        "List-Unsubscribe: <https://notify.example.com/u/TOKEN>, "
        f"<mailto:{links.mailto_unsubscribe(settings, delivery)}>\r\n"
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
    )


def dsn(settings: Settings, delivery: int, *, action: str, status: str,
        diagnostic: str, recipient: str = EMAIL) -> bytes:
    """An RFC 3464 delivery status notification as Postfix writes it."""
    verp = links.verp_address(settings, delivery)
    will_retry = "Will-Retry-Until: Sat, 28 Nov 2026 11:38:25 +0000\r\n" \
        if action == "delayed" else ""
    return (
        "Return-Path: <>\r\n"
        f"Date: {DATE}\r\n"
        "From: MAILER-DAEMON@mx.example.net (Mail Delivery System)\r\n"
        + ("Subject: Delayed Mail (still being retried)\r\n" if action == "delayed"
           else "Subject: Undelivered Mail Returned to Sender\r\n") +
        f"To: {verp}\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status;\r\n'
        '\tboundary="8A1E3C0456.1764157105/mx.example.net"\r\n'
        "Message-Id: <20261126113825.8A1E3C0456@mx.example.net>\r\n"
        "\r\n"
        "This is a MIME-encapsulated message.\r\n"
        "\r\n"
        "--8A1E3C0456.1764157105/mx.example.net\r\n"
        "Content-Description: Notification\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "\r\n"
        "This is the mail system at host mx.example.net.\r\n"
        "\r\n"
        "I'm sorry to have to inform you that your message could not\r\n"
        "be delivered to one or more recipients. It's attached below.\r\n"
        "\r\n"
        f"<{recipient}>: host mx.example.org[203.0.113.5] said: {diagnostic}\r\n"
        "    (in reply to RCPT TO command)\r\n"
        "\r\n"
        "--8A1E3C0456.1764157105/mx.example.net\r\n"
        "Content-Description: Delivery report\r\n"
        "Content-Type: message/delivery-status\r\n"
        "\r\n"
        "Reporting-MTA: dns; mx.example.net\r\n"
        "X-Postfix-Queue-ID: 8A1E3C0456\r\n"
        f"X-Postfix-Sender: rfc822; {verp}\r\n"
        f"Arrival-Date: {DATE}\r\n"
        "\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\n"
        f"Original-Recipient: rfc822;{recipient}\r\n"
        f"Action: {action}\r\n"
        f"Status: {status}\r\n"
        "Remote-MTA: dns; mx.example.org\r\n"
        f"Diagnostic-Code: smtp; {diagnostic}\r\n"
        f"{will_retry}"
        "\r\n"
        "--8A1E3C0456.1764157105/mx.example.net\r\n"
        "Content-Description: Undelivered Message Headers\r\n"
        "Content-Type: text/rfc822-headers\r\n"
        "\r\n"
        f"{original_headers(settings, delivery)}"
        "\r\n"
        "--8A1E3C0456.1764157105/mx.example.net--\r\n"
    ).encode()


def hard_dsn(settings: Settings, delivery: int) -> bytes:
    return dsn(settings, delivery, action="failed", status="5.1.1",
               diagnostic=f"550 5.1.1 <{EMAIL}>: Recipient address rejected: User unknown in "
                          "virtual mailbox table")


def delayed_dsn(settings: Settings, delivery: int) -> bytes:
    return dsn(settings, delivery, action="delayed", status="4.2.2",
               diagnostic="452 4.2.2 Mailbox full")


def arf(settings: Settings, delivery: int, feedback_type: str = "abuse", *,
        original: str | None = None, original_type: str = "message/rfc822") -> bytes:
    """An RFC 5965 abuse report as a mailbox provider's feedback loop sends it."""
    boundary = "part1_13d.2e68ed54_boundary"
    original = original if original is not None else (
        original_headers(settings, delivery) + "\r\nHello Alice, here is our newsletter.\r\n")
    return (
        "From: <staff@fbl.example.net>\r\n"
        f"Date: {DATE}\r\n"
        "Subject: FW: Our November newsletter\r\n"
        "To: <fbl@example.com>\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=feedback-report;\r\n'
        f'\tboundary="{boundary}"\r\n'
        "\r\n"
        f"--{boundary}\r\n"
        'Content-Type: text/plain; charset="US-ASCII"\r\n'
        "Content-Transfer-Encoding: 7bit\r\n"
        "\r\n"
        "This is an email abuse report for an email message received from IP\r\n"
        "198.51.100.7 on " + DATE + ".\r\n"
        "For more information about this format please see\r\n"
        "http://www.mipassoc.org/arf/.\r\n"
        "\r\n"
        f"--{boundary}\r\n"
        "Content-Type: message/feedback-report\r\n"
        "\r\n"
        f"Feedback-Type: {feedback_type}\r\n"
        "User-Agent: SomeGenerator/1.0\r\n"
        "Version: 1\r\n"
        f"Original-Mail-From: <{links.verp_address(settings, delivery)}>\r\n"
        "Original-Rcpt-To: <redacted@example.com>\r\n"
        f"Arrival-Date: {DATE}\r\n"
        "Reporting-MTA: dns; mail.fbl.example.net\r\n"
        "Source-IP: 198.51.100.7\r\n"
        "Authentication-Results: mail.fbl.example.net; spf=pass smtp.mail=example.com\r\n"
        "Reported-Domain: example.com\r\n"
        "\r\n"
        f"--{boundary}\r\n"
        f"Content-Type: {original_type}\r\n"
        "Content-Disposition: inline\r\n"
        "\r\n"
        f"{original}"
        f"--{boundary}--\r\n"
    ).encode()


def unsubscribe_mail(settings: Settings, delivery: int) -> bytes:
    """What a mail program sends for the List-Unsubscribe mailto link."""
    msg = EmailMessage()
    msg["From"] = f"Alice <{EMAIL}>"
    msg["To"] = links.mailto_unsubscribe(settings, delivery)
    msg["Subject"] = "unsubscribe"
    msg["Date"] = DATE
    msg["Message-ID"] = "<CAF=abc123@mail.example.com>"
    msg.set_content("This message was automatically generated by Gmail.\n")
    return msg.as_bytes()


# --- Fixtures and helpers -----------------------------------------------------------------


@pytest.fixture
async def delivery(settings, orm, alice) -> Delivery:
    """A sent newsletter to alice, who holds the newsletter and email notifications."""
    with orm:
        user = await User.get(external_id="alice")
        evidence = store.Evidence(source=ConsentSource.IMPORT, actor="test", note="test")
        for name in ("newsletter", "email_notifications"):
            await store.change_consent(user, settings.topics[name], True, evidence,
                                       default_policy=settings.policy_version)
        now = store.now()
        return await Delivery.create(user_id=user.id, channel="email", kind="newsletter",
                                     topic="newsletter", status=DeliveryStatus.SENT,
                                     next_attempt_at=now, deadline=now + timedelta(days=1))


@pytest.fixture
async def server(client, orm, settings):  # noqa: ANN201
    """The listener on 127.0.0.1 and a free port, inside the app's database context."""
    with orm:
        server = await inbound.start_server(settings, "127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.close()


async def send(server, data: bytes, *recipients: str, sender: str = "") -> None:
    """Deliver ``data`` by SMTP; the empty sender is the null reverse-path of a DSN."""
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=server.port, timeout=10) as smtp:
        await smtp.sendmail(sender, list(recipients), data)


async def suppression(settings, orm) -> Suppression | None:
    digest = store.address_hash(settings.hash_key, AddressKind.EMAIL, EMAIL)
    with orm:
        return await Suppression.get_or_none(kind=AddressKind.EMAIL, address_hash=digest)


async def consents(orm) -> dict[str, str]:
    with orm:
        user = await User.get(external_id="alice")
        return {c.topic: c.state for c in await Consent.filter(user_id=user.id)}


# --- Bounces ------------------------------------------------------------------------------


async def test_hard_dsn_suppresses_and_marks_the_delivery_bounced(server, settings, orm,
                                                                  delivery):
    await send(server, hard_dsn(settings, delivery.id),
               links.verp_address(settings, delivery.id))
    found = await suppression(settings, orm)
    assert (found.reason, found.note) == ("hard_bounce", "hard bounce 5.1.1")
    with orm:
        row = await Delivery.get(id=delivery.id)
    assert row.status == DeliveryStatus.BOUNCED
    assert "5.1.1" in row.last_error and "User unknown" in row.last_error
    # Consent is a separate matter: a bounce suppresses the address, it withdraws nothing.
    assert await consents(orm) == {"newsletter": "subscribed",
                                   "email_notifications": "subscribed"}


async def test_delayed_dsn_only_scores(server, settings, orm, delivery):
    verp = links.verp_address(settings, delivery.id)
    await send(server, delayed_dsn(settings, delivery.id), verp)
    await send(server, delayed_dsn(settings, delivery.id), verp.upper())  # same day, any case
    with orm:
        [row] = await BounceScore.all()
        assert (await Delivery.get(id=delivery.id)).status == DeliveryStatus.SENT
    assert row.score == 0.5
    assert await suppression(settings, orm) is None


async def test_policy_refusal_is_soft(server, settings, orm, delivery):
    # 5.7.x blames the message or the sender (spam filter, DMARC), not the address.
    message = dsn(settings, delivery.id, action="failed", status="5.7.1",
                  diagnostic="550 5.7.1 Message rejected as spam by content filtering")
    await send(server, message, links.verp_address(settings, delivery.id))
    assert await suppression(settings, orm) is None
    with orm:
        assert (await BounceScore.get()).score == 0.5
        assert (await Delivery.get(id=delivery.id)).status == DeliveryStatus.SENT


async def test_a_report_naming_another_address_only_scores_ours(server, settings, orm,
                                                                delivery):
    # The message was forwarded, or alice changed her address since: the report names an
    # address we never sent to. A forged DSN must not suppress an address of its choice,
    # so nothing is suppressed; alice's address gets a soft bounce, the delivery bounced.
    message = dsn(settings, delivery.id, action="failed", status="5.1.1",
                  diagnostic="550 5.1.1 user unknown", recipient="bob@example.org")
    await send(server, message, links.verp_address(settings, delivery.id))
    with orm:
        assert await Suppression.all().count() == 0
        [row] = await BounceScore.all()
        assert (await Delivery.get(id=delivery.id)).status == DeliveryStatus.BOUNCED
    assert row.address_hash == store.address_hash(settings.hash_key, AddressKind.EMAIL, EMAIL)
    assert row.score == 0.5


# --- Complaints ---------------------------------------------------------------------------


async def test_arf_complaint_suppresses_and_withdraws_marketing(server, settings, orm,
                                                                delivery):
    # Feedback loops report to an address of their own choosing; ours must carry a token.
    await send(server, arf(settings, delivery.id), links.verp_address(settings, delivery.id),
               sender="staff@fbl.example.net")
    assert (await suppression(settings, orm)).reason == "complaint"
    assert await consents(orm) == {"newsletter": "unsubscribed",
                                   "email_notifications": "subscribed"}
    with orm:
        [event] = await ConsentEvent.filter(source=ConsentSource.COMPLAINT)
        # Counted against its campaign's complaint rate; the event names the message.
        assert (await Delivery.get(id=delivery.id)).status == DeliveryStatus.COMPLAINED
    assert (event.topic, event.actor, event.delivery_id) == ("newsletter", "feedback-loop",
                                                             delivery.id)
    assert "abuse" in event.note


async def test_arf_about_another_delivery_than_its_address_is_ignored(server, settings, orm,
                                                                       delivery):
    # The report went to the token address of an unrelated (made-up) delivery, and names
    # ours only by headers anyone could copy from a forwarded mail: it must not act.
    other = links.mailto_unsubscribe(settings, delivery.id + 99)
    await send(server, arf(settings, delivery.id, original_type="text/rfc822-headers",
                           original=original_headers(settings, delivery.id)), other)
    assert await suppression(settings, orm) is None
    assert (await consents(orm))["newsletter"] == "subscribed"


async def test_arf_that_is_no_complaint_changes_nothing(server, settings, orm, delivery):
    before = await snapshot(orm)
    # An authentication failure report (RFC 6591) is about DKIM or SPF, not the person.
    await send(server, arf(settings, delivery.id, "auth-failure"),
               links.verp_address(settings, delivery.id))
    assert await snapshot(orm) == before


# --- Mailto unsubscribes ------------------------------------------------------------------


async def test_mail_to_the_unsubscribe_address_withdraws_the_topic(server, settings, orm,
                                                                   delivery):
    address = links.mailto_unsubscribe(settings, delivery.id)
    await send(server, unsubscribe_mail(settings, delivery.id), address, sender=EMAIL)
    assert await consents(orm) == {"newsletter": "unsubscribed",
                                   "email_notifications": "subscribed"}
    with orm:
        [event] = await ConsentEvent.filter(source=ConsentSource.MAILTO)
    assert (event.topic, event.from_state) == ("newsletter", "subscribed")
    assert await suppression(settings, orm) is None


# --- What is refused, and what changes nothing --------------------------------------------


def forged(settings: Settings, delivery: int) -> list[str]:
    bounce = address_token(AddressPurpose.BOUNCE, delivery, settings.secret_keys)
    unsub = address_token(AddressPurpose.UNSUBSCRIBE, delivery, settings.secret_keys)
    other_key = address_token(AddressPurpose.BOUNCE, delivery, [("k9", b"x" * 40)])
    return [
        f"bounces+{bounce[:-1]}x@example.com",  # altered MAC
        f"bounces+{other_key}@example.com",  # signed with a key we do not hold
        f"bounces+{unsub}@example.com",  # an unsubscribe token at the bounce address
        f"unsubscribe+{bounce}@example.com",  # and the other way round
        f"bounces+{bounce}@example.org",  # another domain
        f"postmaster+{bounce}@example.com",  # another local part
        f"{bounce}@example.com",  # the Message-ID is no address
        "bounces@example.com",
        "alice@example.com",
    ]


async def test_invalid_recipients_are_refused_and_change_nothing(server, settings, orm,
                                                                 delivery):
    before = await snapshot(orm)
    for address in forged(settings, delivery.id):
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
            await send(server, hard_dsn(settings, delivery.id), address)
        [rejection] = refused.value.recipients
        assert (rejection.code, rejection.message) == (550, "5.1.1 no such user"), address
    assert await snapshot(orm) == before


GARBAGE = [
    b"",
    b"\x00\x01\x02\xff\xfe garbage without headers \x80\x81\r\n",
    b"Content-Type: multipart/report; report-type=delivery-status; boundary=\"x\"\r\n\r\n"
    b"--x\r\nContent-Type: message/delivery-status\r\n\r\n\xff\xfe: \x00\r\nAction\r\n--x",
    b"Content-Type: multipart/report; report-type=feedback-report\r\n\r\nno boundary at all",
    b"Content-Type: message/rfc822\r\n\r\nContent-Type: message/rfc822\r\n\r\n" * 50,
    b"Subject: =?utf-8?b?////?=\r\nFrom: \"\r\nContent-Type: text/plain; charset=x-nonsense"
    b"\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not base64!!!\r\n",
]


async def test_garbage_is_accepted_and_changes_nothing(server, settings, orm, delivery):
    before = await snapshot(orm)
    recipients = (links.verp_address(settings, delivery.id),
                  links.mailto_unsubscribe(settings, delivery.id))
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=server.port, timeout=10) as smtp:
        for data in GARBAGE:
            errors, response = await smtp.sendmail("", list(recipients), data)
            assert errors == {} and response.startswith("2.0.0"), response
    assert await snapshot(orm) == before
    # And the listener still works.
    await send(server, hard_dsn(settings, delivery.id), recipients[0])
    assert await suppression(settings, orm) is not None


async def test_a_database_outage_asks_the_sender_to_retry(server, settings, orm, delivery,
                                                          monkeypatch):
    from tortoise.exceptions import DBConnectionError

    async def down(*args, **kwargs):
        raise DBConnectionError("connection refused")

    before = await snapshot(orm)
    monkeypatch.setattr(Delivery, "get_or_none", down)
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await send(server, hard_dsn(settings, delivery.id),
                   links.verp_address(settings, delivery.id))
    assert refused.value.code == 451
    assert await snapshot(orm) == before
    monkeypatch.undo()
    await send(server, hard_dsn(settings, delivery.id), links.verp_address(settings, delivery.id))
    assert await suppression(settings, orm) is not None


async def test_stopping_closes_idle_connections(client, orm, settings):
    with orm:
        server = await inbound.start_server(settings, "127.0.0.1", 0)
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=server.port, timeout=10)
    await smtp.connect()
    await smtp.ehlo()
    await asyncio.wait_for(server.close(), 5)
    with pytest.raises(aiosmtplib.SMTPException):
        await smtp.noop()
    smtp.close()


# --- Reading bounces (no database) --------------------------------------------------------


def read(data: bytes) -> inbound.Bounce | None:
    return inbound.read_bounce(email.message_from_bytes(data))


@pytest.mark.parametrize(("status", "action", "permanent"), [
    ("5.1.1", "failed", True),  # no such user
    ("5.1.10", "failed", True),  # null MX (RFC 7505)
    ("5.2.1", "failed", True),  # mailbox disabled
    ("5.4.4", "failed", True),  # no route to the domain
    ("5.2.2", "failed", False),  # mailbox full: transient, whatever the class says
    ("5.7.26", "failed", False),  # DMARC: our fault, not the address's
    ("4.4.7", "failed", False),  # gave up after retrying a temporary failure
    ("4.2.2", "delayed", False),
    ("", "failed", True),
])
def test_status_and_action_decide_hard_or_soft(status, action, permanent):
    settings = _offline_settings()
    found = read(dsn(settings, 7, action=action, status=status,
                     diagnostic=f"550 {status} whatever" if status else "550 gone"))
    assert found is not None and found.permanent is permanent
    assert found.addresses == {EMAIL}


def test_success_dsn_and_autoreply_are_no_bounces():
    settings = _offline_settings()
    assert read(dsn(settings, 7, action="delivered", status="2.0.0",
                    diagnostic="250 2.0.0 OK")) is None
    autoreply = EmailMessage()
    autoreply["From"] = EMAIL
    autoreply["Subject"] = "Out of office"
    autoreply["Auto-Submitted"] = "auto-replied"
    autoreply.set_content("I am away until Monday.\n")
    assert read(autoreply.as_bytes()) is None


def test_an_old_style_bounce_is_read_by_flufl_bounce():
    # qmail's format: no DSN, only flufl.bounce's detector recognises it.
    qmail = (
        "From: MAILER-DAEMON@mx.example.org\r\nTo: bounces+x@example.com\r\n"
        "Subject: failure notice\r\n\r\n"
        "Hi. This is the qmail-send program at mx.example.org.\r\n"
        "I'm afraid I wasn't able to deliver your message to the following addresses.\r\n"
        "This is a permanent error; I've given up. Sorry it didn't work out.\r\n\r\n"
        f"<{EMAIL}>:\r\nSorry, no mailbox here by that name. (#5.1.1)\r\n\r\n"
        "--- Below this line is a copy of the message.\r\n\r\nSubject: hello\r\n"
    ).encode()
    found = read(qmail)
    assert found is not None and found.permanent and found.addresses == {EMAIL}


def _offline_settings() -> Settings:
    from notify.settings import load_settings

    return load_settings(environ=environ_for("sqlite://:memory:", Path("/nonexistent")))


# --- The command --------------------------------------------------------------------------


def command_env(database_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"),
            **environ_for(database_url, tmp_path / "data", **extra)}


def test_notify_inbound_command_receives_mail_and_stops_on_sigterm(database_url, tmp_path):
    port = free_port()
    # No --port: the setting (NOTIFY_INBOUND_PORT) decides.
    env = command_env(database_url, tmp_path, NOTIFY_INBOUND_PORT=str(port))
    settings = _offline_settings()

    async def seed() -> int:
        user, _ = await store.save_user("alice", {"email": EMAIL}, replace=True, hash_key=HASH_KEY)
        now = store.now()
        made = await Delivery.create(user_id=user.id, channel="email", kind="newsletter",
                                     topic="newsletter", status=DeliveryStatus.SENT,
                                     next_attempt_at=now, deadline=now + timedelta(days=1))
        return made.id

    delivery = in_db(database_url, seed)
    proc = subprocess.Popen([sys.executable, "-m", "notify.cli", "inbound"],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready, "notify inbound printed nothing within 20 s"
        line = proc.stdout.readline()
        assert f"listening on 127.0.0.1:{port}" in line, (line, proc.stderr.read())
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            smtp.sendmail("<>", [links.verp_address(settings, delivery)],
                          hard_dsn(settings, delivery))
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Traceback" not in err

    async def check() -> tuple[str, int]:
        row = await Delivery.get(id=delivery)
        return row.status, await Suppression.filter(reason="hard_bounce").count()

    assert in_db(database_url, check) == (DeliveryStatus.BOUNCED, 1)


def test_notify_inbound_on_a_busy_port_says_so_in_one_line(database_url, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "notify.cli", "inbound", "--port",
                               str(port)], env=command_env(database_url, tmp_path),
                              cwd=tmp_path, capture_output=True, text=True, timeout=30,
                              check=False)
    assert done.returncode == 1, done
    assert done.stderr.startswith(f"notify: cannot listen on 127.0.0.1:{port}: ")
    assert len(done.stderr.splitlines()) == 1, done.stderr
