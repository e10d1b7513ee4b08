"""One-click withdrawals by group commit (notify.withdrawals), on SQLite and PostgreSQL:
concurrent POSTs share transactions, and the ledger still holds exactly one event per
actual change, the state always equal to the ledger's last word."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime

import asyncpg
import pytest
from support import environ_for

from notify import store
from notify.consent import ConsentSource, ConsentState
from notify.models import Consent, ConsentEvent, PolicyVersion, User
from notify.tokens import ALL_TOPICS, Link, Purpose, sign

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
BODY = "List-Unsubscribe=One-Click"
#: For the tests of one database only (the database_url fixture, parametrized here).
ON_POSTGRES = pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)


async def make_users(orm, count: int, subscribed: tuple[str, ...] = ()) -> list[User]:
    with orm:
        users = [await User.create(external_id=f"u{n}", handle=store.new_handle(),
                                   email=f"u{n}@example.com", locale="en")
                 for n in range(count)]
        for user in users:
            for topic in subscribed:
                await Consent.create(user_id=user.id, topic=topic,
                                     state=ConsentState.SUBSCRIBED, updated_at=store.now())
    return users


def link(settings, user: User, topic: str = "newsletter", delivery: int | None = None) -> str:
    return "/u/" + sign(Link(user.handle, Purpose.UNSUBSCRIBE, topic, delivery),
                        settings.secret_keys)


async def click(client, path: str, **headers: str):  # noqa: ANN201
    resp = await client.post(path, data=BODY, headers={**FORM, **headers})
    return resp.status, await resp.text()


async def click_answer(client, path: str):  # noqa: ANN201
    resp = await client.post(path, data=BODY, headers=FORM)
    return resp.status, resp.headers.get("Retry-After"), resp.content_type


async def ledger(orm) -> tuple[Counter, dict, dict]:
    """Events per (user, topic), the last event's state and the consent rows' states."""
    with orm:
        events = await ConsentEvent.all().order_by("id")
        rows = await Consent.all()
    count = Counter((e.user_id, e.topic) for e in events)
    last = {(e.user_id, e.topic): e.to_state for e in events}
    return count, last, {(c.user_id, c.topic): c.state for c in rows}


async def test_concurrent_one_clicks_for_distinct_users_each_leave_one_event(
        client, orm, settings):
    users = await make_users(orm, 40, subscribed=("newsletter", "email_notifications"))
    answers = await asyncio.gather(*(click(client, link(settings, u)) for u in users))
    assert answers == [(200, "You are unsubscribed.\n")] * 40
    count, last, states = await ledger(orm)
    assert count == Counter({(u.id, "newsletter"): 1 for u in users})
    assert last == {k: v for k, v in states.items() if k in last}
    assert all(states[(u.id, "newsletter")] == "unsubscribed" for u in users)
    assert all(states[(u.id, "email_notifications")] == "subscribed" for u in users)


async def test_repeated_one_clicks_for_one_user_and_topic_make_one_event(client, orm,
                                                                          settings):
    [user] = await make_users(orm, 1, subscribed=("newsletter",))
    answers = await asyncio.gather(*(click(client, link(settings, user)) for _ in range(30)))
    assert {status for status, _ in answers} == {200}
    count, last, states = await ledger(orm)
    assert count == Counter({(user.id, "newsletter"): 1})
    assert last == states == {(user.id, "newsletter"): "unsubscribed"}
    with orm:
        [event] = await ConsentEvent.all()
    assert (event.from_state, event.to_state) == ("subscribed", "unsubscribed")


async def test_never_asked_topics_and_all_topic_links_record_each_topic_once(
        client, orm, settings):
    users = await make_users(orm, 10, subscribed=("email_notifications",))
    paths = [link(settings, u, t) for u in users
             for t in (ALL_TOPICS, "newsletter", ALL_TOPICS, "sms_notifications")]
    answers = await asyncio.gather(*(click(client, p) for p in paths))
    assert {status for status, _ in answers} == {200}
    count, last, states = await ledger(orm)
    topics = set(settings.topics)
    assert count == Counter({(u.id, t): 1 for u in users for t in topics})
    assert last == states
    assert set(states.values()) == {"unsubscribed"}
    with orm:
        events = await ConsentEvent.all()
    assert {(e.topic, e.from_state) for e in events} == {
        ("email_notifications", "subscribed"), ("newsletter", None),
        ("sms_notifications", None)}


async def test_ledger_rows_match_what_change_consent_writes(client, orm, settings):
    one_click, direct = await make_users(orm, 2, subscribed=("newsletter",))
    with orm:
        await PolicyVersion.create(version="2026-07", title="t", summary="s",
                                   url="https://example.com/p", material=False,
                                   effective_at=datetime(2026, 7, 1, tzinfo=UTC),
                                   published_by="admin")
        before = store.now()
        await store.change_consent(
            direct, settings.topics["newsletter"], False,
            store.Evidence(source=ConsentSource.ONE_CLICK, actor="user", ip="127.0.0.1",
                           user_agent="Mail/1.0", delivery_id=77),
            default_policy=settings.policy_version)
    status, _ = await click(client, link(settings, one_click, delivery=77),
                            **{"User-Agent": "Mail/1.0"})
    assert status == 200
    after = store.now()
    db = orm.db()
    with orm:
        _, raw = await db.execute_query("SELECT * FROM consent_events ORDER BY id")
        _, consents = await db.execute_query("SELECT * FROM consents ORDER BY user_id")
    ours, theirs = (dict(r) for r in reversed(raw))
    assert ours["policy_version"] == "2026-07"
    for row in (ours, theirs):
        for column in ("id", "user_id", "occurred_at", "recorded_at"):
            row.pop(column)
    assert ours == theirs
    # Written alike, down to the stored form of the times (text on SQLite).
    for moment in ("occurred_at", "recorded_at"):
        assert type(raw[0][moment]) is type(raw[1][moment])
        assert len(str(raw[0][moment])) == len(str(raw[1][moment]))
    assert type(consents[0]["updated_at"]) is type(consents[1]["updated_at"])
    assert str(consents[0]["updated_at"])[-6:] == str(consents[1]["updated_at"])[-6:]
    with orm:
        event = await ConsentEvent.filter(user_id=one_click.id).get()
    assert before <= event.occurred_at <= event.recorded_at <= after


async def test_an_erased_users_link_is_not_valid_and_changes_nothing(client, orm, settings):
    from support import ADMIN, snapshot

    [user] = await make_users(orm, 1, subscribed=("newsletter",))
    path = link(settings, user)
    assert (await client.delete(f"/v1/users/{user.external_id}", headers=ADMIN)).status == 204
    before = await snapshot(orm)
    statuses = {(await click(client, path))[0] for _ in range(2)}
    forged = "/u/" + sign(Link("nobody-at-all", Purpose.UNSUBSCRIBE, "newsletter"),
                          settings.secret_keys)
    answer = await client.post(forged, data=BODY, headers=FORM)
    assert statuses == {answer.status} == {404}
    assert "not valid" in await answer.text()
    assert await snapshot(orm) == before


@ON_POSTGRES
async def test_a_batch_whose_connection_dies_answers_503_to_all_and_keeps_nothing(
        client, orm, settings, database_url):
    """Every waiter of a failed batch gets the outage answer; the batch's never-asked rows
    (inserted before the failure) are gone with its transaction."""
    users = await make_users(orm, 6, subscribed=("email_notifications",))
    blocker = await asyncpg.connect(database_url)
    try:
        # Hold one user's row: the batch inserts the never-asked pairs, then waits here.
        await blocker.execute("BEGIN")
        await blocker.execute("SELECT 1 FROM consents WHERE user_id = $1 FOR UPDATE",
                              users[0].id)
        posts = asyncio.gather(*(click_answer(client, link(settings, u, ALL_TOPICS))
                                 for u in users))
        waiting = []
        for _ in range(100):
            waiting = await blocker.fetch(
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database() AND pid <> pg_backend_pid()")
            if waiting:
                break
            await asyncio.sleep(0.05)
        assert waiting, "the batch never reached the lock"
        for row in waiting:
            await blocker.execute("SELECT pg_terminate_backend($1)", row["pid"])
        answers = await posts
        await blocker.execute("ROLLBACK")
    finally:
        await blocker.close()
    # What an outage answered before: 503, Retry-After, a problem for a mail provider.
    assert set(answers) == {(503, "5", "application/problem+json")}
    with orm:
        assert await ConsentEvent.all().count() == 0
        assert await Consent.filter(topic="newsletter").count() == 0
        assert await Consent.filter(state="subscribed").count() == 6
    # The drainer goes on: the retried POSTs are written.
    again = await asyncio.gather(*(click(client, link(settings, u, ALL_TOPICS)) for u in users))
    assert {status for status, _ in again} == {200}
    count, last, states = await ledger(orm)
    assert set(count.values()) == {1} and len(count) == 6 * len(settings.topics)
    assert last == states


@ON_POSTGRES
async def test_two_processes_withdrawing_the_same_users_neither_deadlock_nor_double(
        client, orm, settings, database_url, tmp_path):
    """This app and a ``notify serve`` process (two batchers, two pools) over one
    PostgreSQL: overlapping users, never-asked topics, links for all topics, opposite
    orders, at once."""
    import os
    import subprocess

    import aiohttp
    from support import free_port
    from test_cli import CLI, stop, wait_for_line

    port = free_port()
    env = {**os.environ, **environ_for(database_url, tmp_path / "second")}
    command = [*CLI, "serve", "--port", str(port), "--no-sender"]
    # Quick to start; its output is read in a thread.
    other = subprocess.Popen(command, env=env, cwd=tmp_path,  # noqa: ASYNC220
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        await asyncio.to_thread(wait_for_line, other, "serving on")
        users = await make_users(orm, 30, subscribed=("email_notifications",))
        paths = [link(settings, u, t) for u in users
                 for t in ("newsletter", ALL_TOPICS, "sms_notifications", "email_notifications")]
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
            for _ in range(3):
                answers = await asyncio.gather(
                    *(click(client, p) for p in paths),
                    *(click(session, p) for p in reversed(paths)))
                assert {status for status, _ in answers} == {200}, answers
    finally:
        code, _, err = await asyncio.to_thread(stop, other)
    assert code == 0 and "Traceback" not in err, err[-3000:]
    count, last, states = await ledger(orm)
    assert count == Counter({(u.id, t): 1 for u in users for t in settings.topics})
    assert last == states


async def test_pending_withdrawals_fail_at_shutdown_instead_of_hanging(settings):
    from notify.db import close_db, open_db
    from notify.withdrawals import Withdrawals

    ctx = await open_db(settings.database_url)
    try:
        batcher = Withdrawals(ctx.db(), "1.0")
        batcher.start()
        await batcher.stop()
        evidence = store.Evidence(source=ConsentSource.ONE_CLICK)
        waiting = asyncio.create_task(batcher.withdraw("h", [settings.topics["newsletter"]],
                                                       evidence))
        await asyncio.sleep(0)
        batcher.fail_waiting()
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(waiting, 5)
    finally:
        await close_db(ctx)

