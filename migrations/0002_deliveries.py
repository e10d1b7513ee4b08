from tortoise import migrations
from tortoise.migrations import operations as ops
import functools
from json import dumps, loads
from tortoise.fields.base import OnDelete
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('models', '0001_initial')]

    initial = False

    operations = [
        ops.CreateModel(
            name='BounceScore',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('address_hash', fields.CharField(unique=True, max_length=64)),
                ('score', fields.FloatField(default=0.0)),
                ('last_bounce_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'bounce_scores', 'app': 'models', 'pk_attr': 'id', 'table_description': "Soft-bounce score of an address (Mailman's scheme): hard bounces suppress at once,"},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Delivery',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('user', fields.ForeignKeyField('models.User', source_field='user_id', db_constraint=True, to_field='id', related_name='deliveries', on_delete=OnDelete.RESTRICT)),
                ('channel', fields.CharField(max_length=8)),
                ('kind', fields.CharField(max_length=32)),
                ('topic', fields.CharField(null=True, max_length=64)),
                ('context', fields.JSONField(default=dict, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
                ('status', fields.CharField(default='queued', max_length=16)),
                ('skip_reason', fields.CharField(null=True, max_length=32)),
                ('attempts', fields.IntField(default=0)),
                ('next_attempt_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('lease_until', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('deadline', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('message_id', fields.CharField(null=True, max_length=255)),
                ('provider_ref', fields.CharField(null=True, max_length=255)),
                ('last_error', fields.TextField(null=True, unique=False)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('sent_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('updated_at', fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={'table': 'deliveries', 'app': 'models', 'indexes': [Index(fields=['status', 'next_attempt_at']), Index(fields=['user_id', 'id'])], 'pk_attr': 'id', 'table_description': 'One message to one user on one channel: the outbox row the sender works through.'},
            bases=['Model'],
        ),
    ]
