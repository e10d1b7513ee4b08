"""The periodic jobs the sender runs on every pass."""

from __future__ import annotations

from notify import store
from notify.sender import Job
from notify.settings import Settings


def jobs(settings: Settings) -> list[Job]:
    async def expire_pending() -> int:
        return await store.expire_pending(settings.topics, days=settings.pending_days,
                                          default_policy=settings.policy_version)

    return [expire_pending]
