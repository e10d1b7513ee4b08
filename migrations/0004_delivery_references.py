"""Written by hand: the campaign and notice references of deliveries lose their
foreign-key constraints on PostgreSQL.

The model has said ``db_constraint=False`` for both since 0003 (a million-row enqueue
paid a per-row check for each, bench/enqueue.py), but tortoise's AddField created the
constraints on PostgreSQL anyway. Nothing to do on SQLite, which kept none.
"""

from tortoise import migrations
from tortoise.migrations import operations as ops

CONSTRAINTS = ("deliveries_campaign_id_fkey", "deliveries_notice_of_id_fkey")


async def drop_constraints(apps, schema_editor) -> None:  # noqa: ANN001 - tortoise's API
    if schema_editor.client.capabilities.dialect != "postgres":
        return
    for name in CONSTRAINTS:
        await schema_editor.client.execute_script(
            f"ALTER TABLE deliveries DROP CONSTRAINT IF EXISTS {name}")


async def add_constraints(apps, schema_editor) -> None:  # noqa: ANN001 - tortoise's API
    if schema_editor.client.capabilities.dialect != "postgres":
        return
    await schema_editor.client.execute_script(
        "ALTER TABLE deliveries ADD CONSTRAINT deliveries_campaign_id_fkey FOREIGN KEY "
        "(campaign_id) REFERENCES campaigns (id) ON DELETE RESTRICT; "
        "ALTER TABLE deliveries ADD CONSTRAINT deliveries_notice_of_id_fkey FOREIGN KEY "
        "(notice_of_id) REFERENCES policy_versions (id) ON DELETE RESTRICT")


class Migration(migrations.Migration):
    dependencies = [('models', '0003_campaigns')]

    initial = False

    operations = [
        ops.RunPython(drop_constraints, reverse_code=add_constraints),
    ]
