"""A campaign's audience, set-based: who would receive it, who not and why, and the enqueue.

The rule is ``notify.eligibility.skip_reason``; this module asks the same questions of a
whole audience in one SQL statement, in the same order, so that a million users are
counted or enqueued by the database (``INSERT … SELECT``) without a Python loop over them
and with flat memory. ``tests/test_campaigns.py`` holds the two to the same answer for
every user of a mixed population. The postman still asks the pure rule again right before
each send: what is enqueued here is a candidate, never a promise.

Raw SQL, not the ORM: tortoise has no ``INSERT … SELECT``. The statement is the same on
SQLite and PostgreSQL but for the placeholders (``?`` and ``$n``), which ``_Sql`` writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tortoise import connections
from tortoise.backends.base.client import BaseDBAsyncClient

from notify.eligibility import NOTICE_TOPIC, POLICY_NOTICE, SkipReason
from notify.models import AddressKind, Campaign, DeliveryStatus, PolicyVersion
from notify.settings import Channel

#: How many example users the preview shows for each reason.
EXAMPLES = 3


@dataclass
class Audience:
    """The answer of a preview, per channel: who receives it, who is excluded and why."""

    channel: str
    eligible: int = 0
    excluded: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> external ids

    @property
    def total(self) -> int:
        return self.eligible + sum(self.excluded.values())


class Sql:
    """Collects parameters and writes the placeholder of the connection's dialect."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        self.values: list[Any] = []

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return "?" if self.dialect == "sqlite" else f"${len(self.values)}"

    def any_of(self, values: list[Any]) -> str:
        """``= ANY($n)`` of one array on PostgreSQL, ``IN (?, ...)`` on SQLite."""
        if self.dialect == "sqlite":
            return f"IN ({', '.join(self(value) for value in values)})"
        return f"= ANY({self(values)})"

    def time(self, value: datetime) -> str:
        # Tortoise keeps SQLite datetimes as text in str(datetime) form, in UTC: compare
        # alike, so a time given with another offset must become UTC first.
        return self(str(value.astimezone(UTC)) if self.dialect == "sqlite" else value)


def connection() -> BaseDBAsyncClient:
    return connections.get("default")


def _dialect(conn: BaseDBAsyncClient) -> str:
    return conn.capabilities.dialect


def _reason_sql(sql: Sql, campaign: Campaign, channel: str,
                policy: PolicyVersion | None) -> str:
    """The CASE expression naming the first reason a user is excluded, NULL if none.

    Mirrors ``eligibility.skip_reason`` check by check.
    """
    phone = channel == Channel.SMS
    address, hashed, verified, kind = (
        ("u.phone", "u.phone_hash", "u.phone_verified", AddressKind.PHONE) if phone
        else ("u.email", "u.email_hash", "u.email_verified", AddressKind.EMAIL))
    true = "1" if sql.dialect == "sqlite" else "TRUE"
    cases = [
        f"WHEN u.erased_at IS NOT NULL THEN '{SkipReason.ERASED}'",
        f"WHEN {address} IS NULL THEN '{SkipReason.NO_ADDRESS}'",
        f"WHEN EXISTS (SELECT 1 FROM suppressions s WHERE s.kind = {sql(kind.value)} "
        f"AND s.address_hash = {hashed}) THEN '{SkipReason.SUPPRESSED}'",
    ]
    subscribed = (f"WHEN c.state IS NULL OR c.state <> 'subscribed' "
                  f"THEN '{SkipReason.NOT_SUBSCRIBED}'")
    unverified = f"WHEN {verified} <> {true} THEN '{SkipReason.UNVERIFIED}'"
    if campaign.kind == POLICY_NOTICE:
        assert policy is not None
        cases.append(f"WHEN EXISTS (SELECT 1 FROM deliveries n WHERE n.notice_of_id = "
                     f"{sql(policy.id)} AND n.user_id = u.id) "
                     f"THEN '{SkipReason.ALREADY_NOTIFIED}'")
        if not policy.material:
            cases.append(subscribed)
    else:
        cases.append(subscribed)
    cases.append(unverified)
    return "CASE " + " ".join(cases) + " ELSE NULL END"


def consent_topic(campaign: Campaign, policy: PolicyVersion | None,
                  topic: str | None) -> str | None:
    """The topic whose consent the campaign needs on a channel whose topic is ``topic``;
    none for a material policy notice."""
    if campaign.kind == POLICY_NOTICE:
        return None if policy is not None and policy.material else NOTICE_TOPIC
    return topic


def _from_sql(sql: Sql, campaign: Campaign, policy: PolicyVersion | None,
              topic: str | None, users: tuple[int, int] | None = None) -> str:
    """FROM and WHERE: the users the filter selects, with their consent to the topic;
    ``users``: only those whose id is in this range (both sides of the join say so, or
    each part of an enqueue would hash every consent row)."""
    topic = consent_topic(campaign, policy, topic)
    where = ["1 = 1"]
    if users is not None:
        where.append(f"u.id BETWEEN {sql(users[0])} AND {sql(users[1])}")
    if topic is None:
        join = "LEFT JOIN consents c ON 1 = 0"  # no consent asked: c.state stays NULL
    else:
        join = f"LEFT JOIN consents c ON c.user_id = u.id AND c.topic = {sql(topic)}"
        if users is not None:
            join += f" AND c.user_id BETWEEN {sql(users[0])} AND {sql(users[1])}"
    wanted: Mapping[str, Any] = campaign.audience or {}
    if wanted.get("locale"):
        # "de" selects de, de-AT, de-CH...: the user's language, not only an exact tag.
        where.append(f"(u.locale = {sql(wanted['locale'])} OR u.locale LIKE "
                     f"{sql(wanted['locale'] + '-%')})")
    if wanted.get("country"):
        where.append(f"u.country = {sql(wanted['country'])}")
    if wanted.get("created_before"):
        where.append(f"u.created_at < {sql.time(_when(wanted['created_before']))}")
    if wanted.get("created_after"):
        where.append(f"u.created_at >= {sql.time(_when(wanted['created_after']))}")
    return f"FROM users u {join} WHERE " + " AND ".join(where)


def _when(value: str | datetime) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


async def policy_of(campaign: Campaign) -> PolicyVersion | None:
    """The policy version a notice campaign announces; None for other campaigns."""
    if campaign.policy_version_id is None:
        return None
    return await PolicyVersion.get(id=campaign.policy_version_id)


async def preview(campaign: Campaign, topics: Mapping[str, str | None],
                  policy: PolicyVersion | None = None, *, examples: bool = True
                  ) -> list[Audience]:
    """How many would receive the campaign now, per channel, and who not and why.

    ``policy`` lets a notice of a version not yet published be previewed (neither it nor
    its campaign saved): nobody can have been notified of it yet.
    """
    conn = connection()
    policy = policy or await policy_of(campaign)
    found = []
    for channel in campaign.channels:
        sql = Sql(_dialect(conn))
        reason = _reason_sql(sql, campaign, channel, policy)
        source = _from_sql(sql, campaign, policy, topics.get(channel))
        _, rows = await conn.execute_query(
            f"SELECT r, COUNT(*) AS n FROM (SELECT {reason} AS r {source}) a GROUP BY r",
            sql.values)
        audience = Audience(channel)
        for row in rows:
            if row["r"] is None:
                audience.eligible = row["n"]
            else:
                audience.excluded[row["r"]] = row["n"]
        for name in audience.excluded if examples else ():
            # Placeholders are numbered in the order written (SQLite's are positional):
            # build the parts in the order they appear in the statement.
            sql = Sql(_dialect(conn))
            source = _from_sql(sql, campaign, policy, topics.get(channel))
            reason = _reason_sql(sql, campaign, channel, policy)
            _, rows = await conn.execute_query(
                f"SELECT u.external_id AS id {source} AND ({reason}) = {sql(name)} "
                f"ORDER BY u.id LIMIT {EXAMPLES}", sql.values)
            audience.examples[name] = [row["id"] for row in rows]
        found.append(audience)
    return found


async def reasons_by_user(campaign: Campaign, channel: str,
                          topics: Mapping[str, str | None]) -> dict[int, str | None]:
    """Every selected user's reason (None: eligible). For tests and small audiences only."""
    conn = connection()
    policy = await policy_of(campaign)
    sql = Sql(_dialect(conn))
    reason = _reason_sql(sql, campaign, channel, policy)
    source = _from_sql(sql, campaign, policy, topics.get(channel))
    _, rows = await conn.execute_query(f"SELECT u.id AS id, {reason} AS r {source}", sql.values)
    return {row["id"]: row["r"] for row in rows}


@dataclass
class Enqueued:
    """What an enqueue did: deliveries added, deliveries the campaign has for the users
    found eligible (more than added when an interrupted enqueue is done again), and per
    reason the users left out."""

    added: int = 0
    eligible: int = 0
    excluded: dict[str, int] = field(default_factory=dict)
    resumed: bool = False  # the campaign had deliveries already (an interrupted enqueue)

    def add(self, added: int, eligible: int, excluded: Mapping[str, int]) -> None:
        self.added += added
        self.eligible += eligible
        for reason, count in excluded.items():
            self.excluded[reason] = self.excluded.get(reason, 0) + count


async def enqueue(campaign: Campaign, topics: Mapping[str, str | None], *, now: datetime,
                  retry_hours: int, parts: int = 1) -> Enqueued:
    """Turn the campaign into queued deliveries, one per eligible user and channel, and
    count the users left out, per reason.

    A delivery is unique per (campaign, user, channel) and a policy notice per (policy
    version, user): enqueueing twice adds nothing.

    SQLite: the counts' pass, then one ``INSERT … SELECT`` per channel, in the caller's
    transaction. PostgreSQL: one statement per channel and part does both (a
    data-modifying CTE: the reasons are computed once, the eligible rows inserted, the
    reasons counted), and ``parts`` statements over disjoint ranges of user ids run at
    once on their own connections, so the insert — a million rows and three index entries
    each, one core's work per statement — uses the database's cores (bench/enqueue.py).
    The parts commit on their own, before the caller's transaction: their deliveries wait
    unclaimed until that transaction marks the campaign sending (``postman.claim`` takes
    only deliveries of sending campaigns). Should the caller fail, the campaign stays as
    it was and sending it again adds only what is missing.
    """
    conn = connection()
    policy = await policy_of(campaign)
    if _dialect(conn) == "sqlite":
        done = Enqueued()
        for found in await preview(campaign, topics, policy, examples=False):
            done.add(0, found.eligible, found.excluded)
        for channel in campaign.channels:
            sql = Sql("sqlite")
            statement = _insert_sql(sql, campaign, policy, channel, topics, now, retry_hours)
            statement += f" AND ({_reason_sql(sql, campaign, channel, policy)}) IS NULL"
            count, _ = await conn.execute_query(statement + " ON CONFLICT DO NOTHING",
                                                sql.values)
            done.add(count, 0, {})
        return done
    pool = getattr(conn, "_parent", conn)  # in a transaction: the pool behind it
    # Each part takes a connection of the pool beside the one the caller's transaction
    # holds; a pool of one has none to give, and its single part runs in the caller's
    # transaction instead (waiting for a connection there would wait for ever).
    room = getattr(pool, "pool_maxsize", parts + 1) - 1
    parts = max(1, min(parts, room))
    if room < 1:
        pool = conn
    bounds = await conn.execute_query_dict("SELECT MIN(id) AS lo, MAX(id) AS hi FROM users")
    lo, hi = bounds[0]["lo"], bounds[0]["hi"]
    done = Enqueued()
    if lo is None:
        return done
    step = (hi - lo) // max(1, parts) + 1
    ranges = [(start, min(hi, start + step - 1)) for start in range(lo, hi + 1, step)]
    for channel in campaign.channels:
        # Deliveries of this campaign already there: an interrupted enqueue, done again.
        _, found = await conn.execute_query(
            "SELECT EXISTS (SELECT 1 FROM deliveries WHERE campaign_id = $1 AND channel = $2)"
            " AS resumed", [campaign.id, channel])
        fresh = not found[0]["resumed"]
        done.resumed = done.resumed or not fresh
        results = await asyncio.gather(*(
            _enqueue_part(pool, campaign, policy, channel, topics, now, retry_hours, r, fresh)
            for r in ranges))
        for added, eligible, excluded in results:
            done.add(added, eligible, excluded)
    return done


async def _enqueue_part(pool: BaseDBAsyncClient, campaign: Campaign,
                        policy: PolicyVersion | None, channel: str,
                        topics: Mapping[str, str | None], now: datetime, retry_hours: int,
                        users: tuple[int, int], fresh: bool) -> tuple[int, int, dict[str, int]]:
    """One PostgreSQL statement: the users of one id range, inserted and counted."""
    from asyncpg import UniqueViolationError  # the postgres extra

    try:
        return await _enqueue_statement(pool, campaign, policy, channel, topics, now,
                                        retry_hours, users, fresh=fresh)
    except UniqueViolationError:
        # A concurrent send of another notice of the same version took some of these
        # users first: the statement that tolerates that, at its price.
        return await _enqueue_statement(pool, campaign, policy, channel, topics, now,
                                        retry_hours, users, fresh=False)


async def _enqueue_statement(pool: BaseDBAsyncClient, campaign: Campaign,
                             policy: PolicyVersion | None, channel: str,
                             topics: Mapping[str, str | None], now: datetime,
                             retry_hours: int, users: tuple[int, int], *,
                             fresh: bool) -> tuple[int, int, dict[str, int]]:
    """The part's statement. ``fresh``: the campaign has no deliveries on this channel
    yet, so a plain insert; otherwise ``ON CONFLICT DO NOTHING`` skips those it has,
    which costs ~2 s more for 800,000 rows (a speculative insertion per row,
    bench/enqueue.py) and also skips a user another campaign notified meanwhile."""
    sql = Sql("postgres")
    reason = _reason_sql(sql, campaign, channel, policy)
    source = _from_sql(sql, campaign, policy, topics.get(channel), users)
    chosen = f"SELECT u.id AS id, {reason} AS r {source}"
    eligible = "FROM a WHERE a.r IS NULL"
    insert = _insert_sql(sql, campaign, policy, channel, topics, now, retry_hours,
                         source=eligible, user="a.id")
    statement = (f"WITH a AS MATERIALIZED ({chosen}), added AS ({insert}"
                 f"{'' if fresh else ' ON CONFLICT DO NOTHING'} RETURNING 1) "
                 "SELECT 'added' AS r, COUNT(*) AS n FROM added "
                 "UNION ALL SELECT r, COUNT(*) FROM a GROUP BY r")
    if not fresh:
        # Eligible: those added now and those the campaign had already (the statement's
        # snapshot does not see its own insert), not those another campaign's notice of
        # the same version took meanwhile.
        statement += (" UNION ALL SELECT 'had', COUNT(*) FROM a JOIN deliveries d ON "
                      f"d.campaign_id = {sql(campaign.id)} AND d.user_id = a.id AND "
                      f"d.channel = {sql(channel)} WHERE a.r IS NULL")
    async with pool.acquire_connection() as connection, connection.transaction():
        # The join of users and consents hashes up to a million rows: with the default
        # 4 MB it spills to disk in 32 batches. JIT compiling the statement cost 0.3 s of
        # its 5 (EXPLAIN ANALYZE) and saved nothing. For this transaction only.
        await connection.execute("SET LOCAL work_mem = '64MB'; SET LOCAL jit = off")
        rows = await connection.fetch(statement, *sql.values)
    counts = {row["r"]: row["n"] for row in rows}
    added, eligible_count = counts.pop("added"), counts.pop(None, 0)
    if not fresh:
        eligible_count = added + counts.pop("had")
    return added, eligible_count, counts


def _insert_sql(sql: Sql, campaign: Campaign, policy: PolicyVersion | None, channel: str,
                topics: Mapping[str, str | None], now: datetime, retry_hours: int, *,
                source: str | None = None, user: str = "u.id") -> str:
    """``INSERT INTO deliveries … SELECT`` a queued delivery per selected user; without
    ``source``, from the campaign's users (the caller appends the rule)."""
    topic = consent_topic(campaign, policy, topics.get(channel))
    json = "'{}'" if sql.dialect == "sqlite" else "'{}'::jsonb"
    values = ", ".join([
        user, sql(campaign.id), sql(policy.id if policy else None), sql(channel),
        sql(campaign.kind), sql(topic), json, sql(DeliveryStatus.QUEUED.value),
        "0", "0", sql.time(now), sql.time(now + timedelta(hours=retry_hours)),
        sql.time(now), sql.time(now)])
    if source is None:
        source = _from_sql(sql, campaign, policy, topics.get(channel))
    return ("INSERT INTO deliveries (user_id, campaign_id, notice_of_id, channel, kind, "
            "topic, context, status, attempts, takeovers, next_attempt_at, deadline, "
            f"created_at, updated_at) SELECT {values} {source}")
