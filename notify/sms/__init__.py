"""SMS (issue #5): the courier that sends queued SMS deliveries, and its pure parts:
segment counting, keywords, quiet hours and the texts. Twilio itself is only spoken to
by ``notify.channels.sms_twilio`` and ``notify.web.twilio_hooks``."""

from __future__ import annotations

import re

_NUMBER = re.compile(r"\+?\d[\d ()-]{5,18}\d")


def mask(phone: str | None) -> str:
    """A phone number for logs: the country prefix and the last two digits only."""
    if not phone:
        return "-"
    return f"{phone[:3]}{'*' * max(len(phone) - 5, 0)}{phone[-2:]}"


def redact(text: str) -> str:
    """Mask every phone-number-like run in a provider's message before it is logged."""
    return _NUMBER.sub(lambda m: mask(re.sub(r"[^\d+]", "", m.group())), text)
