"""The ``notify`` command: migrate, configuration errors, --help, consents show, and serve and
worker as real processes. Database tests run on SQLite and PostgreSQL.

Commands that must behave as a real program (exit codes, what lands on stderr, signals) run
as a subprocess of ``python -m notify.cli`` with a clean environment; the rest call
``notify.cli.main`` in-process, which is faster (it calls ``asyncio.run``: sync tests only).
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from support import HASH_KEY, PG_ADMIN, TABLES, environ_for, free_port, in_db
from test_migrations import MIGRATIONS

from notify.cli import main
from notify.consent import ConsentSource
from notify.models import ConsentEvent
from notify.settings import load_settings
from notify.store import Evidence, change_consent, get_user, save_user

CLI = [sys.executable, "-m", "notify.cli"]
DEADLINE = 20.0


@dataclass
class Result:
    code: int
    out: str
    err: str


def clean_env(**extra: str) -> dict[str, str]:
    """Only PATH and HOME from the test's environment: no stray NOTIFY_* setting leaks in."""
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    return {**env, **extra}


def run(args: list[str], env: dict[str, str], cwd: Path | None = None) -> Result:
    done = subprocess.run([*CLI, *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=False)
    return Result(done.returncode, done.stdout, done.stderr)


def assert_one_line_error(result: Result, code: int, *words: str) -> str:
    assert result.code == code, result
    assert "Traceback" not in result.err, result.err
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("notify: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def schema(database_url: str) -> list[tuple]:
    """Everything that describes the schema, as comparable rows."""
    if database_url.startswith("sqlite://"):
        with sqlite3.connect(database_url[len("sqlite://"):]) as conn:
            rows = conn.execute(
                "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
            ).fetchall()
        conn.close()
        return rows

    async def read() -> list[tuple]:
        conn = await asyncpg.connect(database_url, timeout=5)
        try:
            columns = await conn.fetch(
                "SELECT table_name, column_name, ordinal_position, data_type, is_nullable, "
                "column_default, character_maximum_length FROM information_schema.columns "
                "WHERE table_schema = 'public' ORDER BY table_name, ordinal_position")
            indexes = await conn.fetch(
                "SELECT tablename, indexname, indexdef FROM pg_indexes "
                "WHERE schemaname = 'public' ORDER BY tablename, indexname")
        finally:
            await conn.close()
        return [tuple(r) for r in columns] + [tuple(r) for r in indexes]

    return asyncio.run(read())


def applied_migrations(database_url: str) -> list[tuple]:
    sql = "SELECT * FROM tortoise_migrations ORDER BY id"
    if database_url.startswith("sqlite://"):
        with sqlite3.connect(database_url[len("sqlite://"):]) as conn:
            rows = conn.execute(sql).fetchall()
        conn.close()
        return rows

    async def read() -> list[tuple]:
        conn = await asyncpg.connect(database_url, timeout=5)
        try:
            return [tuple(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()

    return asyncio.run(read())


def table_names(database_url: str, rows: list[tuple]) -> set[str]:
    if database_url.startswith("sqlite://"):
        return {name for kind, name, *_ in rows if kind == "table"}
    return {row[0] for row in rows}


# -- notify migrate ---------------------------------------------------------------------


def test_migrate_builds_the_schema_then_changes_nothing(empty_database, tmp_path):
    env = clean_env(**environ_for(empty_database, tmp_path / "data"))
    assert schema(empty_database) == []

    first = run(["migrate"], env)
    assert first.code == 0, first
    assert first.out == f"applied: {', '.join(MIGRATIONS)}\n"
    assert "Traceback" not in first.err
    built = schema(empty_database)
    assert {*TABLES, "tortoise_migrations"} <= table_names(empty_database, built)
    records = applied_migrations(empty_database)
    assert len(records) == len(MIGRATIONS)

    second = run(["migrate"], env)
    assert second.code == 0, second
    assert second.out == "the schema is up to date\n"
    assert schema(empty_database) == built
    assert applied_migrations(empty_database) == records  # not applied again


def test_migrate_with_an_unreachable_database_is_one_line(tmp_path):
    refused = f"postgres://postgres@127.0.0.1:{free_port()}/nothing"
    result = run(["migrate"], clean_env(**environ_for(refused, tmp_path / "data")))
    assert_one_line_error(result, 1, "cannot open the database")


def test_migrate_into_a_missing_sqlite_directory_fails_instead_of_hanging(tmp_path):
    # tortoise leaks its connection lock when SQLite cannot open the file; this used to hang
    # for ever (the subprocess timeout would fail the test).
    url = f"sqlite://{tmp_path / 'no-such-dir' / 'notify.sqlite3'}"
    result = run(["migrate"], clean_env(**environ_for(url, tmp_path / "data")))
    assert_one_line_error(result, 1, "no-such-dir", "does not exist")
    assert not (tmp_path / "no-such-dir").exists()


# -- configuration errors ---------------------------------------------------------------


@pytest.mark.parametrize(("name", "value"), [
    ("NOTIFY_SMTP_PORT", "abc"),
    ("NOTIFY_EMAIL_TRANSPORT", "pigeon"),
    ("NOTIFY_DATABASE_URL", "mysql://x"),
    ("NOTIFY_PUBLIC_URL", "ftp://example.com/a-long-path-that-would-not-fit-into-80-columns"),
])
def test_configuration_error_is_one_line_naming_the_key(tmp_path, name, value):
    env = clean_env(**environ_for("sqlite://unused.sqlite3", tmp_path / "data"))
    env[name] = value
    result = run(["migrate"], env, cwd=tmp_path)
    assert_one_line_error(result, 2, "configuration error", name)
    assert result.out == ""
    assert not (tmp_path / "data").exists()  # stopped before touching anything


def test_missing_config_file_is_a_configuration_error(tmp_path):
    result = run(["--config", str(tmp_path / "nope.toml"), "migrate"], clean_env(),
                 cwd=tmp_path)
    assert_one_line_error(result, 2, "NOTIFY_CONFIG", "does not exist")


# -- --help and usage -------------------------------------------------------------------


def test_help_of_the_program():
    result = run(["--help"], clean_env())
    assert result.code == 0, result
    text = " ".join(result.out.split())
    assert text.startswith("usage: notify")
    assert "Consent-aware notification service" in text
    for command in ("serve", "worker", "migrate", "users", "consents"):
        assert command in text
    assert result.err == ""


@pytest.mark.parametrize(("argv", "says"), [
    (["serve"], ["serve the HTTP API", "--port", "--host", "--no-sender"]),
    (["worker"], ["Run the sender without the web service"]),
    (["migrate"], ["Create or upgrade the schema", "Running it again changes nothing"]),
    (["users"], ["import"]),
    (["users", "import"], ["users and their consents from a CSV file", "--batch-size",
                           "consented_at", "line numbers", "FILE.csv"]),
    (["consents"], ["show"]),
    (["consents", "show"], ["consent per topic", "ledger events", "--events", "USER"]),
])
def test_help_of_each_command(capsys, argv, says):
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    text = " ".join(out.split())
    assert text.startswith(f"usage: notify {' '.join(argv)}")
    for words in says:
        assert words in text


@pytest.mark.parametrize("argv", [
    [],
    ["launch"],
    ["users"],
    ["users", "import"],
    ["users", "import", "x.csv", "--batch-size", "0"],
    ["consents", "show", "u1", "--events", "-1"],
    ["serve", "--port", "70000"],
])
def test_usage_errors_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert "usage: notify" in capsys.readouterr().err


# -- notify consents show ---------------------------------------------------------------


@pytest.fixture
def cli(monkeypatch, capsys, tmp_path):  # noqa: ANN001, ANN201
    """Runs ``main`` in-process against a database: ``cli(url, "consents", "show", "u1")``."""

    def call(database_url: str, *argv: str) -> Result:
        for name in list(os.environ):
            if name.startswith("NOTIFY_"):
                monkeypatch.delenv(name)
        for name, value in environ_for(database_url, tmp_path / "data").items():
            monkeypatch.setenv(name, value)
        capsys.readouterr()
        code = main(list(argv))
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return call


def test_consents_show_prints_states_and_ledger(cli, database_url, tmp_path):
    settings = load_settings(environ=environ_for(database_url, tmp_path / "data"))
    topics = settings.topics
    # Long, and with what rich would take for markup: printed as it is, in full.
    long_note = "asked on the phone, ticket [4711], confirmed in writing [/b] by the customer"

    async def seed() -> None:
        user, _ = await save_user("user-with-a-rather-long-id@example.org",
                                  {"email": "ann@example.com"}, replace=False, hash_key=HASH_KEY)
        await change_consent(user, topics["email_notifications"], True, Evidence(
            source=ConsentSource.PROFILE_SETTINGS, actor="user", ip="2001:db8::1234:5678",
            occurred_at=datetime(2024, 2, 3, 4, 5, 6, tzinfo=UTC)), default_policy="1.0")
        await change_consent(user, topics["newsletter"], True, Evidence(
            source=ConsentSource.PROFILE_SETTINGS, actor="user"), default_policy="1.0")
        await change_consent(user, topics["email_notifications"], False, Evidence(
            source=ConsentSource.SUPPORT, actor="agent-smith", note=long_note),
            default_policy="1.0")

    in_db(database_url, seed)
    result = cli(database_url, "consents", "show", "user-with-a-rather-long-id@example.org")
    assert result.code == 0, result
    assert result.err == ""
    assert "…" not in result.out  # nothing cut short on a pipe
    rows = [[cell.strip() for cell in line.split("│")[1:-1]]
            for line in result.out.splitlines() if line.startswith("│")]
    assert rows[0][:3] == ["email_notifications", "email", "unsubscribed"]
    assert rows[1] == ["sms_notifications", "sms", "never asked", ""]
    assert rows[2][:3] == ["newsletter", "email", "pending"]
    ledger = rows[3:]  # newest first
    assert [row[1:6] for row in ledger] == [
        ["email_notifications", "subscribed -> unsubscribed", "support", "agent-smith", "1.0"],
        ["newsletter", "never asked -> pending", "profile_settings", "user", "1.0"],
        ["email_notifications", "never asked -> subscribed", "profile_settings", "user", "1.0"],
    ]
    assert ledger[0][7] == long_note
    assert ledger[2][0] == "2024-02-03T04:05:06+00:00"
    assert ledger[2][6] == "2001:db8::1234:5678"


def test_consents_show_limits_the_events(cli, database_url, tmp_path):
    settings = load_settings(environ=environ_for(database_url, tmp_path / "data"))

    async def seed() -> None:
        user, _ = await save_user("u1", {}, replace=False, hash_key=HASH_KEY)
        for subscribe in (True, False, True):
            await change_consent(user, settings.topics["sms_notifications"], subscribe,
                                 Evidence(source=ConsentSource.API), default_policy="1.0")

    in_db(database_url, seed)
    result = cli(database_url, "consents", "show", "u1", "--events", "2")
    assert result.code == 0, result
    changes = [line for line in result.out.splitlines() if " -> " in line]
    assert len(changes) == 2
    assert "unsubscribed -> subscribed" in changes[0]
    assert "subscribed -> unsubscribed" in changes[1]


def test_consents_show_unknown_user_is_one_line(cli, database_url):
    result = cli(database_url, "consents", "show", "nobody")
    assert_one_line_error(result, 1, "no user with id 'nobody'")
    assert result.out == ""


def test_consents_show_on_an_unmigrated_database_says_so(cli, empty_database):
    result = cli(empty_database, "consents", "show", "u1")
    assert_one_line_error(result, 1, "notify migrate")
    assert schema(empty_database) == []  # a look-up creates nothing


# -- notify serve and notify worker as real processes -----------------------------------


@pytest.fixture
def process_database(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """Nothing for SQLite (the defaults put it under ./data), a fresh PostgreSQL otherwise."""
    if request.param == "sqlite":
        yield {}
    else:
        yield {"NOTIFY_DATABASE_URL": request.getfixturevalue("fresh_pg_database")()}


BACKENDS = pytest.mark.parametrize(
    "process_database",
    ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
    indirect=True,
)


def start(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([*CLI, *args], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def stop(proc: subprocess.Popen) -> tuple[int, str, str]:
    """SIGTERM, then the exit code and output; safe to call again."""
    if not hasattr(proc, "outcome"):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            err += "\n(killed: SIGTERM was ignored)"
        proc.outcome = (proc.returncode, out, err)
    return proc.outcome


def wait_for_line(proc: subprocess.Popen, text: str) -> str:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            if text in line:
                return line
            if line == "" and proc.poll() is not None:
                break
    code, out, err = stop(proc)
    pytest.fail(f"no {text!r} on stdout; exit {code}\n{out}\n{err}")


def http(method: str, url: str, key: str | None = None, body: dict | None = None):  # noqa: ANN201
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status, json.loads(response.read() or b"null")


def wait_until_healthy(proc: subprocess.Popen, base: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            code, out, err = stop(proc)
            pytest.fail(f"notify serve exited with {code}\n{out}\n{err}")
        try:
            if http("GET", base + "/healthz")[0] == 200:
                return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.1)
    code, out, err = stop(proc)
    pytest.fail(f"/healthz did not answer within {DEADLINE}s\n{out}\n{err}")


@BACKENDS
def test_serve_with_an_empty_environment_records_consent_evidence(process_database, tmp_path):
    port = free_port()
    proc = start(["serve", "--port", str(port)], clean_env(**process_database), tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(proc, base)
        keys = json.loads((tmp_path / "data" / "dev-keys.json").read_text())
        app_key = next(item.split(":", 1)[1] for item in keys["api_keys"].split(",")
                       if item.startswith("app:"))

        status, user = http("PUT", base + "/v1/users/u1", app_key, {"email": "u1@example.com"})
        assert status == 201 and user["id"] == "u1"
        status, consent = http("PUT", base + "/v1/users/u1/consents/email_notifications",
                               app_key, {"subscribed": True, "source": "profile_settings",
                                         "ip": "203.0.113.9", "user_agent": "TestBrowser/1.0"})
        assert status == 200 and consent["state"] == "subscribed"
        status, page = http("GET", base + "/v1/users/u1/consent-events", app_key)
        assert status == 200
        assert [(e["topic"], e["source"], e["ip"], e["user_agent"], e["policy_version"])
                for e in page["events"]] == [
            ("email_notifications", "profile_settings", "203.0.113.9", "TestBrowser/1.0", "1.0")]
    finally:
        code, out, err = stop(proc)
    assert code == 0, err
    assert f"serving on http://127.0.0.1:{port}" in out
    assert "event loop uvloop" in out  # the default, installed with notify
    assert "Traceback" not in err
    if not process_database:
        assert (tmp_path / "data" / "notify.sqlite3").is_file()


def test_serve_on_asyncio_when_asked(tmp_path):
    port = free_port()
    proc = start(["serve", "--port", str(port), "--event-loop", "asyncio"], clean_env(),
                 tmp_path)
    try:
        wait_until_healthy(proc, f"http://127.0.0.1:{port}")
    finally:
        code, out, err = stop(proc)
    assert code == 0, err
    assert f"serving on http://127.0.0.1:{port}" in out and "event loop asyncio" in out


def test_serve_with_an_unknown_event_loop_says_which_there_are(tmp_path):
    result = run(["serve", "--event-loop", "trio"], clean_env(), tmp_path)
    assert result.code == 2 and "Traceback" not in result.err
    # (Python's versions quote the choices differently.)
    error = result.err.splitlines()[-1]
    assert "--event-loop: invalid choice: 'trio'" in error
    assert "uvloop" in error and "asyncio" in error


@BACKENDS
def test_serve_on_a_port_in_use_is_one_line(process_database, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(["serve", "--port", str(port)], clean_env(**process_database), tmp_path)
    # The log (the migration, the sender starting and stopping) comes first; then one line.
    assert result.code == 1, result
    assert "Traceback" not in result.err
    errors = [line for line in result.err.splitlines() if line.startswith("notify: ")]
    assert errors == [result.err.splitlines()[-1]]
    assert f"cannot serve on 127.0.0.1:{port}" in errors[0]
    assert "in use" in errors[0]
    assert "serving on" not in result.out  # no banner for a server that never ran


@pytest.fixture
def missing_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL that names nothing: a SQLite file in a missing directory, or a
    PostgreSQL database that does not exist (dropped afterwards, should it appear)."""
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path / 'no-such-dir' / 'notify.sqlite3'}"
        return
    request.getfixturevalue("postgres_ready")
    name = f"notify_test_missing_{uuid.uuid4().hex[:12]}"
    yield PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    asyncio.run(pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def pg_admin(sql: str):  # noqa: ANN201
    conn = await asyncpg.connect(PG_ADMIN, timeout=5)
    try:
        return await conn.fetch(sql)
    finally:
        await conn.close()


@pytest.mark.parametrize(
    "missing_database",
    ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
    indirect=True,
)
def test_serve_without_its_database_is_one_line_and_creates_nothing(missing_database,
                                                                   tmp_path):
    env = clean_env(**environ_for(missing_database, tmp_path / "data"))
    result = run(["serve", "--port", str(free_port())], env, tmp_path)
    assert_one_line_error(result, 1, "cannot open the database")
    assert "serving on" not in result.out
    assert not (tmp_path / "no-such-dir").exists()
    if missing_database.startswith("postgres"):
        name = missing_database.rsplit("/", 1)[1]
        found = asyncio.run(pg_admin(f"SELECT 1 FROM pg_database WHERE datname = '{name}'"))
        assert found == []  # serve leaves creating the database to migrate


@BACKENDS
def test_worker_runs_until_sigterm_and_exits_0(process_database, tmp_path):
    proc = start(["worker"], clean_env(**process_database), tmp_path)
    try:
        wait_for_line(proc, "notify worker running")
        time.sleep(0.3)  # a pass or two of the sender
        assert proc.poll() is None
    finally:
        code, _, err = stop(proc)
    assert code == 0, err
    assert "sender stopped" in err
    assert "Traceback" not in err


def test_support_withdrawal_from_the_cli_records_actor_and_note(cli, database_url, tmp_path):
    settings = load_settings(environ=environ_for(database_url, tmp_path / "data"))

    async def seed() -> None:
        user, _ = await save_user("u1", {"email": "u1@example.com"}, replace=False,
                                  hash_key=HASH_KEY)
        for name in ("email_notifications", "sms_notifications"):
            await change_consent(user, settings.topics[name], True,
                                 Evidence(source=ConsentSource.API), default_policy="1.0")

    in_db(database_url, seed)
    result = cli(database_url, "consents", "withdraw", "u1", "all", "--actor", "agent smith",
                 "--note", "asked by phone, ticket 4711")
    assert result.code == 0, result
    assert "email_notifications: withdrawn" in result.out
    assert "newsletter: withdrawn (never asked -> unsubscribed)" in result.out
    again = cli(database_url, "consents", "withdraw", "u1", "newsletter", "--actor", "a",
                "--note", "again")
    assert again.out.startswith("newsletter: already not subscribed")

    async def last() -> list[tuple]:
        user = await get_user("u1")
        events = await ConsentEvent.filter(user_id=user.id, source="support").order_by("id")
        return [(e.topic, e.to_state, e.actor, e.note) for e in events]

    found = in_db(database_url, last)
    assert ("email_notifications", "unsubscribed", "agent smith",
            "asked by phone, ticket 4711") in found
    assert len(found) == 3  # newsletter was never asked: its refusal is recorded too

    for argv in (["u1", "pigeons"], ["nobody", "newsletter"]):
        bad = cli(database_url, "consents", "withdraw", *argv, "--actor", "a", "--note", "n")
        assert_one_line_error(bad, 1)
    empty = cli(database_url, "consents", "withdraw", "u1", "newsletter", "--actor", " ",
                "--note", "n")
    assert_one_line_error(empty, 1, "--actor")
