"""The periodic jobs the sender runs on every pass."""

from __future__ import annotations

from notify import store
from notify.postman import Postman
from notify.sender import Job
from notify.settings import Settings


def jobs(settings: Settings, postman: Postman) -> list[Job]:
    async def deliver_email() -> int:
        return await postman.deliver_due()

    async def expire_pending() -> int:
        return await store.expire_pending(settings.topics, days=settings.pending_days,
                                          default_policy=settings.policy_version)

    return [deliver_email, expire_pending]
