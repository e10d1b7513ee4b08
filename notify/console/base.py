"""The console's machinery: rendering, the signed-in check, CSRF on every POST, and turning
domain errors into pages that say what went wrong (never a 500 for bad input).

Every console view is wrapped by :func:`page`. It reads the session; sends a visitor who
is not signed in (or whose session expired) to the sign-in page; on a POST it checks the
CSRF token before the view runs, so a refused form changes nothing; and it re-issues the
cookie, which keeps an active session alive (see ``session``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp_jinja2
import jinja2
from aiohttp import web
from multidict import MultiDict, MultiDictProxy
from pydantic import ValidationError

from notify.console import session as sessions
from notify.errors import NotifyError
from notify.settings import ApiKey, Settings
from notify.web.endpoints import SETTINGS
from notify.web.problems import STATUS

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent.parent.parent / "templates" / "console"
STATIC = TEMPLATES / "static"
JINJA = web.AppKey("console_jinja", jinja2.Environment)
SESSION = web.RequestKey("console_session", sessions.Session)
KEY = web.RequestKey("console_key", ApiKey)
FORM = web.RequestKey("console_form", MultiDictProxy)

View = Callable[[web.Request], Awaitable[web.StreamResponse]]


def setup_templates(app: web.Application) -> None:
    env = aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(TEMPLATES), app_key=JINJA,
                               autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["when"] = lambda value: value.strftime("%Y-%m-%d %H:%M UTC") if value else "–"


def settings_of(request: web.Request) -> Settings:
    return request.app[SETTINGS]


def key_of(request: web.Request) -> ApiKey:
    return request[KEY]


def form_of(request: web.Request) -> MultiDictProxy[str]:
    return request[FORM]


def render(request: web.Request, name: str, status: int = 200, **context: Any) -> web.Response:
    session = request.get(SESSION)
    context.setdefault("title", "")
    return aiohttp_jinja2.render_template(
        name, request, {**context, "csrf": session.csrf if session else "",
                        "signed_in_as": session.kid if session else None,
                        "path": request.path}, app_key=JINJA, status=status)


def refused(request: web.Request, reason: str) -> web.Response:
    return render(request, "refused.html", status=403, title="Not accepted", reason=reason)


def sign_in_redirect(request: web.Request, expired: bool) -> web.HTTPSeeOther:
    target = request.path_qs if request.method == "GET" else request.path
    query = f"next={quote(target, safe='')}" + ("&expired=1" if expired else "")
    return web.HTTPSeeOther(f"{sessions.PATH}/sign-in?{query}")


def safe_next(value: str | None) -> str:
    """Only a console path: a sign-in link must not send anyone elsewhere (open redirect)."""
    if not value:
        return sessions.PATH
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not parts.path.startswith(sessions.PATH) or \
            value.startswith("//"):
        return sessions.PATH
    return value


def error_status(exc: NotifyError) -> int:
    return next(code for cls, code in STATUS.items() if isinstance(exc, cls))


def page(view: View) -> View:
    """Signed-in only, CSRF-checked on POST, errors as pages."""

    @functools.wraps(view)
    async def handle(request: web.Request) -> web.StreamResponse:
        settings = settings_of(request)
        had_cookie = sessions.COOKIE in request.cookies
        session = sessions.read(request, settings)
        if session is None or not session.signed_in:
            raise sign_in_redirect(request, expired=had_cookie)
        request[SESSION] = session
        request[KEY] = sessions.key_of(settings, session)
        if request.method == "POST":
            form = await read_form(request)
            if not sessions.is_valid_csrf(session, form.get(sessions.CSRF_FIELD)):
                return refused(request, "The form's security token is missing or wrong "
                               "(it may come from another site, or from an older session). "
                               "Nothing was changed. Reload the page and try again.")
            request[FORM] = form
        try:
            response = await view(request)
        except NotifyError as exc:
            response = render(request, "error.html", status=error_status(exc),
                              title=exc.title, detail=exc.detail, errors=exc.errors)
        except web.HTTPRedirection as redirect:
            sessions.store(redirect, request, settings, session)
            raise
        if sessions.COOKIE not in response.cookies:  # sign-out deletes it: leave that be
            sessions.store(response, request, settings, session)
        return response

    return handle


async def read_form(request: web.Request) -> MultiDictProxy[str]:
    """The urlencoded form (the console posts nothing else; files are not accepted)."""
    if request.content_type not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return MultiDictProxy(MultiDict())
    form = await request.post()
    return MultiDictProxy(MultiDict((k, v) for k, v in form.items() if isinstance(v, str)))


def field_errors(exc: ValidationError) -> dict[str, str]:
    """pydantic's errors by form field name, in words fit for a page."""
    found: dict[str, str] = {}
    for error in exc.errors(include_url=False):
        name = ".".join(str(part) for part in error["loc"]) or "form"
        found.setdefault(name, error["msg"].removeprefix("Value error, "))
    return found
