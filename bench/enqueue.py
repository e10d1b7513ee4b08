"""A campaign over N users becomes deliveries: time of the set-based enqueue on PostgreSQL,
next to a bare ``INSERT … SELECT`` of as many rows into an index-free copy of the table
(the same run's ceiling), at 10k, 100k and 1M users; then a worker's RSS while it sends
from the million-row outbox.

Run from the repository root: ``python bench/enqueue.py [MAX_USERS]`` (default 1000000).
Needs PostgreSQL at 127.0.0.1:5432 (``NOTIFY_BENCH_POSTGRES`` overrides the admin URL);
creates and drops its own databases.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import os
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from _common import positive  # bench/, the script's own folder

ADMIN = os.environ.get("NOTIFY_BENCH_POSTGRES", "postgres://postgres@127.0.0.1:5432/test")
HASH_KEY = b"h" * 32
TOPICS = ("email_notifications", "sms_notifications", "newsletter")


def address_hash(kind: str, address: str) -> str:
    # notify.store.address_hash, inlined: the loader must not import the ORM's world.
    return hmac.new(HASH_KEY, f"{kind}:{address}".encode(), hashlib.sha256).hexdigest()


async def load(url: str, users: int) -> None:
    """Users with three topics of consent each; 80% subscribed to the newsletter, 1% of
    the addresses suppressed, 2% unverified: the rule has work to do."""
    conn = await asyncpg.connect(url)
    now = datetime.now(UTC)
    try:
        rows = []
        for n in range(users):
            email = f"user{n}@example.com"
            rows.append((f"u{n}", secrets.token_urlsafe(16), email, n % 50 != 0,
                         address_hash("email", email), False, "en", now, now))
        await conn.copy_records_to_table(
            "users", records=rows, columns=["external_id", "handle", "email", "email_verified",
                                            "email_hash", "phone_verified", "locale",
                                            "created_at", "updated_at"])
        del rows
        ids = [r["id"] for r in await conn.fetch("SELECT id FROM users ORDER BY id")]
        consents = []
        for position, user_id in enumerate(ids):
            for topic in TOPICS:
                state = ("subscribed" if topic != "newsletter" or position % 5 else
                         "unsubscribed")
                consents.append((user_id, topic, state, now))
        await conn.copy_records_to_table("consents", records=consents,
                                         columns=["user_id", "topic", "state", "updated_at"])
        del consents
        suppressed = [("email", address_hash("email", f"user{n}@example.com"), "hard_bounce",
                       now) for n in range(0, users, 100)]
        await conn.copy_records_to_table("suppressions", records=suppressed,
                                         columns=["kind", "address_hash", "reason",
                                                  "created_at"])
        # As the tables are a while after such a load: vacuumed (an autovacuum of the
        # fresh rows would otherwise run beside the timed statements, on the same cores).
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


async def settle(url: str) -> None:
    """Before each timed statement: a checkpoint, so that the one the load's or the
    previous statement's WAL calls for is not written while the next is timed (with
    Debian's max_wal_size of 1 GB they came every 10-30 s and took as long)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def admin(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def ceiling(url: str, including: str = "DEFAULTS") -> tuple[float, int]:
    """A bare INSERT … SELECT of the eligible rows (no rule, no foreign keys) into a copy of
    deliveries: with ``DEFAULTS`` an index-free one, with ``ALL`` one with the same
    indexes, to tell what the indexes cost from what the rule and the checks cost."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"CREATE TABLE bare (LIKE deliveries INCLUDING {including})")
        await settle(url)
        start = time.perf_counter()
        status = await conn.execute(
            "INSERT INTO bare (user_id, campaign_id, channel, kind, topic, context, status, "
            "attempts, takeovers, next_attempt_at, deadline, created_at, updated_at) "
            "SELECT u.id, 0, 'email', 'newsletter', 'newsletter', '{}'::jsonb, 'queued', 0, "
            "0, now(), now(), now(), now() FROM users u JOIN consents c ON c.user_id = u.id "
            "AND c.topic = 'newsletter' WHERE c.state = 'subscribed'")
        elapsed = time.perf_counter() - start
        await conn.execute("DROP TABLE bare")
        return elapsed, int(status.split()[-1])
    finally:
        await conn.close()


async def enqueue(url: str) -> tuple[float, int, dict[str, int]]:
    os.environ["NOTIFY_DATABASE_URL"] = url
    from notify import campaigns
    from notify.db import close_db, open_db
    from notify.settings import load_settings

    settings = load_settings()
    ctx = await open_db(url)
    try:
        with ctx:
            campaign = await campaigns.create(settings, campaigns.Spec(
                name="bench", kind="newsletter", topic="newsletter",
                variables={"subject": "News", "body": "Hello"}), "bench")
            await settle(url)
            start = time.perf_counter()
            sent = await campaigns.send(settings, campaign.id, "bench")
            elapsed = time.perf_counter() - start
            return elapsed, sent.enqueued, sent.excluded
    finally:
        await close_db(ctx)


def rss_while_sending(url: str, data: Path, seconds: float) -> tuple[int, int]:
    """Peak RSS (KiB) of a worker sending from the outbox, and how many it sent."""
    env = {**os.environ, "NOTIFY_DATABASE_URL": url, "NOTIFY_DATA_DIR": str(data),
           "NOTIFY_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "notify.cli", "worker"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak, deadline = 0, time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    peak = max(peak, int(line.split()[1]))
            time.sleep(0.25)
    finally:
        proc.terminate()
        proc.wait(30)
    sent = len(list((data / "outbox").glob("*.eml")))
    return peak, sent


async def one_size(users: int, measure_rss: bool) -> None:
    name = f"notify_bench_{uuid.uuid4().hex[:10]}"
    url = ADMIN.rsplit("/", 1)[0] + "/" + name
    await admin(f'CREATE DATABASE "{name}"')
    data = Path(tempfile.mkdtemp(prefix="notify-bench-"))
    try:
        os.environ.update({
            "NOTIFY_DATA_DIR": str(data), "NOTIFY_API_KEYS": "admin:" + "a" * 20,
            "NOTIFY_SECRET_KEYS": "k1:" + "s" * 40, "NOTIFY_HASH_KEY": HASH_KEY.decode(),
            "NOTIFY_LOG_LEVEL": "WARNING"})
        subprocess.run([sys.executable, "-m", "notify.cli", "migrate"], check=True,
                       env={**os.environ, "NOTIFY_DATABASE_URL": url},
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started = time.perf_counter()
        await load(url, users)
        loaded = time.perf_counter() - started
        bare, bare_rows = await ceiling(url)
        indexed, _ = await ceiling(url, "ALL")
        ours, rows, excluded = await enqueue(url)
        print(f"{users:>9,} users (loaded in {loaded:5.1f} s): enqueue {rows:>9,} deliveries "
              f"in {ours:6.2f} s ({rows / ours:>9,.0f}/s); bare INSERT…SELECT of "
              f"{bare_rows:,} rows {bare:5.2f} s, with the same indexes {indexed:5.2f} s; "
              f"ratio bare/ours {bare / ours:5.1%}, indexed/ours {indexed / ours:5.1%}; "
              f"excluded {excluded}", flush=True)
        if measure_rss:
            peak, sent = rss_while_sending(url, data, 20)
            print(f"worker sending from the {rows:,}-row outbox for 20 s: peak RSS "
                  f"{peak / 1024:.0f} MB (target < 300 MB), {sent:,} messages sent",
                  flush=True)
    finally:
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def main(largest: int) -> None:
    sizes = [n for n in (10_000, 100_000, 1_000_000) if n <= largest] or [largest]
    for size in sizes:
        await one_size(size, measure_rss=size == sizes[-1])


if __name__ == "__main__":
    started = datetime.now(UTC)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("max_users", type=positive(int), nargs="?", default=1_000_000,
                        help="the largest size run (10k, 100k and 1M up to it)")
    asyncio.run(main(parser.parse_args().max_users))
    print(f"total {(datetime.now(UTC) - started) / timedelta(seconds=1):.0f} s")
