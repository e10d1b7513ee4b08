"""A local stand-in for Twilio's REST API, speaking its shapes, for the real ``twilio``
library to talk to over loopback: form-encoded POSTs to
``/2010-04-01/Accounts/{AccountSid}/Messages.json`` with HTTP basic auth, a JSON reply with
``sid`` and ``status``, and Twilio's error JSON (``code``, ``message``, ``more_info``,
``status``)."""

from __future__ import annotations

import asyncio
import base64
import uuid
from dataclasses import dataclass, field

from aiohttp import web

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "twilio-test-token-0123456789"


def error(status: int, code: int, message: str) -> tuple[int, dict]:
    return status, {"code": code, "message": message,
                    "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status}


@dataclass
class StandIn:
    """Records each request; ``replies`` (status, JSON) are used up one per request."""

    received: list[dict] = field(default_factory=list)
    replies: list[tuple[int, dict | str]] = field(default_factory=list)
    stall: float = 0.0  # seconds to wait before answering, to try the client's timeout

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{account}/Messages.json", self.messages)
        return app

    async def messages(self, request: web.Request) -> web.Response:
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        user, _, password = base64.b64decode(encoded or b"").decode().partition(":")
        form = dict(await request.post())
        self.received.append({"account": request.match_info["account"], "auth": (user, password),
                              "scheme": scheme, "content_type": request.content_type,
                              "form": form})
        if (scheme, user, password) != ("Basic", ACCOUNT_SID, AUTH_TOKEN):
            status, body = error(401, 20003, "Authenticate")
            return web.json_response(body, status=status)
        if self.stall:
            await asyncio.sleep(self.stall)
        if self.replies:
            status, body = self.replies.pop(0)
            if isinstance(body, str):  # a proxy's or load balancer's page, not Twilio's
                return web.Response(text=body, status=status, content_type="text/html")
            return web.json_response(body, status=status)
        sid = "SM" + uuid.uuid4().hex
        return web.json_response({
            "sid": sid, "account_sid": ACCOUNT_SID, "status": "queued", "to": form.get("To"),
            "from": form.get("From"), "body": form.get("Body"),
            "messaging_service_sid": form.get("MessagingServiceSid"), "num_segments": "1",
            "uri": f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{sid}.json",
        }, status=201)
