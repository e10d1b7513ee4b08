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
    message.set_content(text, cte="quoted-printable")
    message.add_alternative(html, subtype="html", cte="quoted-printable")
    return message


# -- the fast path -----------------------------------------------------------------------
#
# ``build`` above costs about 2.5 ms a message, nearly all of it in the stdlib's header
# registry and generator (parsing, then folding, every header it was just given): more
# than rendering, signing and sending together, and the largest cost of a campaign. The
# structure of every message is the same (multipart/alternative, a quoted-printable text
# and HTML part), so ``build_bytes`` writes it directly: quoted-printable by binascii (C),
# encoded words and address headers by the stdlib's own helpers, and header folding at
# the list separators. tests/test_mail.py holds it to ``build``: both parse to the same
# headers and parts, for ASCII and non-ASCII names, subjects and bodies.

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


def _quoted_printable(text: str) -> bytes:
    body = text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")
    encoded = binascii.b2a_qp(body, istext=True)
    # b2a_qp keeps the CRLFs (istext) and leaves a lone "." at a line start alone; SMTP's
    # dot-stuffing is the client's job (aiosmtplib does it).
    return encoded if encoded.endswith(b"\r\n") else encoded + b"\r\n"


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
    part = ('Content-Type: text/{}; charset="utf-8"\r\n'
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n")
    # The line break before a boundary belongs to the boundary (RFC 2046 5.1.1): one more,
    # so each part keeps its own last line break.
    return b"".join([
        "".join(head).encode("ascii"),
        f"--{boundary}\r\n".encode(), part.format("plain").encode(), _quoted_printable(text),
        f"\r\n--{boundary}\r\n".encode(), part.format("html").encode(),
        _quoted_printable(html), f"\r\n--{boundary}--\r\n".encode(),
    ])
