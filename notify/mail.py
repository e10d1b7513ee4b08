"""Composing email: jinja2 templates under ``templates/emails/<kind>/`` in the reader's
language, built into a multipart/alternative message (plain text and HTML).

Templates autoescape HTML and treat an undefined variable as an error, never as blank
text in a sent mail. Header values go through ``email.message.EmailMessage``, which
refuses CR and LF, so nothing can be injected through a name or a subject.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

import jinja2

from notify import i18n
from notify.settings import Settings
from notify.store import now

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates" / "emails"


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
    )
    return env


_ENV = environment()


def _render(name: str, locale: str, context: dict[str, Any]) -> str:
    def t(key: str, **values: object) -> str:
        return i18n.translate(locale, key, **values)

    # A locale may override a whole template (body.de.html); otherwise the shared one
    # speaks the reader's language through t().
    stem, _, suffix = name.rpartition(".")
    template = _ENV.select_template([f"{stem}.{locale}.{suffix}", name])
    return template.render(**context, t=t, locale=locale)


def render(email: Email, settings: Settings) -> tuple[str, str, str]:
    """Subject, plain text and HTML of an email."""
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
