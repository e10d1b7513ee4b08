"""The periodic jobs the sender runs on every pass."""

from __future__ import annotations

import time

from notify import campaigns, retention, store
from notify.postman import Postman
from notify.sender import Job
from notify.settings import Settings
from notify.sms.courier import SmsCourier

#: How often the reputation guards look at the sending campaigns.
GUARD_SECONDS = 5.0
#: Deliveries a worker claims at once: a pass also runs the other jobs' queries, so fewer,
#: fuller passes (bench/campaign_send.py). A crashed worker's claims are at most this many.
EMAIL_BATCH = 200
#: How often a worker that still finds full batches looks for campaigns that are done.
FINISH_SECONDS = 5.0
#: How often pending requests past their time are withdrawn: a period counted in days.
EXPIRE_SECONDS = 60.0
#: How often the ledger's retention is applied (when a retention period is set).
PRUNE_SECONDS = 3600.0


def jobs(settings: Settings, postman: Postman, courier: SmsCourier | None = None) -> list[Job]:
    async def start_campaigns() -> int:
        return await campaigns.start_scheduled(settings)

    drained = [True]

    async def deliver_email() -> int:
        done = await postman.deliver_due(EMAIL_BATCH)
        drained[0] = done < EMAIL_BATCH
        return done

    async def deliver_sms() -> int:
        return await courier.deliver_due() if courier is not None else 0

    guarded = [0.0]

    async def guard_campaigns() -> int:
        # Every few seconds, not every pass (a pass is one batch): the rates move slowly
        # and counting a big campaign's deliveries is not free. Counted as no work.
        if time.monotonic() - guarded[0] >= GUARD_SECONDS:
            guarded[0] = time.monotonic()
            await campaigns.check_guards(settings)
        return 0

    finished = [0.0]

    async def finish_campaigns() -> int:
        # When the email queue ran dry, or every few seconds: looking for a campaign's open
        # deliveries scans its rows, 0.2 s at 800,000, which on every pass (a batch of
        # 200) cost more than the batch. While full batches come, a campaign finishing
        # can wait a few seconds to be marked done. Counted as no work.
        if drained[0] or time.monotonic() - finished[0] >= FINISH_SECONDS:
            finished[0] = time.monotonic()
            await campaigns.finish_done()
        return 0

    expired = [float("-inf")]

    async def expire_pending() -> int:
        # Once a minute, not every pass: finding pending requests reads the consents
        # table, 3 rows a user (bench/campaign_send.py --growth: with a million users, on
        # every pass, it took the send from ~1,000 to ~140 messages a second).
        if time.monotonic() - expired[0] < EXPIRE_SECONDS:
            return 0
        expired[0] = time.monotonic()
        done = await store.expire_pending(settings.topics, days=settings.pending_days,
                                          default_policy=settings.policy_version)
        if done:
            expired[0] = float("-inf")  # a batch of 500 was full: the next pass goes on
        return done

    pruned = [float("-inf")]

    async def prune_ledger() -> int:
        # Hourly is plenty for a period counted in days; counted as no work, like the guard.
        if time.monotonic() - pruned[0] >= PRUNE_SECONDS:
            pruned[0] = time.monotonic()
            await retention.prune_ledger(settings.ledger_retention_days, store.now())
        return 0

    return [start_campaigns, deliver_email, deliver_sms, guard_campaigns, finish_campaigns,
            expire_pending, prune_ledger]
