"""The dashboard's numbers: queue depth, sends per minute over the last day, unsubscribes
by source over the last 30 days, and complaint and bounce rates.

Counted by the database, so the figures are the same whichever process asks and cost a few
grouped queries whatever the outbox's size. ``GET /v1/stats`` and the console's dashboard
both read :func:`dashboard`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from tortoise.functions import Count

from notify import audience, store
from notify.campaigns import HANDED_OVER
from notify.models import ConsentEvent, Delivery, DeliveryStatus

#: The sends chart covers this long, in buckets of BUCKET_MINUTES.
SEND_WINDOW = timedelta(hours=24)
BUCKET_MINUTES = 15
#: Unsubscribes and the complaint and bounce rates cover this long.
RATE_WINDOW = timedelta(days=30)


@dataclass
class Dashboard:
    now: datetime
    queue_depth: dict[str, int]  # channel -> deliveries due now and not yet sent
    sends_per_minute: list[tuple[datetime, float]]  # bucket start -> mean sends a minute
    unsubscribes: dict[str, int]  # source -> withdrawals in RATE_WINDOW
    handed_over: int  # messages handed to the relay or Twilio in RATE_WINDOW
    complained: int
    bounced: int

    @property
    def complaint_rate(self) -> float:
        return 100 * self.complained / self.handed_over if self.handed_over else 0.0

    @property
    def bounce_rate(self) -> float:
        return 100 * self.bounced / self.handed_over if self.handed_over else 0.0


async def dashboard(now: datetime | None = None) -> Dashboard:
    now = now or store.now()
    due = await (Delivery.filter(status=DeliveryStatus.QUEUED, next_attempt_at__lte=now)
                 .annotate(n=Count("id")).group_by("channel").values("channel", "n"))
    depth = {"email": 0, "sms": 0} | {row["channel"]: row["n"] for row in due}
    since = now - RATE_WINDOW
    rows = await (ConsentEvent.filter(to_state="unsubscribed", recorded_at__gte=since)
                  .annotate(n=Count("id")).group_by("source").values("source", "n"))
    unsubscribes = dict(sorted(((r["source"], r["n"]) for r in rows), key=lambda x: -x[1]))
    rows = await (Delivery.filter(status__in=HANDED_OVER, sent_at__gte=since)
                  .annotate(n=Count("id")).group_by("status").values("status", "n"))
    by_status = {row["status"]: row["n"] for row in rows}
    return Dashboard(
        now=now, queue_depth=depth, sends_per_minute=await _sends(now),
        unsubscribes=unsubscribes, handed_over=sum(by_status.values()),
        complained=by_status.get(DeliveryStatus.COMPLAINED, 0),
        bounced=by_status.get(DeliveryStatus.BOUNCED, 0))


async def _sends(now: datetime) -> list[tuple[datetime, float]]:
    """Messages handed over per minute, averaged over each bucket of the last 24 hours.

    The database groups by minute (at most 1,440 rows), Python folds minutes into buckets:
    the minute is the one expression both dialects write differently. SQLite keeps times
    as text in UTC (``2026-11-26 14:41:54.123+00:00``), so its first 16 characters are the
    minute.
    """
    start = _floor(now - SEND_WINDOW)
    conn = audience.connection()
    sql = audience.Sql(conn.capabilities.dialect)
    minute = ("substr(sent_at, 1, 16)" if sql.dialect == "sqlite"
              else "to_char(sent_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI')")
    handed = ", ".join(f"'{s.value}'" for s in HANDED_OVER)
    _, rows = await conn.execute_query(
        f"SELECT {minute} AS m, COUNT(*) AS n FROM deliveries WHERE sent_at >= "
        f"{sql.time(start)} AND status IN ({handed}) GROUP BY m", sql.values)
    buckets = int(SEND_WINDOW / timedelta(minutes=BUCKET_MINUTES)) + 1
    totals = [0] * buckets
    for row in rows:
        at = datetime.strptime(row["m"], "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
        index = int((at - start) / timedelta(minutes=BUCKET_MINUTES))
        if 0 <= index < buckets:
            totals[index] += row["n"]
    step = timedelta(minutes=BUCKET_MINUTES)
    return [(start + i * step, total / BUCKET_MINUTES) for i, total in enumerate(totals)]


def _floor(moment: datetime) -> datetime:
    moment = moment.astimezone(UTC).replace(second=0, microsecond=0)
    return moment - timedelta(minutes=moment.minute % BUCKET_MINUTES)
