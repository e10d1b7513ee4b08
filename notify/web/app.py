"""The aiohttp application factory. Resources follow the app: each is one cleanup_ctx entry."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from tortoise.context import set_global_context

from notify.channels.factory import email_channel, signer
from notify.channels.sms import sms_channel
from notify.console import CSP as CONSOLE_CSP
from notify.console import is_console, setup_console
from notify.db import apply_migrations, close_db, open_db
from notify.jobs import jobs
from notify.postman import Postman
from notify.sender import Sender, only_sender, running
from notify.settings import Settings
from notify.sms.courier import SmsCourier
from notify.web import in_flight
from notify.web.abuse import abuse_limits
from notify.web.endpoints import DB, LIMITER, POSTMAN, SETTINGS, openapi
from notify.web.pages import WITHDRAWALS
from notify.web.pages_routes import PAGES
from notify.web.problems import Handler, problem_middleware
from notify.web.ratelimit import Limiter
from notify.web.routes import ENDPOINTS
from notify.web.twilio_hooks import ROUTES as TWILIO_ROUTES
from notify.withdrawals import Withdrawals

log = logging.getLogger(__name__)


def make_app(
    settings: Settings, *, migrate: bool = True, start_sender: bool = False
) -> web.Application:
    """Build the app. Tests leave ``start_sender`` off and drive the sender themselves."""
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[in_flight.track, security_headers, abuse_limits, problem_middleware],
    )
    app[SETTINGS] = settings
    in_flight.cut_off_at_shutdown(app, settings.shutdown_timeout)
    app[LIMITER] = Limiter(settings)
    app.cleanup_ctx.append(_database(settings, migrate=migrate))
    app.cleanup_ctx.append(_withdrawals)
    app.cleanup_ctx.append(_postman)
    app.cleanup_ctx.append(_courier)
    if start_sender:
        app.cleanup_ctx.append(_sender)
    for endpoint in ENDPOINTS:
        app.router.add_route(endpoint.method, endpoint.path, endpoint.handler())
    for method, path, page in PAGES:
        app.router.add_route(method, path, page)
    # Form-encoded and signed by Twilio: plain routes, outside the JSON endpoint table.
    for method, path, hook in TWILIO_ROUTES:
        app.router.add_route(method, path, hook)
    spec = json.dumps(openapi(ENDPOINTS, settings.public_url))

    async def openapi_json(request: web.Request) -> web.Response:
        return web.Response(text=spec, content_type="application/json")

    app.router.add_get("/openapi.json", openapi_json)
    setup_console(app)
    return app


def _database(settings: Settings, *, migrate: bool) -> Callable[[web.Application],
                                                                AsyncIterator[None]]:
    async def database(app: web.Application) -> AsyncIterator[None]:
        ctx = await open_db(settings.database_url)
        try:
            if migrate:
                applied = await apply_migrations(ctx)
                if applied:
                    log.info("applied migrations: %s", ", ".join(applied))
            app[DB] = ctx
            # Tortoise finds its state through a context variable. The web process has one
            # database, so it is made the process-wide fallback that every request task and
            # the sender see. (Entering ``with ctx`` per request is not safe: the context
            # object keeps a single reset token, and concurrent requests overwrite it.)
            set_global_context(ctx)
            yield
        finally:
            await close_db(ctx)

    return database


async def _withdrawals(app: web.Application) -> AsyncIterator[None]:
    # After the database (so torn down before it): the drainers of one-click withdrawals.
    app[WITHDRAWALS] = withdrawals = Withdrawals(app[DB].db(), app[SETTINGS].policy_version)
    withdrawals.start()
    try:
        yield
    finally:
        await withdrawals.stop()


SENDER = web.AppKey("sender", Sender)
COURIER = web.AppKey("courier", SmsCourier)


async def _postman(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    channel = email_channel(settings)
    app[POSTMAN] = Postman(settings, channel, signer(settings))
    try:
        yield
    finally:
        await channel.close()


async def _courier(app: web.Application) -> AsyncIterator[None]:
    # Built here, inside the running loop: the Twilio client opens an aiohttp session.
    channel = sms_channel(app[SETTINGS])
    app[COURIER] = SmsCourier(app[SETTINGS], channel)
    try:
        yield
    finally:
        await channel.close()


async def _sender(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[SENDER] = sender = Sender(jobs=jobs(settings, app[POSTMAN], app[COURIER]))

    async def stop_sending(app: web.Application) -> None:
        # At the start of a shutdown, while the requests in flight finish: the sender's
        # batch finishes meanwhile, within the same shutdown timeout.
        sender.stop(settings.shutdown_timeout)

    app.on_shutdown.append(stop_sending)
    with only_sender(settings.database_url):
        async with running(sender, grace=settings.shutdown_timeout):
            yield


#: Sent with every response. The pages carry a one-click unsubscribe button and tokens in
#: their URLs: they must not be framed (clickjacking), leak the URL as a referrer, or be
#: indexed; the policy allows only our own forms and inline styles, no scripts.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
    "X-Content-Type-Options": "nosniff",
}


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    response.headers.update(SECURITY_HEADERS)
    if is_console(request.path):
        # The console runs one small script of its own for live progress (see
        # notify.console.CSP); the public pages run none.
        response.headers["Content-Security-Policy"] = CONSOLE_CSP
    return response
