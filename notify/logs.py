"""Logging that names nobody: addresses, phone numbers and link tokens are masked.

The masking sits in the one formatter every handler of ours uses, so it covers our own
messages, the libraries' (asyncpg quotes a conflicting value: ``Key (email)=(...)``,
aiosmtplib quotes the relay's reply, which often repeats the address), tracebacks, and
aiohttp's access log, whose request line carries the token of ``/u/{token}``. Masking at
each call site alone would miss all of those; the call sites that mask anyway
(``notify.sms.mask``) keep doing so, since a masked value passes through unchanged.

What an operator still sees is enough to act on: the first character of an address and
its domain (deliverability problems are per domain), a number's country prefix and last
two digits, and the route a request took.
"""

from __future__ import annotations

import logging
import re
import sys

# An address as it appears in text: in angle brackets, quotes or bare. Deliberately loose
# (anything@host.tld): a false positive costs a masked word, a miss leaks an address.
_ADDRESS = re.compile(r"([A-Za-z0-9!#$%&'*+/=?^_`{|}~-])[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]*"
                      r"@((?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,})")
# Phone numbers are kept in E.164 (``+`` and up to 15 digits); only that shape is masked,
# so ids, counts and timestamps in messages stay readable.
_PHONE = re.compile(r"\+[1-9]\d{6,14}\b")
# A signed link token (notify.tokens: ``kid.payload.mac``, base64url parts): the MAC part
# is always 43 characters (HMAC-SHA256).
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,32}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{43}\b")
# Whatever follows a token route, even if it is not a well-formed token: a mangled link
# may still be someone's almost-valid token.
_TOKEN_PATH = re.compile(r"(/(?:u|preferences|confirm)/)[^\s\"'?#]+")

MASKED_TOKEN = "[token]"


def mask_text(text: str) -> str:
    """``text`` with every address, E.164 number and link token masked."""
    if not text:
        return text
    text = _TOKEN_PATH.sub(lambda m: m.group(1) + MASKED_TOKEN, text)
    text = _TOKEN.sub(MASKED_TOKEN, text)
    text = _ADDRESS.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", text)
    return _PHONE.sub(lambda m: f"{m.group()[:3]}{'*' * (len(m.group()) - 5)}{m.group()[-2:]}",
                      text)


class MaskingFormatter(logging.Formatter):
    """Masks the message, the traceback and the stack of every record it formats.

    The time stamp and level are left alone (the phone pattern needs a ``+``, so they
    would survive anyway); the record itself is not modified, other handlers see it whole.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        masked = logging.makeLogRecord(record.__dict__)
        masked.message = mask_text(record.message)
        return super().formatMessage(masked)

    def formatException(self, ei) -> str:  # noqa: ANN001, N802
        return mask_text(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802
        return mask_text(super().formatStack(stack_info))


FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record (as logging's own
    last-resort handler does), so a caller that swaps stderr, a test runner say, never
    leaves us writing to a closed stream."""

    @property
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001
        pass


def configure(level: str | int) -> None:
    """Send every log record to stderr through the masking formatter (the CLI's setup).

    Handlers a host process installed (a test runner's capture) are left in place; ours is
    added once, however often this is called.
    """
    root = logging.getLogger()
    if not any(isinstance(handler, _StderrHandler) for handler in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(MaskingFormatter(FORMAT))
        root.addHandler(handler)
    root.setLevel(level)
