"""What an inbound SMS asks for: opt-out, opt-in or help. Pure, no I/O.

Carriers and Twilio match keywords on the whole message, trimmed and in any case (CTIA
Messaging Principles; Twilio's default opt-out keywords). Since April 2025 the FCC's rule
(47 CFR 64.1200(a)(10)) also counts a revocation "by any reasonable means", so a free-text
reply such as "please stop texting me" withdraws consent as well. That match is kept
conservative: opt-out words as whole words only ("stopwatch" and "unstoppable" do not
count), and never for opt-in or help, which change or cost something only on an exact
keyword. "End" is left out of the free-text list: "the end of the month" is an ordinary
sentence, while "END" alone is still an exact keyword.
"""

from __future__ import annotations

import re
from enum import StrEnum


class Keyword(StrEnum):
    STOP = "stop"  # withdraw SMS consent
    START = "start"  # subscribe again (and lift a carrier opt-out)
    HELP = "help"  # answer who we are and how to leave


STOP_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE",
                        "OPTOUT"})
START_WORDS = frozenset({"START", "UNSTOP", "YES"})
HELP_WORDS = frozenset({"HELP", "INFO"})

#: Whole-word opt-out phrases in free text (see the module's docstring for why not "end").
_FREE_TEXT_STOP = re.compile(
    r"\b(stop|stopall|unsubscribe|cancel|quit|revoke|optout|opt[\s-]+out)\b", re.IGNORECASE)

#: Twilio's Advanced Opt-Out reports what it matched in ``OptOutType``.
OPT_OUT_TYPES = {"STOP": Keyword.STOP, "START": Keyword.START, "HELP": Keyword.HELP}


def classify(body: str) -> Keyword | None:
    """The keyword an inbound message amounts to, or None for an ordinary message."""
    word = body.strip().upper()
    # Carriers also ignore a trailing full stop or exclamation mark ("Stop!").
    word = word.rstrip(".!").strip()
    if word in STOP_WORDS:
        return Keyword.STOP
    if word in START_WORDS:
        return Keyword.START
    if word in HELP_WORDS:
        return Keyword.HELP
    if _FREE_TEXT_STOP.search(body):
        return Keyword.STOP
    return None


def from_opt_out_type(value: str | None) -> Keyword | None:
    """Twilio's ``OptOutType`` (Advanced Opt-Out) as a keyword; None when absent/unknown."""
    return OPT_OUT_TYPES.get((value or "").strip().upper())
