"""Bounces and spam complaints reported by an email provider's webhook.

For relays that report by HTTP instead of (or as well as) sending DSNs and ARF reports to
``notify inbound``. The provider's payload is translated into this small JSON body by the
integration that receives it (each provider has its own format and signature scheme); the
effect is the same as for mail: ``notify.bounces`` records it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, StrictBool

from notify import bounces
from notify.errors import InvalidRequest
from notify.models import User
from notify.web.endpoints import Call
from notify.web.schemas import Email, Strict


class BounceReportIn(Strict):
    """One bounce or spam complaint for one address."""

    type: Literal["bounce", "complaint"]
    email: Email = Field(description="the address that bounced or complained")
    permanent: StrictBool | None = Field(
        default=None, description="bounces only, and required for them: true for a hard "
        "bounce (suppresses at once), false for a soft one (adds to the bounce score)")
    detail: Annotated[str, Field(max_length=2000)] = Field(
        default="", description="the provider's words, e.g. '550 5.1.1 user unknown'")
    message_id: Annotated[str, Field(min_length=3, max_length=255)] | None = Field(
        default=None, description="the Message-ID notify gave the message, with or without "
        "angle brackets; names the delivery, which is then marked bounced")


class BounceReportOut(BaseModel):
    result: str = Field(description="suppressed, scored or ignored",
                        examples=["suppressed"])


async def post_bounce(call: Call) -> BounceReportOut:
    body: BounceReportIn = call.body
    settings = call.settings
    # Every check comes before the first write: refused input changes nothing.
    if body.type == "bounce" and body.permanent is None:
        raise InvalidRequest("a bounce needs permanent: true (hard) or false (soft)",
                             field="body.permanent")
    if body.type == "complaint" and body.permanent is not None:
        raise InvalidRequest("permanent applies to bounces only", field="body.permanent")
    delivery = None
    if body.message_id is not None:
        delivery = await bounces.delivery_for_message_id(settings, body.message_id)
        if delivery is None:
            raise InvalidRequest("not the Message-ID of a message notify sent",
                                 field="body.message_id")
        owner = await User.get_or_none(id=delivery.user_id)
        if owner is None or (owner.email or "").lower() != body.email.lower():
            # The event must be about the address that message went to; otherwise one
            # delivery's id could be used to suppress any address.
            raise InvalidRequest("this Message-ID was not sent to that email address",
                                 field="body.email")
    if body.type == "bounce":
        assert body.permanent is not None
        result = await bounces.record_bounce(settings, delivery, body.email,
                                             permanent=body.permanent, detail=body.detail)
    else:
        result = await bounces.record_complaint(settings, delivery, body.email, body.detail)
    return BounceReportOut(result=result)
