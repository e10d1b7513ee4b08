"""Twilio's webhooks: inbound SMS (keywords) and message status callbacks.

Plain aiohttp routes, not API endpoints: Twilio posts form-encoded bodies, needs no API
key, and proves itself with ``X-Twilio-Signature``, an HMAC of the URL it called and the
posted fields under our auth token. The URL checked is the public one (``public_url`` +
path + query), never the one aiohttp sees behind a proxy. A missing or wrong signature is
answered 403 before anything is looked up, so a forged request learns and changes
nothing. Malformed bodies are a 4xx problem; a well-formed message that concerns nobody
gets the empty TwiML reply Twilio expects.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import parse_qsl

from aiohttp import web
from multidict import MultiDict
from twilio.request_validator import RequestValidator
from twilio.twiml.messaging_response import MessagingResponse

from notify import i18n, postman
from notify.models import Delivery, DeliveryStatus, User
from notify.settings import Settings
from notify.sms import actions, mask, texts
from notify.sms.keywords import Keyword, classify, from_opt_out_type
from notify.web.endpoints import SETTINGS
from notify.web.problems import BadRequest, Forbidden, UnsupportedMediaType

log = logging.getLogger(__name__)

FORM = "application/x-www-form-urlencoded"
_E164 = re.compile(r"\+[1-9]\d{1,14}")
_SID = re.compile(r"[A-Za-z0-9]{2,64}")

#: Twilio's MessageStatus values that move a delivery, and where to. "queued" and "sent"
#: only confirm what the courier recorded when Twilio accepted the message.
STATUSES = {
    "queued": DeliveryStatus.SENT,
    "sent": DeliveryStatus.SENT,
    "delivered": DeliveryStatus.DELIVERED,
    "undelivered": DeliveryStatus.UNDELIVERED,
    "failed": DeliveryStatus.FAILED,
}
#: The order a delivery moves in; a callback never moves one backwards or between finals.
RANK = {DeliveryStatus.SENT: 1, DeliveryStatus.DELIVERED: 2, DeliveryStatus.UNDELIVERED: 2,
        DeliveryStatus.FAILED: 2}


async def signed_form(request: web.Request) -> MultiDict[str]:
    """The posted fields, once the signature over them and the public URL is valid."""
    settings: Settings = request.app[SETTINGS]
    if request.content_type != FORM:
        raise UnsupportedMediaType(f"Twilio webhooks are posted as {FORM}")
    raw = await request.read()  # aiohttp answers 413 past max_body_bytes
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, errors="strict",
                          max_num_fields=100)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("the body is not UTF-8 form data with at most 100 fields") from None
    form = MultiDict(pairs)
    repeated = sorted({name for name in form if len(form.getall(name)) > 1})
    if repeated:
        # Twilio never repeats a field, and its signature does not bind the order of a
        # repeated field's values (it hashes them sorted): with Body twice, a signed "HELP,
        # STOP" would verify as "STOP, HELP" too, and we read the first.
        raise BadRequest(f"the field {repeated[0]} is given more than once")
    signature = request.headers.get("X-Twilio-Signature", "")
    url = settings.public_url + request.raw_path
    if not (settings.twilio_auth_token and signature
            and RequestValidator(settings.twilio_auth_token).validate(url, form, signature)):
        log.warning("refused a Twilio webhook with a missing or wrong signature for %s",
                    request.path)
        raise Forbidden("missing or wrong X-Twilio-Signature")
    return form


def _field(form: MultiDict[str], name: str, pattern: re.Pattern[str]) -> str:
    value = form.get(name, "").strip()
    if not pattern.fullmatch(value):
        raise BadRequest(f"the field {name} is missing or malformed")
    return value


def twiml(reply: str | None = None) -> web.Response:
    response = MessagingResponse()
    if reply:
        response.message(reply)
    return web.Response(text=str(response), content_type="text/xml")


async def inbound_sms(request: web.Request) -> web.Response:
    """An SMS to our number: STOP-like words withdraw, START-like resubscribe, HELP helps.

    With Twilio's Advanced Opt-Out on, Twilio has already answered the keyword and says
    which in ``OptOutType``: we act on it and stay silent, so nobody is answered twice.
    """
    settings: Settings = request.app[SETTINGS]
    form = await signed_form(request)
    sid = _field(form, "MessageSid", _SID)
    body = form.get("Body")
    if body is None:
        raise BadRequest("the field Body is missing")
    sender = form.get("From", "").strip()
    advanced = from_opt_out_type(form.get("OptOutType"))
    keyword = advanced or classify(body)
    user = None
    if _E164.fullmatch(sender):
        user = await User.filter(phone=sender, erased_at__isnull=True).first()
    if user is None or keyword is None:
        return twiml()  # nobody we know, or nothing to act on
    note = f"inbound SMS {sid}" + (f" (Twilio OptOutType {keyword.name})" if advanced else "")
    locale = i18n.choose(user.locale)
    reply = None
    if keyword is Keyword.STOP:
        # At most one confirmation per opt-out: none if nothing was subscribed any more.
        if await actions.withdraw(settings, user, note):
            reply = texts.phrase(locale, "stop_confirmation")
    elif keyword is Keyword.START:
        if await actions.resubscribe(settings, user, note):
            reply = texts.phrase(locale, "start_confirmation")
    else:
        reply = texts.phrase(locale, "help", contact=settings.reply_to or settings.mail_from)
    log.info("inbound SMS %s from %s: %s", sid, mask(sender), keyword)
    return twiml(None if advanced else reply)


async def status_callback(request: web.Request) -> web.Response:
    """Twilio reports what became of a message we sent (found by its SID)."""
    settings: Settings = request.app[SETTINGS]
    form = await signed_form(request)
    sid = _field(form, "MessageSid", _SID)
    reported = form.get("MessageStatus", "").strip().lower()
    if not reported:
        raise BadRequest("the field MessageStatus is missing")
    code_text = form.get("ErrorCode", "").strip()
    if code_text and not code_text.isdigit():
        raise BadRequest("the field ErrorCode must be a number")
    code = int(code_text) if code_text else None
    target = STATUSES.get(reported)
    delivery = await postman.sms_by_reference(sid)
    if target is None or delivery is None:
        return web.Response(status=204)  # a status we do not track, or not our message
    earlier = [status for status, rank in RANK.items() if rank < RANK[target]]
    values = {"last_error": f"Twilio error {code} ({reported})"} if code else {}
    moved = await Delivery.filter(id=delivery.id, status__in=earlier).update(
        status=target, **values)
    if moved and code is not None:
        to = form.get("To", "").strip()
        user = await User.get_or_none(id=delivery.user_id)
        owner = user if user is not None and user.phone == to else None
        await actions.apply_error_code(settings, owner, to if _E164.fullmatch(to) else None,
                                       code, f"status callback {sid}")
    return web.Response(status=204)


ROUTES = (
    ("POST", "/webhooks/twilio/sms", inbound_sms),
    ("POST", "/webhooks/twilio/status", status_callback),
)
