"""Composing SMS: templates under ``templates/sms/``, fixed texts, and the length rule.

A template is ``<kind>.txt.j2``, with an optional ``<kind>.<locale>.txt.j2`` that wins for
that language (like the emails). Fixed texts (the opt-out line, keyword replies) are in
``templates/sms/texts.toml``. Undefined variables are errors, never blank text.

Every variable an SMS kind uses is declared here with its longest allowed value, counted
in UTF-16 code units. ``check_context`` refuses longer values when a message is queued,
and ``worst_case`` renders each template with every variable at that length to prove, at
preview time, that no allowed value can push a message past ``sms_max_segments``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from notify.errors import InvalidRequest
from notify.sms import segments

TEMPLATE_DIR = Path(__file__).resolve().parent.parent.parent / "templates" / "sms"
DEFAULT_LOCALE = "en"


@dataclass(frozen=True, slots=True)
class Variable:
    max_units: int  # longest value, in UTF-16 code units
    free_text: bool = True  # False: ASCII by nature (a URL, a date): it cannot force UCS-2


@dataclass(frozen=True, slots=True)
class Kind:
    variables: dict[str, Variable]
    #: Whether this kind may go out under a marketing topic, and so carry the opt-out line.
    #: A policy notice has no topic at all.
    may_be_marketing: bool = True


KINDS: dict[str, Kind] = {
    "notification": Kind({"body": Variable(90)}),
    "newsletter": Kind({"body": Variable(90)}),
    "policy_change": Kind({"effective_date": Variable(10, free_text=False),
                           "policy_title": Variable(30),
                           "policy_url": Variable(50, free_text=False)},
                          may_be_marketing=False),
}

#: Sample values for ``notify preview KIND --channel sms``.
SAMPLES: dict[str, dict[str, str]] = {
    "notification": {"body": "Your export is ready to download."},
    "newsletter": {"body": "New this month: dark mode and faster search."},
    "policy_change": {"effective_date": "2027-01-01", "policy_title": "Privacy policy 2027",
                      "policy_url": "https://example.com/privacy"},
}

_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
    autoescape=False,  # plain text: an SMS has no markup to escape
    undefined=jinja2.StrictUndefined,
)


class TooLong(Exception):
    """A rendered SMS takes more segments than ``sms_max_segments`` allows."""

    def __init__(self, count: segments.Count, limit: int) -> None:
        super().__init__(f"the SMS takes {count.segments} segments ({count.units} "
                         f"{count.encoding} units), more than the {limit} allowed")
        self.count = count


@cache
def phrases() -> dict[str, dict[str, str]]:
    return tomllib.loads((TEMPLATE_DIR / "texts.toml").read_text(encoding="utf-8"))


def phrase(locale: str, key: str, **values: object) -> str:
    table = phrases().get(locale) or phrases()[DEFAULT_LOCALE]
    text = table.get(key) or phrases()[DEFAULT_LOCALE][key]
    return text.format(**values) if values else text


def check_context(kind: str, context: dict[str, Any]) -> None:
    """Refuse, when queuing, a kind without an SMS template or a value that is too long."""
    spec = KINDS.get(kind)
    if spec is None:
        raise InvalidRequest(f"no SMS template for kind {kind!r}; SMS kinds are: "
                             f"{', '.join(KINDS)}", field="kind")
    for name, variable in spec.variables.items():
        if name not in context:
            raise InvalidRequest(f"the SMS kind {kind!r} needs the variable {name!r}",
                                 field=f"context.{name}")
        if _utf16_units(str(context[name])) > variable.max_units:
            raise InvalidRequest(f"{name!r} is longer than the {variable.max_units} characters "
                                 f"an SMS {kind!r} allows", field=f"context.{name}")


def render(kind: str, locale: str, context: dict[str, Any], *, marketing: bool) -> str:
    """The text of one SMS. Marketing texts always end with the opt-out instruction,
    appended here rather than in the templates so that no template can forget it (TCPA,
    CTIA Messaging Principles)."""
    template = _ENV.select_template([f"{kind}.{locale}.txt.j2", f"{kind}.txt.j2"])
    text = template.render(**context).strip()
    if marketing:
        text = f"{text}\n{phrase(locale, 'opt_out')}"
    return text


def check_length(text: str, limit: int) -> segments.Count:
    counted = segments.count(text)
    if counted.segments > limit:
        raise TooLong(counted, limit)
    return counted


def worst_case(kind: str, locale: str) -> segments.Count:
    """The most segments any allowed values can make this kind take, in this locale.

    Rendered twice with every variable at its longest allowed value: once with a
    character outside GSM-7 in the free-text variables, which turns the message UCS-2
    where every UTF-16 unit counts one; once with GSM-7 extension characters (two septets
    each) everywhere. No mix of allowed values takes more segments than the larger of the
    two, and the opt-out line is appended whenever the kind may be marketing.
    """
    spec = KINDS[kind]
    counts = []
    for free, ascii_ in (("Ж", "x"), ("€", "~")):
        context = {name: (free if variable.free_text else ascii_) * variable.max_units
                   for name, variable in spec.variables.items()}
        text = render(kind, locale, context, marketing=spec.may_be_marketing)
        counts.append(segments.count(text))
    return max(counts, key=lambda c: (c.segments, c.units))


def _utf16_units(text: str) -> int:
    return sum(2 if ord(char) > 0xFFFF else 1 for char in text)
