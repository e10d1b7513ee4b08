"""The migrations build the schema on both backends and keep up with the models."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support import TABLES
from tortoise.migrations.autodetector import MigrationAutodetector

from notify.db import APP, TORTOISE_ORM, apply_migrations, close_db, open_db
from notify.models import ConsentEvent

#: Every migration in the folder, in order: a fresh database applies all of them.
MIGRATIONS = [f"models.{path.stem}" for path in
              sorted((Path(__file__).parents[1] / "migrations").glob("[0-9]*.py"))]


async def test_models_have_no_unwritten_migration():
    ctx = await open_db("sqlite://:memory:")
    try:
        with ctx:
            changes = await MigrationAutodetector(ctx.apps, {APP: TORTOISE_ORM["apps"][APP]})\
                .changes()
    finally:
        await close_db(ctx)
    assert not changes, "the models changed: run 'tortoise makemigrations' and commit it"


async def table_names(ctx) -> set[str]:
    db = ctx.db()
    if "sqlite" in type(db).__module__:
        _, rows = await db.execute_query("SELECT name FROM sqlite_master WHERE type='table'")
    else:
        _, rows = await db.execute_query(
            "SELECT table_name AS name FROM information_schema.tables "
            "WHERE table_schema = 'public'")
    return {row["name"] for row in rows}


async def test_migrate_builds_schema_once_and_again_is_a_no_op(empty_database):
    ctx = await open_db(empty_database, create=True)
    try:
        assert await apply_migrations(ctx) == MIGRATIONS
        tables = await table_names(ctx)
        assert set(TABLES) <= tables
        assert await apply_migrations(ctx) == []
        assert await table_names(ctx) == tables
        if "sqlite" not in type(ctx.db()).__module__:
            # The models' db_constraint=False holds in the database too (migration 0004).
            _, rows = await ctx.db().execute_query(
                "SELECT conname FROM pg_constraint WHERE contype = 'f' "
                "AND conrelid = 'deliveries'::regclass")
            assert rows == []
    finally:
        await close_db(ctx)


async def test_ledger_rows_cannot_be_updated_or_deleted(orm, alice):
    from notify.models import User

    with orm:
        user = await User.get(external_id="alice")
        event = await ConsentEvent.create(user_id=user.id, topic="newsletter", to_state="pending",
                                          source="api", policy_version="1", occurred_at=user
                                          .created_at)
        event.note = "rewritten"
        with pytest.raises(Exception, match="append-only"):
            await event.save()
        with pytest.raises(Exception, match="append-only"):
            await event.delete()
        assert (await ConsentEvent.get(id=event.id)).note is None


@pytest.mark.postgres
def test_concurrent_start_ups_migrate_once(fresh_pg_database):
    url = fresh_pg_database()

    async def start() -> list[str]:
        ctx = await open_db(url)
        try:
            return await apply_migrations(ctx)
        finally:
            await close_db(ctx)

    async def race() -> list[list[str]]:
        return await asyncio.gather(*(start() for _ in range(3)))

    results = asyncio.run(race())
    assert sorted(len(r) for r in results) == [0, 0, len(MIGRATIONS)]


@pytest.fixture
def pg_database(fresh_pg_database) -> str:  # noqa: ANN001
    return fresh_pg_database()  # made outside the test's event loop


@pytest.mark.postgres
async def test_claims_read_the_partial_indexes_whatever_the_plan(pg_database):
    """Migration 0007's partial indexes serve the claims and the Twilio SID lookup even
    under a generic plan (the kind PostgreSQL settles on for a prepared statement run
    often): they write their channel and status into the SQL. With ``channel = $1``
    instead, these plans read the whole table."""
    from notify import postman
    from notify.settings import Channel

    ctx = await open_db(pg_database, create=True)
    try:
        await apply_migrations(ctx)
        async with ctx.db().acquire_connection() as db:  # one session for its SETs
            names = {row["indexname"] for row in await db.fetch(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'deliveries'")}
            assert "idx_deliveries_channel_7a41be" not in names
            # Many rows done, a few queued and claimed: a campaign under way.
            await db.execute(
                "INSERT INTO deliveries (user_id, channel, kind, context, status, attempts, "
                "takeovers, next_attempt_at, deadline, created_at, updated_at, provider_ref) "
                "SELECT n, CASE WHEN n % 10 = 0 THEN 'sms' ELSE 'email' END, 'newsletter', "
                "'{}', CASE WHEN n % 500 = 0 THEN 'queued' WHEN n % 500 = 1 THEN 'sending' "
                "ELSE 'sent' END, 0, 0, now(), now() + interval '1 day', now(), now(), "
                "'SM' || n FROM generate_series(1, 50000) AS n")
            await db.execute("ANALYZE deliveries; SET plan_cache_mode = force_generic_plan")
            # In the order of postman.claim: the expired claims, then the due ones with
            # what _claim_due_postgres sets for them.
            cases = [(postman._CLAIM_EXPIRED_SQL[c], "deliveries_leased", "") for c in Channel]
            cases += [(postman._CLAIM_DUE_SQL[c], f"deliveries_due_{c}",
                       "SET enable_sort = off; SET enable_bitmapscan = off") for c in Channel]
            cases.append((postman._SMS_BY_REFERENCE, "deliveries_sms_reference", "RESET ALL; "
                          "SET plan_cache_mode = force_generic_plan"))
            for number, (sql, index, settings) in enumerate(cases):
                assert index in names
                if settings:
                    await db.execute(settings)
                await db.execute(f"PREPARE statement{number} AS {sql}")
                arguments = ("'SM10'" if "$2" not in sql else
                             "now(), 50, now() + interval '5 minutes'")
                text = "\n".join(row["QUERY PLAN"] for row in await db.fetch(
                    f"EXPLAIN EXECUTE statement{number}({arguments})"))
                assert "$1" in text, text  # a generic plan: the parameters unbound
                assert index in text and "Seq Scan on deliveries" not in text, text
    finally:
        await close_db(ctx)
