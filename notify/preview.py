"""``notify preview KIND``: render an email kind with sample data, to check the templates.

A template error (a typo, an undefined variable) names the template file and line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jinja2

from notify import i18n, mail
from notify.settings import Settings

SAMPLES = {
    "confirmation": {"name": "Ada", "topic_label": "Newsletter", "days": 7,
                     "confirm_url": "https://notify.example.com/confirm/SAMPLE"},
    "preferences_link": {},
    "policy_change": {"name": "Ada", "policy_title": "Privacy policy 2027",
                      "effective_date": "2027-01-01",
                      "summary": "We now keep support tickets for two years instead of one.",
                      "policy_url": "https://example.com/privacy"},
    "newsletter": {"name": "Ada", "subject": "What is new in November",
                   "body": "A sample paragraph.\n\nAnd a second one."},
    "notification": {"name": "Ada", "subject": "Your export is ready",
                     "body": "The data export you asked for is ready to download."},
}
KINDS = tuple(SAMPLES)


def render_sample(kind: str, locale: str, settings: Settings) -> tuple[str, str, str]:
    footer = mail.Footer(preferences_url="https://notify.example.com/preferences/SAMPLE",
                         unsubscribe_url="https://notify.example.com/u/SAMPLE",
                         topic_label="Newsletter")
    email = mail.Email(to="ada@example.com", to_name="Ada", kind=kind, locale=locale,
                       context=dict(SAMPLES[kind]), footer=footer)
    return mail.render(email, settings)


def cmd_preview(args: argparse.Namespace, settings: Settings) -> int:
    from notify.cli import CliError

    if getattr(args, "channel", "email") == "sms":
        return cmd_preview_sms(args, settings)
    if args.kind not in SAMPLES:
        raise CliError(f"unknown kind {args.kind!r}; kinds are: {', '.join(KINDS)}")
    locale = i18n.supported(args.locale)
    if locale is None:
        raise CliError(f"no texts for locale {args.locale!r}; locales are: "
                       f"{', '.join(sorted(i18n.catalogs()))}")
    try:
        subject, text, html = render_sample(args.kind, locale, settings)
    except jinja2.TemplateSyntaxError as exc:
        raise CliError(f"{_where(exc.filename or exc.name)}:{exc.lineno}: {exc.message}") from None
    except jinja2.TemplateError as exc:
        raise CliError(f"{_template_location(exc)}{exc}") from None
    if args.out:
        try:
            Path(args.out).write_text(html, encoding="utf-8")
        except OSError as exc:
            raise CliError(f"cannot write {args.out}: {exc.strerror}") from None
        print(f"{subject}\nwrote {args.out}")
    else:
        sys.stdout.write(f"Subject: {subject}\n\n{text}")
    return 0


def cmd_preview_sms(args: argparse.Namespace, settings: Settings) -> int:
    """Print an SMS kind with sample values, and refuse a template that could be too long.

    "Could be" is decided by ``notify.sms.texts.worst_case``: the template rendered with
    every variable at its longest allowed value, both in UCS-2 and with GSM-7's two-septet
    characters, plus the opt-out line when the kind may be marketing.
    """
    from notify.cli import CliError
    from notify.sms import segments, texts

    if args.kind not in texts.KINDS:
        raise CliError(f"no SMS template for kind {args.kind!r}; SMS kinds are: "
                       f"{', '.join(texts.KINDS)}")
    locale = i18n.supported(args.locale)
    if locale is None:
        raise CliError(f"no texts for locale {args.locale!r}; locales are: "
                       f"{', '.join(sorted(i18n.catalogs()))}")
    spec = texts.KINDS[args.kind]
    try:
        text = texts.render(args.kind, locale, dict(texts.SAMPLES[args.kind]),
                            marketing=spec.may_be_marketing)
        worst = texts.worst_case(args.kind, locale)
    except jinja2.TemplateSyntaxError as exc:
        raise CliError(f"{_where(exc.filename or exc.name)}:{exc.lineno}: {exc.message}") from None
    except jinja2.TemplateError as exc:
        raise CliError(f"{_template_location(exc)}{exc}") from None
    limit = settings.sms_max_segments
    if worst.segments > limit:
        raise CliError(f"the SMS template {args.kind!r} ({locale}) can take {worst.segments} "
                       f"segments ({worst.units} {worst.encoding} units) with its longest "
                       f"allowed values, more than NOTIFY_SMS_MAX_SEGMENTS={limit}")
    sample = segments.count(text)
    sys.stdout.write(f"{text}\n\n-- {sample.segments} segment(s), {sample.units} "
                     f"{sample.encoding} units; at most {worst.segments} of {limit} allowed\n")
    return 0


def _where(name: str | None) -> str:
    return str(Path(name)) if name else "template"


def _template_location(exc: BaseException) -> str:
    """``file:line: `` of the innermost template frame of a render error."""
    tb = exc.__traceback__
    found = ""
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.endswith((".html", ".txt", ".j2")):
            found = f"{filename}:{tb.tb_lineno}: "
        tb = tb.tb_next
    return found
