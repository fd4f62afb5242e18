"""Which transport sends a channel, from the settings."""

from __future__ import annotations

from consentry.delivery.transport import Transport
from consentry.domain.channels import Channel
from consentry.domain.errors import ConsentryError
from consentry.settings import Settings


def transport_for(channel: Channel | str, settings: Settings) -> Transport:
    channel = Channel(channel)
    if channel is Channel.EMAIL:
        from consentry.delivery.email_transport import DkimSigner, SmtpTransport, parse_smtp_url

        if not settings.smtp_url:
            raise ConsentryError("no SMTP relay configured: set CONSENTRY_SMTP_URL "
                                 "(smtp://host:port) or smtp_url in consentry.toml")
        return SmtpTransport(parse_smtp_url(settings.smtp_url), settings.sending,
                             email_from=settings.email_from,
                             dkim=DkimSigner.from_settings(settings.sending))
    if channel is Channel.SMS:
        from consentry.delivery.sms_transport import sms_transport

        return sms_transport(settings)
    from consentry.delivery.push_transport import push_transport

    return push_transport(settings)
