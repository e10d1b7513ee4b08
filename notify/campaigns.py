"""Policy versions and campaigns: publish, create, preview, send, pause, resume, cancel,
and what the product team sees of a campaign while it goes out.

The HTTP API, the CLI and (later) the console all call these functions, so none of them
can do what the others could not; each admin action lands in the audit log here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import jinja2
from tortoise.expressions import Subquery
from tortoise.functions import Count
from tortoise.transactions import in_transaction

from notify import audience, audit, i18n, mail, store
from notify.channels import DeliveryError
from notify.eligibility import CAMPAIGN_KINDS, NOTICE_TOPIC, POLICY_NOTICE
from notify.errors import Conflict, InvalidRequest, NotFound
from notify.logs import mask_text
from notify.models import (
    Campaign,
    CampaignStatus,
    ConsentEvent,
    Delivery,
    DeliveryStatus,
    PolicyVersion,
)
from notify.settings import Channel, Settings
from notify.sms import texts as sms_texts

if TYPE_CHECKING:
    from notify.postman import Postman

#: The template each kind uses unless the campaign names another.
DEFAULT_TEMPLATE = {POLICY_NOTICE: "policy_change", "newsletter": "newsletter",
                    "notification": "notification"}
#: Delivery states that are final: nothing more will happen to the message.
FINAL = (DeliveryStatus.SENT, DeliveryStatus.DELIVERED, DeliveryStatus.FAILED,
         DeliveryStatus.SKIPPED, DeliveryStatus.BOUNCED, DeliveryStatus.UNDELIVERED,
         DeliveryStatus.CANCELLED, DeliveryStatus.COMPLAINED)
#: Handed over to the relay or Twilio: these count as sent for rates.
HANDED_OVER = (DeliveryStatus.SENT, DeliveryStatus.DELIVERED, DeliveryStatus.BOUNCED,
               DeliveryStatus.UNDELIVERED, DeliveryStatus.COMPLAINED)
#: Not final yet: the sender still owes these an attempt.
OPEN = (DeliveryStatus.QUEUED, DeliveryStatus.SENDING, DeliveryStatus.HELD)


# -- policy versions ---------------------------------------------------------------------


async def publish_policy(values: Mapping[str, Any], key_id: str) -> PolicyVersion:
    """Publish a policy version. Published versions never change; a label is used once."""
    async with in_transaction():
        if await PolicyVersion.exists(version=values["version"]):
            raise Conflict(f"policy version {values['version']!r} is published already; "
                           "a published version cannot change, publish a new one",
                           field="body.version")
        policy = await PolicyVersion.create(**values, published_by=key_id)
        await audit.record(key_id, "policy.publish", f"policy:{policy.version}",
                           {"material": policy.material,
                            "effective_at": policy.effective_at.isoformat()})
    return policy


async def policies() -> list[PolicyVersion]:
    return await PolicyVersion.all().order_by("-effective_at", "-id")


# -- campaigns ---------------------------------------------------------------------------


def topics_by_channel(settings: Settings, kind: str, topic: str | None,
                      channels: list[str]) -> dict[str, str | None]:
    """The consent topic a campaign needs on each of its channels.

    A topic belongs to one channel. A campaign on two channels names one topic; on the
    other channel it uses the configured topic of the same kind there (a notification by
    email and SMS: ``email_notifications`` and ``sms_notifications``).
    """
    if kind == POLICY_NOTICE:
        return {channel: NOTICE_TOPIC for channel in channels}
    if topic is None:
        raise InvalidRequest(f"a {kind} campaign needs a topic", field="body.topic")
    given = settings.topics.get(topic)
    if given is None:
        raise InvalidRequest(f"unknown topic {topic!r}; known: {', '.join(settings.topics)}",
                             field="body.topic")
    found: dict[str, str | None] = {}
    for channel in channels:
        if given.channel == channel:
            found[channel] = given.name
            continue
        same = [t.name for t in settings.topics.values()
                if t.channel == channel and t.kind == given.kind]
        if len(same) != 1:
            raise InvalidRequest(
                f"topic {topic!r} is an {given.channel} topic, and there is no single "
                f"{given.kind} topic on {channel} to use there; send two campaigns",
                field="body.channels")
        found[channel] = same[0]
    return found


def topics_of(settings: Settings, campaign: Campaign) -> dict[str, str | None]:
    return topics_by_channel(settings, campaign.kind, campaign.topic, campaign.channels)


@dataclass
class Spec:
    """What ``POST /v1/campaigns`` and ``notify campaign create`` give."""

    name: str
    kind: str
    channels: list[str] = field(default_factory=lambda: [Channel.EMAIL.value])
    topic: str | None = None
    template: str | None = None
    variables: dict[str, Any] = field(default_factory=dict)
    audience: dict[str, Any] = field(default_factory=dict)
    policy_version: str | None = None
    send_at: datetime | None = None


async def create(settings: Settings, spec: Spec, key_id: str) -> Campaign:
    if spec.kind not in CAMPAIGN_KINDS:
        raise InvalidRequest(f"kind must be one of {', '.join(CAMPAIGN_KINDS)}",
                             field="body.kind")
    channels = list(dict.fromkeys(spec.channels))
    if not channels:
        raise InvalidRequest("give at least one channel", field="body.channels")
    policy = None
    if spec.kind == POLICY_NOTICE:
        if channels != [Channel.EMAIL.value]:
            # §1.4 promises notice "by email"; an SMS cannot carry the summary and the link
            # the way a notice must.
            raise InvalidRequest("a policy notice goes by email only", field="body.channels")
        if spec.topic is not None:
            raise InvalidRequest("a policy notice has no topic: who receives it follows from "
                                 "whether the change is material", field="body.topic")
        if spec.policy_version is None:
            raise InvalidRequest("a policy notice names the policy version it announces",
                                 field="body.policy_version")
        policy = await PolicyVersion.get_or_none(version=spec.policy_version)
        if policy is None:
            raise InvalidRequest(f"no published policy version {spec.policy_version!r}",
                                 field="body.policy_version")
    elif spec.policy_version is not None:
        raise InvalidRequest("only a policy notice names a policy version",
                             field="body.policy_version")
    topics_by_channel(settings, spec.kind, spec.topic, channels)
    template = spec.template or DEFAULT_TEMPLATE[spec.kind]
    if Channel.EMAIL.value in channels:
        check_template(settings, template, spec.variables, policy)
    if Channel.SMS.value in channels:
        # The text must fit whatever the variables hold: refused now, not per user later.
        try:
            sms_texts.check_context(template, spec.variables)
        except InvalidRequest as exc:
            raise InvalidRequest(f"SMS: {exc.detail}", field="body.variables"
                                 if "variable" in exc.detail or "longer" in exc.detail
                                 else "body.template") from None
    async with in_transaction():
        campaign = await Campaign.create(
            name=spec.name, kind=spec.kind, channels=channels, topic=spec.topic,
            template=template, variables=spec.variables, audience=spec.audience,
            policy_version=policy, send_at=spec.send_at, created_by=key_id)
        await audit.record(key_id, "campaign.create", f"campaign:{campaign.id}",
                           {"name": spec.name, "kind": spec.kind, "channels": channels})
    return campaign


policy_of = audience.policy_of


def sample_email(settings: Settings, template: str, variables: Mapping[str, Any],
                 policy: PolicyVersion | None, locale: str) -> mail.Email:
    """A campaign's email as a sample reader, Ada, would get it (previews and checks)."""
    context: dict[str, Any] = {**variables, "name": "Ada"}
    if policy is not None:
        context.update(policy.notice_context())
    return mail.Email(to="ada@example.com", to_name="Ada", kind=template, locale=locale,
                      context=context,
                      footer=mail.Footer(preferences_url=f"{settings.public_url}/preferences"))


def check_template(settings: Settings, template: str, variables: Mapping[str, Any],
                   policy: PolicyVersion | None) -> None:
    """Render the email once for a sample reader in every language: a missing template or
    variable is the creator's error now, not a failed delivery per user later."""
    for locale in i18n.catalogs():
        email = sample_email(settings, template, variables, policy, locale)
        try:
            mail.render(email, settings)
        except jinja2.TemplateNotFound:
            raise InvalidRequest(f"no email template {template!r} under templates/emails",
                                 field="body.template") from None
        except jinja2.UndefinedError as exc:
            raise InvalidRequest(f"template {template!r} needs a variable: {exc.message}",
                                 field="body.variables") from None
        except jinja2.TemplateError as exc:
            raise InvalidRequest(f"template {template!r} does not render: {exc}",
                                 field="body.template") from None


async def send_tests(postman: Postman, campaign: Campaign, addresses: list[str],
                     locale: str, key_id: str) -> tuple[list[str], dict[str, str]]:
    """One rendering to each address (once each), outside the audience and the counts;
    audited. Returns the addresses sent to and, for the others, why not."""
    if Channel.EMAIL.value not in campaign.channels:
        raise InvalidRequest("test sends go by email; this campaign has no email channel")
    policy = await policy_of(campaign)
    sent, failed = [], {}
    for address in dict.fromkeys(addresses):
        try:
            await postman.send_test(campaign, policy, address, locale)
            sent.append(address)
        except DeliveryError as exc:
            failed[address] = exc.detail
    await audit.record(key_id, "campaign.test", f"campaign:{campaign.id}",
                       {"sent": len(sent), "failed": len(failed)})
    return sent, failed


async def get(campaign_id: int) -> Campaign:
    campaign = await Campaign.get_or_none(id=campaign_id)
    if campaign is None:
        raise NotFound(f"no campaign {campaign_id}")
    return campaign


async def preview(settings: Settings, campaign: Campaign) -> list[audience.Audience]:
    return await audience.preview(campaign, topics_of(settings, campaign))


async def send(settings: Settings, campaign_id: int, key_id: str, *,
               now: datetime | None = None) -> Campaign:
    """Send now, or at the campaign's ``send_at`` if that is still ahead (scheduled)."""
    now = now or store.now()
    async with in_transaction():
        campaign = await Campaign.select_for_update().get_or_none(id=campaign_id)
        if campaign is None:
            raise NotFound(f"no campaign {campaign_id}")
        if campaign.status not in (CampaignStatus.DRAFT, CampaignStatus.SCHEDULED):
            raise Conflict(f"campaign {campaign_id} is {campaign.status}; only a draft or a "
                           "scheduled campaign can be sent")
        if campaign.send_at is not None and campaign.send_at > now:
            campaign.status = CampaignStatus.SCHEDULED
            await campaign.save(update_fields=["status", "updated_at"])
            await audit.record(key_id, "campaign.schedule", f"campaign:{campaign.id}",
                               {"send_at": campaign.send_at.isoformat()})
            return campaign
        await _start(settings, campaign, now)
        await audit.record(key_id, "campaign.send", f"campaign:{campaign.id}",
                           {"enqueued": campaign.enqueued, "excluded": campaign.excluded})
    return campaign


async def _start(settings: Settings, campaign: Campaign, now: datetime) -> None:
    """Enqueue the campaign's deliveries and mark it sending, in the caller's transaction
    (on PostgreSQL the inserts commit on their own: see ``audience.enqueue``)."""
    done = await audience.enqueue(campaign, topics_of(settings, campaign), now=now,
                                  retry_hours=settings.retry_hours,
                                  parts=settings.enqueue_parts)
    campaign.enqueued = done.eligible
    campaign.excluded = done.excluded
    # Nobody to send to: done at once, rather than "sending" until a sender looks. But
    # deliveries an interrupted enqueue left are worked through (and skipped, if their
    # users are no longer eligible) before the campaign is done.
    sending = bool(campaign.enqueued or done.resumed)
    campaign.status = CampaignStatus.SENDING if sending else CampaignStatus.DONE
    campaign.started_at = now
    campaign.finished_at = None if sending else now
    await campaign.save(update_fields=["enqueued", "excluded", "status", "started_at",
                                       "finished_at", "updated_at"])


async def start_scheduled(settings: Settings, now: datetime | None = None) -> int:
    """Start every scheduled campaign whose time has come (a sender job)."""
    now = now or store.now()
    started = 0
    for campaign in await Campaign.filter(status=CampaignStatus.SCHEDULED, send_at__lte=now):
        async with in_transaction():
            # Another worker may have started it a moment ago: the status decides.
            fresh = await Campaign.select_for_update(skip_locked=True).get_or_none(
                id=campaign.id, status=CampaignStatus.SCHEDULED)
            if fresh is None:
                continue
            await _start(settings, fresh, now)
            await audit.record("sender", "campaign.start", f"campaign:{fresh.id}",
                               {"enqueued": fresh.enqueued})
            started += 1
    return started


async def pause(campaign_id: int, key_id: str, reason: str = "paused by an admin") -> Campaign:
    """Hold what is not sent yet. Messages already handed to a worker finish."""
    async with in_transaction():
        campaign = await _locked(campaign_id)
        if campaign.status not in (CampaignStatus.SENDING, CampaignStatus.SCHEDULED):
            raise Conflict(f"campaign {campaign_id} is {campaign.status}; only a sending or "
                           "scheduled campaign can be paused")
        campaign.status, campaign.paused_reason = CampaignStatus.PAUSED, reason
        await campaign.save(update_fields=["status", "paused_reason", "updated_at"])
        await Delivery.filter(campaign_id=campaign.id, status=DeliveryStatus.QUEUED).update(
            status=DeliveryStatus.HELD)
        await audit.record(key_id, "campaign.pause", f"campaign:{campaign.id}",
                           {"reason": reason})
    return campaign


async def resume(campaign_id: int, key_id: str, retry_hours: int = 48) -> Campaign:
    """Go on sending. The held deliveries get their retry time afresh (a long pause must not
    fail them), and the guards start counting again from now."""
    async with in_transaction():
        campaign = await _locked(campaign_id)
        if campaign.status != CampaignStatus.PAUSED:
            raise Conflict(f"campaign {campaign_id} is {campaign.status}; only a paused "
                           "campaign can be resumed")
        # Paused before it started (scheduled): it goes back to waiting for its time.
        campaign.status = (CampaignStatus.SENDING if campaign.started_at
                           else CampaignStatus.SCHEDULED)
        campaign.paused_reason = None
        now = store.now()
        campaign.guard_since = now
        await campaign.save(update_fields=["status", "paused_reason", "guard_since",
                                           "updated_at"])
        # next_attempt_at stays: a delivery waiting out a retry pause keeps waiting.
        await Delivery.filter(campaign_id=campaign.id, status=DeliveryStatus.HELD).update(
            status=DeliveryStatus.QUEUED, deadline=now + timedelta(hours=retry_hours))
        await audit.record(key_id, "campaign.resume", f"campaign:{campaign.id}", {})
    return campaign


async def cancel(campaign_id: int, key_id: str) -> Campaign:
    """What is not sent yet never will be; what went out stays counted."""
    async with in_transaction():
        campaign = await _locked(campaign_id)
        if campaign.status in (CampaignStatus.CANCELLED, CampaignStatus.DONE):
            raise Conflict(f"campaign {campaign_id} is {campaign.status} already")
        campaign.status, campaign.finished_at = CampaignStatus.CANCELLED, store.now()
        await campaign.save(update_fields=["status", "finished_at", "updated_at"])
        await Delivery.filter(
            campaign_id=campaign.id, status__in=(DeliveryStatus.QUEUED, DeliveryStatus.HELD)
        ).update(status=DeliveryStatus.CANCELLED, skip_reason="cancelled",
                 notice_of_id=None)  # never sent: a later notice of the version may go
        await audit.record(key_id, "campaign.cancel", f"campaign:{campaign.id}", {})
    return campaign


async def _locked(campaign_id: int) -> Campaign:
    campaign = await Campaign.select_for_update().get_or_none(id=campaign_id)
    if campaign is None:
        raise NotFound(f"no campaign {campaign_id}")
    return campaign


async def finish_done(now: datetime | None = None) -> int:
    """Mark sending campaigns whose every delivery is final as done (a sender job)."""
    finished = 0
    for campaign in await Campaign.filter(status=CampaignStatus.SENDING).only("id"):
        if not await Delivery.filter(campaign_id=campaign.id, status__in=OPEN).exists():
            finished += await Campaign.filter(id=campaign.id,
                                              status=CampaignStatus.SENDING).update(
                status=CampaignStatus.DONE, finished_at=now or store.now())
    return finished


async def check_guards(settings: Settings) -> int:
    """Pause every sending campaign whose complaint or hard-bounce rate passed its limit
    (a sender job). Returns how many it paused."""
    paused = 0
    for campaign in await Campaign.filter(status=CampaignStatus.SENDING).only(
            "id", "guard_since"):
        query = Delivery.filter(campaign_id=campaign.id, status__in=HANDED_OVER)
        if campaign.guard_since is not None:
            query = query.filter(sent_at__gte=campaign.guard_since)
        rows = await (query.annotate(n=Count("id")).group_by("status")
                      .values("status", "n"))
        counts = {row["status"]: row["n"] for row in rows}
        handed = sum(counts.values())
        if handed < settings.guard_min_sent:
            continue
        for status, limit, what in (
                (DeliveryStatus.COMPLAINED, settings.guard_complaint_rate, "complaint"),
                (DeliveryStatus.BOUNCED, settings.guard_bounce_rate, "hard-bounce")):
            rate = 100 * counts.get(status, 0) / handed
            if rate > limit:
                reason = (f"{what} rate {rate:.2f}% of {handed} messages passed the limit of "
                          f"{limit}% (settings: guard); check the list and the content, then "
                          "resume or cancel")
                try:
                    await pause(campaign.id, "guard", reason)
                except Conflict:
                    break  # paused or cancelled by someone else meanwhile
                paused += 1
                break
    return paused


# -- what the product team sees ----------------------------------------------------------


@dataclass
class Progress:
    """A campaign's counts and pace, as the API, the CLI and the console show them."""

    campaign: Campaign
    counts: dict[str, int]  # delivery status -> how many
    skipped: dict[str, int]  # skip reason -> how many
    unsubscribed: int  # withdrawals made through this campaign's messages
    rate: float  # messages handed over per second, over the last minute
    eta_seconds: float | None
    first_errors: list[dict[str, Any]]
    possible_duplicates: int  # sent after a takeover of a dead worker's claim
    withdrawals_during: int  # recipients who withdrew while the campaign was sending
    # Checked after a withdrawal was recorded and sent all the same: 0, but for a check
    # that read while the withdrawal committed (see _withdrawal_lag).
    sent_after_withdrawal: int
    max_withdrawal_lag_seconds: float | None  # withdrawal to the last message handed over

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def remaining(self) -> int:
        return sum(self.counts.get(s, 0) for s in OPEN)

    @property
    def done_fraction(self) -> float:
        if not self.total:  # a draft, or a campaign that found nobody
            return 1.0 if self.campaign.status == CampaignStatus.DONE else 0.0
        return 1 - self.remaining / self.total


async def progress(campaign: Campaign, now: datetime | None = None) -> Progress:
    now = now or store.now()
    rows = await (Delivery.filter(campaign_id=campaign.id)
                  .annotate(n=Count("id")).group_by("status", "skip_reason")
                  .values("status", "skip_reason", "n"))
    counts: dict[str, int] = {}
    skipped: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + row["n"]
        if row["status"] == DeliveryStatus.SKIPPED and row["skip_reason"]:
            skipped[row["skip_reason"]] = skipped.get(row["skip_reason"], 0) + row["n"]
    recent = await Delivery.filter(campaign_id=campaign.id, sent_at__gte=now
                                   - timedelta(seconds=60)).count()
    rate = recent / 60
    remaining = sum(counts.get(s, 0) for s in OPEN)
    errors = await (Delivery.filter(campaign_id=campaign.id, last_error__isnull=False)
                    .order_by("id").limit(5)
                    .values("id", "status", "last_error", "updated_at"))
    unsubscribed = await ConsentEvent.filter(
        delivery_id__in=Subquery(Delivery.filter(campaign_id=campaign.id).values("id")),
        to_state="unsubscribed").count() if counts else 0
    duplicates = await Delivery.filter(campaign_id=campaign.id, takeovers__gt=0,
                                       status__in=HANDED_OVER).count()
    lag = await _withdrawal_lag(campaign)
    return Progress(
        campaign=campaign, counts=counts, skipped=skipped, unsubscribed=unsubscribed,
        rate=rate, eta_seconds=(remaining / rate) if rate and remaining else None,
        # A relay's reply often quotes the address: shown masked, like the logs.
        first_errors=[{**e, "last_error": mask_text(e["last_error"]),
                       "updated_at": e["updated_at"].isoformat()} for e in errors],
        possible_duplicates=duplicates, **lag)


async def _withdrawal_lag(campaign: Campaign) -> dict[str, Any]:
    """How close the last message to a withdrawing user came after their withdrawal.

    For every withdrawal of a campaign topic recorded while the campaign was sending: a
    message whose final eligibility check began after the withdrawal was recorded must not
    exist (``sent_after_withdrawal``, 0 but for a withdrawal whose transaction committed
    after the check read: recorded_at is stamped before the commit); a message already past
    its check when the withdrawal came may still have been handed over, and the largest
    such gap is shown. Two queries, whatever the campaign's size.
    """
    found: dict[str, Any] = {"withdrawals_during": 0, "sent_after_withdrawal": 0,
                             "max_withdrawal_lag_seconds": None}
    if campaign.started_at is None:
        return found
    conn = audience.connection()
    sql = audience.Sql(conn.capabilities.dialect)
    # Placeholders in the order they appear (SQLite's are positional).
    joined = (f"FROM consent_events e JOIN deliveries d ON d.user_id = e.user_id AND "
              f"d.topic = e.topic AND d.campaign_id = {sql(campaign.id)} WHERE "
              f"e.to_state = 'unsubscribed' AND e.recorded_at >= "
              f"{sql.time(campaign.started_at)}")
    if campaign.finished_at:
        joined += f" AND e.recorded_at <= {sql.time(campaign.finished_at)}"
    _, rows = await conn.execute_query(f"SELECT COUNT(DISTINCT e.user_id) AS n {joined}",
                                       sql.values)
    found["withdrawals_during"] = rows[0]["n"]
    if not found["withdrawals_during"]:
        return found
    handed = ", ".join(f"'{s.value}'" for s in HANDED_OVER)
    _, late = await conn.execute_query(
        f"SELECT d.checked_at AS checked_at, d.sent_at AS sent_at, e.recorded_at AS "
        f"recorded_at {joined} AND d.status IN ({handed}) AND d.sent_at > e.recorded_at",
        sql.values)
    lag = None
    for row in late:
        checked, sent, recorded = (_aware(row["checked_at"]), _aware(row["sent_at"]),
                                   _aware(row["recorded_at"]))
        if checked is not None and checked > recorded:
            found["sent_after_withdrawal"] += 1
        gap = (sent - recorded).total_seconds()
        lag = gap if lag is None else max(lag, gap)
    found["max_withdrawal_lag_seconds"] = lag
    return found


def _aware(value: Any) -> datetime | None:  # noqa: ANN401 - a driver's datetime or text
    """A raw query's datetime: asyncpg gives datetimes, SQLite the text tortoise stored."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value)
