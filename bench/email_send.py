"""Rendered, DKIM-signed emails per second into a local SMTP sink, end to end through the
postman (outbox row, eligibility re-check, templates, MIME, DKIM RSA-2048, SMTP), next to
the raw OpenSSL RSA-2048 signing rate measured in the same run.

Run from the repository root: ``python bench/email_send.py [MESSAGES]`` (default 2000).
Starts everything it needs on loopback (SQLite in a temporary folder, an aiosmtpd sink).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import tempfile
import time
from pathlib import Path

from _common import positive  # bench/, the script's own folder
from aiosmtpd.controller import Controller
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa


class Sink:
    def __init__(self) -> None:
        self.count = 0

    async def handle_DATA(self, server, session, envelope):  # noqa: N802, ANN001, ANN201
        self.count += 1
        return "250 OK"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def openssl_rate(key: rsa.RSAPrivateKey, seconds: float = 2.0) -> float:
    data, done, start = b"x" * 1000, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        done += 1
    return done / (time.perf_counter() - start)


async def main(messages: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="notify-bench-"))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = work / "dkim.pem"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    sink = Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    os.environ.update({
        "NOTIFY_DATA_DIR": str(work), "NOTIFY_EMAIL_TRANSPORT": "smtp",
        "NOTIFY_SMTP_HOST": "127.0.0.1", "NOTIFY_SMTP_PORT": str(controller.port),
        "NOTIFY_SMTP_TLS": "none", "NOTIFY_POSTAL_ADDRESS": "Example Ltd, Berlin",
        "NOTIFY_API_KEYS": "app:" + "a" * 20, "NOTIFY_SECRET_KEYS": "k1:" + "s" * 40,
        "NOTIFY_HASH_KEY": "h" * 32, "NOTIFY_DKIM_DOMAIN": "example.com",
        "NOTIFY_DKIM_SELECTOR": "s1", "NOTIFY_DKIM_KEY_FILE": str(key_file),
        "NOTIFY_SMTP_POOL_SIZE": "8",
    })
    from notify.channels.factory import email_channel, signer
    from notify.consent import ConsentState
    from notify.db import apply_migrations, close_db, open_db
    from notify.models import Consent, Delivery, User
    from notify.postman import Postman
    from notify.settings import load_settings
    from notify.store import now

    settings = load_settings()
    ctx = await open_db(settings.database_url)
    with ctx:
        await apply_migrations(ctx)
        await User.bulk_create([User(external_id=f"u{n}", email=f"user{n}@example.com",
                                     email_verified=True, name=f"User {n}")
                                for n in range(messages)])
        users = await User.all().only("id")
        await Consent.bulk_create([Consent(user_id=u.id, topic="newsletter", updated_at=now(),
                                           state=ConsentState.SUBSCRIBED) for u in users])
        channel = email_channel(settings)
        postman = Postman(settings, channel, signer(settings))
        for u in users:
            await postman.enqueue(u, "newsletter", topic="newsletter",
                                  context={"subject": "Bench", "body": "Hello " * 50})
        start = time.perf_counter()
        while await postman.deliver_due(limit=200):
            pass
        elapsed = time.perf_counter() - start
        sent = await Delivery.filter(status="sent").count()
        await channel.close()
    await close_db(ctx)
    controller.stop()
    ceiling = openssl_rate(key)
    rate = sent / elapsed
    print(f"messages sent:                    {sent} of {messages} (sink got {sink.count})")
    print(f"end to end (outbox -> SMTP sink): {rate:8.0f} messages/s  "
          f"({elapsed * 1000 / max(sent, 1):.2f} ms each)")
    print(f"raw OpenSSL RSA-2048, one core:   {ceiling:8.0f} signatures/s")
    print(f"ratio end to end / RSA ceiling:   {rate / ceiling:8.1%}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("messages", type=positive(int), nargs="?", default=2000)
    asyncio.run(main(parser.parse_args().messages))
