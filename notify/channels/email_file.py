"""The embedded default email channel: every message becomes one ``.eml`` file in the
outbox folder, exactly the bytes SMTP would carry, so development never reaches a person.
"""

from __future__ import annotations

import asyncio
import errno
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

from notify.channels import DeliveryError, Envelope, Receipt


class FileEmailChannel:
    name = "file"
    #: Files written at once (each in a thread; the default executor has at least 5).
    concurrency = 8

    def __init__(self, outbox: Path) -> None:
        self.outbox = outbox

    async def send(self, envelope: Envelope) -> Receipt:
        # The envelope sender goes where the receiving MTA would put it; the rest are the
        # bytes SMTP would carry.
        data = f"Return-Path: <{envelope.mail_from}>\r\n".encode() + envelope.data
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        name = f"{stamp}-{uuid.uuid4().hex[:8]}.eml"
        try:
            await asyncio.to_thread(_write_atomically, self.outbox / name, data)
        except OSError as exc:
            # A full disk or a missing permission may pass; the message was not written.
            # The errno's name (ENOSPC, EACCES) is what an operator searches for.
            code = errno.errorcode.get(exc.errno or 0, "OSError")
            raise DeliveryError(f"cannot write {name} to {self.outbox}: {code} "
                                f"({exc.strerror or exc})", temporary=True) from None
        return Receipt(self.name, name)

    async def close(self) -> None:
        return None


def _write_atomically(path: Path, data: bytes) -> None:
    # Written under a temporary name and renamed, so a reader never sees half a message.
    # A write that fails (a full disk) removes what it wrote: no truncated message is left
    # behind, under any name.
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part")
    try:
        with partial.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        partial.replace(path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
