"""Console pages for support: look up a user by id or email (contact data, consents, the
whole ledger), withdraw a topic on their behalf with a note, and the suppression list."""

from __future__ import annotations

from urllib.parse import quote, urlencode

from aiohttp import web
from pydantic import ValidationError

from notify import store, support
from notify.console.base import field_errors, form_of, key_of, page, render, settings_of
from notify.errors import NotFound
from notify.models import ConsentEvent, User
from notify.web.support_api import SuppressionIn, WithdrawalIn

#: The ledger shown on the page, newest first; older events are in the export.
LEDGER_LIMIT = 500


async def _user_page(request: web.Request, user: User, status: int = 200, *,
                     errors: dict[str, str] | None = None,
                     values: dict[str, str] | None = None) -> web.Response:
    settings = settings_of(request)
    states = await store.consent_states(user)
    events = await ConsentEvent.filter(user_id=user.id).order_by("-id").limit(LEDGER_LIMIT)
    suppressed = await store.suppressed_kinds(user, settings.hash_key)
    return render(request, "user.html", status=status, title=f"User {user.external_id}",
                  user=user, topics=settings.topics, states=states, events=events,
                  suppressed=suppressed, errors=errors or {}, values=values or {},
                  withdrawn=request.query.get("withdrawn"), query=user.external_id)


@page
async def users_page(request: web.Request) -> web.Response:
    return render(request, "users.html", title="Users", query="", error=None)


@page
async def lookup(request: web.Request) -> web.StreamResponse:
    # A POST, so that an email address never sits in a URL (browser history, proxy logs):
    # the answer is a redirect to the user's page, named by the main app's id only.
    query = form_of(request).get("q", "").strip()
    if not query:
        return render(request, "users.html", status=422, title="Users", query="",
                      error="Enter a user id or an email address.")
    try:
        user = await support.find_user(query[:320])
    except NotFound as exc:
        return render(request, "users.html", status=404, title="Users", query=query,
                      error=exc.detail)
    raise web.HTTPSeeOther(f"/console/users/{quote(user.external_id, safe='')}")


@page
async def user_page(request: web.Request) -> web.Response:
    return await _user_page(request, await _user(request))


async def _user(request: web.Request) -> User:
    user = await User.get_or_none(external_id=request.match_info["id"])
    if user is None or user.erased_at is not None:
        raise NotFound(f"no user with id {request.match_info['id']!r}")
    return user


@page
async def withdraw(request: web.Request) -> web.StreamResponse:
    user = await _user(request)
    form = form_of(request)
    values = {"topic": form.get("topic", ""), "note": form.get("note", "")}
    try:
        body = WithdrawalIn.model_validate(values)
    except ValidationError as exc:
        return await _user_page(request, user, 422, errors=field_errors(exc), values=values)
    done = await support.withdraw(settings_of(request), user, body.topic, body.note,
                                  key_of(request).kid)
    changed = sum(w.change.is_change for w in done)
    raise web.HTTPSeeOther(f"/console/users/{quote(user.external_id, safe='')}"
                           f"?{urlencode({'withdrawn': changed})}")


@page
async def suppressions_page(request: web.Request) -> web.Response:
    found = await support.suppressions(settings_of(request), None, limit=100)
    return render(request, "suppressions.html", title="Suppressions", found=found,
                  address="", added=request.query.get("added"), errors={}, values={})


@page
async def search_suppressions(request: web.Request) -> web.Response:
    # A POST for the same reason as the user look-up: the address stays out of URLs.
    address = form_of(request).get("address", "").strip()[:320] or None
    found = await support.suppressions(settings_of(request), address, limit=100)
    return render(request, "suppressions.html", title="Suppressions", found=found,
                  address=address or "", added=None, errors={}, values={})


@page
async def suppress(request: web.Request) -> web.StreamResponse:
    form = form_of(request)
    values = {"address": form.get("address", "").strip(), "note": form.get("note", "")}
    try:
        body = SuppressionIn.model_validate(values)
    except ValidationError as exc:
        found = await support.suppressions(settings_of(request), limit=100)
        return render(request, "suppressions.html", status=422, title="Suppressions",
                      found=found, address="", added=None, errors=field_errors(exc),
                      values=values)
    added = await support.suppress(settings_of(request), body.address, body.note,
                                   key_of(request).kid)
    raise web.HTTPSeeOther(f"/console/suppressions?added={'1' if added else '0'}")
