"""Views for users and their consents: thin, the rules live in notify.consent and notify.store."""

from __future__ import annotations

from urllib.parse import urlencode

from aiohttp import web
from pydantic import BaseModel

from notify import links, store, subscriptions
from notify.consent import API_SOURCES, ConsentSource, ConsentState, is_subscribed
from notify.errors import InvalidRequest, NotFound
from notify.models import Consent, ConsentEvent, User
from notify.settings import Topic
from notify.web.endpoints import POSTMAN, Call
from notify.web.problems import Forbidden
from notify.web.schemas import (
    ConsentChangeOut,
    ConsentEventOut,
    ConsentIn,
    ConsentList,
    ConsentOut,
    EventPage,
    EventQuery,
    ExportOut,
    LinksOut,
    SuppressionOut,
    UserIn,
    UserOut,
    check_user_id,
)


def json_response(model: BaseModel, status: int = 200) -> web.Response:
    return web.json_response(text=model.model_dump_json(), status=status)


def user_id(call: Call) -> str:
    value = call.request.match_info["id"]
    try:
        return check_user_id(value)
    except ValueError as exc:
        raise InvalidRequest(str(exc), field="path.id") from None


def topic_of(call: Call) -> Topic:
    name = call.request.match_info["topic"]
    topic = call.settings.topics.get(name)
    if topic is None:
        known = ", ".join(call.settings.topics)
        raise NotFound(f"unknown topic {name!r}; topics are: {known}", field="path.topic")
    return topic


def consent_out(topic: Topic, row: Consent | store.ConsentValue | None,
                locale: str) -> ConsentOut:
    state = ConsentState(row.state) if row else None
    return ConsentOut(
        topic=topic.name,
        channel=topic.channel.value,
        label=topic.label(locale),
        state=state,
        subscribed=is_subscribed(state),
        updated_at=row.updated_at if row else None,
    )


async def consents_out(call: Call, user: User) -> list[ConsentOut]:
    rows = await store.consent_states(user)
    return [consent_out(t, rows.get(name), user.locale) for name, t in call.settings.topics.items()]


async def user_out(call: Call, user: User) -> UserOut:
    return UserOut(
        id=user.external_id,
        **{name: getattr(user, name) for name in store.USER_FIELDS},
        created_at=user.created_at,
        updated_at=user.updated_at,
        consents=await consents_out(call, user),
    )


async def put_user(call: Call) -> web.Response:
    body: UserIn = call.body
    user, created = await store.save_user(user_id(call), body.model_dump(), replace=True,
                                           hash_key=call.settings.hash_key)
    return json_response(await user_out(call, user), 201 if created else 200)


async def patch_user(call: Call) -> UserOut:
    body: UserIn = call.body
    user = await store.get_user(user_id(call))
    user, _ = await store.save_user(user.external_id, body.model_dump(exclude_unset=True),
                                    replace=False, hash_key=call.settings.hash_key)
    return await user_out(call, user)


async def get_user(call: Call) -> UserOut:
    return await user_out(call, await store.get_user(user_id(call)))


async def delete_user(call: Call) -> web.Response:
    settings = call.settings
    external_id = user_id(call)
    if await store.is_erased(external_id, settings.hash_key):
        return web.Response(status=204)  # erasing twice is the same as erasing once
    user = await store.get_user(external_id)
    await store.erase_user(user, settings.topics, hash_key=settings.hash_key,
                           actor=call.key.kid, default_policy=settings.policy_version)
    return web.Response(status=204)


async def get_consents(call: Call) -> ConsentList:
    # The user and their consents in one query, as values (store.consents_of): the API's
    # hot read. The body is the one consents_out builds for GET /v1/users/{id}.
    locale, rows = await store.consents_of(user_id(call))
    return ConsentList(consents=[consent_out(t, rows.get(name), locale)
                                 for name, t in call.settings.topics.items()])


async def put_consent(call: Call) -> ConsentChangeOut:
    body: ConsentIn = call.body
    user = await store.get_user(user_id(call))
    topic = topic_of(call)
    scope = call.key.scope
    if body.source not in API_SOURCES["admin"]:
        raise InvalidRequest(
            f"source {body.source.value!r} is recorded only by notify itself",
            field="body.source",
        )
    if body.source not in API_SOURCES[scope]:
        raise Forbidden(f"an {scope} key may not record source {body.source.value!r}",
                        field="body.source")
    if body.source is ConsentSource.SUPPORT and not (body.actor and body.note):
        raise InvalidRequest("a support change needs an actor and a note",
                             field="body.note" if body.actor else "body.actor")
    if body.source is ConsentSource.IMPORT and not body.note:
        # An import may mark a double-opt-in topic subscribed at once, because it carries
        # the confirmation made elsewhere; the note must say where that evidence is.
        raise InvalidRequest("an import needs a note naming the evidence of consent",
                             field="body.note")
    actor = body.actor or ("user" if body.source is ConsentSource.PROFILE_SETTINGS
                           else call.key.kid)
    evidence = store.Evidence(source=body.source, actor=actor, ip=body.ip,
                              user_agent=body.user_agent, note=body.note)
    change, _ = await subscriptions.request(call.request.app[POSTMAN], user, topic,
                                            body.subscribed, evidence)
    row = await Consent.get_or_none(user_id=user.id, topic=topic.name)
    out = consent_out(topic, row, user.locale)
    return ConsentChangeOut(**out.model_dump(), changed=change.is_change)


def event_out(event: ConsentEvent) -> ConsentEventOut:
    return ConsentEventOut.model_validate(event, from_attributes=True)


async def get_events(call: Call) -> EventPage:
    query: EventQuery = call.query
    user = await store.get_user(user_id(call))
    # One extra row tells whether an older page exists.
    events = await store.list_events(user, limit=query.limit + 1, before=query.before)
    page, more = events[: query.limit], len(events) > query.limit
    next_url = None
    if more:
        params = urlencode({"limit": query.limit, "before": page[-1].id})
        next_url = f"{call.request.path}?{params}"
    return EventPage(events=[event_out(e) for e in page], next=next_url)


async def export_user(call: Call) -> ExportOut:
    user = await store.get_user(user_id(call))
    events = await ConsentEvent.filter(user_id=user.id).order_by("id")
    suppressions = await store.suppressed_kinds(user, call.settings.hash_key)
    return ExportOut(
        exported_at=store.now(),
        user=await user_out(call, user),
        consent_events=[event_out(e) for e in events],
        suppressions=[
            SuppressionOut(kind=s.kind, reason=s.reason, created_at=s.created_at)
            for s in suppressions
        ],
    )


async def get_links(call: Call) -> LinksOut:
    user = await store.get_user(user_id(call))
    found = await links.for_user(call.settings, user)
    return LinksOut(
        preferences=found.preferences,
        unsubscribe=found.unsubscribe,
        list_unsubscribe=found.list_unsubscribe(),
        list_unsubscribe_post=links.ONE_CLICK_BODY,
    )
