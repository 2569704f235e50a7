"""`mailcli.django.EmailBackend`: Django's mail sent through mailcli's builder and transport.

    EMAIL_BACKEND = "mailcli.django.EmailBackend"

It reads Django's usual settings (`EMAIL_HOST`, `EMAIL_PORT`, `EMAIL_HOST_USER`,
`EMAIL_HOST_PASSWORD`, `EMAIL_USE_TLS`, `EMAIL_USE_SSL`, `EMAIL_TIMEOUT`) and takes the same
keyword arguments as Django's SMTP backend. `send_messages()` sends the whole list over one
connection, pipelined where the server offers it, and returns how many were sent; a refused
recipient is not an exception (as with every mailcli transport), and `fail_silently` applies to
what stops the connection (server down, login refused, a bad header). TLS certificates are
verified. Django's own `locmem` backend stays what tests use (`django.core.mail.outbox`).

Install with `pip install 'mailcli[django]'`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from email.mime.base import MIMEBase
from email.utils import parseaddr
from typing import Any

from django.conf import settings
from django.core.mail import BadHeaderError as DjangoBadHeaderError
from django.core.mail import EmailMessage
from django.core.mail.backends.base import BaseEmailBackend

from mailcli.compose import Attachment, Message
from mailcli.errors import BadHeaderError as MailcliBadHeaderError
from mailcli.errors import ConfigError, MailcliError
from mailcli.mailer import Connection, Mailer

__all__ = ["BadHeaderError", "EmailBackend", "to_message"]


class BadHeaderError(MailcliBadHeaderError, DjangoBadHeaderError):  # type: ignore[misc]
    """A line break in a header or address: both Django's and mailcli's BadHeaderError."""


class EmailBackend(BaseEmailBackend):  # type: ignore[misc]
    """A Django email backend on one persistent, pipelined mailcli connection."""

    def __init__(
        self,
        host: str | None = None,
        port: int | None = None,
        username: str | None = None,
        password: str | None = None,
        use_tls: bool | None = None,
        fail_silently: bool = False,
        use_ssl: bool | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(fail_silently=fail_silently, **kwargs)
        use_tls = settings.EMAIL_USE_TLS if use_tls is None else use_tls
        use_ssl = settings.EMAIL_USE_SSL if use_ssl is None else use_ssl
        if use_tls and use_ssl:
            # Django's own backend refuses the pair the same way.
            raise ValueError(
                "EMAIL_USE_TLS/EMAIL_USE_SSL are mutually exclusive, so only set one of those "
                "settings to True."
            )
        username = settings.EMAIL_HOST_USER if username is None else username
        password = settings.EMAIL_HOST_PASSWORD if password is None else password
        timeout = settings.EMAIL_TIMEOUT if timeout is None else timeout
        self.mailer = Mailer(
            host or settings.EMAIL_HOST,
            int(port or settings.EMAIL_PORT),
            "tls" if use_ssl else "starttls" if use_tls else "none",
            username or None,
            password or None,
            float(timeout) if timeout is not None else 30.0,
            default_sender=settings.DEFAULT_FROM_EMAIL,
            # Django decides about recording (the locmem backend); this backend always sends.
            outbox=False,
        )
        self.connection: Connection | None = None
        self._lock = threading.RLock()

    def open(self) -> bool | None:
        """Open the connection if it is not open; True if this call opened it."""
        if self.connection is not None:
            return False
        connection = self.mailer.connect()
        try:
            connection.__enter__()
        except MailcliError:
            if not self.fail_silently:
                raise
            return None
        self.connection = connection
        return True

    def close(self) -> None:
        """Close the connection (QUIT); never raises."""
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.close()

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        """Send every message over one connection; return how many were sent."""
        messages = [m for m in email_messages if m.recipients()]
        if not messages:
            return 0
        with self._lock:
            try:
                converted = [to_message(m) for m in messages]
            except MailcliError:
                if not self.fail_silently:
                    raise
                return 0
            opened = self.open()
            if self.connection is None:
                return 0  # failed silently
            try:
                deliveries = self.connection.send_many(converted)
            except MailcliError:
                if not self.fail_silently:
                    raise
                return 0
            finally:
                if opened:
                    self.close()
        return sum(1 for d in deliveries if d.ok)


def to_message(email: EmailMessage) -> Message:
    """A Django EmailMessage (or EmailMultiAlternatives) as a mailcli Message."""
    try:
        message = _convert(email)
        message.check()  # before any connection: a bad header never reaches a server
        return message
    except MailcliBadHeaderError as exc:
        raise BadHeaderError(exc.message, recipient=exc.recipient) from None


def _convert(email: EmailMessage) -> Message:
    headers = dict(email.extra_headers)
    # Django lets extra_headers replace From, To, Cc and Reply-To as written in the message;
    # the envelope stays to + cc + bcc, as Django's SMTP backend sends it.
    sender = headers.pop("From", None) or email.from_email
    headers.pop("To", None)
    headers.pop("Cc", None)
    reply_to = headers.pop("Reply-To", None) or (", ".join(email.reply_to) or None)
    message_id = headers.pop("Message-ID", None)
    headers.pop("Date", None)  # mailcli writes the Date of the moment it builds
    body: str | None = email.body
    html: str | None = None
    if email.content_subtype == "html":
        body, html = None, email.body
    for alternative in getattr(email, "alternatives", []):
        content, mimetype = alternative[0], alternative[1]
        if mimetype == "text/html" and html is None:
            html = content if isinstance(content, str) else content.decode("utf-8")
        else:
            raise ConfigError(
                f"mailcli.django: an alternative of type {mimetype} cannot be sent "
                "(text/plain and one text/html part are)"
            )
    message = Message(
        str(email.subject),
        list(email.to),
        body,
        html,
        sender,
        list(email.cc),
        list(email.bcc),
        [_attachment(a) for a in email.attachments],
        _first_address(reply_to),
        extra_headers=headers,
    )
    message.message_id = message_id
    return message


def _first_address(value: str | None) -> str | None:
    # mailcli writes one Reply-To address; Django allows a list.
    if not value:
        return None
    name, addr = parseaddr(value.split(",")[0])
    return f"{name} <{addr}>" if name else addr


def _attachment(item: Any) -> Attachment:
    if isinstance(item, MIMEBase):
        payload = item.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else str(item.get_payload()).encode()
        return Attachment(item.get_filename() or "attachment", item.get_content_type(), data)
    filename, content, mimetype = item[0], item[1], item[2]
    data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
    return Attachment(filename or "attachment", mimetype or "application/octet-stream", data)
