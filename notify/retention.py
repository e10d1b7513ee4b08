"""How long the consent ledger keeps its history (``NOTIFY_LEDGER_RETENTION_DAYS``).

The ledger is append-only (``models.ConsentEvent``): this module holds the one sanctioned
deletion, and it never deletes the proof of a current state. For every user and topic the
newest event stays whatever its age: it shows what the person last chose, when, how and
under which policy version (§2.5: consent is the legal basis, so we must be able to show
it for as long as we rely on it, and a withdrawal for as long as we honour it). Events
older than the retention period that a newer event of the same user and topic has
superseded are deleted. Erased users are treated the same way: their newest events are
the anonymous withdrawals made on erasure.

0 days, the default, keeps the whole history for ever.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from tortoise.functions import Max

from notify.models import ConsentEvent

#: Events looked at per round: each round is one short read and one short delete, so a
#: first prune of a large, old ledger never holds a long transaction.
CHUNK = 5000


async def prune_ledger(days: int, now: datetime) -> int:
    """Delete superseded events that occurred more than ``days`` days before ``now``;
    return how many. Does nothing when ``days`` is 0."""
    if days <= 0:
        return 0
    cutoff = now - timedelta(days=days)
    deleted, after = 0, 0
    while True:
        old = await (ConsentEvent.filter(occurred_at__lt=cutoff, id__gt=after)
                     .order_by("id").limit(CHUNK).values_list("id", "user_id", "topic"))
        if not old:
            return deleted
        after = old[-1][0]
        users = sorted({user_id for _, user_id, _ in old})
        newest = {(row["user_id"], row["topic"]): row["newest"] for row in await (
            ConsentEvent.filter(user_id__in=users).annotate(newest=Max("id"))
            .group_by("user_id", "topic").values("user_id", "topic", "newest"))}
        superseded = [event_id for event_id, user_id, topic in old
                      if event_id < newest[(user_id, topic)]]
        if superseded:
            # A queryset delete: ConsentEvent.delete() refuses on purpose, for every
            # other caller.
            deleted += await ConsentEvent.filter(id__in=superseded).delete()
