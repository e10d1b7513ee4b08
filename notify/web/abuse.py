"""The middleware that applies the abuse limits of ``notify.web.ratelimit`` by route."""

from __future__ import annotations

from aiohttp import web

from notify.web.endpoints import LIMITER, SETTINGS
from notify.web.problems import Handler, problem
from notify.web.ratelimit import (
    API_PREFIXES,
    PUBLIC_PREFIXES,
    TOKEN_PREFIXES,
    Limiter,
    client_ip,
)

#: The client's address as the limits saw it (a trusted proxy's X-Forwarded-For applied):
#: the pages record this one in the ledger.
CLIENT_IP = web.RequestKey("client_ip", str)

#: What a token route answers when its token (or a Twilio signature) does not verify.
_REFUSED_TOKEN = (403, 404)


@web.middleware
async def abuse_limits(request: web.Request, handler: Handler) -> web.StreamResponse:
    limiter: Limiter = request.app[LIMITER]
    ip = client_ip(request, request.app[SETTINGS].trusted_proxies)
    request[CLIENT_IP] = ip
    path = request.path
    if path.startswith(API_PREFIXES):
        wait = await limiter.exhausted(limiter.auth_failure, "auth", ip)
        if wait:
            return problem(429, "Too many requests",
                           f"too many requests with a missing or wrong API key came from "
                           f"this address; retry in {wait} seconds",
                           headers={"Retry-After": str(wait)})
        response = await handler(request)
        if response.status == 401:
            await limiter.take(limiter.auth_failure, "auth", ip)
        return response
    public, token = path.startswith(PUBLIC_PREFIXES), path.startswith(TOKEN_PREFIXES)
    if not public and not token:
        return await handler(request)
    wait = await limiter.take(limiter.public, "public", ip) if public else 0
    if token:
        wait = max(wait, await limiter.exhausted(limiter.bad_token, "token", ip))
    if wait:
        return _too_many(request, wait)
    response = await handler(request)
    if token and response.status in _REFUSED_TOKEN:
        await limiter.take(limiter.bad_token, "token", ip)
    return response


def _too_many(request: web.Request, wait: int) -> web.Response:
    headers = {"Retry-After": str(wait)}
    if request.path.startswith("/webhooks/"):
        return web.Response(status=429, text="too many requests\n", headers=headers)
    # Imported here: the pages module imports this one's request key.
    from notify.web.pages import browser_page

    response = browser_page(request, "too_many.html", status=429)
    response.headers.update(headers)
    return response
