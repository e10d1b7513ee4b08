"""Composing email: jinja2 templates under ``templates/emails/<kind>/`` in the reader's
language, built into a multipart/alternative message (plain text and HTML).

Templates autoescape HTML and treat an undefined variable as an error, never as blank
text in a sent mail. Header values go through ``email.message.EmailMessage``, which
refuses CR and LF, so nothing can be injected through a name or a subject.
"""

from __future__ import annotations

import binascii
import email.header
import email.utils
import functools
import itertools
import secrets
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any, Protocol

import jinja2

from notify import i18n
from notify.settings import Settings
from notify.store import now

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates" / "emails"


class Shared(Protocol):
    """Renderings shared by several messages (``notify.render_once.Renderings``)."""

    def render(self, email: Email, settings: Settings) -> tuple[str, str, str] | None: ...


@dataclass(frozen=True, slots=True)
class Footer:
    """What every email's footer carries (CAN-SPAM, RFC 8058, privacy policy §2.5)."""

    preferences_url: str | None
    unsubscribe_url: str | None = None
    topic_label: str | None = None


@dataclass(frozen=True, slots=True)
class Email:
    to: str
    to_name: str | None
    kind: str
    locale: str
    context: dict[str, Any] = field(default_factory=dict)
    footer: Footer | None = None
    headers: dict[str, str] = field(default_factory=dict)


def environment(directory: Path = TEMPLATE_DIR) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(directory),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        # Templates are read once per process: checking their files' times on every
        # render was a stat() call per template per message.
        auto_reload=False,
    )
    return env


_ENV = environment()


def _render(name: str, locale: str, context: dict[str, Any]) -> str:
    def t(key: str, **values: object) -> str:
        return i18n.translate(locale, key, **values)

    return _template(_ENV, name, locale).render(**context, t=t, locale=locale)


@functools.lru_cache(maxsize=512)
def _template(env: jinja2.Environment, name: str, locale: str) -> jinja2.Template:
    """A locale may override a whole template (body.de.html); otherwise the shared one
    speaks the reader's language through t(). Remembered: jinja2 caches the templates it
    found but not the overrides it did not, which cost a stat() per message each."""
    stem, _, suffix = name.rpartition(".")
    return env.select_template([f"{stem}.{locale}.{suffix}", name])


def render(email: Email, settings: Settings, shared: Shared | None = None
           ) -> tuple[str, str, str]:
    """Subject, plain text and HTML of an email; from ``shared`` renderings when it has one
    for it (``notify.render_once``)."""
    if shared is not None:
        rendered = shared.render(email, settings)
        if rendered is not None:
            return rendered
    context = {**email.context, "footer": email.footer,
               "postal_address": settings.postal_address}
    subject = " ".join(_render(f"{email.kind}/subject.txt", email.locale, context).split())
    text = _render(f"{email.kind}/body.txt", email.locale, context)
    html = _render(f"{email.kind}/body.html", email.locale, context)
    return subject, text, html


def build(email: Email, settings: Settings) -> EmailMessage:
    subject, text, html = render(email, settings)
    message = EmailMessage()
    headers = {
        "From": settings.mail_from,
        "To": Address(display_name=email.to_name or "", addr_spec=email.to),
        "Subject": subject,
        "Date": format_datetime(now()),
        "Message-ID": make_msgid(domain=settings.mail_domain),
        **({"Reply-To": settings.reply_to} if settings.reply_to else {}),
        **email.headers,  # the delivery's own: a stable Message-ID, List-Unsubscribe, ...
    }
    for name, value in headers.items():
        message[name] = value
    message.set_content(text, cte=_part_body(text)[0])
    message.add_alternative(html, subtype="html", cte=_part_body(html)[0])
    return message


# -- the fast path -----------------------------------------------------------------------
#
# ``build`` above costs about 2.5 ms a message, nearly all of it in the stdlib's header
# registry and generator (parsing, then folding, every header it was just given): more
# than rendering, signing and sending together, and the largest cost of a campaign. The
# structure of every message is the same (multipart/alternative, a text and an HTML part,
# each 7bit or quoted-printable), so ``build_bytes`` writes it directly: quoted-printable
# by binascii (C), encoded words and address headers by the stdlib's own helpers, and
# header folding at the list separators. tests/test_mail.py holds it to ``build``: both
# parse to the same headers and parts, for ASCII and non-ASCII names, subjects and bodies.

_FOLD_AT = 78


def _header_line(name: str, value: str) -> str:
    """``Name: value`` folded to 78 columns where it can be: after the commas of a list
    (addresses, List-Unsubscribe), else at spaces. CR and LF are refused, as EmailMessage
    does, so nothing can be injected through a value."""
    if "\r" in value or "\n" in value:
        raise ValueError(f"header {name} contains a line break")
    line = f"{name}: {value}"
    if len(line) <= _FOLD_AT:
        return line + "\r\n"
    items, joiner = (value.split(", "), ",") if ", " in value else (value.split(" "), "")
    lines, current = [], f"{name}: {items[0]}"
    for item in items[1:]:
        candidate = f"{current}{joiner} {item}"
        if len(candidate) <= _FOLD_AT:
            current = candidate
        else:
            lines.append(current + joiner)
            current = f" {item}"
    lines.append(current)
    return "\r\n".join(lines) + "\r\n"


def _text_header(name: str, value: str) -> str:
    """An unstructured header (Subject): RFC 2047 encoded words when not ASCII."""
    if value.isascii():
        return _header_line(name, value)
    if "\r" in value or "\n" in value:
        raise ValueError(f"header {name} contains a line break")
    encoded = email.header.Header(value, "utf-8", header_name=name).encode(linesep="\r\n")
    return f"{name}: {encoded}\r\n"


#: RFC 5322's limit of a line, without its CRLF.
_MAX_LINE = 998


def _part_body(text: str) -> tuple[str, bytes]:
    """A text part's Content-Transfer-Encoding and its body, CRLF line ends.

    ASCII text with lines of at most 998 characters and no lone CR or NUL goes as it is
    (7bit, RFC 2045 2.7): most campaigns' parts are, and quoted-printable encoding them was
    nearly all of a message's MIME cost (binascii.b2a_qp, ~10 µs a kilobyte). Anything
    else is quoted-printable.
    """
    body = text.replace("\r\n", "\n").replace("\n", "\r\n")
    if (body.isascii() and "\0" not in body and body.count("\r") == body.count("\r\n")
            and max(map(len, body.split("\r\n"))) <= _MAX_LINE
            and _BOUNDARY_PREFIX not in body):  # quoted-printable writes "=" as "=3D"
        return "7bit", (body if body.endswith("\r\n") else body + "\r\n").encode("ascii")
    encoded = binascii.b2a_qp(body.encode("utf-8"), istext=True)
    # b2a_qp keeps the CRLFs (istext) and leaves a lone "." at a line start alone; SMTP's
    # dot-stuffing is the client's job (aiosmtplib does it).
    return "quoted-printable", encoded if encoded.endswith(b"\r\n") else encoded + b"\r\n"


#: Multipart boundaries: unique within a message is what RFC 2046 asks, and "=_" can
#: appear in no quoted-printable text. A random prefix per process and a counter, rather
#: than fresh random bytes (a system call) per message.
_BOUNDARY_PREFIX = "=_" + secrets.token_hex(8) + "."
_boundaries = itertools.count()


def _boundary() -> str:
    return f"{_BOUNDARY_PREFIX}{next(_boundaries):x}"


_date_cache: list = [None, ""]


def _date_line() -> str:
    """The Date header line, formatted once a second (email.utils takes ~10 µs)."""
    moment = now()
    second = int(moment.timestamp())
    if _date_cache[0] != second:
        _date_cache[:] = [second, _header_line("Date", format_datetime(moment))]
    return _date_cache[1]


def build_bytes(email_: Email, settings: Settings, shared: Shared | None = None) -> bytes:
    """The message ``build`` makes, as bytes, at a tenth of the cost (see above)."""
    if not all(value.isascii() for value in email_.headers.values()):
        # A configured label with non-ASCII letters in List-Id, say: rare, so the
        # stdlib's full header machinery takes it.
        return build(email_, settings).as_bytes()
    subject, text, html = render(email_, settings, shared)
    boundary = _boundary()
    recipient = email.utils.formataddr((email_.to_name or "", email_.to), charset="utf-8")
    head = [
        _header_line("From", settings.mail_from),
        _header_line("To", recipient),
        _text_header("Subject", subject),
        _date_line(),
    ]
    # Message-ID first, as ``build`` writes it; made only when the delivery brings none.
    headers = {"Message-ID": email_.headers.get("Message-ID")
               or make_msgid(domain=settings.mail_domain),
               **({"Reply-To": settings.reply_to} if settings.reply_to else {}),
               **email_.headers}
    head += [_header_line(name, value) for name, value in headers.items()]
    head += ["MIME-Version: 1.0\r\n",
             f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n', "\r\n"]
    text_encoding, text_body = _part_body(text)
    html_encoding, html_body = _part_body(html)
    part = 'Content-Type: text/{}; charset="utf-8"\r\nContent-Transfer-Encoding: {}\r\n\r\n'
    # The line break before a boundary belongs to the boundary (RFC 2046 5.1.1): one more,
    # so each part keeps its own last line break.
    return b"".join([
        "".join(head).encode("ascii"),
        f"--{boundary}\r\n".encode(), part.format("plain", text_encoding).encode(), text_body,
        f"\r\n--{boundary}\r\n".encode(), part.format("html", html_encoding).encode(),
        html_body, f"\r\n--{boundary}--\r\n".encode(),
    ])
