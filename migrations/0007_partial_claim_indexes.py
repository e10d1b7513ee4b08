"""Written by hand: on PostgreSQL, the claim index becomes partial, one per channel.

The index of 0005, (channel, status, next_attempt_at, id), held every delivery, sent or
not, and each status change (queued, sending, sent) added an entry. A million-user
enqueue paid for its 800,000 entries more than for any other index (bench/enqueue.py's
rows on the 2-core machine of 2026-11-27: a bare INSERT … SELECT with the deliveries'
indexes took 7.9 s, 6.4 s with these), its two text columns first making every
comparison in it slow. A claim needs only the queued
rows of one channel, in (next_attempt_at, id) order, and the expired claims, a few
hundred ``sending`` rows at most:

- ``deliveries_due_email`` and ``deliveries_due_sms``: (next_attempt_at, id) WHERE status
  = 'queued' AND channel = '…';
- ``deliveries_leased``: (channel, id) WHERE status = 'sending', in the order the
  expired claims are taken.

A row leaves them when it is claimed or sent. The claims name the channel and the status
in their SQL (``postman._CLAIM_DUE``): a plan for any parameter value cannot use a
partial index.

The old index also served, by its channel, the lookup of a text by its Twilio SID on
every status callback, which nothing indexed: ``deliveries_sms_reference``, on
(provider_ref) WHERE channel = 'sms' AND provider_ref IS NOT NULL, does now (emails
carry a relay's queue id there too, and stay out of it).

SQLite keeps the index of 0005: its planner cannot prove a partial index's condition
from the ORM's parameters either, and its enqueue is not the one that has to be fast.
The model still declares the 0005 index, as tortoise's state does.
"""

from tortoise import migrations
from tortoise.migrations import operations as ops

CLAIM_INDEX = "idx_deliveries_channel_7a41be"  # 0005's, named by tortoise

PARTIAL = {
    "deliveries_due_email": "(next_attempt_at, id) WHERE status = 'queued' AND channel = 'email'",
    "deliveries_due_sms": "(next_attempt_at, id) WHERE status = 'queued' AND channel = 'sms'",
    "deliveries_leased": "(channel, id) WHERE status = 'sending'",
    "deliveries_sms_reference": "(provider_ref) WHERE channel = 'sms' AND provider_ref IS NOT NULL",
}


async def to_partial(apps, schema_editor) -> None:  # noqa: ANN001 - tortoise's API
    if schema_editor.client.capabilities.dialect != "postgres":
        return
    for name, definition in PARTIAL.items():
        await schema_editor.client.execute_script(f"CREATE INDEX {name} ON deliveries {definition}")
    await schema_editor.client.execute_script(f"DROP INDEX IF EXISTS {CLAIM_INDEX}")


async def to_whole(apps, schema_editor) -> None:  # noqa: ANN001 - tortoise's API
    if schema_editor.client.capabilities.dialect != "postgres":
        return
    await schema_editor.client.execute_script(
        f"CREATE INDEX IF NOT EXISTS {CLAIM_INDEX} ON deliveries "
        "(channel, status, next_attempt_at, id)")
    for name in PARTIAL:
        await schema_editor.client.execute_script(f"DROP INDEX IF EXISTS {name}")


class Migration(migrations.Migration):
    dependencies = [('models', '0006_user_index')]

    initial = False

    operations = [
        ops.RunPython(to_partial, reverse_code=to_whole),
    ]
