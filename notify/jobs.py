"""The periodic jobs the sender runs on every pass."""

from __future__ import annotations

import time
from collections.abc import Callable

from notify import campaigns, retention, store
from notify.postman import Postman
from notify.sender import Job
from notify.settings import Settings
from notify.sms.courier import SmsCourier

#: How often the reputation guards look at the sending campaigns.
GUARD_SECONDS = 5.0
#: Email deliveries a worker claims at once: ``EMAIL_BATCH_PER_CONNECTION`` for each SMTP
#: connection of its pool (``NOTIFY_SMTP_POOL_SIZE``), at most ``EMAIL_BATCH``, and no
#: more than a second's worth when ``NOTIFY_SMTP_RATE`` is set (``Postman.batch_size``).
#: Fuller passes cost less a message (a batch's claim, checks and outcomes cost a few
#: milliseconds besides their rows: 200 → 400 with a pool of 8 took ~6% of a campaign
#: message's CPU, bench/campaign_send.py); a batch per connection keeps a batch's time,
#: and so the age of its eligibility checks, the other jobs' wait and the lease it must
#: fit in, the same whatever the pool (the default pool of 4 gives the former 200). A
#: crashed worker's claims are at most one batch.
EMAIL_BATCH_PER_CONNECTION = 50
EMAIL_BATCH = 500
#: How often a worker that still finds full batches looks for campaigns that are done.
FINISH_SECONDS = 5.0
#: How often pending requests past their time are withdrawn: a period counted in days.
EXPIRE_SECONDS = 60.0
#: While the other jobs keep the passes coming (a pass is one batch of email), how often
#: scheduled campaigns are looked for, and SMS when the last look found none due: each
#: look costs about a millisecond and a half of the worker and the database, as much as
#: a batch's share of ten emails (bench/campaign_send.py). An idle worker passes once a
#: poll (a second) anyway.
LOOK_SECONDS = 1.0
#: How often the ledger's retention is applied (when a retention period is set).
PRUNE_SECONDS = 3600.0


class _Every:
    """A job that runs at most once in ``seconds``: for work that moves slowly, or whose
    query is too dear for every pass (a pass is one batch). The first call is due."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self.last = float("-inf")

    def due(self) -> bool:
        now = self.clock()
        if now - self.last < self.seconds:
            return False
        self.last = now
        return True

    def again(self) -> None:
        """Due at the next call."""
        self.last = float("-inf")


def jobs(settings: Settings, postman: Postman, courier: SmsCourier | None = None, *,
         clock: Callable[[], float] = time.monotonic) -> list[Job]:
    """The sender's jobs; ``clock`` (seconds, monotonic) times the ones that run at most
    every so often."""
    look_for_scheduled = _Every(LOOK_SECONDS, clock)

    async def start_campaigns() -> int:
        if not look_for_scheduled.due():
            return 0
        started = await campaigns.start_scheduled(settings)
        if started:
            look_for_scheduled.again()
        return started

    drained = [True]

    async def deliver_email() -> int:
        size = postman.batch_size(EMAIL_BATCH_PER_CONNECTION, EMAIL_BATCH)
        done = await postman.deliver_due(size)
        drained[0] = done < size
        return done

    look_for_sms = _Every(LOOK_SECONDS, clock)

    async def deliver_sms() -> int:
        if courier is None or not look_for_sms.due():
            return 0
        done = await courier.deliver_due()
        if done:
            look_for_sms.again()  # texts are due: look again on the next pass
        return done

    guard = _Every(GUARD_SECONDS, clock)

    async def guard_campaigns() -> int:
        # The rates move slowly and counting a big campaign's deliveries is not free.
        # Counted as no work.
        if guard.due():
            await campaigns.check_guards(settings)
        return 0

    finish = _Every(FINISH_SECONDS, clock)

    async def finish_campaigns() -> int:
        # When the email queue ran dry, or every few seconds: looking for a campaign's open
        # deliveries scans its rows, 0.2 s at 800,000, which on every pass (a batch of
        # 200) cost more than the batch. While full batches come, a campaign finishing
        # can wait a few seconds to be marked done. Counted as no work.
        if drained[0] or finish.due():
            await campaigns.finish_done()
        return 0

    expire = _Every(EXPIRE_SECONDS, clock)

    async def expire_pending() -> int:
        # Once a minute: finding pending requests reads the consents table, 3 rows a
        # user (bench/campaign_send.py --growth: with a million users, on every pass, it
        # took the send from ~1,000 to ~140 messages a second).
        if not expire.due():
            return 0
        done = await store.expire_pending(settings.topics, days=settings.pending_days,
                                          default_policy=settings.policy_version)
        if done:
            expire.again()  # there may be more: the next pass goes on
        return done

    prune = _Every(PRUNE_SECONDS, clock)

    async def prune_ledger() -> int:
        # Hourly is plenty for a period counted in days; counted as no work, like the guard.
        if prune.due():
            await retention.prune_ledger(settings.ledger_retention_days, store.now())
        return 0

    return [start_campaigns, deliver_email, deliver_sms, guard_campaigns, finish_campaigns,
            expire_pending, prune_ledger]
