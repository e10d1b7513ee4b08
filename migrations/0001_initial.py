from tortoise import migrations
from tortoise.migrations import operations as ops
from notify.consent import ConsentState
from notify.models import AddressKind
from tortoise.fields.base import OnDelete
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    initial = True

    operations = [
        ops.CreateModel(
            name='PolicyVersion',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('version', fields.CharField(unique=True, max_length=64)),
                ('title', fields.CharField(max_length=200)),
                ('summary', fields.TextField(unique=False)),
                ('url', fields.CharField(max_length=2000)),
                ('effective_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('material', fields.BooleanField()),
                ('published_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('published_by', fields.CharField(max_length=64)),
            ],
            options={'table': 'policy_versions', 'app': 'models', 'pk_attr': 'id', 'table_description': 'A published version of the privacy policy (§1.4). Immutable once published.'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Suppression',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('kind', fields.CharEnumField(description='EMAIL: email\nPHONE: phone', enum_type=AddressKind, max_length=8)),
                ('address_hash', fields.CharField(max_length=64)),
                ('reason', fields.CharField(max_length=32)),
                ('note', fields.TextField(null=True, unique=False)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'suppressions', 'app': 'models', 'unique_together': (('kind', 'address_hash'),), 'pk_attr': 'id', 'table_description': 'An address we must never send to again, kept as a keyed hash so it outlives erasure.'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='User',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('external_id', fields.CharField(unique=True, max_length=255)),
                ('handle', fields.CharField(null=True, unique=True, max_length=32)),
                ('email', fields.CharField(null=True, unique=True, max_length=320)),
                ('email_verified', fields.BooleanField(default=False)),
                ('phone', fields.CharField(null=True, unique=True, max_length=16)),
                ('phone_verified', fields.BooleanField(default=False)),
                ('locale', fields.CharField(default='en', max_length=35)),
                ('time_zone', fields.CharField(null=True, max_length=64)),
                ('name', fields.CharField(null=True, max_length=200)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('updated_at', fields.DatetimeField(auto_now=True, auto_now_add=False)),
                ('erased_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'users', 'app': 'models', 'pk_attr': 'id', 'table_description': "A person of the main app. ``external_id`` is the main app's id for them."},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Consent',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('user', fields.ForeignKeyField('models.User', source_field='user_id', db_constraint=True, to_field='id', related_name='consents', on_delete=OnDelete.CASCADE)),
                ('topic', fields.CharField(max_length=64)),
                ('state', fields.CharEnumField(description='SUBSCRIBED: subscribed\nPENDING: pending\nUNSUBSCRIBED: unsubscribed', enum_type=ConsentState, max_length=16)),
                ('updated_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'consents', 'app': 'models', 'unique_together': (('user', 'topic'),), 'pk_attr': 'id', 'table_description': "The current state of one user's consent to one topic. No row: never asked."},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='ConsentEvent',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('user', fields.ForeignKeyField('models.User', source_field='user_id', db_constraint=True, to_field='id', related_name='consent_events', on_delete=OnDelete.RESTRICT)),
                ('topic', fields.CharField(max_length=64)),
                ('from_state', fields.CharEnumField(null=True, description='SUBSCRIBED: subscribed\nPENDING: pending\nUNSUBSCRIBED: unsubscribed', enum_type=ConsentState, max_length=16)),
                ('to_state', fields.CharEnumField(description='SUBSCRIBED: subscribed\nPENDING: pending\nUNSUBSCRIBED: unsubscribed', enum_type=ConsentState, max_length=16)),
                ('source', fields.CharField(max_length=32)),
                ('actor', fields.CharField(null=True, max_length=200)),
                ('ip', fields.CharField(null=True, max_length=45)),
                ('user_agent', fields.CharField(null=True, max_length=512)),
                ('policy_version', fields.CharField(max_length=64)),
                ('note', fields.TextField(null=True, unique=False)),
                ('occurred_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('recorded_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'consent_events', 'app': 'models', 'indexes': [Index(fields=['user_id', 'id'])], 'pk_attr': 'id', 'table_description': 'Append-only ledger: every consent change, with who, when, how and the policy version.'},
            bases=['Model'],
        ),
    ]
