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
