"""RFC 8058 one-click withdrawals, written by group commit.

Why a batcher of our own: through ``store.change_consent`` a withdrawal costs one
transaction and about seven round trips (the user, the policy version, BEGIN, SELECT …
FOR UPDATE, UPDATE, INSERT, COMMIT), and mail providers send one-click POSTs by the
thousand (issue #7: 2,000 a second). Here a request hands its withdrawal over and waits;
a drainer task takes everything waiting and writes it in ONE transaction with a constant
number of statements, whatever the batch's size (usually four round trips: BEGIN, one
SELECT … FOR UPDATE, one write, COMMIT), and answers the waiters only after the COMMIT.
The rule stays ``notify.consent.decide``, applied in request order, so a repeated request
sees the earlier one's result and records nothing. The ledger rows are those
``change_consent`` writes.

Bounded: at most ``BATCH`` requests wait (more wait in ``withdraw`` for room), so each
waiting request fits in the next batch. A failed batch hands its error to every waiter:
a database outage answers 503 as elsewhere (``notify.db.is_unavailable``), and nothing
of the batch is kept.

Lock order on PostgreSQL, so that batches (of this process's drainers, of other
processes) cannot deadlock: never-asked pairs are inserted first (``ON CONFLICT DO
NOTHING``, sorted by user and topic: such an insert waits only for another transaction's
uncommitted insert, in key order), then every pair's row is locked (``ORDER BY user_id,
topic FOR UPDATE``). A pair whose insert lost a race is an existing row by then, locked
and decided like the others, never recorded twice. SQLite needs none of this: its
transaction begins IMMEDIATE (``notify.sqlite_backend``), holding the one write lock.
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
#: Batches written at once per process, each on its own pooled connection. One would
#: leave the process idle during each batch's round trips and its COMMIT's WAL flush
#: (on a busy machine, 20 ms and more): requests arriving meanwhile wait for the next.
DRAINERS = 4

Pair = tuple[int, str]  # (user id, topic)


@dataclass(slots=True)
class _Waiting:
    handle: str
    topics: Sequence[Topic]
    evidence: Evidence
    answer: asyncio.Future[str | None]


class Withdrawals:
    """The process's one-click withdrawals: ``withdraw`` from a request; ``start`` and
    ``stop`` with the app."""

    def __init__(self, db: Any, default_policy: str) -> None:
        self._db = db  # a tortoise client: its transactions and raw statements
        self._default_policy = default_policy
        self._queue: asyncio.Queue[_Waiting] = asyncio.Queue(maxsize=BATCH)
        self._postgres = db.capabilities.dialect == "postgres"
        self._drainers: list[asyncio.Task] = []

    def start(self, drainers: int = DRAINERS) -> None:
        # SQLite has one connection and one writer: a second drainer would only queue.
        count = drainers if self._postgres else 1
        self._drainers = [asyncio.create_task(self.run(), name=f"one-click withdrawals {n}")
                          for n in range(count)]

    async def stop(self) -> None:
        """Stop the drainers (a batch in flight is rolled back and its waiters cancelled);
        whatever still waits gets an error instead of waiting forever."""
        for task in self._drainers:
            task.cancel()
        for task in self._drainers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.fail_waiting()

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
        when = now()
        if self._postgres:
            # Usually every pair has its row (the user was sent mail about the topic):
            # then the batch is BEGIN, one locking SELECT, one write, COMMIT.
            async with self._db._in_transaction() as conn:
                found = await _Postgres.lock_known(conn, batch, when)
                if found is not None:
                    users, policy, rows = found
                    return await self._apply(conn, batch, users, policy, rows, set(), when)
        sql = _Postgres if self._postgres else _Sqlite
        async with self._db._in_transaction() as conn:
            users, policy = await sql.users(conn, sorted({w.handle for w in batch}), when)
            # The state a never-asked pair gets from its first request in the batch.
            first: dict[Pair, ConsentState | None] = {}
            for waiting in batch:
                if waiting.handle in users:
                    user_id = users[waiting.handle][0]
                    for topic in waiting.topics:
                        first.setdefault((user_id, topic.name), decide(
                            topic, None, False, waiting.evidence.source).to_state)
            if not first:
                return [None] * len(batch)  # no user: nothing to write
            rows, inserted = await sql.lock_or_create(
                conn, sorted(first), {p: s for p, s in first.items() if s is not None}, when)
            return await self._apply(conn, batch, users, policy, rows, inserted, when)

    async def _apply(self, conn: Any, batch: list[_Waiting], users: dict[str, tuple[int, str]],
                     policy: str | None, rows: dict[Pair, tuple[int, str]], inserted: set[Pair],
                     when: datetime) -> list[str | None]:
        """Decide each request in order with the rows locked, then write the changed rows
        and the ledger's events in one statement."""
        policy = policy or self._default_policy
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
        # Rows whose state ends the batch other than it began (for a pair inserted here:
        # other than the state it was inserted with).
        changed = [(rows[pair][0], to.value) for pair, to in state.items()
                   if to is not None and to.value != rows[pair][1]]
        if events:
            sql = _Postgres if self._postgres else _Sqlite
            await sql.write(conn, changed, events, when, now())
        return [users[w.handle][1] if w.handle in users else None for w in batch]


def _value(state: ConsentState | None) -> str | None:
    return state.value if state is not None else None


# -- statements --------------------------------------------------------------------------
# A constant number per batch on either database. ``rows`` maps each pair to its row's
# (id, state as stored); ``inserted`` are the pairs this batch created.

_EVENT_COLUMNS = ("user_id, topic, from_state, to_state, source, actor, ip, user_agent, "
                  "delivery_id, policy_version, note, occurred_at, recorded_at")
#: The users a batch names (erased ones excluded: their links no longer act) and the
#: policy version in force (``store.policy_version_in_force``), in one round trip.
_POLICY = ("SELECT version FROM policy_versions WHERE effective_at <= {when} "
           "ORDER BY effective_at DESC, id DESC LIMIT 1")
_USERS = (f"SELECT ({_POLICY}) AS version, u.id, u.handle, u.locale "
          "FROM (SELECT 1 AS one) AS x LEFT JOIN users u ON u.erased_at IS NULL "
          "AND u.handle {handles}")


def _users(found: list[dict]) -> tuple[dict[str, tuple[int, str]], str | None]:
    return ({r["handle"]: (r["id"], r["locale"]) for r in found if r["id"] is not None},
            found[0]["version"])


class _Postgres:
    @staticmethod
    async def users(conn: Any, handles: list[str], when: datetime
                    ) -> tuple[dict[str, tuple[int, str]], str | None]:
        return _users(await conn.execute_query_dict(
            _USERS.format(when="$1", handles="= ANY($2::text[])"), [when, handles]))

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
    async def lock_known(conn: Any, batch: list[_Waiting], when: datetime
                         ) -> tuple[dict[str, tuple[int, str]], str | None,
                                    dict[Pair, tuple[int, str]]] | None:
        """Lock the rows of the batch's pairs, with their users and the policy version;
        None when some pair has no row (or its user none): then the general way."""
        wanted = {(w.handle, t.name) for w in batch for t in w.topics}
        locked = await conn.execute_query_dict(
            "SELECT c.id, c.user_id, c.topic, c.state, u.handle, u.locale, "
            f"({_POLICY.format(when='$3')}) AS version "
            "FROM unnest($1::text[], $2::text[]) AS p(h, t) "
            "JOIN users u ON u.handle = p.h AND u.erased_at IS NULL "
            "JOIN consents c ON c.user_id = u.id AND c.topic = p.t "
            "ORDER BY c.user_id, c.topic FOR UPDATE OF c",
            [[h for h, _ in wanted], [t for _, t in wanted], when])
        if len(locked) != len(wanted):
            return None
        users = {r["handle"]: (r["user_id"], r["locale"]) for r in locked}
        rows = {(r["user_id"], r["topic"]): (r["id"], r["state"]) for r in locked}
        return users, locked[0]["version"], rows

    @staticmethod
    async def write(conn: Any, changed: list[tuple[int, str]], events: list[tuple],
                    when: datetime, recorded_at: datetime) -> None:
        columns = list(zip(*events, strict=True))
        await conn.execute_query_dict(
            "WITH changed AS (UPDATE consents SET state = p.s, updated_at = $3 "
            "FROM unnest($1::bigint[], $2::text[]) AS p(id, s) WHERE consents.id = p.id) "
            f"INSERT INTO consent_events ({_EVENT_COLUMNS}) SELECT *, $16 FROM unnest("
            "$4::bigint[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], "
            "$10::text[], $11::text[], $12::bigint[], $13::text[], $14::text[], "
            "$15::timestamptz[])",
            [[i for i, _ in changed], [s for _, s in changed], when, *map(list, columns),
             recorded_at])


class _Sqlite:
    @staticmethod
    async def users(conn: Any, handles: list[str], when: datetime
                    ) -> tuple[dict[str, tuple[int, str]], str | None]:
        return _users(await conn.execute_query_dict(_USERS.format(
            when="?", handles=f"IN ({', '.join('?' * len(handles))})"), [when, *handles]))

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
    async def write(conn: Any, changed: list[tuple[int, str]], events: list[tuple],
                    when: datetime, recorded_at: datetime) -> None:
        if changed:
            await conn.execute_many("UPDATE consents SET state = ?, updated_at = ? "
                                    "WHERE id = ?", [(s, when, i) for i, s in changed])
        await conn.execute_many(
            f"INSERT INTO consent_events ({_EVENT_COLUMNS}) VALUES "
            f"({', '.join('?' * 13)})", [(*e, recorded_at) for e in events])
