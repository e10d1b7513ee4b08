"""The admin API of support work and the dashboard's figures: user look-up by id or
email, withdrawal on a user's behalf, suppressions, stats. Thin: ``notify.support`` and
``notify.stats`` do the work, and the console calls the same functions."""

from __future__ import annotations

from datetime import datetime

from aiohttp import web
from pydantic import BaseModel, Field

from notify import stats, store, support
from notify.web.endpoints import Call
from notify.web.schemas import Note, Strict, UserOut
from notify.web.users import user_id, user_out

# -- shapes ------------------------------------------------------------------------------


class LookupIn(Strict):
    """A body, not a query: an email address must not sit in a URL (proxy logs, history)."""

    q: str = Field(min_length=1, max_length=320, description="a user id or an email address")


class WithdrawalIn(Strict):
    topic: str = Field(min_length=1, max_length=64, description="a topic, or 'all'")
    note: Note = Field(min_length=1, description="why: the user's request, a ticket")


class WithdrawnOut(BaseModel):
    topic: str
    from_state: str | None
    changed: bool = Field(description="false when the topic was not subscribed already")


class WithdrawalOut(BaseModel):
    withdrawn: list[WithdrawnOut]


class SuppressionQuery(Strict):
    limit: int = Field(default=50, ge=1, le=500)


class SuppressionSearchIn(Strict):
    """A body, not a query, for the same reason as LookupIn."""

    address: str = Field(min_length=1, max_length=320,
                         description="a whole email address or phone number")
    limit: int = Field(default=50, ge=1, le=500)


class SuppressionIn(Strict):
    address: str = Field(min_length=3, max_length=320,
                         description="an email address, or a phone number starting with +")
    note: Note = Field(min_length=1, description="who asked and why")


class SuppressionEntry(BaseModel):
    id: int
    kind: str
    reason: str
    note: str | None
    created_at: datetime
    address_hash: str = Field(description="the keyed hash kept instead of the address")


class SuppressionPage(BaseModel):
    suppressions: list[SuppressionEntry]


class SuppressionAdded(BaseModel):
    added: bool = Field(description="false when the address was suppressed already")


class SendsPoint(BaseModel):
    at: datetime
    per_minute: float


class StatsOut(BaseModel):
    queue_depth: dict[str, int] = Field(description="deliveries due now, by channel")
    sends_per_minute: list[SendsPoint] = Field(description="last 24 hours, 15-minute buckets")
    unsubscribes_30d: dict[str, int] = Field(description="withdrawals by source")
    handed_over_30d: int
    complaint_rate_30d: float = Field(description="percent of messages handed over")
    bounce_rate_30d: float = Field(description="percent of messages handed over")


# -- views -------------------------------------------------------------------------------


def _key(call: Call) -> str:
    assert call.key is not None
    return call.key.kid


async def lookup_user(call: Call) -> UserOut:
    body: LookupIn = call.body
    return await user_out(call, await support.find_user(body.q))


async def post_withdrawal(call: Call) -> WithdrawalOut:
    body: WithdrawalIn = call.body
    user = await store.get_user(user_id(call))
    done = await support.withdraw(call.settings, user, body.topic, body.note, _key(call))
    return WithdrawalOut(withdrawn=[
        WithdrawnOut(topic=w.topic, from_state=w.change.from_state,
                     changed=w.change.is_change) for w in done])


def suppression_entry(row: object) -> SuppressionEntry:
    return SuppressionEntry.model_validate(row, from_attributes=True)


async def get_suppressions(call: Call) -> SuppressionPage:
    query: SuppressionQuery = call.query
    found = await support.suppressions(call.settings, None, limit=query.limit)
    return SuppressionPage(suppressions=[suppression_entry(s) for s in found])


async def search_suppressions(call: Call) -> SuppressionPage:
    body: SuppressionSearchIn = call.body
    found = await support.suppressions(call.settings, body.address, limit=body.limit)
    return SuppressionPage(suppressions=[suppression_entry(s) for s in found])


async def post_suppression(call: Call) -> web.Response:
    body: SuppressionIn = call.body
    added = await support.suppress(call.settings, body.address.strip(), body.note, _key(call))
    return web.json_response(text=SuppressionAdded(added=added).model_dump_json(),
                             status=201 if added else 200)


async def get_stats(call: Call) -> StatsOut:
    found = await stats.dashboard()
    return StatsOut(
        queue_depth=found.queue_depth,
        sends_per_minute=[SendsPoint(at=at, per_minute=round(v, 3))
                          for at, v in found.sends_per_minute],
        unsubscribes_30d=found.unsubscribes, handed_over_30d=found.handed_over,
        complaint_rate_30d=round(found.complaint_rate, 3),
        bounce_rate_30d=round(found.bounce_rate, 3))
