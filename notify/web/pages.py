"""The public pages: unsubscribe (with RFC 8058 one-click), preference center, double
opt-in confirmation, a way in without an old email, and the policy versions.

A link's token is its only credential: no login, cookie or CSRF token is involved, and
GET never changes anything, because link scanners and prefetchers open GET links. Every
bad token gets the same "not valid" page (404): it says nothing about whether a user
exists and changes nothing.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.web_protocol import RequestPayloadError
from email_validator import EmailNotValidError, validate_email

from notify import i18n, links, store, subscriptions, tokens
from notify.consent import ConsentSource, ConsentState, is_subscribed
from notify.models import PolicyVersion, User
from notify.settings import Settings, Topic
from notify.tokens import ALL_TOPICS, Purpose
from notify.web.abuse import CLIENT_IP
from notify.web.endpoints import LIMITER, POSTMAN, SETTINGS
from notify.web.ratelimit import Limiter
from notify.withdrawals import Withdrawals

log = logging.getLogger(__name__)

PAGE_DIR = Path(__file__).resolve().parent.parent.parent / "templates" / "pages"
_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(PAGE_DIR),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
#: The process's one-click withdrawals (group commit); started with the app.
WITHDRAWALS = web.AppKey("withdrawals", Withdrawals)
#: Set on a request whose body could not be read (see _form).
_UNREADABLE = web.RequestKey("unreadable_body", bool)
#: An undo restores the earlier state only shortly after the unsubscribe it undoes.
UNDO_WINDOW = timedelta(hours=24)


def render(request: web.Request, name: str, locale: str, status: int = 200,
           **context: Any) -> web.Response:
    def t(key: str, **values: object) -> str:
        return i18n.translate(locale, key, **values)

    html = _ENV.get_template(name).render(**context, t=t, locale=locale)
    response = web.Response(text=html, status=status, content_type="text/html",
                            charset="utf-8")
    if request.get(_UNREADABLE):
        response.force_close()
    return response


def _browser_locale(request: web.Request, user: User | None = None) -> str:
    return i18n.choose(user.locale if user else None, request.headers.get("Accept-Language"))


def invalid(request: web.Request) -> web.Response:
    return browser_page(request, "invalid.html", status=404)


def browser_page(request: web.Request, name: str, status: int) -> web.Response:
    """A page that needs no user: in the browser's language."""
    return render(request, name, _browser_locale(request), status=status)


async def _resolve(request: web.Request, purpose: Purpose) -> tuple[tokens.Link, User] | None:
    link = _link(request, purpose)
    if link is None:
        return None
    user = await store.user_by_handle(link.handle)
    return (link, user) if user else None


def _link(request: web.Request, purpose: Purpose) -> tokens.Link | None:
    """The request's link, if its token verifies, is for ``purpose`` and names a topic we
    have; the user it names is not looked up here."""
    settings = request.app[SETTINGS]
    lifetime = subscriptions.confirm_lifetime(settings)
    link = tokens.verify(request.match_info["token"], settings.secret_keys, lifetime=lifetime)
    if link is None or link.purpose is not purpose:
        return None
    if link.topic != ALL_TOPICS and link.topic not in settings.topics:
        return None
    return link


def _topics(settings: Settings, link: tokens.Link) -> list[Topic]:
    if link.topic == ALL_TOPICS:
        return list(settings.topics.values())
    return [settings.topics[link.topic]]


def _evidence(request: web.Request, source: ConsentSource, note: str | None = None,
              link: tokens.Link | None = None) -> store.Evidence:
    return store.Evidence(source=source, actor="user", ip=_clean(_ip(request)),
                          user_agent=_clean(request.headers.get("User-Agent"), 512),
                          note=note, delivery_id=link.delivery if link else None)


def _ip(request: web.Request) -> str:
    """The client's address, as the abuse limits saw it (a trusted proxy's header applied)."""
    return request.get(CLIENT_IP) or request.remote or "?"


def _clean(value: str | None, limit: int = 45) -> str | None:
    """Header text as storable text: a withdrawal must never fail on a client's bytes."""
    if not value:
        return None
    text = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return "".join(ch for ch in text if ch.isprintable())[:limit] or None


# -- unsubscribe -------------------------------------------------------------------------


async def unsubscribe_page(request: web.Request) -> web.Response:
    found = await _resolve(request, Purpose.UNSUBSCRIBE)
    if found is None:
        return invalid(request)
    link, user = found
    locale = _browser_locale(request, user)
    all_links = await links.for_user(request.app[SETTINGS], user)
    return render(request, "unsubscribe.html", locale,
                  topics=[t.label(locale) for t in _topics(request.app[SETTINGS], link)],
                  action=request.path, preferences_url=all_links.preferences)


async def unsubscribe_post(request: web.Request) -> web.Response:
    link = _link(request, Purpose.UNSUBSCRIBE)
    form = await _form(request)
    if link is None:
        return invalid(request)
    settings = request.app[SETTINGS]
    topics = _topics(settings, link)
    if form is not None and dict(form) == {"List-Unsubscribe": "One-Click"}:
        # RFC 8058: the mail client's one-click POST. It withdraws at once, needs nothing
        # else, must not redirect, and answers 200 even when repeated. Written with the
        # other one-clicks waiting in this process (group commit, notify.withdrawals).
        user_locale = await request.app[WITHDRAWALS].withdraw(
            link.handle, topics, _evidence(request, ConsentSource.ONE_CLICK, link=link))
        if user_locale is None:
            return invalid(request)  # no such user, or an erased one
        locale = i18n.choose(user_locale, request.headers.get("Accept-Language"))
        return web.Response(text=i18n.translate(locale, "one_click_done") + "\n")
    user = await store.user_by_handle(link.handle)
    if user is None:
        return invalid(request)
    action = form.get("action") if form is not None else None
    if action == "undo":
        return await _undo(request, user, topics)
    if action != "unsubscribe":
        return invalid(request)
    changed = []
    for topic in topics:
        change, _ = await store.change_consent(
            user, topic, False, _evidence(request, ConsentSource.UNSUBSCRIBE_PAGE, link=link),
            default_policy=settings.policy_version)
        changed.append(change.is_change)
    locale = _browser_locale(request, user)
    all_links = await links.for_user(settings, user)
    return render(request, "unsubscribed.html", locale,
                  topics=[t.label(locale) for t in topics], already=not any(changed),
                  action=request.path, preferences_url=all_links.preferences)


async def _undo(request: web.Request, user: User, topics: list[Topic]) -> web.Response:
    """Put back what the unsubscribe page withdrew in the last day, and nothing else.

    A topic goes back to the state that unsubscribe replaced: a confirmed subscription is
    restored as it was; a pending request is asked again (a new confirmation). A topic the
    user never had stays as it is, so an "undo" can never subscribe anyone to more.
    """
    settings = request.app[SETTINGS]
    confirm = restored = False
    for topic in topics:
        last = await store.last_event(user, topic.name)
        if (last is None or last.source != ConsentSource.UNSUBSCRIBE_PAGE
                or last.to_state != ConsentState.UNSUBSCRIBED
                or store.now() - last.recorded_at > UNDO_WINDOW):
            continue
        evidence = _evidence(request, ConsentSource.UNSUBSCRIBE_PAGE, "undo")
        if last.from_state == ConsentState.SUBSCRIBED:
            await store.change_consent(user, topic, True, evidence,
                                       default_policy=settings.policy_version, restoring=True)
            restored = True
        elif last.from_state == ConsentState.PENDING:
            await subscriptions.request(request.app[POSTMAN], user, topic, True, evidence)
            confirm = True
    locale = _browser_locale(request, user)
    all_links = await links.for_user(settings, user)
    return render(request, "undone.html", locale, confirm=confirm, restored=restored,
                  preferences_url=all_links.preferences)


# -- preference center -------------------------------------------------------------------


async def preferences_page(request: web.Request) -> web.Response:
    found = await _resolve(request, Purpose.PREFERENCES)
    if found is None:
        return invalid(request)
    saved = request.query.get("saved")
    return await _preferences(request, found[1], saved=saved in ("1", "confirm"),
                              sent=saved == "confirm")


async def preferences_post(request: web.Request) -> web.Response:
    found = await _resolve(request, Purpose.PREFERENCES)
    form = await _form(request)
    if found is None:
        return invalid(request)
    user = found[1]
    if form is None or form.get("action") not in ("save", "unsubscribe_all"):
        return invalid(request)
    settings = request.app[SETTINGS]
    topics = {v for v in form.getall("topic", []) if isinstance(v, str)}  # no file fields
    wanted = set() if form.get("action") == "unsubscribe_all" else topics
    states = await store.consent_states(user)
    sent = False
    for name, topic in settings.topics.items():
        current = ConsentState(states[name].state) if name in states else None
        holds = current in (ConsentState.SUBSCRIBED, ConsentState.PENDING)
        if (name in wanted) == holds:
            continue  # unchanged on the page: leave it, whatever its state
        if name in wanted and not _address(user, topic):
            continue  # the page offers no box for it: nothing could be sent there
        change, _ = await subscriptions.request(
            request.app[POSTMAN], user, topic, name in wanted,
            _evidence(request, ConsentSource.PREFERENCE_CENTER))
        sent = sent or change.to_state is ConsentState.PENDING
    # Post/redirect/get: reloading the result must not send the form again.
    raise web.HTTPSeeOther(f"{request.path}?saved={'confirm' if sent else '1'}")


def _address(user: User, topic: Topic) -> str | None:
    return user.email if topic.channel.value == "email" else user.phone


def _masked(address: str | None) -> str | None:
    """Enough to recognise one's own address; a forwarded link shows no more than that."""
    if not address:
        return None
    if "@" in address:
        local, _, domain = address.partition("@")
        return f"{local[:1]}***@{domain}"
    return f"{address[:3]}***{address[-3:]}"


async def _preferences(request: web.Request, user: User, *, saved: bool = False,
                       sent: bool = False) -> web.Response:
    settings = request.app[SETTINGS]
    locale = _browser_locale(request, user)
    states = await store.consent_states(user)
    rows = []
    for name, topic in settings.topics.items():
        state = ConsentState(states[name].state) if name in states else None
        rows.append({"name": name, "label": topic.label(locale),
                     "address": _masked(_address(user, topic)),
                     "checked": state in (ConsentState.SUBSCRIBED, ConsentState.PENDING),
                     "pending": state is ConsentState.PENDING,
                     "subscribed": is_subscribed(state)})
    return render(request, "preferences.html", locale, rows=rows, saved=saved, sent=sent,
                  action=request.path)


# -- double opt-in -----------------------------------------------------------------------


async def confirm_page(request: web.Request) -> web.Response:
    found = await _resolve(request, Purpose.CONFIRM)
    if found is None:
        return invalid(request)
    link, user = found
    return await _confirm_view(request, user, link, done=False)


async def confirm_post(request: web.Request) -> web.Response:
    found = await _resolve(request, Purpose.CONFIRM)
    form = await _form(request)
    if found is None or form is None or form.get("action") != "confirm":
        return invalid(request)
    link, user = found
    states = await store.consent_states(user)
    current = states.get(link.topic)
    if current is not None and current.state == ConsentState.PENDING:
        settings = request.app[SETTINGS]
        await store.change_consent(user, settings.topics[link.topic], True,
                                   _evidence(request, ConsentSource.CONFIRMATION),
                                   default_policy=settings.policy_version)
    return await _confirm_view(request, user, link, done=True)


async def _confirm_view(request: web.Request, user: User, link: tokens.Link, *,
                        done: bool) -> web.Response:
    settings = request.app[SETTINGS]
    locale = _browser_locale(request, user)
    topic = settings.topics[link.topic]
    states = await store.consent_states(user)
    state = ConsentState(states[link.topic].state) if link.topic in states else None
    all_links = await links.for_user(settings, user)
    return render(request, "confirm.html", locale, topic=topic.label(locale),
                  pending=state is ConsentState.PENDING,
                  confirmed=done and state is ConsentState.SUBSCRIBED,
                  action=request.path, preferences_url=all_links.preferences)


# -- a way in without an old email -------------------------------------------------------


async def ask_page(request: web.Request) -> web.Response:
    return render(request, "ask.html", _browser_locale(request), error=None, email="")


async def ask_post(request: web.Request) -> web.Response:
    locale = _browser_locale(request)
    form = await _form(request)
    raw = form.get("email") if form is not None else None
    raw = raw.strip() if isinstance(raw, str) else ""
    try:
        address = validate_email(raw, check_deliverability=False).normalized.lower()
    except EmailNotValidError:
        return render(request, "ask.html", locale, status=422, error="ask_invalid",
                      email=raw[:320])
    limiter: Limiter = request.app[LIMITER]
    if not await limiter.allow_way_in(_ip(request), address):
        return render(request, "ask.html", locale, status=429, error="ask_too_many",
                      email=address)
    # The same answer whether or not the address is known. The mail is only queued here
    # (one insert) and the sender sends it, so the answer's timing hardly differs either.
    user = await User.get_or_none(email=address, erased_at__isnull=True)
    if user is not None and not await store.suppressed_kinds(user, request.app[SETTINGS]
                                                             .hash_key):
        await request.app[POSTMAN].enqueue(user, "preferences_link")
    return render(request, "ask_sent.html", locale)


# -- policy ------------------------------------------------------------------------------


async def policy_page(request: web.Request) -> web.Response:
    versions = await PolicyVersion.all().order_by("-effective_at", "-id")
    return render(request, "policy.html", _browser_locale(request), versions=versions)


async def _form(request: web.Request) -> Any:
    """The posted form (urlencoded or multipart), or None when the body is not a form."""
    if request.content_type not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return None
    try:
        return await request.post()
    except (ValueError, LookupError, AssertionError):
        return None  # a malformed body, an unknown charset: not a form we can read
    except (RequestPayloadError, BadHttpMessage):
        # A Content-Encoding the body does not have, a multipart part with a malformed
        # header: not a form either, and the rest of the body cannot be skipped, so aiohttp
        # drops the connection after the answer; render() says so in it.
        request[_UNREADABLE] = True
        return None
