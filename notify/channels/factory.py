"""Builds the configured email channel and DKIM signer."""

from __future__ import annotations

from notify.channels import EmailChannel
from notify.channels.email_file import FileEmailChannel
from notify.settings import Settings


def email_channel(settings: Settings) -> EmailChannel:
    if settings.email_transport == "smtp":
        from notify.channels.email_smtp import SmtpEmailChannel

        return SmtpEmailChannel(settings)
    return FileEmailChannel(settings.outbox_dir)


def signer(settings: Settings):  # noqa: ANN201 - a DkimSigner or None
    """The DKIM signer, or None when no DKIM key is configured."""
    if settings.dkim_key_file is None:
        return None
    from notify.dkim import DkimSigner

    return DkimSigner.from_settings(settings)
