"""Console pages: sign-in and sign-out, the dashboard and the audit log."""

from __future__ import annotations

import hashlib
import hmac

from aiohttp import web

from notify import audit, stats
from notify.console import charts
from notify.console import session as sessions
from notify.console.base import (
    SESSION,
    key_of,
    page,
    read_form,
    refused,
    render,
    safe_next,
    settings_of,
)
from notify.models import Campaign
from notify.web.abuse import CLIENT_IP
from notify.web.endpoints import LIMITER


async def sign_in_page(request: web.Request) -> web.Response:
    settings = settings_of(request)
    session = sessions.read(request, settings) or sessions.anonymous()
    request[SESSION] = session
    expired = request.query.get("expired") == "1"
    response = render(request, "sign_in.html", title="Sign in",
                      next=safe_next(request.query.get("next")), error=None,
                      notice="Your session has ended; sign in again." if expired else None)
    sessions.store(response, request, settings, session)
    return response


async def sign_in(request: web.Request) -> web.StreamResponse:
    """Exchange an admin API key for a session cookie."""
    settings = settings_of(request)
    session = sessions.read(request, settings)
    form = await read_form(request)
    request[SESSION] = session or sessions.anonymous()
    if not sessions.is_valid_csrf(session, form.get(sessions.CSRF_FIELD)):
        return refused(request, "The sign-in form's security token is missing, wrong or "
                       "expired. Open the sign-in page again.")
    target = safe_next(form.get("next"))
    # Wrong keys count against the same per-address limit as the API's (notify.web.abuse):
    # the sign-in form must not be a way round it to guess keys.
    limiter, ip = request.app[LIMITER], request[CLIENT_IP]
    wait = await limiter.exhausted(limiter.auth_failure, "auth", ip)
    if wait:
        response = render(request, "sign_in.html", status=429, title="Sign in", next=target,
                          error=f"Too many wrong keys came from this address; retry in "
                                f"{wait} seconds.", notice=None)
        response.headers["Retry-After"] = str(wait)
        return response
    offered = hashlib.sha256(form.get("key", "").strip().encode("utf-8",
                                                                "surrogateescape")).digest()
    match = None
    for key in settings.api_keys:
        # Digests of equal length, every key compared: timing says nothing (as the API).
        if hmac.compare_digest(offered, key.digest):
            match = key
    if match is None:
        await limiter.take(limiter.auth_failure, "auth", ip)
    if match is None or match.scope != "admin":
        error = ("That key is an app key; the console needs an admin key." if match
                 else "That key is not valid.")
        return render(request, "sign_in.html", status=401 if match is None else 403,
                      title="Sign in", next=target, error=error, notice=None)
    fresh = sessions.signed_in(match)
    await audit.record(match.kid, "console.sign_in", None, {})
    response = web.HTTPSeeOther(target)
    sessions.store(response, request, settings, fresh)
    raise response


@page
async def sign_out(request: web.Request) -> web.StreamResponse:
    await audit.record(key_of(request).kid, "console.sign_out", None, {})
    response = web.Response(status=303, headers={"Location": f"{sessions.PATH}/sign-in"})
    sessions.forget(response)
    return response  # returned, not raised: ``page`` leaves a cookie the view set alone


@page
async def dashboard(request: web.Request) -> web.Response:
    found = await stats.dashboard()
    recent = await Campaign.all().order_by("-id").limit(10)
    return render(
        request, "dashboard.html", title="Dashboard", stats=found, campaigns=recent,
        sends_chart=charts.sends_chart(found.sends_per_minute),
        unsubscribes_chart=charts.bar_chart(found.unsubscribes,
                                            "Unsubscribes by source, last 30 days",
                                            ident="unsubscribes"),
        rates_chart=charts.bar_chart({"complaints": round(found.complaint_rate, 3),
                                      "bounces": round(found.bounce_rate, 3)},
                                     "Complaint and bounce rates, last 30 days", "%",
                                     ident="rates"),
        queue_chart=charts.bar_chart(dict(found.queue_depth), "Queue depth by channel",
                                     ident="queue"))


@page
async def audit_page(request: web.Request) -> web.Response:
    target = request.query.get("target", "").strip()[:64] or None
    before_text = request.query.get("before", "")
    before = int(before_text) if before_text.isdigit() and len(before_text) < 18 else None
    entries = await audit.entries(target=target, before=before, limit=100)
    return render(request, "audit.html", title="Audit log", entries=entries,
                  target=target or "", older=entries[-1].id if len(entries) == 100 else None)

