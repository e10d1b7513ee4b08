from tortoise import migrations
from tortoise.migrations import operations as ops
import functools
from json import dumps, loads
from tortoise.fields.base import OnDelete
from tortoise import fields
from tortoise.indexes import Index
from tortoise.migrations.constraints import UniqueConstraint

class Migration(migrations.Migration):
    dependencies = [('models', '0002_deliveries')]

    initial = False

    operations = [
        ops.CreateModel(
            name='AuditEntry',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('key_id', fields.CharField(max_length=64)),
                ('action', fields.CharField(max_length=64)),
                ('target', fields.CharField(null=True, max_length=64)),
                ('detail', fields.JSONField(default=dict, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
            ],
            options={'table': 'audit_log', 'app': 'models', 'indexes': [Index(fields=['target', 'id'])], 'pk_attr': 'id', 'table_description': 'An admin action: who created, sent, paused or cancelled what, and when.'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Campaign',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('name', fields.CharField(max_length=200)),
                ('kind', fields.CharField(max_length=32)),
                ('channels', fields.JSONField(default=list, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
                ('topic', fields.CharField(null=True, max_length=64)),
                ('template', fields.CharField(max_length=64)),
                ('variables', fields.JSONField(default=dict, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
                ('audience', fields.JSONField(default=dict, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
                ('policy_version', fields.ForeignKeyField('models.PolicyVersion', source_field='policy_version_id', null=True, db_constraint=True, to_field='id', related_name='campaigns', on_delete=OnDelete.RESTRICT)),
                ('status', fields.CharField(default='draft', max_length=16)),
                ('paused_reason', fields.TextField(null=True, unique=False)),
                ('guard_since', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('send_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('enqueued', fields.IntField(default=0)),
                ('excluded', fields.JSONField(default=dict, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
                ('created_by', fields.CharField(max_length=64)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('started_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('finished_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('updated_at', fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={'table': 'campaigns', 'app': 'models', 'pk_attr': 'id', 'table_description': 'A policy notice, newsletter or notification to an audience, on one or more channels.'},
            bases=['Model'],
        ),
        ops.AddField(
            model_name='ConsentEvent',
            name='delivery_id',
            field=fields.BigIntField(null=True, db_index=True),
        ),
        ops.AddField(
            model_name='Delivery',
            name='campaign',
            field=fields.ForeignKeyField('models.Campaign', source_field='campaign_id', null=True, db_constraint=False, to_field='id', related_name='deliveries', on_delete=OnDelete.RESTRICT),
        ),
        ops.AddField(
            model_name='Delivery',
            name='checked_at',
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddField(
            model_name='Delivery',
            name='notice_of',
            field=fields.ForeignKeyField('models.PolicyVersion', source_field='notice_of_id', null=True, db_constraint=False, to_field='id', related_name='notices', on_delete=OnDelete.RESTRICT),
        ),
        ops.AddField(
            model_name='Delivery',
            name='takeovers',
            field=fields.IntField(default=0, db_default=0),
        ),
        ops.AddConstraint(
            model_name='Delivery',
            constraint=UniqueConstraint(fields=('campaign', 'user', 'channel'), name=None),
        ),
        ops.AddField(
            model_name='User',
            name='country',
            field=fields.CharField(null=True, max_length=2),
        ),
        ops.AddField(
            model_name='User',
            name='email_hash',
            field=fields.CharField(null=True, db_index=True, max_length=64),
        ),
        ops.AddField(
            model_name='User',
            name='phone_hash',
            field=fields.CharField(null=True, db_index=True, max_length=64),
        ),
        # Written by hand: one notice per policy version and user. Partial, so the
        # million deliveries of other campaigns (no notice) stay out of the index.
        ops.RunSQL(
            "CREATE UNIQUE INDEX uid_deliveries_notice_once ON deliveries "
            "(notice_of_id, user_id) WHERE notice_of_id IS NOT NULL",
            reverse_sql="DROP INDEX uid_deliveries_notice_once",
        ),
    ]
