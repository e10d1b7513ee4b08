"""Inbound SMS keywords as carriers match them, and the FCC's free-text revocations."""

from __future__ import annotations

import pytest

from notify.sms.keywords import Keyword, classify, from_opt_out_type


@pytest.mark.parametrize("body", ["STOP", "stop", "  Stop \n", "STOPALL", "unsubscribe",
                                  "Cancel", "END", "quit", "REVOKE", "optout", "Stop!",
                                  "stop."])
def test_opt_out_keywords(body):
    assert classify(body) is Keyword.STOP


@pytest.mark.parametrize("body", ["START", " yes ", "Unstop"])
def test_opt_in_keywords(body):
    assert classify(body) is Keyword.START


@pytest.mark.parametrize("body", ["HELP", "info", " Help "])
def test_help_keywords(body):
    assert classify(body) is Keyword.HELP


@pytest.mark.parametrize("body", ["please stop texting me", "Unsubscribe me please",
                                  "I want to opt out", "opt-out", "Can you STOP this?",
                                  "cancel my messages"])
def test_free_text_revocations_withdraw(body):
    assert classify(body) is Keyword.STOP


@pytest.mark.parametrize("body", ["Thanks!", "stopwatch arrived", "unstoppable", "yes please",
                                  "help me find my order", "see you at the end of the month",
                                  "starting tomorrow", ""])
def test_ordinary_messages_are_no_keyword(body):
    assert classify(body) is None


def test_advanced_opt_out_types():
    assert from_opt_out_type("STOP") is Keyword.STOP
    assert from_opt_out_type("start") is Keyword.START
    assert from_opt_out_type("HELP") is Keyword.HELP
    assert from_opt_out_type(None) is None
    assert from_opt_out_type("BOGUS") is None
