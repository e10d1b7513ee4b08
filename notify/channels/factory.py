"""Builds the configured email channel."""

from __future__ import annotations

from notify.channels import EmailChannel
from notify.channels.email_file import FileEmailChannel
from notify.settings import ConfigError, Settings


def email_channel(settings: Settings) -> EmailChannel:
    if settings.email_transport == "file":
        return FileEmailChannel(settings.outbox_dir)
    # The SMTP channel arrives with the email delivery work; until then say so plainly.
    raise ConfigError("NOTIFY_EMAIL_TRANSPORT: 'smtp' is not available in this version yet")
