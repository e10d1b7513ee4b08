"""RFC 8058 one-click withdrawals, written by group commit.

Why a batcher of our own: through ``store.change_consent`` a withdrawal costs one
transaction and about seven round trips (the user, the policy version, BEGIN, SELECT …
FOR UPDATE, UPDATE, INSERT, COMMIT), and a mail provider sends one-click POSTs by the
thousand (issue #7: 2,000 a second). Here each request hands its withdrawal to one drainer
task per process and waits; the drainer writes everything that waits in ONE transaction
with a constant number of statements per batch, whatever its size, and answers the
waiters only after the COMMIT. The rule stays ``notify.consent.decide``, applied in
request order, so a repeated request sees the earlier one's result and records nothing.

Bounded: at most ``BATCH`` requests wait (more wait in ``withdraw`` for room), and every
waiting request fits in the next batch. A failed batch hands its error to every waiter,
so a database outage answers 503 as elsewhere (``notify.db.is_unavailable``) and nothing
of the batch is kept.

Lock order on PostgreSQL, so that two processes' batches cannot deadlock: first the
never-asked pairs are inserted (``ON CONFLICT DO NOTHING``, sorted by user and topic:
waits only on other transactions' uncommitted inserts, in key order), then every pair's
row is locked (``ORDER BY user_id, topic FOR UPDATE``). A pair whose insert lost a race is
an existing row by then, locked and decided like the others, never recorded twice.
SQLite needs none of this: the transaction begins IMMEDIATE (``notify.sqlite_backend``)
and holds the database's one write lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from notify.consent import ConsentState, decide
from notify.settings import Topic
from notify.store import Evidence, now

log = logging.getLogger(__name__)

#: Most requests written in one transaction, and most that wait at a time.
BATCH = 200

Pair = tuple[int, str]  # (user id, topic)


@dataclass(slots=True)
class _Waiting:
    handle: str
    topics: Sequence[Topic]
    evidence: Evidence
    answer: asyncio.Future[str | None]


class Withdrawals:
    """The process's one-click withdrawals: ``withdraw`` from a request, ``run`` as a task."""

    def __init__(self, db: Any, default_policy: str) -> None:
        self._db = db  # a tortoise client: its transactions and raw statements
        self._default_policy = default_policy
        self._queue: asyncio.Queue[_Waiting] = asyncio.Queue(maxsize=BATCH)
        self._postgres = db.capabilities.dialect == "postgres"

    async def withdraw(self, handle: str, topics: Sequence[Topic],
                       evidence: Evidence) -> str | None:
        """Withdraw ``topics`` for the user whose link handle this is; returns once it is
        committed. Returns the user's locale, or None when the handle names no user (or
        an erased one, whose links no longer act), like ``store.user_by_handle``."""
        if not 1 <= len(handle) <= 32:
            return None
        answer = asyncio.get_running_loop().create_future()
        await self._queue.put(_Waiting(handle, topics, evidence, answer))
        return await answer

    async def run(self) -> None:
        """Write batches until cancelled."""
        while True:
            batch = [await self._queue.get()]
            while len(batch) < BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                answers = await self._write(batch)
            except Exception as exc:  # noqa: BLE001 - each waiter's request reports it
                for waiting in batch:
                    if not waiting.answer.done():
                        waiting.answer.set_exception(exc)
                continue
            except BaseException:
                for waiting in batch:
                    waiting.answer.cancel()
                raise
            for waiting, locale in zip(batch, answers, strict=True):
                if not waiting.answer.done():  # its request may have been cancelled
                    waiting.answer.set_result(locale)

    def fail_waiting(self) -> None:
        """At shutdown: whatever still waits gets an error instead of waiting forever."""
        while not self._queue.empty():
            waiting = self._queue.get_nowait()
            if not waiting.answer.done():
                waiting.answer.set_exception(ConnectionError("notify is shutting down"))

    async def _write(self, batch: list[_Waiting]) -> list[str | None]:
        sql = _Postgres if self._postgres else _Sqlite
        when = now()
        async with self._db._in_transaction() as conn:
            users = await sql.users(conn, sorted({w.handle for w in batch}))
            # The state a never-asked pair gets from its first request in the batch.
            first: dict[Pair, ConsentState | None] = {}
            for waiting in batch:
                if waiting.handle in users:
                    user_id = users[waiting.handle][0]
                    for topic in waiting.topics:
                        first.setdefault((user_id, topic.name), decide(
                            topic, None, False, waiting.evidence.source).to_state)
            if not first:
                return [None] * len(batch)
            policy = await sql.policy(conn, when) or self._default_policy
            rows, inserted = await sql.lock_or_create(
                conn, sorted(first), {p: s for p, s in first.items() if s is not None}, when)
            state = {pair: None if pair in inserted else ConsentState(rows[pair][1])
                     for pair in rows}
            events = []
            for waiting in batch:
                if waiting.handle not in users:
                    continue
                user_id = users[waiting.handle][0]
                evidence = waiting.evidence
                for topic in waiting.topics:
                    pair = (user_id, topic.name)
                    change = decide(topic, state.get(pair), False, evidence.source)
                    if change.to_state is None:
                        continue
                    state[pair] = change.to_state
                    events.append((user_id, topic.name, _value(change.from_state),
                                   change.to_state.value, evidence.source.value,
                                   evidence.actor, evidence.ip, evidence.user_agent,
                                   evidence.delivery_id, evidence.policy_version or policy,
                                   evidence.note, evidence.occurred_at or when))
            # Rows whose state ends the batch other than it began (for a pair inserted
            # here: other than the state it was inserted with).
            changed = [(rows[pair][0], to.value) for pair, to in state.items()
                       if to is not None and to.value != rows[pair][1]]
            if changed:
                await sql.update(conn, changed, when)
            if events:
                await sql.record(conn, events, now())
        return [users[w.handle][1] if w.handle in users else None for w in batch]


def _value(state: ConsentState | None) -> str | None:
    return state.value if state is not None else None


# -- statements --------------------------------------------------------------------------
# A constant number per batch on either database. ``rows`` maps each pair to its row's
# (id, state as stored); ``inserted`` are the pairs this batch created.

_EVENT_COLUMNS = ("user_id, topic, from_state, to_state, source, actor, ip, user_agent, "
                  "delivery_id, policy_version, note, occurred_at, recorded_at")
_POLICY = ("SELECT version FROM policy_versions WHERE effective_at <= {p} "
           "ORDER BY effective_at DESC, id DESC LIMIT 1")


class _Postgres:
    @staticmethod
    async def users(conn: Any, handles: list[str]) -> dict[str, tuple[int, str]]:
        found = await conn.execute_query_dict(
            "SELECT id, handle, locale FROM users WHERE handle = ANY($1::text[]) "
            "AND erased_at IS NULL", [handles])
        return {r["handle"]: (r["id"], r["locale"]) for r in found}

    @staticmethod
    async def policy(conn: Any, when: datetime) -> str | None:
        found = await conn.execute_query_dict(_POLICY.format(p="$1"), [when])
        return found[0]["version"] if found else None

    @staticmethod
    async def lock_or_create(conn: Any, pairs: list[Pair], new: dict[Pair, ConsentState],
                             when: datetime) -> tuple[dict[Pair, tuple[int, str]], set[Pair]]:
        inserted: set[Pair] = set()
        if new:
            created = await conn.execute_query_dict(
                "INSERT INTO consents (user_id, topic, state, updated_at) "
                "SELECT u, t, s, $4 FROM unnest($1::bigint[], $2::text[], $3::text[]) "
                "AS p(u, t, s) ORDER BY u, t "
                "ON CONFLICT (user_id, topic) DO NOTHING RETURNING user_id, topic",
                [[u for u, _ in new], [t for _, t in new], [s.value for s in new.values()],
                 when])
            inserted = {(r["user_id"], r["topic"]) for r in created}
        locked = await conn.execute_query_dict(
            "SELECT c.id, c.user_id, c.topic, c.state FROM consents c "
            "JOIN unnest($1::bigint[], $2::text[]) AS p(u, t) "
            "ON c.user_id = p.u AND c.topic = p.t "
            "ORDER BY c.user_id, c.topic FOR UPDATE OF c",
            [[u for u, _ in pairs], [t for _, t in pairs]])
        return {(r["user_id"], r["topic"]): (r["id"], r["state"]) for r in locked}, inserted

    @staticmethod
    async def update(conn: Any, changed: list[tuple[int, str]], when: datetime) -> None:
        await conn.execute_query_dict(
            "UPDATE consents SET state = p.s, updated_at = $3 "
            "FROM unnest($1::bigint[], $2::text[]) AS p(id, s) WHERE consents.id = p.id",
            [[i for i, _ in changed], [s for _, s in changed], when])

    @staticmethod
    async def record(conn: Any, events: list[tuple], recorded_at: datetime) -> None:
        columns = list(zip(*events, strict=True))
        await conn.execute_query_dict(
            f"INSERT INTO consent_events ({_EVENT_COLUMNS}) SELECT *, $13 FROM unnest("
            "$1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], "
            "$7::text[], $8::text[], $9::bigint[], $10::text[], $11::text[], "
            "$12::timestamptz[])", [*map(list, columns), recorded_at])


class _Sqlite:
    @staticmethod
    async def users(conn: Any, handles: list[str]) -> dict[str, tuple[int, str]]:
        found = await conn.execute_query_dict(
            "SELECT id, handle, locale FROM users WHERE erased_at IS NULL AND handle IN "
            f"({', '.join('?' * len(handles))})", handles)
        return {r["handle"]: (r["id"], r["locale"]) for r in found}

    @staticmethod
    async def policy(conn: Any, when: datetime) -> str | None:
        found = await conn.execute_query_dict(_POLICY.format(p="?"), [when])
        return found[0]["version"] if found else None

    @staticmethod
    async def lock_or_create(conn: Any, pairs: list[Pair], new: dict[Pair, ConsentState],
                             when: datetime) -> tuple[dict[Pair, tuple[int, str]], set[Pair]]:
        # The write lock is held: no other writer can insert a pair meanwhile.
        ids = sorted({u for u, _ in pairs})
        found = await conn.execute_query_dict(
            "SELECT id, user_id, topic, state FROM consents WHERE user_id IN "
            f"({', '.join('?' * len(ids))})", ids)
        wanted = set(pairs)
        rows = {(r["user_id"], r["topic"]): (r["id"], r["state"]) for r in found
                if (r["user_id"], r["topic"]) in wanted}
        missing = [(u, t, s.value, when) for (u, t), s in new.items() if (u, t) not in rows]
        if not missing:
            return rows, set()
        created = await conn.execute_query_dict(
            "INSERT INTO consents (user_id, topic, state, updated_at) VALUES "
            f"{', '.join(['(?, ?, ?, ?)'] * len(missing))} RETURNING id, user_id, topic, state",
            [value for row in missing for value in row])
        inserted = {(u, t) for u, t, _, _ in missing}
        rows.update({(r["user_id"], r["topic"]): (r["id"], r["state"]) for r in created})
        return rows, inserted

    @staticmethod
    async def update(conn: Any, changed: list[tuple[int, str]], when: datetime) -> None:
        await conn.execute_many("UPDATE consents SET state = ?, updated_at = ? WHERE id = ?",
                                [(s, when, i) for i, s in changed])

    @staticmethod
    async def record(conn: Any, events: list[tuple], recorded_at: datetime) -> None:
        await conn.execute_many(
            f"INSERT INTO consent_events ({_EVENT_COLUMNS}) VALUES "
            f"({', '.join('?' * 13)})", [(*e, recorded_at) for e in events])


async def stop(task: asyncio.Task, withdrawals: Withdrawals) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    withdrawals.fail_waiting()
