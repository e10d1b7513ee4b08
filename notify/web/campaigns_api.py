"""The admin API of policy versions, campaigns and the audit log (thin: notify.campaigns
does the work, so the CLI and the console do exactly what this does)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import AfterValidator, AnyHttpUrl, BaseModel, Field

from notify import audit, campaigns, notices
from notify.eligibility import CAMPAIGN_KINDS, SkipReason
from notify.errors import InvalidRequest, NotFound
from notify.models import Campaign, PolicyVersion
from notify.settings import Channel
from notify.web.endpoints import POSTMAN, Call
from notify.web.schemas import Country, Email, Locale, Note, Strict, Text200


def _moment(value: datetime) -> datetime:
    """A point in time: with a time zone, in UTC, within years a calendar can hold.

    A naive time would be read in the server's zone; a year-1 time with an offset cannot
    even become UTC. Both are the caller's error, said as such.
    """
    if value.tzinfo is None:
        raise ValueError("give a time zone, e.g. 2026-12-01T00:00:00Z")
    if not 1970 <= value.year <= 9000:
        raise ValueError("must be between the years 1970 and 9000")
    return value.astimezone(UTC)


Moment = Annotated[datetime, AfterValidator(_moment)]
#: Names the templates set themselves; a variable of that name would clash.
RESERVED = frozenset({"t", "locale", "footer", "postal_address", "name", "policy_title",
                      "summary", "policy_url", "effective_date", "confirm_url", "topic_label",
                      "days"})
#: Templates of messages that answer a user's own request; never a campaign's.
TRANSACTIONAL_TEMPLATES = frozenset({"confirmation", "preferences_link"})


def _variables(value: dict[str, str]) -> dict[str, str]:
    clash = sorted(set(value) & RESERVED)
    if clash:
        raise ValueError(f"{', '.join(clash)}: reserved for what the templates set themselves")
    for name in value:
        if not name.isidentifier():
            raise ValueError(f"{name!r} is not a template variable name (letters, digits, _)")
    return value


def _template(value: str) -> str:
    if value in TRANSACTIONAL_TEMPLATES:
        raise ValueError(f"{value!r} answers a user's own request; a campaign cannot use it")
    return value


Label = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                             examples=["2026-12"])]
TemplateName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$"),
                         AfterValidator(_template)]


# -- shapes ------------------------------------------------------------------------------


class PolicyIn(Strict):
    version: Label
    title: Text200
    summary: Note = Field(min_length=1, description="the summary of changes the notice quotes")
    url: AnyHttpUrl = Field(description="the full text")
    effective_at: Moment = Field(description="when it takes effect (with a time zone)")
    material: bool = Field(description="true: it affects users' rights; every deliverable "
                           "address is told, whatever its topic consents")


class PolicyOut(BaseModel):
    version: str
    title: str
    summary: str
    url: str
    effective_at: datetime
    material: bool
    published_at: datetime
    published_by: str


class PolicyList(BaseModel):
    policies: list[PolicyOut]


class SampleOut(BaseModel):
    locale: str
    subject: str
    text: str
    html: str


class NoticePreviewOut(BaseModel):
    who: str = Field(description="who receives the notice, in plain words")
    eligible: int
    excluded: dict[str, int] = Field(description="users left out, by reason")
    examples: dict[str, list[str]] = Field(description="a few user ids for each reason")
    reasons: dict[str, str] = Field(description="what each exclusion reason means")
    samples: list[SampleOut] = Field(description="the notice email per language")


class AudienceFilter(Strict):
    locale: Locale | None = None
    country: Country | None = None
    created_before: Moment | None = None
    created_after: Moment | None = None


class CampaignIn(Strict):
    name: Text200
    kind: Literal["policy_notice", "newsletter", "notification"]
    channels: list[Literal["email", "sms"]] = Field(default=["email"], min_length=1,
                                                   max_length=2)
    topic: str | None = Field(default=None, max_length=64,
                              description="the consent topic; none for a policy notice")
    template: TemplateName | None = Field(default=None,
                                          description="defaults to the kind's template")
    variables: Annotated[dict[Annotated[str, Field(max_length=64)],
                              Annotated[str, Field(max_length=10_000)]],
                         AfterValidator(_variables)] = Field(
        default_factory=dict, max_length=50, description="template variables")
    audience: AudienceFilter = Field(default_factory=AudienceFilter)
    policy_version: Label | None = Field(default=None, description="for a policy notice")
    send_at: Moment | None = Field(default=None, description="schedule instead of now")


class ErrorOut(BaseModel):
    id: int
    status: str
    last_error: str
    updated_at: str


class WithdrawalsOut(BaseModel):
    during: int = Field(description="recipients who withdrew while it was sending")
    sent_after_withdrawal: int = Field(description="messages checked after a withdrawal "
                                       "was recorded and sent anyway: 0 but for a check "
                                       "that read while the withdrawal committed")
    max_lag_seconds: float | None = Field(description="withdrawal to the last message to "
                                          "that user already handed over")


class CampaignOut(BaseModel):
    id: int
    name: str
    kind: str
    channels: list[str]
    topic: str | None
    template: str
    variables: dict[str, Any]
    audience: dict[str, Any]
    policy_version: str | None
    status: str
    paused_reason: str | None
    send_at: datetime | None
    created_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    enqueued: int
    excluded: dict[str, int] = Field(description="excluded when it was enqueued, by reason")
    counts: dict[str, int] = Field(description="deliveries by state")
    skipped: dict[str, int] = Field(description="skipped at send time, by reason")
    unsubscribed: int = Field(description="withdrawals made through its messages")
    progress: float = Field(description="0..1, the share of deliveries in a final state")
    rate_per_second: float
    eta_seconds: float | None
    first_errors: list[ErrorOut]
    possible_duplicates: int = Field(description="sent after taking over the claim of a "
                                     "worker that died: these may have gone twice")
    withdrawals: WithdrawalsOut


class CampaignList(BaseModel):
    campaigns: list[CampaignOut]


class ChannelAudience(BaseModel):
    channel: str
    eligible: int
    excluded: dict[str, int]
    examples: dict[str, list[str]] = Field(description="a few user ids for each reason")


class AudienceOut(BaseModel):
    campaign: int
    eligible: int
    channels: list[ChannelAudience]
    reasons: dict[str, str] = Field(description="what each exclusion reason means")


class TestIn(Strict):
    addresses: list[Email] = Field(min_length=1, max_length=10)
    locale: Locale = "en"


class TestOut(BaseModel):
    sent: list[str]
    failed: dict[str, str]


class AuditOut(BaseModel):
    id: int
    at: datetime
    key_id: str
    action: str
    target: str | None
    detail: dict[str, Any]


class AuditQuery(Strict):
    target: str | None = Field(default=None, max_length=64, examples=["campaign:1"])
    before: int | None = Field(default=None, ge=1, le=2**63 - 1)
    limit: int = Field(default=50, ge=1, le=500)


class AuditPage(BaseModel):
    entries: list[AuditOut]


REASONS = {
    SkipReason.ERASED: "the user was erased",
    SkipReason.NO_ADDRESS: "no address on this channel",
    SkipReason.SUPPRESSED: "the address bounced, complained or was blocked",
    SkipReason.UNVERIFIED: "the address is not verified",
    SkipReason.NOT_SUBSCRIBED: "no consent to the topic (never asked, pending, withdrawn)",
    SkipReason.ALREADY_NOTIFIED: "a notice of this policy version reached them before",
}


# -- views -------------------------------------------------------------------------------


def _key(call: Call) -> str:
    assert call.key is not None
    return call.key.kid


def _policy_out(policy: PolicyVersion) -> PolicyOut:
    return PolicyOut(version=policy.version, title=policy.title, summary=policy.summary,
                     url=policy.url, effective_at=policy.effective_at,
                     material=policy.material, published_at=policy.published_at,
                     published_by=policy.published_by)


async def post_policy(call: Call) -> PolicyOut:
    return _policy_out(await campaigns.publish_policy(policy_values(call.body), _key(call)))


def policy_values(body: PolicyIn) -> dict[str, Any]:
    values = body.model_dump()
    values["url"] = str(body.url)
    return values


def notice_preview_out(found: notices.NoticePreview) -> NoticePreviewOut:
    return NoticePreviewOut(
        who=found.who, eligible=found.audience.eligible, excluded=found.audience.excluded,
        examples=found.audience.examples, reasons={str(k): v for k, v in REASONS.items()},
        samples=[SampleOut(locale=s.locale, subject=s.subject, text=s.text, html=s.html)
                 for s in found.samples])


async def preview_policy(call: Call) -> NoticePreviewOut:
    """What publishing this version and sending its notice would do; nothing is saved."""
    policy = notices.unsaved_policy(policy_values(call.body))
    return notice_preview_out(await notices.preview(call.settings, policy))


async def get_policies(call: Call) -> PolicyList:
    return PolicyList(policies=[_policy_out(p) for p in await campaigns.policies()])


def campaign_id(call: Call) -> int:
    value = call.request.match_info["id"]
    if not value.isascii() or not value.isdigit() or len(value) > 18:
        raise NotFound(f"no campaign {value!r}")
    return int(value)


async def campaign_out(campaign: Campaign) -> CampaignOut:
    found = await campaigns.progress(campaign)
    policy = await campaigns.policy_of(campaign)
    return CampaignOut(
        id=campaign.id, name=campaign.name, kind=campaign.kind, channels=campaign.channels,
        topic=campaign.topic, template=campaign.template, variables=campaign.variables,
        audience=campaign.audience, policy_version=policy.version if policy else None,
        status=campaign.status, paused_reason=campaign.paused_reason,
        send_at=campaign.send_at, created_by=campaign.created_by,
        created_at=campaign.created_at, started_at=campaign.started_at,
        finished_at=campaign.finished_at, enqueued=campaign.enqueued,
        excluded=campaign.excluded, counts=found.counts, skipped=found.skipped,
        unsubscribed=found.unsubscribed, progress=round(found.done_fraction, 4),
        rate_per_second=round(found.rate, 2), eta_seconds=found.eta_seconds,
        first_errors=[ErrorOut(**e) for e in found.first_errors],
        possible_duplicates=found.possible_duplicates,
        withdrawals=WithdrawalsOut(during=found.withdrawals_during,
                                   sent_after_withdrawal=found.sent_after_withdrawal,
                                   max_lag_seconds=found.max_withdrawal_lag_seconds))


def spec_of(body: CampaignIn) -> campaigns.Spec:
    if body.kind not in CAMPAIGN_KINDS:  # pragma: no cover - the Literal refuses it first
        raise InvalidRequest("unknown kind", field="body.kind")
    return campaigns.Spec(
        name=body.name, kind=body.kind, channels=[Channel(c).value for c in body.channels],
        topic=body.topic, template=body.template, variables=dict(body.variables),
        audience=body.audience.model_dump(mode="json", exclude_none=True),
        policy_version=body.policy_version, send_at=body.send_at)


async def post_campaign(call: Call) -> web.Response:
    campaign = await campaigns.create(call.settings, spec_of(call.body), _key(call))
    return web.json_response(text=(await campaign_out(campaign)).model_dump_json(), status=201)


async def get_campaigns(call: Call) -> CampaignList:
    found = await Campaign.all().order_by("-id").limit(100)
    return CampaignList(campaigns=[await campaign_out(c) for c in found])


async def get_campaign(call: Call) -> CampaignOut:
    return await campaign_out(await campaigns.get(campaign_id(call)))


async def get_audience(call: Call) -> AudienceOut:
    campaign = await campaigns.get(campaign_id(call))
    found = await campaigns.preview(call.settings, campaign)
    return AudienceOut(
        campaign=campaign.id, eligible=sum(a.eligible for a in found),
        channels=[ChannelAudience(channel=a.channel, eligible=a.eligible,
                                  excluded=a.excluded, examples=a.examples) for a in found],
        reasons={str(k): v for k, v in REASONS.items()})


async def send(call: Call) -> CampaignOut:
    return await campaign_out(await campaigns.send(call.settings, campaign_id(call),
                                                   _key(call)))


async def pause(call: Call) -> CampaignOut:
    return await campaign_out(await campaigns.pause(campaign_id(call), _key(call)))


async def resume(call: Call) -> CampaignOut:
    return await campaign_out(await campaigns.resume(campaign_id(call), _key(call),
                                                     call.settings.retry_hours))


async def cancel(call: Call) -> CampaignOut:
    return await campaign_out(await campaigns.cancel(campaign_id(call), _key(call)))


async def test_send(call: Call) -> TestOut:
    body: TestIn = call.body
    campaign = await campaigns.get(campaign_id(call))
    sent, failed = await campaigns.send_tests(call.request.app[POSTMAN], campaign,
                                              body.addresses, body.locale, _key(call))
    return TestOut(sent=sent, failed=failed)


async def get_audit(call: Call) -> AuditPage:
    query: AuditQuery = call.query
    found = await audit.entries(target=query.target, before=query.before, limit=query.limit)
    return AuditPage(entries=[AuditOut(id=e.id, at=e.at, key_id=e.key_id, action=e.action,
                                       target=e.target, detail=e.detail) for e in found])
