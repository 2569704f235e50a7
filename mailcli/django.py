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

import mimetypes
import threading
from collections.abc import Sequence
from email.mime.base import MIMEBase
from email.utils import formataddr, getaddresses, parseaddr
from typing import Any

from django.conf import settings
from django.core.mail import BadHeaderError as DjangoBadHeaderError
from django.core.mail import EmailMessage
from django.core.mail.backends.base import BaseEmailBackend

from mailcli.apiconf import ApiConfig
from mailcli.compose import Attachment, Message
from mailcli.errors import BadHeaderError as MailcliBadHeaderError
from mailcli.errors import ConfigError, MailcliError
from mailcli.mailer import Connection, Mailer
from mailcli.message import smtp_address

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
        api = getattr(settings, "MAILCLI_API", None)
        if api:
            # mailcli's own setting: an HTTP API provider instead of EMAIL_HOST, a provider's
            # name or a dict of `api:` keys; the token from MAILCLI_API_TOKEN, else the
            # provider's variable, the keyring or token_command.
            try:
                config = ApiConfig(api) if isinstance(api, str) else ApiConfig(**api)
            except TypeError as exc:
                raise ConfigError(f"MAILCLI_API: {exc}") from None
            self.mailer = Mailer(
                api=config,
                token=getattr(settings, "MAILCLI_API_TOKEN", None) or None,
                timeout=float(timeout) if timeout is not None else 30.0,
                default_sender=settings.DEFAULT_FROM_EMAIL,
                outbox=False,
            )
        else:
            self.mailer = self._smtp_mailer(
                host, port, use_tls, use_ssl, username, password, timeout
            )
        self.connection: Connection | None = None
        self._lock = threading.RLock()

    @staticmethod
    def _smtp_mailer(
        host: str | None,
        port: int | None,
        use_tls: bool,
        use_ssl: bool,
        username: str | None,
        password: str | None,
        timeout: float | None,
    ) -> Mailer:
        return Mailer(
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
                built = self.mailer.build(converted)
                # The envelope sender is `from_email` even when a From header replaces the
                # one written (Django's SMTP backend sends it so).
                built = [
                    b._replace(mail_from=_envelope_sender(m, b.mail_from))
                    for m, b in zip(messages, built, strict=True)
                ]
                deliveries = self.connection.deliver(built)
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
    # Header names are case-insensitive; Django matches them so too.
    headers = dict(email.extra_headers)
    special = {k.lower(): k for k in headers}

    def take(name: str) -> str | None:
        key = special.pop(name.lower(), None)
        return str(headers.pop(key)) if key is not None else None

    for name in ("To", "Cc"):
        if name.lower() in special:
            raise ConfigError(
                f"mailcli.django: a {name} header in `headers` cannot be sent (mailcli writes "
                f"{name} from the message's `{name.lower()}` list)"
            )
    # A From header replaces the one written; the envelope sender stays `from_email`, as with
    # Django's SMTP backend (see EmailBackend.send_messages).
    sender = take("From") or email.from_email
    reply_to = take("Reply-To") or (", ".join(email.reply_to) or None)
    message_id = take("Message-ID")
    take("Date")  # mailcli writes the Date of the moment it builds
    body: str | None = email.body
    html: str | None = None
    if email.content_subtype == "html":
        body, html = None, email.body
    for alternative in getattr(email, "alternatives", []):
        content, mimetype = alternative[0], alternative[1]
        text = content if isinstance(content, str) else bytes(content).decode("utf-8")
        if mimetype == "text/html" and html is None:
            html = text
        elif mimetype == "text/plain" and body is None:
            body = text
        else:
            raise ConfigError(
                f"mailcli.django: an alternative of type {mimetype} cannot be sent "
                "(one text/plain and one text/html part can)"
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
    # mailcli writes one Reply-To address; Django allows a list (quoted names may hold commas).
    found = [(name, addr) for name, addr in getaddresses([value or ""]) if addr]
    if not found:
        return value or None
    name, addr = found[0]
    return formataddr((name, addr)) if name else addr  # quotes a name that needs it


def _attachment(item: Any) -> Attachment:
    if isinstance(item, MIMEBase):
        if item.is_multipart():
            raise ConfigError(
                "mailcli.django: a multipart MIMEBase attachment cannot be sent; attach its "
                "parts, or the message as message/rfc822 bytes"
            )
        payload = item.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else str(item.get_payload()).encode()
        return Attachment(item.get_filename() or "attachment", item.get_content_type(), data)
    filename, content, mimetype = item[0], item[1], item[2]
    data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
    if not mimetype and filename:
        mimetype = mimetypes.guess_type(filename)[0]  # as Django does
    return Attachment(filename or "attachment", mimetype or "application/octet-stream", data)


def _envelope_sender(email: EmailMessage, written: str) -> str:
    addr = parseaddr(str(email.from_email or ""))[1]
    return smtp_address(addr) if addr else written
