"""Written by hand: on PostgreSQL, deliveries lose their foreign-key constraints.

The campaign and notice references: the model has said ``db_constraint=False`` for both
since 0003 (a million-row enqueue paid a per-row check for each), but tortoise's AddField
created the constraints anyway.

The user reference: its check locks the user row (``FOR KEY SHARE``, written into the
row), which for an 800,000-row enqueue wrote 370 MB of WAL and took it from ~5 s to
~10 s (bench/enqueue.py). Users are never deleted, only erased (the row stays), and every
delivery is written by notify from a user row, so the check guards nothing that can
happen. (The model keeps the default for this one: saying ``db_constraint=False``
there needs an AlterField, which drops nothing on PostgreSQL and rebuilds the whole table
on SQLite, losing the indexes written by hand.)

SQLite keeps its REFERENCES clauses (dropping one rebuilds the table); its enqueue is
not the one that has to be fast.

Also on PostgreSQL: the deliveries' id sequence hands each connection 1,000 ids at a
time. The parts of an enqueue (audience.enqueue) insert at once, and a nextval per row
shared by all of them was a point they queued on (2 parts: 5.1 s -> 4.4 s). Ids stay
unique and grow per connection; they are not a global insertion order (nothing reads
them as one: claims go by next_attempt_at, then id).
"""

from tortoise import migrations
from tortoise.migrations import operations as ops

CONSTRAINTS = {
    "deliveries_user_id_fkey": "(user_id) REFERENCES users (id)",
    "deliveries_campaign_id_fkey": "(campaign_id) REFERENCES campaigns (id)",
    "deliveries_notice_of_id_fkey": "(notice_of_id) REFERENCES policy_versions (id)",
}


async def drop_constraints(apps, schema_editor) -> None:  # noqa: ANN001 - tortoise's API
    if schema_editor.client.capabilities.dialect != "postgres":
        return
    for name in CONSTRAINTS:
        await schema_editor.client.execute_script(
            f"ALTER TABLE deliveries DROP CONSTRAINT IF EXISTS {name}")
    await schema_editor.client.execute_script(
        "ALTER SEQUENCE deliveries_id_seq CACHE 1000")


async def add_constraints(apps, schema_editor) -> None:  # noqa: ANN001 - tortoise's API
    if schema_editor.client.capabilities.dialect != "postgres":
        return
    await schema_editor.client.execute_script("ALTER SEQUENCE deliveries_id_seq CACHE 1")
    for name, reference in CONSTRAINTS.items():
        await schema_editor.client.execute_script(
            f"ALTER TABLE deliveries ADD CONSTRAINT {name} FOREIGN KEY {reference} "
            "ON DELETE RESTRICT")


class Migration(migrations.Migration):
    dependencies = [('models', '0003_campaigns')]

    initial = False

    operations = [
        ops.RunPython(drop_constraints, reverse_code=add_constraints),
    ]
