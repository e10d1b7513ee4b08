"""Liveness and readiness."""

from __future__ import annotations

import logging

from aiohttp import web

from notify.web.endpoints import DB, Call
from notify.web.schemas import Health

log = logging.getLogger(__name__)


async def healthz(call: Call) -> Health:
    return Health(status="ok")


async def readyz(call: Call) -> web.StreamResponse | Health:
    try:
        await call.request.app[DB].db().execute_query("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
        log.warning("readiness check failed: %s", exc)
        return web.json_response({"status": "unavailable"}, status=503,
                                 headers={"Retry-After": "5"})
    return Health(status="ok")


async def metrics(call: Call) -> web.Response:
    """Prometheus text format; any API key may scrape (it holds counts, no personal data)."""
    # The classic text format: every Prometheus version reads it.
    from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

    from notify.metrics import exposition

    response = web.Response(body=await exposition())
    response.headers["Content-Type"] = CONTENT_TYPE_PLAIN_0_0_4
    return response
