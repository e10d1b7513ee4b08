"""Email through the real code path to a real SMTP server (aiosmtpd on loopback), and the
relay's faults: 421 and 451, a connection dropped in mid-DATA, a stall past the timeout,
550 5.1.1. Nothing is lost or silently dropped. The relay offers PIPELINING (RFC 2920, the
channel's own transaction); the faults, refusals, SIZE and TLS also run against one
that does not (aiosmtplib's command by command)."""

from __future__ import annotations

import asyncio
import email
from dataclasses import dataclass, field
from datetime import timedelta
from email import policy
from urllib.parse import urlsplit

import pytest
from aiosmtpd.controller import Controller
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from support import ADMIN, APP, HASH_KEY, environ_for, free_port

from notify import store
from notify.channels.email_smtp import SmtpEmailChannel
from notify.models import Delivery, Suppression
from notify.postman import Postman, message_id
from notify.settings import load_settings
from notify.web.app import make_app


@dataclass
class Relay:
    """An SMTP server that records what it accepted and misbehaves on request."""

    faults: list[str] = field(default_factory=list)  # consumed one per DATA
    received: list = field(default_factory=list)
    connections: int = 0
    pipelining: bool = False  # offer PIPELINING in the EHLO reply

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # noqa: N802
        self.connections += 1
        session.host_name = hostname
        if self.pipelining:
            # aiosmtpd reads one command line at a time, so it serves a pipelined client
            # as RFC 2920 asks (replies in order); it just does not say so.
            responses.insert(1, "250-PIPELINING")
        return responses

    refuse_sender: bool = False

    mail_options: list = field(default_factory=list)

    async def handle_MAIL(self, server, session, envelope, address, options):  # noqa: N802
        self.mail_options.append(options)
        if self.refuse_sender:
            return "553 5.1.8 sender domain does not exist"
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, options):  # noqa: N802
        if address.startswith("nobody@"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        fault = self.faults.pop(0) if self.faults else None
        if fault == "drop":
            server.transport.close()
            return "451 never seen"
        if fault == "stall":
            await asyncio.sleep(3)
        if fault in ("421", "451"):
            return f"{fault} 4.3.0 try again later"
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 2.0.0 queued as ABC123"


@pytest.fixture(params=[True], ids=["pipelining"])
def relay(request):
    """The relay offers PIPELINING unless a test asks for both (``BOTH_WAYS``): the
    command-by-command path also runs under every other test that sends through aiosmtpd
    (campaigns, faults, workers), which does not offer it."""
    handler = Relay(pipelining=request.param)
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield handler, controller.port
    controller.stop()


BOTH_WAYS = pytest.mark.parametrize("relay", [False, True], indirect=True,
                                    ids=["command-by-command", "pipelining"])


@pytest.fixture(scope="session")
def dkim_key(tmp_path_factory):
    """An RSA-2048 key pair: the PEM file to sign with and the DNS TXT record."""
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path_factory.mktemp("dkim") / "s1.private.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return path, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


@pytest.fixture
async def mailer(aiohttp_client, database_url, tmp_path, relay, dkim_key):
    from notify.channels.factory import signer

    handler, port = relay
    settings = load_settings(environ=environ_for(
        database_url, tmp_path / "data", NOTIFY_EMAIL_TRANSPORT="smtp",
        NOTIFY_SMTP_HOST="127.0.0.1", NOTIFY_SMTP_PORT=str(port), NOTIFY_SMTP_TLS="none",
        NOTIFY_SMTP_TIMEOUT="1", NOTIFY_POSTAL_ADDRESS="Example Ltd, Berlin",
        NOTIFY_MAIL_FROM="news@example.com", NOTIFY_REPLY_TO="help@example.com",
        NOTIFY_DKIM_DOMAIN="example.com", NOTIFY_DKIM_SELECTOR="s1",
        NOTIFY_DKIM_KEY_FILE=str(dkim_key[0])))
    client = await aiohttp_client(make_app(settings))
    resp = await client.put("/v1/users/ada", json={
        "email": "ada@example.com", "email_verified": True, "name": "Ada"}, headers=APP)
    assert resp.status == 201
    await client.put("/v1/users/ada/consents/newsletter", headers=ADMIN, json={
        "subscribed": True, "source": "import", "note": "confirmed in the old system"})
    channel = SmtpEmailChannel(settings)
    postman = Postman(settings, channel, signer(settings))
    yield client, postman, handler, settings
    await channel.close()


def channel_to(port, database_url, data_dir, **settings) -> SmtpEmailChannel:  # noqa: ANN001
    """A channel straight to the test relay, with no postman around it."""
    return SmtpEmailChannel(load_settings(environ=environ_for(
        database_url, data_dir, NOTIFY_EMAIL_TRANSPORT="smtp", NOTIFY_SMTP_HOST="127.0.0.1",
        NOTIFY_SMTP_PORT=str(port), NOTIFY_SMTP_TLS="none", NOTIFY_POSTAL_ADDRESS="x",
        **settings)))


async def newsletter(postman, external_id="ada"):
    from notify.models import User

    user = await User.get(external_id=external_id)
    return await postman.enqueue(user, "newsletter", topic="newsletter",
                                 context={"subject": "November news", "body": "Hello there."})


async def test_a_newsletter_arrives_with_every_header_and_a_working_unsubscribe(mailer,
                                                                                 dkim_key):
    import dkim

    client, postman, relay, settings = mailer
    delivery = await newsletter(postman)
    assert await postman.deliver_due() == 1
    [(mail_from, rcpt, data)] = relay.received
    assert mail_from.startswith("bounces+b") and mail_from.endswith("@example.com")
    assert rcpt == ["ada@example.com"]
    message = email.message_from_bytes(data, policy=policy.default)
    assert message["From"] == "news@example.com"
    assert message["To"] == "Ada <ada@example.com>"
    assert message["Reply-To"] == "help@example.com"
    assert message["Subject"] == "November news"
    assert message["Date"] and message["Message-ID"] == message_id(settings, delivery.id)
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["List-Id"].endswith("<newsletter.example.com>")
    assert message["Feedback-ID"] == "0:newsletter:newsletter:notify"
    https, mailto = [part.strip(" <>") for part in message["List-Unsubscribe"].split(",")]
    assert https.startswith(settings.public_url + "/u/")
    assert mailto.startswith("mailto:unsubscribe+u")
    assert message.get_content_type() == "multipart/alternative"

    # The DKIM signature verifies, and covers the one-click headers.
    def dns(name, timeout=5):
        assert name == b"s1._domainkey.example.com."
        return dkim_key[1]

    assert dkim.verify(data, dnsfunc=dns)
    signed = message["DKIM-Signature"].replace(" ", "").replace("\r\n", "").lower()
    assert "list-unsubscribe-post" in signed and "a=rsa-sha256" in signed
    assert "c=relaxed/relaxed" in signed
    assert "Hello there." in message.get_body(("plain",)).get_content()
    assert "Hello there." in message.get_body(("html",)).get_content()
    assert "Example Ltd, Berlin" in message.get_body(("plain",)).get_content()
    found = await Delivery.get(id=delivery.id)
    assert (found.status, found.attempts, found.provider_ref) == ("sent", 1,
                                                                  "2.0.0 queued as ABC123")

    # The unsubscribe URL in the message works against the running app, as one-click.
    resp = await client.post(urlsplit(https).path, data={"List-Unsubscribe": "One-Click"})
    assert resp.status == 200
    consents = await (await client.get("/v1/users/ada/consents", headers=APP)).json()
    assert {c["topic"]: c["state"] for c in consents["consents"]}["newsletter"] == "unsubscribed"


@BOTH_WAYS
async def test_connections_are_reused(mailer):
    _, postman, relay, _ = mailer
    for _ in range(5):
        await newsletter(postman)
    assert await postman.deliver_due() == 5
    assert len(relay.received) == 5
    assert relay.connections <= 4  # the pool's size, not one per message


@BOTH_WAYS
@pytest.mark.parametrize("fault", ["421", "451", "drop", "stall"])
async def test_temporary_faults_are_retried_with_the_same_message_id(mailer, fault):
    _, postman, relay, _ = mailer
    relay.faults.append(fault)
    delivery = await newsletter(postman)
    await postman.deliver_due()
    waiting = await Delivery.get(id=delivery.id)
    assert (waiting.status, waiting.attempts) == ("queued", 1)
    assert waiting.next_attempt_at > store.now() + timedelta(seconds=20)  # backed off
    assert waiting.last_error
    assert not relay.received

    await Delivery.filter(id=delivery.id).update(next_attempt_at=store.now())
    await postman.deliver_due()
    done = await Delivery.get(id=delivery.id)
    assert (done.status, done.attempts) == ("sent", 2)
    [(_, _, data)] = relay.received
    parsed = email.message_from_bytes(data, policy=policy.default)
    assert parsed["Message-ID"] == message_id(postman.settings, delivery.id)


async def test_temporary_faults_past_the_deadline_fail_and_say_why(mailer):
    _, postman, relay, _ = mailer
    relay.faults.extend(["451"])
    delivery = await newsletter(postman)
    await Delivery.filter(id=delivery.id).update(deadline=store.now() + timedelta(seconds=5))
    await postman.deliver_due()
    failed = await Delivery.get(id=delivery.id)
    assert failed.status == "failed" and "451" in failed.last_error


@BOTH_WAYS
async def test_unknown_mailbox_is_a_recorded_failure_and_a_suppression(mailer):
    client, postman, relay, settings = mailer
    await client.put("/v1/users/nobody", json={
        "email": "nobody@example.com", "email_verified": True}, headers=APP)
    await client.put("/v1/users/nobody/consents/newsletter", headers=ADMIN, json={
        "subscribed": True, "source": "import", "note": "old system"})
    delivery = await newsletter(postman, "nobody")
    await postman.deliver_due()
    failed = await Delivery.get(id=delivery.id)
    assert failed.status in ("failed", "bounced") and "5.1.1" in failed.last_error
    assert await store.is_suppressed(settings.hash_key, "email", "nobody@example.com")
    assert await Suppression.filter(reason="hard_bounce").count() == 1
    # Never again: the next message to that address is skipped before it is sent.
    again = await newsletter(postman, "nobody")
    await postman.deliver_due()
    assert (await Delivery.get(id=again.id)).skip_reason == "suppressed"


async def test_withdrawal_after_enqueue_skips_the_message(mailer):
    client, postman, relay, _ = mailer
    delivery = await newsletter(postman)
    await client.put("/v1/users/ada/consents/newsletter", json={"subscribed": False},
                     headers=APP)
    await postman.deliver_due()
    skipped = await Delivery.get(id=delivery.id)
    assert (skipped.status, skipped.skip_reason) == ("skipped", "not_subscribed")
    assert not relay.received


async def test_a_relay_that_is_down_keeps_the_message_queued(database_url, tmp_path, orm):
    settings = load_settings(environ=environ_for(
        database_url, tmp_path / "d2", NOTIFY_EMAIL_TRANSPORT="smtp",
        NOTIFY_SMTP_HOST="127.0.0.1", NOTIFY_SMTP_PORT=str(free_port()),
        NOTIFY_SMTP_TLS="none", NOTIFY_POSTAL_ADDRESS="x"))
    from notify.channels import Envelope

    channel = SmtpEmailChannel(settings)
    with pytest.raises(Exception) as caught:
        await channel.send(Envelope("a@example.com", ("b@example.com",), b"Subject: x\r\n\r\nx"))
    assert caught.value.temporary
    await channel.close()


@pytest.mark.parametrize("pipelining", [False, True], ids=["command-by-command", "pipelining"])
@pytest.mark.parametrize("mode", ["starttls", "implicit"])
async def test_tls_and_auth_from_settings(database_url, tmp_path, orm, mode, pipelining):
    import ssl

    import trustme
    from aiosmtpd.smtp import AuthResult

    from notify.channels import Envelope

    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    logins = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (auth_data.login, auth_data.password) == (b"notify", b"s3cret")
        logins.append(ok)
        return AuthResult(success=ok, handled=False)

    handler = Relay(pipelining=pipelining)
    tls = {"ssl_context": server_context} if mode == "implicit" else {
        "tls_context": server_context, "require_starttls": True}
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(),
                            authenticator=authenticator,
                            # aiosmtpd counts only STARTTLS as TLS for this check.
                            auth_require_tls=mode == "starttls", **tls)
    controller.start()
    try:
        env = environ_for(database_url, tmp_path / "d3", NOTIFY_EMAIL_TRANSPORT="smtp",
                          NOTIFY_SMTP_HOST="127.0.0.1", NOTIFY_SMTP_PORT=str(controller.port),
                          NOTIFY_SMTP_TLS=mode, NOTIFY_SMTP_USERNAME="notify",
                          NOTIFY_SMTP_PASSWORD="s3cret", NOTIFY_SMTP_CA_FILE=str(ca_file),
                          NOTIFY_POSTAL_ADDRESS="x")
        channel = SmtpEmailChannel(load_settings(environ=env))
        for _ in range(2):  # the second on the same connection, still encrypted
            await channel.send(Envelope("a@example.com", ("b@example.com",),
                                        b"Subject: hi\r\n\r\nbody\r\n"))
        await channel.close()
        # One connection: its EHLOs, the second after STARTTLS.
        assert logins == [True] and len(handler.received) == 2
        assert handler.connections == (2 if mode == "starttls" else 1)

        wrong = SmtpEmailChannel(load_settings(environ={**env,
                                                        "NOTIFY_SMTP_PASSWORD": "nope"}))
        with pytest.raises(Exception) as caught:
            await wrong.send(Envelope("a@example.com", ("b@example.com",), b"x\r\n"))
        assert caught.value.temporary and "authentication" in caught.value.detail
        await wrong.close()
    finally:
        controller.stop()


async def test_the_file_transport_writes_the_signed_bytes(database_url, tmp_path, orm,
                                                         dkim_key):
    import dkim

    from notify.channels.email_file import FileEmailChannel
    from notify.channels.factory import signer
    from notify.models import User

    settings = load_settings(environ=environ_for(
        database_url, tmp_path / "d4", NOTIFY_DKIM_DOMAIN="example.com",
        NOTIFY_DKIM_SELECTOR="s1", NOTIFY_DKIM_KEY_FILE=str(dkim_key[0])))
    user, _ = await store.save_user("eve", {"email": "eve@example.com",
                                            "email_verified": True}, replace=True,
                                    hash_key=HASH_KEY)
    from notify.consent import ConsentSource

    await store.change_consent(user, settings.topics["email_notifications"], True,
                               store.Evidence(source=ConsentSource.API), default_policy="1")
    postman = Postman(settings, FileEmailChannel(settings.outbox_dir), signer(settings))
    delivery = await postman.enqueue(await User.get(id=user.id), "notification",
                                     topic="email_notifications",
                                     context={"subject": "Ready", "body": "Your export."})
    await postman.deliver_due()
    assert (await Delivery.get(id=delivery.id)).status == "sent"
    [written] = settings.outbox_dir.glob("*.eml")
    data = written.read_bytes()
    assert data.startswith(b"Return-Path: <bounces+b")
    body = data.split(b"\r\n", 1)[1]  # what SMTP would carry, as signed
    assert dkim.verify(body, dnsfunc=lambda name, timeout=5: dkim_key[1])


async def test_the_configured_rate_limit_is_applied(relay, database_url, tmp_path, orm):
    import time

    from notify.channels import Envelope

    _, port = relay
    channel = channel_to(port, database_url, tmp_path / "d5", NOTIFY_SMTP_RATE="10")
    start = time.monotonic()
    await asyncio.gather(*(channel.send(Envelope("a@example.com", ("b@example.com",),
                                                 b"Subject: x\r\n\r\nx\r\n"))
                           for _ in range(25)))
    # No second holds more than 10 (notify.pace): the 21st goes 2 s after the first.
    assert time.monotonic() - start >= 2.0
    await channel.close()


@BOTH_WAYS
async def test_a_refused_sender_fails_the_delivery_but_suppresses_nobody(mailer):
    _, postman, relay, settings = mailer
    relay.refuse_sender = True
    delivery = await newsletter(postman)
    await postman.deliver_due()
    failed = await Delivery.get(id=delivery.id)
    assert failed.status == "failed" and "5.1.8" in failed.last_error
    assert not await store.is_suppressed(settings.hash_key, "email", "ada@example.com")


@BOTH_WAYS
async def test_one_transaction_sends_its_size_and_survives_a_refused_recipient(relay,
                                                                              database_url,
                                                                              tmp_path, orm):
    from notify.channels import DeliveryError, Envelope

    handler, port = relay
    channel = channel_to(port, database_url, tmp_path / "d6")
    data = b"Subject: x\r\n\r\nline one\r\n.dot first\r\n"
    receipt = await channel.send(Envelope("bounces+b1-x@example.com",
                                          ("nobody@example.com", "b@example.com"), data))
    assert receipt.reference.startswith("2.0.0 queued")
    # RFC 1870 SIZE on MAIL; the refused recipient did not stop the accepted one; the
    # line that starts with a dot arrived as it was (dot-stuffed on the wire).
    assert handler.mail_options == [[f"SIZE={len(data)}"]]
    [(mail_from, rcpt, content)] = handler.received
    assert (mail_from, rcpt) == ("bounces+b1-x@example.com", ["b@example.com"])
    assert content == data
    # Every recipient refused: the relay's words, permanent, recipient-related.
    with pytest.raises(DeliveryError) as refused:
        await channel.send(Envelope("a@example.com", ("nobody@example.com",), data))
    assert refused.value.code == 550 and refused.value.status == "5.1.1"
    assert not refused.value.temporary and refused.value.recipient
    await channel.close()


@pytest.mark.parametrize("address", ["b@example.com> NOTIFY=NEVER", "a b@example.com",
                                     "b@example.com\r\nRSET", '"b"@example.com',
                                     "bü@example.com"])
async def test_an_address_that_cannot_go_on_a_command_line_fails_for_good(
        relay, database_url, tmp_path, orm, address):
    from notify.channels import DeliveryError, Envelope

    handler, port = relay
    channel = channel_to(port, database_url, tmp_path / "d7")
    for envelope in (Envelope("a@example.com", (address,), b"Subject: x\r\n\r\nx\r\n"),
                     Envelope(address, ("b@example.com",), b"Subject: x\r\n\r\nx\r\n")):
        with pytest.raises(DeliveryError) as refused:
            await channel.send(envelope)
        assert not refused.value.temporary and "command line" in refused.value.detail
    # Refused before any command, and before taking a connection for it.
    assert handler.connections == 0
    assert handler.mail_options == [] and handler.received == []
    await channel.close()


#: The scripted relay's tests use the channel alone: its settings need a database URL,
#: but nothing connects to one.
NO_DATABASE = "sqlite://:memory:"


class ScriptedRelay:
    """A relay on loopback that reads raw lines and answers as a test scripts it, to see
    what a PIPELINING client writes and when (aiosmtpd answers each command at once)."""

    def __init__(self, script) -> None:  # noqa: ANN001 - async (reader, writer, relay)
        self.script = script
        self.connections = 0
        self.seen: list[bytes] = []
        self.served: list[asyncio.Future] = []

    async def __aenter__(self) -> ScriptedRelay:
        async def serve(reader, writer):  # noqa: ANN001, ANN202
            self.connections += 1
            served = asyncio.get_running_loop().create_future()
            self.served.append(served)
            writer.write(b"220 scripted ESMTP\r\n")
            try:
                assert (await reader.readline()).startswith(b"EHLO")
                writer.write(b"250-scripted\r\n250-PIPELINING\r\n250 SIZE 1000000\r\n")
                await self.script(reader, writer, self)
            except Exception as exc:  # the test sees what the script did not expect
                served.set_exception(exc)
            else:
                served.set_result(None)
            finally:
                writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        # Each connection's script to its end (its assertions included), then the server.
        await asyncio.wait_for(asyncio.gather(*self.served), 5)
        self.server.close()
        await self.server.wait_closed()

    async def lines(self, reader, count: int) -> list[bytes]:  # noqa: ANN001
        lines = [await reader.readline() for _ in range(count)]
        self.seen.extend(lines)
        return lines

    async def content(self, reader) -> bytes:  # noqa: ANN001
        data = await reader.readuntil(b"\r\n.\r\n")
        self.seen.append(data)
        return data


ENVELOPE_DATA = b"Subject: x\r\n\r\nline one\r\n.dot first\r\nlast"


async def test_a_pipelining_relay_gets_mail_rcpt_and_data_before_it_answers_any(
        tmp_path):
    from notify.channels import Envelope

    async def script(reader, writer, relay):  # noqa: ANN001, ANN202
        for _ in range(2):  # two messages on one connection
            # Nothing is answered until all three commands are in: a client that waited
            # for the MAIL reply before writing RCPT would time out here.
            mail, rcpt, data = await relay.lines(reader, 3)
            assert (mail.startswith(b"MAIL FROM:<a@example.com>"), rcpt, data) == (
                True, b"RCPT TO:<b@example.com>\r\n", b"DATA\r\n")
            writer.write(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go on\r\n")
            await relay.content(reader)
            writer.write(b"250-2.0.0 queued\r\n250 2.0.0 as Q1\r\n")  # a multi-line reply
        await reader.readline()

    async with ScriptedRelay(script) as relay:
        channel = channel_to(relay.port, NO_DATABASE, tmp_path / "p1", NOTIFY_SMTP_TIMEOUT="2")
        for _ in range(2):
            receipt = await channel.send(Envelope("a@example.com", ("b@example.com",),
                                                  ENVELOPE_DATA))
            assert receipt.reference == "2.0.0 queued\n2.0.0 as Q1"
        await channel.close()
    assert relay.connections == 1
    # SIZE on MAIL, as sent (the CRLF it lacked included, RFC 1870); the content ended by
    # CRLF, its dot line doubled, then the end.
    assert relay.seen[0] == b"MAIL FROM:<a@example.com> SIZE=%d\r\n" % (len(ENVELOPE_DATA) + 2)
    assert relay.seen[3] == b"Subject: x\r\n\r\nline one\r\n..dot first\r\nlast\r\n.\r\n"


@pytest.mark.parametrize("answer, code, temporary, recipient", [
    # Every recipient refused, yet DATA accepted (RFC 2920 says it should not be): the
    # content is never sent; the connection is dropped instead.
    (b"250 ok\r\n550 5.1.1 no such user\r\n354 go on\r\n", 550, False, True),
    (b"553 5.1.8 bad sender\r\n503 5.5.1 no sender\r\n503 5.5.1 no recipients\r\n", 553,
     False, False),
    (b"250 ok\r\n250 ok\r\n451 4.3.0 later\r\n", 451, True, False),
    (b"250 ok\r\n250 ok\r\nhello there\r\n", None, True, False),  # not SMTP
])
async def test_a_pipelined_transaction_that_fails_says_why_and_sends_no_content(
        tmp_path, answer, code, temporary, recipient):

    async def script(reader, writer, relay):  # noqa: ANN001, ANN202
        await relay.lines(reader, 3)
        writer.write(answer)
        # Whatever comes next: the client has to hang up without content.
        relay.seen.append(await reader.read(100))

    failed, relay = await _refused(script, tmp_path / "p2", reply_timeout="2")
    assert (failed.code, failed.temporary, failed.recipient) == (code, temporary, recipient)
    assert relay.seen[-1] == b""  # the connection closed, no content, no dot
    if code is None:
        assert "malformed reply from the relay: hello there" in failed.detail


async def _refused(script, data_dir, reply_timeout: str):  # noqa: ANN001, ANN202
    """One message through a scripted relay that refuses it: the DeliveryError, the relay."""
    from notify.channels import DeliveryError, Envelope

    async with ScriptedRelay(script) as relay:
        channel = channel_to(relay.port, NO_DATABASE, data_dir, NOTIFY_SMTP_TIMEOUT=reply_timeout)
        with pytest.raises(DeliveryError) as failed:
            await channel.send(Envelope("a@example.com", ("b@example.com",), ENVELOPE_DATA))
        await channel.close()
    return failed.value, relay


@pytest.mark.parametrize("goodbye", [b"421 4.3.2 shutting down\r\n", b"421 4.4.2 idle timeo"],
                         ids=["a 421", "half a line"])
async def test_bytes_between_messages_end_that_connection_and_cost_nothing(
        tmp_path, goodbye):
    """A 421 between messages (the relay shutting down), or only its first bytes: that
    connection is not used again (half a line would read as the next MAIL's reply); the
    next message goes through a new one."""
    from notify.channels import Envelope

    async def script(reader, writer, relay):  # noqa: ANN001, ANN202
        await relay.lines(reader, 3)
        writer.write(b"250 ok\r\n250 ok\r\n354 go on\r\n")
        await relay.content(reader)
        writer.write(b"250 2.0.0 queued\r\n")
        if relay.connections == 1:
            await asyncio.sleep(0.1)
            writer.write(goodbye)
            await writer.drain()
            await reader.read()  # until the client hangs up
        else:
            await reader.readline()

    async with ScriptedRelay(script) as relay:
        channel = channel_to(relay.port, NO_DATABASE, tmp_path / "p3", NOTIFY_SMTP_TIMEOUT="2")
        await channel.send(Envelope("a@example.com", ("b@example.com",), ENVELOPE_DATA))
        await asyncio.sleep(0.3)
        receipt = await channel.send(Envelope("a@example.com", ("b@example.com",),
                                              ENVELOPE_DATA))
        await channel.close()
    assert receipt.reference == "2.0.0 queued" and relay.connections == 2


async def test_a_pipelining_relay_that_stalls_times_out_as_a_temporary_failure(
        tmp_path):
    from notify.channels import DeliveryError, Envelope

    async def script(reader, writer, relay):  # noqa: ANN001, ANN202
        await relay.lines(reader, 3)
        writer.write(b"250 ok\r\n250 ok\r\n")  # and never the DATA reply
        await reader.read()  # until the client gives up and hangs up

    async with ScriptedRelay(script) as relay:
        channel = channel_to(relay.port, NO_DATABASE, tmp_path / "p4", NOTIFY_SMTP_TIMEOUT="1")
        with pytest.raises(DeliveryError) as failed:
            await channel.send(Envelope("a@example.com", ("b@example.com",), ENVELOPE_DATA))
        await channel.close()
    assert failed.value.temporary and "timed out" in failed.value.detail


@pytest.mark.parametrize("then", ["hang up", "stall"])
@pytest.mark.parametrize("answer, code, recipient", [
    (b"250 ok\r\n550 5.1.1 no such user\r\n", 550, True),
    (b"554 5.7.1 sender refused\r\n", 554, False),
])
async def test_a_refusal_counts_even_when_the_relay_then_hangs_up_or_stalls(
        tmp_path, answer, code, recipient, then):
    """Replies are acted on in order: a 5xx already read is the outcome (permanent, and
    an unknown mailbox is suppressed by the postman), not the dropped connection after."""

    async def script(reader, writer, relay):  # noqa: ANN001, ANN202
        await relay.lines(reader, 3)
        writer.write(answer)
        await writer.drain()
        if then == "stall":
            await reader.read()  # nothing more: until the client hangs up

    failed, _ = await _refused(script, tmp_path / "p5", reply_timeout="1")
    assert (failed.code, failed.temporary, failed.recipient) == (code, False, recipient)


async def test_the_timeout_is_per_reply_not_per_transaction(tmp_path):
    """A relay that takes 0.4 s over each reply, under a 1 s timeout: each reply is in
    time, so the message goes (the four together take 1.6 s)."""
    from notify.channels import Envelope

    async def script(reader, writer, relay):  # noqa: ANN001, ANN202
        await relay.lines(reader, 3)
        for reply in (b"250 ok\r\n", b"250 ok\r\n", b"354 go on\r\n"):
            await asyncio.sleep(0.4)
            writer.write(reply)
        await relay.content(reader)
        await asyncio.sleep(0.4)
        writer.write(b"250 2.0.0 queued\r\n")
        await reader.readline()

    async with ScriptedRelay(script) as relay:
        channel = channel_to(relay.port, NO_DATABASE, tmp_path / "p6", NOTIFY_SMTP_TIMEOUT="1")
        receipt = await channel.send(Envelope("a@example.com", ("b@example.com",),
                                              ENVELOPE_DATA))
        await channel.close()
    assert receipt.reference == "2.0.0 queued"


async def test_a_send_cancelled_while_connecting_leaves_no_connection_open(
        tmp_path):
    from notify.channels import Envelope

    closed = asyncio.Event()

    async def serve(reader, writer):  # noqa: ANN001, ANN202
        writer.write(b"220 slow ESMTP\r\n")
        await reader.readline()  # EHLO, never answered
        await reader.read()  # returns when the client hangs up
        closed.set()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        channel = channel_to(server.sockets[0].getsockname()[1], NO_DATABASE, tmp_path / "p8",
                             NOTIFY_SMTP_TIMEOUT="5")
        send = asyncio.create_task(channel.send(Envelope("a@example.com", ("b@example.com",),
                                                         ENVELOPE_DATA)))
        await asyncio.sleep(0.3)
        send.cancel()
        with pytest.raises(asyncio.CancelledError):
            await send
        await asyncio.wait_for(closed.wait(), 2)  # the relay saw the hang-up
        await channel.close()
    finally:
        server.close()


@hypothesis_settings(max_examples=500, deadline=None, derandomize=True, database=None)
@given(st.lists(st.sampled_from([b"\r\n", b"\n", b"\r", b".", b"..", b" ", b"a", b"\r\r\n\n",
                                 b"\x00", "ü".encode()]), max_size=30).map(b"".join))
def test_content_goes_on_the_wire_as_aiosmtplib_would_send_it(data):
    """The pipelined path's CRLF check and dot-stuffing, against aiosmtplib's own
    normalisation and stuffing, for any mix of line ends, dots and bytes."""
    from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

    from notify.channels.email_smtp import _crlf, _stuffed

    assert _crlf(data) == normalize_message_line_endings(data)
    assert _stuffed(_crlf(data)) == PERIOD_REGEX.sub(
        b"..", normalize_message_line_endings(data)) + b".\r\n"
