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
