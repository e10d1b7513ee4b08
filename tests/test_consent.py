"""The pure consent rules, and a guard that keeps the core free of I/O libraries."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from notify.consent import ConsentSource, ConsentState, decide
from notify.errors import InvalidRequest
from notify.settings import Channel, Topic, TopicKind

S, P, U = ConsentState.SUBSCRIBED, ConsentState.PENDING, ConsentState.UNSUBSCRIBED
SERVICE = Topic("email_notifications", Channel.EMAIL, TopicKind.SERVICE, False, {"en": "x"})
DOUBLE = Topic("newsletter", Channel.EMAIL, TopicKind.MARKETING, True, {"en": "x"})
API, IMPORT, CONFIRM = ConsentSource.API, ConsentSource.IMPORT, ConsentSource.CONFIRMATION


@pytest.mark.parametrize(
    ("topic", "current", "subscribe", "source", "requested", "expected"),
    [
        (SERVICE, None, True, API, None, S),
        (SERVICE, U, True, API, None, S),
        (SERVICE, S, True, API, None, None),  # no change, no event
        (SERVICE, S, False, API, None, U),
        (SERVICE, None, False, API, None, U),  # a refusal is recorded too
        (SERVICE, U, False, API, None, None),
        (DOUBLE, None, True, API, None, P),
        (DOUBLE, U, True, API, None, P),
        (DOUBLE, P, True, API, None, None),
        (DOUBLE, P, True, CONFIRM, None, S),
        (DOUBLE, S, True, API, None, None),  # never downgraded to pending
        (DOUBLE, P, False, API, None, U),
        (DOUBLE, None, True, IMPORT, S, S),  # imports carry their confirmation
        (DOUBLE, None, True, IMPORT, P, P),
        (DOUBLE, S, True, IMPORT, P, None),  # not even an import downgrades
        (SERVICE, None, True, IMPORT, P, P),
        (DOUBLE, S, False, ConsentSource.ONE_CLICK, None, U),
    ],
)
def test_decide(topic, current, subscribe, source, requested, expected):
    change = decide(topic, current, subscribe, source, requested)
    assert change.from_state is current
    assert change.to_state is expected
    assert change.is_change is (expected is not None)


@pytest.mark.parametrize("current", [None, U, S])
def test_confirmation_confirms_only_a_pending_request(current):
    if current is S:
        assert decide(DOUBLE, current, True, CONFIRM).to_state is None
        return
    with pytest.raises(InvalidRequest):
        decide(DOUBLE, current, True, CONFIRM)


def test_withdrawal_always_wins_from_every_state_and_source():
    for topic in (SERVICE, DOUBLE):
        for current in (None, S, P):
            for source in ConsentSource:
                assert decide(topic, current, False, source).to_state is U


PURE = ["notify/consent.py", "notify/errors.py", "notify/settings.py", "notify/tokens.py"]
FORBIDDEN = ("tortoise", "aiohttp", "aiosmtplib", "twilio", "asyncpg", "aiosqlite", "jinja2")


@pytest.mark.parametrize("module", PURE)
def test_core_imports_no_io_library(module):
    root = Path(__file__).resolve().parent.parent
    tree = ast.parse((root / module).read_text())
    names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names]
    names += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert not [n for n in names if n.split(".")[0] in FORBIDDEN]
