"""``notify users import FILE.csv``, run in-process through ``notify.cli.main`` (which calls
``asyncio.run``, so these tests are sync) against a migrated SQLite and PostgreSQL database.
"""

from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support import TABLES, environ_for, in_db

from notify.cli import main
from notify.consent import ConsentSource
from notify.models import Consent, ConsentEvent, User
from notify.settings import load_settings
from notify.store import Evidence, change_consent, get_user

EVENT_FIELDS = ("topic", "from_state", "to_state", "source", "actor", "ip", "user_agent",
                "policy_version", "note", "occurred_at")


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def rejected(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("line ")]


@pytest.fixture
def notify_import(monkeypatch, capsys, database_url, tmp_path):  # noqa: ANN001, ANN201
    """``notify_import(path, *options)`` runs ``notify users import`` on the test database."""
    for name in list(os.environ):
        if name.startswith("NOTIFY_"):
            monkeypatch.delenv(name)
    for name, value in environ_for(database_url, tmp_path / "data").items():
        monkeypatch.setenv(name, value)

    def run(path: Path, *options: str) -> Result:
        capsys.readouterr()
        code = main(["users", "import", str(path), *options])
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    return path


def states(database_url: str, user_id: str) -> dict[str, str]:
    async def read() -> dict[str, str]:
        user = await User.get(external_id=user_id)
        return {c.topic: c.state.value for c in await Consent.filter(user_id=user.id)}

    return in_db(database_url, read)


def ledger(database_url: str, user_id: str) -> list[dict]:
    async def read() -> list[dict]:
        user = await User.get(external_id=user_id)
        events = await ConsentEvent.filter(user_id=user.id).order_by("id")
        return [{name: getattr(e, name) for name in ("id", *EVENT_FIELDS)} for e in events]

    return in_db(database_url, read)


def user_ids(database_url: str) -> list[str]:
    async def read() -> list[str]:
        return [u.external_id for u in await User.all().order_by("id")]

    return in_db(database_url, read)


def counts(database_url: str) -> dict[str, int]:
    async def read() -> dict[str, int]:
        from tortoise import Tortoise

        by_table = {m._meta.db_table: m for m in Tortoise.apps["models"].values()}
        return {t: await by_table[t].all().count() for t in TABLES}

    return in_db(database_url, read)


# -- good rows --------------------------------------------------------------------------


def test_import_creates_users_and_consents_with_their_evidence(notify_import, database_url,
                                                                tmp_path):
    path = write(tmp_path / "users.csv", (
        "id,email,email_verified,phone,phone_verified,locale,time_zone,name,"
        "email_notifications,sms_notifications,newsletter,"
        "consented_at,ip,user_agent,policy_version,note,actor\n"
        "u1,Ada@EXAMPLE.com,yes,+49 151 23456789,0,de,Europe/Berlin,Ada Lovelace,"
        "subscribed,unsubscribed,subscribed,"
        "2024-03-01T09:30:00+01:00,203.0.113.7,Mozilla/5.0 (X11),0.9,signed up at the fair,"
        "crm-export\n"
        "u2,,,,,,,,SUBSCRIBED,,,,,,,,\n"
    ))
    before = datetime.now(UTC)
    result = notify_import(path)
    after = datetime.now(UTC)

    assert result.code == 0, result
    assert result.out == "2 rows: 2 imported (2 new users, 4 consent events), 0 rejected\n"
    assert result.err == ""

    async def users() -> list[User]:
        return [await get_user("u1"), await get_user("u2")]

    u1, u2 = in_db(database_url, users)
    assert (u1.email, u1.email_verified, u1.phone, u1.phone_verified) == (
        "ada@example.com", True, "+4915123456789", False)
    assert (u1.locale, u1.time_zone, u1.name) == ("de", "Europe/Berlin", "Ada Lovelace")
    assert (u2.email, u2.locale, u2.name) == (None, "en", None)

    assert states(database_url, "u1") == {"email_notifications": "subscribed",
                                          "sms_notifications": "unsubscribed",
                                          "newsletter": "subscribed"}
    consented = datetime(2024, 3, 1, 8, 30, tzinfo=UTC)
    evidence = {"source": "import", "actor": "crm-export", "ip": "203.0.113.7",
                "user_agent": "Mozilla/5.0 (X11)", "policy_version": "0.9",
                "note": "signed up at the fair", "occurred_at": consented,
                "from_state": None}
    assert [{k: e[k] for k in ("topic", "to_state", *evidence)} for e in
            ledger(database_url, "u1")] == [
        {"topic": "email_notifications", "to_state": "subscribed", **evidence},
        {"topic": "sms_notifications", "to_state": "unsubscribed", **evidence},
        {"topic": "newsletter", "to_state": "subscribed", **evidence},
    ]

    [event] = ledger(database_url, "u2")
    assert (event["topic"], event["to_state"], event["source"]) == (
        "email_notifications", "subscribed", "import")
    # No evidence columns filled: the file name is the actor, the policy the one in force.
    assert event["actor"] == "import:users.csv"
    assert event["policy_version"] == "1.0"
    assert (event["ip"], event["user_agent"], event["note"]) == (None, None, None)
    assert before <= event["occurred_at"] <= after


def test_import_reads_an_excel_style_file_with_bom_and_crlf(notify_import, database_url,
                                                             tmp_path):
    path = write(tmp_path / "export.csv",
                 "\ufeffid,name,email_notifications\r\nu1,Zoë,subscribed\r\n"
                 "u2,\"Smith, Jo\",\r\n")
    result = notify_import(path)
    assert result.code == 0, result
    assert user_ids(database_url) == ["u1", "u2"]
    assert states(database_url, "u1") == {"email_notifications": "subscribed"}
    assert states(database_url, "u2") == {}


def test_a_header_only_file_imports_nothing(notify_import, database_url, tmp_path):
    result = notify_import(write(tmp_path / "empty.csv", "id,email\n"))
    assert result.code == 0, result
    assert result.out.startswith("0 rows: 0 imported")
    assert counts(database_url)["users"] == 0


# -- rejected rows ----------------------------------------------------------------------


def test_rejected_rows_are_listed_by_physical_line_and_the_rest_land(notify_import,
                                                                     database_url, tmp_path):
    future = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    lines = [
        "id,email,email_verified,phone,email_notifications,consented_at,ip,note",  # 1
        "good1,good1@example.com,true,,subscribed,,,",  # 2
        'good2,good2@example.com,false,,subscribed,,,"a note',  # 3
        'over two lines"',  # 4
        "",  # 5: blank lines are skipped, and still counted
        "bad-email,not-an-email,,,subscribed,,,",  # 6
        "bad-phone,,,0151 2345,subscribed,,,",  # 7
        "bad-state,,,,maybe,,,",  # 8
        "bad-bool,,perhaps,,subscribed,,,",  # 9
        f"future,,,,subscribed,{future},,",  # 10
        "too-many,,,,subscribed,,,,extra",  # 11
        "too-few,,,",  # 12
        "taken,good1@example.com,,,subscribed,,,",  # 13: good1's email, refused on writing
        "bad id!,,,,subscribed,,,",  # 14
        'bad-ip,,,,subscribed,,999.1.1.1,"spans',  # 15
        'two lines"',  # 16
        "bad-date,,,,subscribed,yesterday,,",  # 17
        "good3,,,+4915123456789,unsubscribed,,,",  # 18
        "waiting,,,,pending,,,",  # 19: nothing would confirm a service topic
        "erased:abc,,,,subscribed,,,",  # 20: ids of that form are notify's own
        "caps,GOOD1@EXAMPLE.COM,,,subscribed,,,",  # 21: good1's email in other case
    ]
    path = write(tmp_path / "mixed.csv", "\n".join(lines) + "\n")
    # A small batch size: rows refused by the database show up a batch late, yet the
    # report is in line order, and a refused row does not take its batch with it.
    result = notify_import(path, "--batch-size", "3")

    assert result.code == 1
    assert result.out == "17 rows: 3 imported (3 new users, 3 consent events), 14 rejected\n"
    assert "Traceback" not in result.err
    assert result.rejected == result.err.splitlines()
    expected = {
        6: "email: not a valid email address",
        7: "phone: a phone number must be in international form",
        8: "email_notifications: must be subscribed, pending, unsubscribed or empty",
        9: "email_verified: must be true or false",
        10: "consented_at: lies in the future",
        11: "the row has more fields than the header",
        12: "the row has fewer fields than the header",
        13: "this email belongs to another user",
        14: "id: a user id is 1 to 255 letters, digits or . _ : @ + -",
        15: "ip: not an IPv4 or IPv6 address",
        17: "consented_at: must be an ISO 8601 date and time",
        19: "email_notifications: pending is only for double opt-in topics",
        20: "id: a user id is 1 to 255",
        21: "this email belongs to another user",
    }
    assert [int(line.split(":")[0].removeprefix("line ")) for line in result.rejected] == \
        sorted(expected)
    for line, (number, reason) in zip(result.rejected, sorted(expected.items()), strict=True):
        assert line.startswith(f"line {number}: {reason}"), line

    assert user_ids(database_url) == ["good1", "good2", "good3"]
    assert states(database_url, "good2") == {"email_notifications": "subscribed"}
    assert ledger(database_url, "good2")[0]["note"] == "a note\nover two lines"
    assert states(database_url, "good3") == {"email_notifications": "unsubscribed"}


def test_rows_with_bytes_that_are_not_text_are_rejected_alone(notify_import, database_url,
                                                              tmp_path):
    path = write(tmp_path / "latin1.csv",
                 b"id,name,email_notifications\n"
                 b"u1,Jos\xe9,subscribed\n"  # Latin-1, not UTF-8
                 b"u2,Nul\x00Byte,subscribed\n"  # PostgreSQL cannot store NUL in text
                 b"u3,Zo\xc3\xab,subscribed\n")
    result = notify_import(path)
    assert result.code == 1
    assert result.rejected == ["line 2: name: not UTF-8 text; save the file as UTF-8",
                               "line 3: name: contains a NUL character"]
    assert user_ids(database_url) == ["u3"]


# -- files refused as a whole -----------------------------------------------------------


@pytest.mark.parametrize(("content", "message"), [
    ("id,email,favourite_colour\nu1,a@example.com,blue\n", "unknown column 'favourite_colour'"),
    ("email,newsletter\na@example.com,subscribed\n", "must name an 'id' column"),
    ("id,email,email\nu1,a@example.com,b@example.com\n", "a column name appears twice"),
    ("", "the file is empty"),
    (b"id,n\xe4me\nu1,x\n", "line 1: not UTF-8 text"),
])
def test_a_file_with_a_bad_header_is_refused_whole(notify_import, database_url, tmp_path,
                                                   content, message):
    result = notify_import(write(tmp_path / "bad.csv", content))
    assert result.code == 1
    assert result.out == ""
    [line] = result.err.splitlines()  # one line, however long
    assert line.startswith("notify: ")
    assert message in line
    assert counts(database_url) == dict.fromkeys(TABLES, 0)


def test_unknown_column_message_lists_the_columns(notify_import, tmp_path):
    result = notify_import(write(tmp_path / "bad.csv", "id,colour\n"))
    [line] = result.err.splitlines()
    for column in ("email", "consented_at", "actor", "email_notifications", "newsletter"):
        assert column in line


def test_a_missing_file_is_one_clear_line(notify_import, database_url, tmp_path):
    result = notify_import(tmp_path / "nope.csv")
    assert result.code == 1
    assert result.err == f"notify: no such file: {tmp_path / 'nope.csv'}\n"
    assert counts(database_url)["users"] == 0


# -- re-running, and what an import may not change --------------------------------------


def test_running_the_same_import_again_changes_nothing(notify_import, database_url, tmp_path):
    path = write(tmp_path / "users.csv", (
        "id,email,name,email_notifications,sms_notifications,newsletter,consented_at\n"
        "u1,u1@example.com,Una,subscribed,unsubscribed,pending,2024-01-01T00:00:00Z\n"
        "u2,u2@example.com,,unsubscribed,subscribed,subscribed,\n"
    ))
    first = notify_import(path)
    assert first.code == 0, first
    assert first.out == "2 rows: 2 imported (2 new users, 6 consent events), 0 rejected\n"
    events = {u: ledger(database_url, u) for u in ("u1", "u2")}
    consents = {u: states(database_url, u) for u in ("u1", "u2")}

    again = notify_import(path)
    assert again.code == 0, again
    assert again.out == "2 rows: 2 imported (0 new users, 0 consent events), 0 rejected\n"
    assert {u: ledger(database_url, u) for u in ("u1", "u2")} == events
    assert {u: states(database_url, u) for u in ("u1", "u2")} == consents

    # An empty cell leaves the stored value alone.
    notify_import(write(tmp_path / "less.csv", "id,email,name\nu1,,\n"))

    async def u1() -> User:
        return await get_user("u1")

    user = in_db(database_url, u1)
    assert (user.email, user.name) == ("u1@example.com", "Una")


def test_double_opt_in_topic_is_imported_as_given_and_never_downgraded(notify_import,
                                                                       database_url, tmp_path):
    first = write(tmp_path / "first.csv",
                  "id,newsletter\nconfirmed,subscribed\nwaiting,pending\n")
    assert notify_import(first).code == 0
    # The earlier system's confirmation counts: no new double opt-in round.
    assert states(database_url, "confirmed") == {"newsletter": "subscribed"}
    assert states(database_url, "waiting") == {"newsletter": "pending"}

    second = write(tmp_path / "second.csv",
                   "id,newsletter\nconfirmed,pending\nwaiting,subscribed\n")
    result = notify_import(second)
    assert result.code == 0, result
    assert result.out == "2 rows: 2 imported (0 new users, 1 consent events), 0 rejected\n"
    assert states(database_url, "confirmed") == {"newsletter": "subscribed"}  # not downgraded
    assert [e["to_state"] for e in ledger(database_url, "confirmed")] == ["subscribed"]
    assert states(database_url, "waiting") == {"newsletter": "subscribed"}
    assert [(e["from_state"], e["to_state"]) for e in ledger(database_url, "waiting")] == [
        (None, "pending"), ("pending", "subscribed")]


def test_an_import_does_not_undo_a_later_decision_made_in_notify(notify_import, database_url,
                                                                 tmp_path):
    settings = load_settings(environ=environ_for(database_url, tmp_path / "data"))
    topic = settings.topics["email_notifications"]
    dated = write(tmp_path / "dated.csv",
                  "id,email_notifications,consented_at\nu1,subscribed,2024-01-01T00:00:00Z\n")
    undated = write(tmp_path / "undated.csv", "id,email_notifications\nu1,subscribed\n")
    assert notify_import(dated).code == 0

    async def withdraw() -> None:
        user = await get_user("u1")
        await change_consent(user, topic, False, Evidence(source=ConsentSource.ONE_CLICK),
                             default_policy="1.0")

    in_db(database_url, withdraw)
    before = ledger(database_url, "u1")
    assert [e["to_state"] for e in before] == ["subscribed", "unsubscribed"]

    # Re-running the import, with or without a date: the user's later "no" stands.
    for path in (dated, undated):
        result = notify_import(path)
        assert result.code == 0, result
        assert result.out.endswith("1 consents kept: notify recorded a newer decision\n")
        assert states(database_url, "u1") == {"email_notifications": "unsubscribed"}
        assert ledger(database_url, "u1") == before

    # Evidence newer than the withdrawal does count.
    newer = before[-1]["occurred_at"] + timedelta(milliseconds=1)
    time.sleep(0.01)  # so that it does not lie in the future
    fresh = write(tmp_path / "fresh.csv",
                  f"id,email_notifications,consented_at\nu1,subscribed,{newer.isoformat()}\n")
    result = notify_import(fresh)
    assert result.code == 0, result
    assert states(database_url, "u1") == {"email_notifications": "subscribed"}
    assert ledger(database_url, "u1")[-1]["occurred_at"] == newer
    # And an undated withdrawal always applies: when in doubt, no consent.
    result = notify_import(write(tmp_path / "out.csv", "id,email_notifications\nu1,unsubscribed\n"))
    assert result.code == 0, result
    assert states(database_url, "u1") == {"email_notifications": "unsubscribed"}


# -- size -------------------------------------------------------------------------------


def test_a_large_file_imports_completely_in_small_batches(notify_import, database_url,
                                                          tmp_path):
    rows, bad = 1000, 234
    path = tmp_path / "large.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["id", "email_notifications", "consented_at"])
        for n in range(rows):
            out.writerow([f"user{n:05d}", "maybe" if n == bad else "subscribed",
                          "2024-06-01T12:00:00Z"])
    result = notify_import(path, "--batch-size", "7")  # 1000 is not a multiple of 7
    assert result.code == 1
    good = rows - 1
    assert result.out == (f"{rows} rows: {good} imported ({good} new users, {good} consent "
                          "events), 1 rejected\n")
    # Row n is on line n + 2, the header being line 1.
    assert result.rejected == [f"line {bad + 2}: email_notifications: must be subscribed, "
                               "pending, unsubscribed or empty"]
    found = counts(database_url)
    assert (found["users"], found["consents"], found["consent_events"]) == (good, good, good)
    ids = user_ids(database_url)
    assert ids[0] == "user00000" and ids[-1] == f"user{rows - 1:05d}"
    assert f"user{bad:05d}" not in ids
