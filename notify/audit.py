"""The admin audit log: who published, created, sent, paused or cancelled what, and when.

Written in the same transaction as the action it records, so an action without its entry
(or an entry for an action that was rolled back) cannot exist.
"""

from __future__ import annotations

from typing import Any

from notify.models import AuditEntry


async def record(key_id: str, action: str, target: str | None,
                 detail: dict[str, Any] | None = None) -> AuditEntry:
    return await AuditEntry.create(key_id=key_id, action=action, target=target,
                                   detail=detail or {})


async def entries(*, target: str | None = None, before: int | None = None,
                  limit: int = 50) -> list[AuditEntry]:
    """Newest first; ``before`` (an entry id) pages back."""
    query = AuditEntry.all()
    if target is not None:
        query = query.filter(target=target)
    if before is not None:
        query = query.filter(id__lt=before)
    return await query.order_by("-id").limit(limit)
