"""The stored data (tortoise-orm). Migrations in ``migrations/`` build it on SQLite and
PostgreSQL; a test fails if a model changes without a migration.
"""

from __future__ import annotations

from enum import StrEnum

from tortoise import fields
from tortoise.exceptions import OperationalError
from tortoise.models import Model

from notify.consent import ConsentState


class SuppressionReason(StrEnum):
    HARD_BOUNCE = "hard_bounce"  # the address does not exist or refuses mail for good
    COMPLAINT = "complaint"  # the recipient reported our mail as spam
    CARRIER_OPT_OUT = "carrier_opt_out"  # the carrier says the number replied STOP
    MANUAL = "manual"  # support blocked the address on request
    INVALID_NUMBER = "invalid_number"  # Twilio 21211/21614: not a valid mobile number


class AddressKind(StrEnum):
    EMAIL = "email"
    PHONE = "phone"


class User(Model):
    """A person of the main app. ``external_id`` is the main app's id for them."""

    id = fields.BigIntField(primary_key=True)
    # After erasure this becomes "erased:" + a keyed hash of the old id: the ledger stays
    # provable for someone who presents the id, without naming the person.
    external_id = fields.CharField(max_length=255, unique=True)
    # Opaque random name for links (see notify.tokens): set on first use, never derived
    # from the id or an address, so a link reveals nothing about who it belongs to.
    handle = fields.CharField(max_length=32, null=True, unique=True)
    email = fields.CharField(max_length=320, null=True, unique=True)
    email_verified = fields.BooleanField(default=False)
    phone = fields.CharField(max_length=16, null=True, unique=True)
    phone_verified = fields.BooleanField(default=False)
    # Keyed hashes of the addresses (store.address_hash), kept by store.save_user: they let
    # the database match users against suppressions set-based, for a whole audience.
    email_hash = fields.CharField(max_length=64, null=True, db_index=True)
    phone_hash = fields.CharField(max_length=64, null=True, db_index=True)
    # ISO 3166-1 alpha-2; from the main app, else the phone number's region.
    country = fields.CharField(max_length=2, null=True)
    locale = fields.CharField(max_length=35, default="en")
    time_zone = fields.CharField(max_length=64, null=True)
    name = fields.CharField(max_length=200, null=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)
    erased_at = fields.DatetimeField(null=True)

    class Meta:
        table = "users"


class Consent(Model):
    """The current state of one user's consent to one topic. No row: never asked."""

    id = fields.BigIntField(primary_key=True)
    user = fields.ForeignKeyField("models.User", related_name="consents", on_delete=fields.CASCADE)
    topic = fields.CharField(max_length=64)
    state = fields.CharEnumField(ConsentState, max_length=16)
    updated_at = fields.DatetimeField()

    class Meta:
        table = "consents"
        unique_together = (("user", "topic"),)


class ConsentEvent(Model):
    """Append-only ledger: every consent change, with who, when, how and the policy version.

    Nothing updates or deletes an event; ``save`` refuses to update and ``delete`` refuses
    outright. The one sanctioned redaction is erasure (``notify.store.erase_user``), which
    blanks the contact evidence (IP, user agent, note) in bulk SQL.
    """

    id = fields.BigIntField(primary_key=True)
    user = fields.ForeignKeyField(
        "models.User", related_name="consent_events", on_delete=fields.RESTRICT
    )
    topic = fields.CharField(max_length=64)
    from_state = fields.CharEnumField(ConsentState, max_length=16, null=True)
    to_state = fields.CharEnumField(ConsentState, max_length=16)
    # A plain column, not CharEnumField: a new source word must not need a migration (on
    # SQLite tortoise rebuilds the table for a changed enum description). store.py writes
    # only ConsentSource members.
    source = fields.CharField(max_length=32)
    actor = fields.CharField(max_length=200, null=True)
    ip = fields.CharField(max_length=45, null=True)
    user_agent = fields.CharField(max_length=512, null=True)
    policy_version = fields.CharField(max_length=64)
    note = fields.TextField(null=True)
    # The message whose link or reply made this change, if any: a campaign's status counts
    # the unsubscribes it caused. A plain number, not a foreign key: the ledger outlives
    # the outbox.
    delivery_id = fields.BigIntField(null=True, db_index=True)
    # When the person acted (an import carries the original time); recorded_at is ours.
    occurred_at = fields.DatetimeField()
    recorded_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "consent_events"
        indexes = (("user_id", "id"),)

    async def save(self, *args, **kwargs) -> None:  # type: ignore[override]
        if not self._saved_in_db:
            await super().save(*args, **kwargs)
            return
        raise OperationalError("consent events are append-only")

    async def delete(self, *args, **kwargs) -> None:  # type: ignore[override]
        raise OperationalError("consent events are append-only")


class Suppression(Model):
    """An address we must never send to again, kept as a keyed hash so it outlives erasure."""

    id = fields.BigIntField(primary_key=True)
    kind = fields.CharEnumField(AddressKind, max_length=8)
    address_hash = fields.CharField(max_length=64)
    reason = fields.CharField(max_length=32)  # a SuppressionReason; plain for the same reason
    note = fields.TextField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "suppressions"
        unique_together = (("kind", "address_hash"),)


class PolicyVersion(Model):
    """A published version of the privacy policy (§1.4). Immutable once published."""

    id = fields.BigIntField(primary_key=True)
    version = fields.CharField(max_length=64, unique=True)
    title = fields.CharField(max_length=200)
    summary = fields.TextField()
    url = fields.CharField(max_length=2000)
    effective_at = fields.DatetimeField()
    material = fields.BooleanField()
    published_at = fields.DatetimeField(auto_now_add=True)
    published_by = fields.CharField(max_length=64)

    class Meta:
        table = "policy_versions"

    def notice_context(self) -> dict[str, str]:
        """The template variables of a notice of this version (templates/emails/policy_change)."""
        return {"policy_title": self.title, "summary": self.summary, "policy_url": self.url,
                "effective_date": self.effective_at.date().isoformat()}


class CampaignStatus(StrEnum):
    """Where a campaign stands. Same words in the API, the CLI and the console."""

    DRAFT = "draft"  # created; its audience can be previewed and test sends made
    SCHEDULED = "scheduled"  # send asked for, with a send_at still in the future
    SENDING = "sending"  # deliveries enqueued; the sender works through them
    PAUSED = "paused"  # by an admin, or by a reputation guard (paused_reason says which)
    CANCELLED = "cancelled"  # what was not sent yet never will be
    DONE = "done"  # every delivery is in a final state


class Campaign(Model):
    """A policy notice, newsletter or notification to an audience, on one or more channels."""

    id = fields.BigIntField(primary_key=True)
    name = fields.CharField(max_length=200)
    kind = fields.CharField(max_length=32)  # policy_notice, newsletter, notification
    channels = fields.JSONField(default=list)  # ["email"], ["sms"] or both
    topic = fields.CharField(max_length=64, null=True)  # none for a policy notice
    template = fields.CharField(max_length=64)
    variables = fields.JSONField(default=dict)
    audience = fields.JSONField(default=dict)  # locale, country, created_before/after
    policy_version = fields.ForeignKeyField("models.PolicyVersion", related_name="campaigns",
                                            null=True, on_delete=fields.RESTRICT)
    status = fields.CharField(max_length=16, default=CampaignStatus.DRAFT.value)
    paused_reason = fields.TextField(null=True)
    # The reputation guards judge what was sent since then: resuming a campaign they paused
    # starts their count again, or they would pause it at once.
    guard_since = fields.DatetimeField(null=True)
    send_at = fields.DatetimeField(null=True)
    enqueued = fields.IntField(default=0)
    excluded = fields.JSONField(default=dict)  # reason -> count, when it was enqueued
    created_by = fields.CharField(max_length=64)
    created_at = fields.DatetimeField(auto_now_add=True)
    started_at = fields.DatetimeField(null=True)
    finished_at = fields.DatetimeField(null=True)
    updated_at = fields.DatetimeField(auto_now=True)

    class Meta:
        table = "campaigns"


class AuditEntry(Model):
    """An admin action: who created, sent, paused or cancelled what, and when."""

    id = fields.BigIntField(primary_key=True)
    at = fields.DatetimeField(auto_now_add=True)
    key_id = fields.CharField(max_length=64)  # the admin key's name
    action = fields.CharField(max_length=64)  # campaign.create, policy.publish, ...
    target = fields.CharField(max_length=64, null=True)  # campaign:12, policy:2026-11
    detail = fields.JSONField(default=dict)

    class Meta:
        table = "audit_log"
        indexes = (("target", "id"),)


class DeliveryStatus(StrEnum):
    """Where one message to one user on one channel stands. Same words in logs and API."""

    QUEUED = "queued"  # waiting to be sent, or to be tried again at next_attempt_at
    SENDING = "sending"  # claimed by a worker until lease_until
    SENT = "sent"  # accepted by the relay or Twilio
    DELIVERED = "delivered"  # the carrier confirmed delivery (SMS status callbacks)
    FAILED = "failed"  # a permanent failure, or temporary ones until the deadline passed
    SKIPPED = "skipped"  # not sent: the check right before sending said no (skip_reason)
    HELD = "held"  # its campaign is paused; resuming queues it again
    BOUNCED = "bounced"  # accepted, then bounced back (a DSN to the VERP address)
    UNDELIVERED = "undelivered"  # the carrier could not deliver it (SMS status callbacks)
    CANCELLED = "cancelled"  # its campaign was cancelled before it was sent
    COMPLAINED = "complained"  # accepted, then the recipient reported it as spam


class Delivery(Model):
    """One message to one user on one channel: the outbox row the sender works through.

    On PostgreSQL the references carry no database constraint (migration 0004 drops
    them): a campaign inserts a million rows in one statement, and a foreign-key check
    per row per reference cost more than the insert itself (bench/enqueue.py; the user
    check also locks each user row). What they would guard cannot happen: users are never
    deleted (erasure keeps the row), nor are campaigns or policy versions, and every row
    is written by notify itself. The campaign and notice fields say so
    (``db_constraint=False``); the user field keeps the default, since tortoise would
    rebuild the SQLite table to change it (0004 says more). SQLite keeps the REFERENCES
    clauses its tables were created with.
    """

    id = fields.BigIntField(primary_key=True)
    user = fields.ForeignKeyField("models.User", related_name="deliveries",
                                  on_delete=fields.RESTRICT)
    campaign = fields.ForeignKeyField("models.Campaign", related_name="deliveries", null=True,
                                      on_delete=fields.RESTRICT, db_constraint=False)
    # Set on a policy notice: a user gets at most one notice per policy version, ever (a
    # partial unique index on (notice_of_id, user_id), written in migration 0003: the
    # ORM has no partial unique constraint).
    notice_of = fields.ForeignKeyField("models.PolicyVersion", related_name="notices",
                                       null=True, on_delete=fields.RESTRICT,
                                       db_constraint=False)
    channel = fields.CharField(max_length=8)  # a settings.Channel
    kind = fields.CharField(max_length=32)  # the template: confirmation, newsletter, ...
    topic = fields.CharField(max_length=64, null=True)  # what the user can unsubscribe from
    context = fields.JSONField(default=dict)  # template variables
    status = fields.CharField(max_length=16, default=DeliveryStatus.QUEUED.value)
    skip_reason = fields.CharField(max_length=32, null=True)
    attempts = fields.IntField(default=0)
    next_attempt_at = fields.DatetimeField()
    lease_until = fields.DatetimeField(null=True)
    deadline = fields.DatetimeField()  # temporary failures are retried until then
    message_id = fields.CharField(max_length=255, null=True)  # stable across retries
    provider_ref = fields.CharField(max_length=255, null=True)  # relay queue id, Twilio SID
    last_error = fields.TextField(null=True)
    # Claims taken over from a worker whose lease expired: if that worker died after handing
    # the message over, it may have gone twice. The campaign status counts these.
    takeovers = fields.IntField(default=0, db_default=0)
    # When the last eligibility check before sending began: a withdrawal recorded before it
    # is always seen; the campaign status measures the gap to the handover.
    checked_at = fields.DatetimeField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    sent_at = fields.DatetimeField(null=True)
    updated_at = fields.DatetimeField(auto_now=True)

    class Meta:
        table = "deliveries"
        # A campaign's rows are found through the unique index's first column. The claim
        # index: a worker claims one channel's due rows in (next_attempt_at, id) order;
        # a campaign's rows share one next_attempt_at (migration 0005 says why). On
        # PostgreSQL, migration 0007 replaces it with partial indexes that hold only the
        # queued rows of each channel and the claimed ones (postman._CLAIM_DUE); tortoise
        # still believes in it, so a generated migration that drops or changes it needs a
        # PostgreSQL branch written by hand (its DROP INDEX has no IF EXISTS). A user's
        # rows: of a campaign through the unique index (campaign, user), the others
        # through a partial index on user_id where there is no campaign (migration 0006:
        # a per-user index on every row was a fifth of a million-row enqueue).
        indexes = (("channel", "status", "next_attempt_at", "id"),)
        # NULLs are distinct in both databases: deliveries outside a campaign are not bound.
        unique_together = (("campaign", "user", "channel"),)


class BounceScore(Model):
    """Soft-bounce score of an address (Mailman's scheme): hard bounces suppress at once,
    soft ones add up, at most once a day, and the score decays while nothing bounces."""

    id = fields.BigIntField(primary_key=True)
    address_hash = fields.CharField(max_length=64, unique=True)  # email, keyed hash
    score = fields.FloatField(default=0.0)
    last_bounce_at = fields.DatetimeField()

    class Meta:
        table = "bounce_scores"
