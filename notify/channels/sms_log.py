"""The embedded default SMS channel: every SMS it would have sent becomes one JSON object
on one line of ``settings.sms_log_file``, so development never texts a real person.

The file holds the recipients' numbers, like the email outbox holds addresses: it is the
development outbox, created readable by its owner only.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path

from notify import store
from notify.channels import DeliveryError, Receipt
from notify.channels.sms import SmsMessage
from notify.sms import segments


class LogSmsChannel:
    name = "log"

    def __init__(self, settings) -> None:  # noqa: ANN001 - notify.settings.Settings
        self.path: Path = settings.sms_log_file
        self.sender = settings.twilio_messaging_service_sid or settings.twilio_from or None
        # One writer at a time: lines of concurrent sends must not interleave.
        self._lock = asyncio.Lock()

    async def send(self, message: SmsMessage) -> Receipt:
        # Shaped like a Twilio Message SID so that status callbacks can be tried locally.
        sid = "SM" + uuid.uuid4().hex
        counted = segments.count(message.body)
        line = json.dumps({
            "sid": sid, "at": store.now().isoformat(), "to": message.to, "from": self.sender,
            "body": message.body, "encoding": counted.encoding, "segments": counted.segments,
            "status_callback": message.status_callback,
        }, ensure_ascii=False)
        try:
            async with self._lock:
                await asyncio.to_thread(_append, self.path, line + "\n")
        except OSError as exc:
            raise DeliveryError(f"cannot write {self.path.name}: {exc.strerror}",
                                temporary=True) from None
        return Receipt(self.name, sid)

    async def close(self) -> None:
        return None


def _append(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as handle:
        handle.write(line)
