"""Constants and helpers shared by the tests."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

from notify.db import close_db, open_db

PG_ADMIN = os.environ.get("NOTIFY_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432/test")
APP_KEY = "app-key-0123456789abcdef"
ADMIN_KEY = "admin-key-0123456789abcdef"
APP = {"Authorization": f"Bearer {APP_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
HASH_KEY = b"h" * 32  # NOTIFY_HASH_KEY of environ_for
TABLES = ("deliveries", "campaigns", "audit_log", "bounce_scores", "consent_events", "consents",
          "suppressions",
          "policy_versions", "users")


def environ_for(database_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "NOTIFY_DATABASE_URL": database_url,
        "NOTIFY_DATA_DIR": str(data_dir),
        "NOTIFY_API_KEYS": f"app:{APP_KEY},admin:{ADMIN_KEY}",
        "NOTIFY_SECRET_KEYS": "k1:" + "s" * 40,
        "NOTIFY_HASH_KEY": HASH_KEY.decode(),
        "NOTIFY_PUBLIC_URL": "http://127.0.0.1:8080",
        # Tests send hundreds of bad tokens and keys from one address on purpose; the
        # abuse limits are tested with their defaults in test_abuse.py.
        "NOTIFY_PUBLIC_RATE_LIMIT": "",
        "NOTIFY_BAD_TOKEN_RATE_LIMIT": "",
        "NOTIFY_AUTH_FAILURE_RATE_LIMIT": "",
        **extra,
    }


async def snapshot(orm) -> dict[str, list]:  # noqa: ANN001
    """Every row of every table, to prove that a refused request changed nothing."""
    rows = {}
    with orm:
        db = orm.db()
        for table in TABLES:
            _, found = await db.execute_query(f"SELECT * FROM {table} ORDER BY id")
            rows[table] = [dict(r) for r in found]
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]




def in_db(database_url: str, work):  # noqa: ANN001, ANN201 - an async callable, its result
    async def go():  # noqa: ANN202
        ctx = await open_db(database_url)
        try:
            with ctx:
                return await work()
        finally:
            await close_db(ctx)

    return asyncio.run(go())
