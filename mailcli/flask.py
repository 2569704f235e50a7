"""`mailcli.flask`: a drop-in replacement for Flask-Mail, on mailcli's engine.

Change `from flask_mail import Mail, Message` to `from mailcli.flask import Mail, Message` and
an application keeps working: `Mail(app)` / `init_app`, `mail.send`, `mail.send_message`,
`with mail.connect() as conn: conn.send(msg)`, `with mail.record_messages() as outbox:`,
`Message(...)` with Flask-Mail's arguments, `msg.attach(...)`, `BadHeaderError`, the
`email_dispatched` signal and the `MAIL_*` configuration keys. What it gains: verified TLS, a
timeout (`MAIL_TIMEOUT`, 30 s), pipelined bulk sends (`conn.send_many`), inline images
(`attach(..., disposition="inline", headers={"Content-ID": "<logo>"})`), Message-IDs on the
sender's domain, and `MAIL_PROFILE` (the CLI's profiles and keyring). While sending is
suppressed (`MAIL_SUPPRESS_SEND`, by default `app.testing`) no connection is opened at all.

Install with `pip install 'mailcli[flask]'`.
"""

from __future__ import annotations

import mimetypes
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any

import blinker
from flask import Flask, current_app, has_app_context

from mailcli import compose
from mailcli.apiconf import ApiConfig
from mailcli.compose import Address
from mailcli.delivery import Delivery
from mailcli.envelope import Built
from mailcli.errors import BadHeaderError, ConfigError, DataError, MailcliError
from mailcli.mailer import Connection as MailerConnection
from mailcli.mailer import Mailer

if TYPE_CHECKING:
    from mailcli.dkimsign import DkimSigner

__all__ = [
    "Attachment",
    "BadHeaderError",
    "Connection",
    "Mail",
    "Message",
    "email_dispatched",
    "signals",
]

signals = blinker.Namespace()
email_dispatched = signals.signal(
    "email-dispatched",
    doc="Sent when a message is sent (or, while sending is suppressed, would have been): the "
    "app as sender, the message as `message`. `record_messages()` listens to it.",
)


class Attachment:
    """A file attached to a Message (Flask-Mail's class): name, type, data, disposition."""

    def __init__(
        self,
        filename: str | None = None,
        content_type: str | None = None,
        data: str | bytes | None = None,
        disposition: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if data is None:
            raise ValueError("The 'data' argument is required.")
        if content_type is None and filename is not None:
            content_type = mimetypes.guess_type(filename)[0]
        if content_type is None:
            content_type = "text/plain" if isinstance(data, str) else "application/octet-stream"
        self.filename = filename
        self.content_type = content_type
        self.data = data
        self.disposition = disposition or "attachment"
        self.headers: dict[str, str] = dict(headers or {})

    @property
    def content_id(self) -> str | None:
        """The Content-ID of an inline part (`<logo>` -> `logo`), None for an attachment."""
        cid = next((v for k, v in self.headers.items() if k.lower() == "content-id"), None)
        if cid is None or self.disposition != "inline":
            return None
        return cid.strip().removeprefix("<").removesuffix(">")

    def core(self) -> compose.Attachment:
        """As mailcli's attachment."""
        data = self.data.encode("utf-8") if isinstance(self.data, str) else bytes(self.data)
        return compose.Attachment(
            self.filename or "attachment", self.content_type, data, self.disposition
        )


class Message(compose.Message):
    """An email, with Flask-Mail's arguments (in its order) and attributes."""

    def __init__(
        self,
        subject: str = "",
        recipients: Sequence[Address] | None = None,
        body: str | None = None,
        html: str | None = None,
        alts: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        sender: Address | None = None,
        cc: Sequence[Address] | None = None,
        bcc: Sequence[Address] | None = None,
        attachments: Sequence[Attachment] | None = None,
        reply_to: Address | None = None,
        date: float | None = None,
        charset: str | None = None,
        extra_headers: Mapping[str, str] | None = None,
        mail_options: Sequence[str] | None = None,
        rcpt_options: Sequence[str] | None = None,
        **mailcli_options: Any,
    ) -> None:
        if sender is None and has_app_context():
            state = current_app.extensions.get("mail")
            sender = state.default_sender if state is not None else None
        if isinstance(sender, tuple):
            sender = f"{sender[0]} <{sender[1]}>"  # as Flask-Mail keeps it
        self.alts: dict[str, str] = dict(alts or {})
        super().__init__(
            subject,
            recipients,
            body,
            html if html is not None else self.alts.get("html"),
            sender,
            cc,
            bcc,
            None,
            reply_to,
            date,
            charset,
            extra_headers,
            **mailcli_options,
        )
        self.attachments: list[Attachment] = list(attachments or [])  # type: ignore[assignment]
        # mailcli chooses the ESMTP options itself (SMTPUTF8, 8BITMIME, SIZE); kept for
        # applications that read them back.
        self.mail_options = list(mail_options or [])
        self.rcpt_options = list(rcpt_options or [])

    @property
    def html(self) -> str | None:
        """The HTML part (Flask-Mail keeps it in `alts["html"]`)."""
        return self.alts.get("html")

    @html.setter
    def html(self, value: str | None) -> None:
        if value is None:
            self.alts.pop("html", None)
        else:
            self.alts["html"] = value

    @property
    def msgId(self) -> str | None:
        """The Message-ID: the one the application set, else mailcli's (on the sender's
        domain), known once the message has been built or sent."""
        return self.message_id

    @msgId.setter
    def msgId(self, value: str | None) -> None:
        self.message_id = value

    def attach(  # type: ignore[override]
        self,
        filename: str | None = None,
        content_type: str | None = None,
        data: str | bytes | None = None,
        disposition: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Attach a file; `disposition="inline"` with a Content-ID header makes an inline
        image for `<img src="cid:...">`."""
        self.attachments.append(Attachment(filename, content_type, data, disposition, headers))

    def has_bad_headers(self) -> bool:
        """True when a header value or address holds a line break."""
        try:
            self._core().check(self.sender)
        except BadHeaderError:
            return True
        except MailcliError:
            return False
        return False

    def is_bad_headers(self) -> bool:
        """The old name of `has_bad_headers`."""
        return self.has_bad_headers()

    def send(self, connection: Connection) -> Delivery | None:
        """Send over a `mail.connect()` connection."""
        return connection.send(self)

    def check(self, default_sender: Address | None = None) -> None:
        """Raise for what cannot be sent (see mailcli.Message.check)."""
        self._core().check(default_sender)

    def build(
        self,
        *,
        default_sender: Address | None = None,
        signer: DkimSigner | None = None,
        smtputf8: bool = True,
    ) -> Built:
        """The finished message (see mailcli.Message.build)."""
        core = self._core()
        built = core.build(default_sender=default_sender, signer=signer, smtputf8=smtputf8)
        self.message_id = core.message_id
        return built._replace(source=self)

    def _core(self) -> compose.Message:
        inline = {a.content_id: a for a in self.attachments if a.content_id}
        headers, message_id, unsubscribe, list_id = _own_headers(
            self.extra_headers, self.message_id, self.unsubscribe, self.list_id
        )
        core = compose.Message(
            self.subject,
            self.recipients,
            self.body,
            self.html,
            self.sender,
            self.cc,
            self.bcc,
            [a.core() for a in self.attachments if not a.content_id],
            self.reply_to,
            self.date,
            None,
            headers,
            inline_images={
                cid: a.data if isinstance(a.data, bytes) else a.data.encode()
                for cid, a in inline.items()
            },
            unsubscribe=unsubscribe,
            list_id=list_id,
        )
        core.message_id = message_id
        return core


def _own_headers(
    extra: Mapping[str, str] | None,
    message_id: str | None,
    unsubscribe: str | Sequence[str] | None,
    list_id: str | None,
) -> tuple[dict[str, str], str | None, str | Sequence[str] | None, str | None]:
    """Flask-Mail applications set some headers through `extra_headers` that mailcli writes
    itself: Message-ID, List-Unsubscribe (and -Post), List-Id and Date are taken from there."""
    headers: dict[str, str] = {}
    for name, value in (extra or {}).items():
        key = name.lower()
        if key == "message-id" and isinstance(value, str):
            message_id = value
        elif key == "list-unsubscribe" and isinstance(value, str):
            unsubscribe = [t.strip().strip("<>") for t in value.split(",") if t.strip()]
        elif key == "list-unsubscribe-post":
            pass  # mailcli writes it whenever the unsubscribe target is https
        elif key == "list-id" and isinstance(value, str):
            list_id = value
        elif key == "date":
            pass  # the moment the message is built (or `date=`)
        else:
            headers[name] = value
    return headers, message_id, unsubscribe, list_id


class _State:
    """What `init_app` read from the configuration (Flask-Mail's `app.extensions["mail"]`)."""

    def __init__(self, config: Mapping[str, Any], testing: bool) -> None:
        self.server: str = config.get("MAIL_SERVER", "127.0.0.1")
        self.username: str | None = config.get("MAIL_USERNAME")
        self.password: str | None = config.get("MAIL_PASSWORD")
        self.port: int = int(config.get("MAIL_PORT", 25))
        self.use_tls: bool = bool(config.get("MAIL_USE_TLS", False))
        self.use_ssl: bool = bool(config.get("MAIL_USE_SSL", False))
        self.default_sender: Address | None = config.get("MAIL_DEFAULT_SENDER")
        self.debug: int = int(config.get("MAIL_DEBUG", 0))
        self.max_emails: int | None = config.get("MAIL_MAX_EMAILS")
        self.suppress: bool = bool(config.get("MAIL_SUPPRESS_SEND", testing))
        self.ascii_attachments: bool = bool(config.get("MAIL_ASCII_ATTACHMENTS", False))
        self.timeout: float = float(config.get("MAIL_TIMEOUT", 30.0))
        self.profile: str | None = config.get("MAIL_PROFILE")
        # mailcli's own: an HTTP API provider instead of MAIL_SERVER (the token from
        # MAIL_API_TOKEN, else the provider's variable, the keyring or a token_command), with
        # its options (base_url, stream, tag, metadata, domain, region, token_command).
        self.api: ApiConfig | None = None
        provider = config.get("MAIL_API")
        if provider:
            options = dict(config.get("MAIL_API_OPTIONS") or {})
            try:
                self.api = ApiConfig(provider=str(provider), **options)
            except TypeError as exc:
                raise ConfigError(f"MAIL_API_OPTIONS: {exc}") from None
        self.api_token: str | None = config.get("MAIL_API_TOKEN")
        if self.use_tls and self.use_ssl:
            raise ConfigError("MAIL_USE_TLS and MAIL_USE_SSL: set one of them, not both")
        if self.max_emails is not None and int(self.max_emails) < 1:
            raise ConfigError(f"MAIL_MAX_EMAILS must be at least 1, not {self.max_emails!r}")
        self._mailer: Mailer | None = None

    @property
    def mailer(self) -> Mailer:
        """The mailcli Mailer of this configuration, made on first use."""
        if self._mailer is None:
            if self.suppress:
                # Nothing is sent: no server, profile or password is needed (a test machine
                # has none); the messages are still built, so a bad one fails here too.
                self._mailer = Mailer(outbox=True, default_sender=self.default_sender)
                return self._mailer
            if self.api is not None:
                mailer = Mailer(
                    api=self.api,
                    token=self.api_token,
                    timeout=self.timeout,
                    default_sender=self.default_sender,
                )
            elif self.profile is not None:
                mailer = Mailer.from_profile(self.profile)
                mailer.default_sender = self.default_sender or mailer.default_sender
            else:
                security = "tls" if self.use_ssl else "starttls" if self.use_tls else "none"
                mailer = Mailer(
                    self.server,
                    self.port,
                    security,
                    self.username,
                    self.password,
                    self.timeout,
                    self.default_sender,
                )
            self._mailer = mailer
        return self._mailer


class Connection:
    """One connection to the server, from `mail.connect()`; none at all while suppressed."""

    def __init__(self, state: _State) -> None:
        self.state = state
        self.num_emails = 0
        self._connection: MailerConnection | None = None

    def __enter__(self) -> Connection:
        if not self.state.suppress:
            self._connection = self.state.mailer.connect()
            self._connection.__enter__()
        self.num_emails = 0
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def send(self, message: Message, envelope_from: Address | None = None) -> Delivery | None:
        """Send one message; its Delivery (None while suppressed). Refusals are data."""
        return self.send_many([message], envelope_from=envelope_from)[0]

    def send_many(
        self, messages: Sequence[Message], envelope_from: Address | None = None
    ) -> list[Delivery | None]:
        """Send messages over this connection, pipelined where offered."""
        for message in messages:
            if not message.send_to:
                raise DataError("the message has no recipients (recipients, cc or bcc)")
            if message.date is None:
                message.date = time.time()
        built = self.state.mailer.build(messages)
        if envelope_from is not None:
            mail_from = compose.Message._mailbox(envelope_from, "envelope_from").addr
            built = [b._replace(mail_from=mail_from) for b in built]
        results: list[Delivery | None] = []
        limit = int(self.state.max_emails or 0)
        start = 0
        while start < len(built):
            if limit and self.num_emails >= limit:
                # MAIL_MAX_EMAILS: a new connection after that many messages (servers that
                # limit messages per session), opened when the next one is sent.
                self.num_emails = 0
                if self._connection is not None:
                    self._connection.close()
                    self._connection.transport.open()
            room = limit - self.num_emails if limit else len(built)
            part = built[start : start + room]
            if self._connection is None:
                results.extend([None] * len(part))
            else:
                results.extend(self._connection.deliver(part))
            self._dispatched(messages[start : start + len(part)], results[start:])
            self.num_emails += len(part)
            start += len(part)
        return results

    def send_message(self, *args: Any, **kwargs: Any) -> Delivery | None:
        """Shortcut for `send(Message(*args, **kwargs))`."""
        return self.send(Message(*args, **kwargs))

    def _dispatched(self, messages: Sequence[Message], results: Sequence[Delivery | None]) -> None:
        app = current_app._get_current_object() if has_app_context() else None  # type: ignore[attr-defined]
        for message, delivery in zip(messages, results, strict=True):
            if delivery is None or delivery.ok:  # suppressed, or taken by the server
                email_dispatched.send(app, message=message)


class Mail:
    """The Flask extension: `Mail(app)` or `mail = Mail(); mail.init_app(app)`."""

    def __init__(self, app: Flask | None = None) -> None:
        self.app = app
        self.state: _State | None = self.init_app(app) if app is not None else None

    def init_app(self, app: Flask) -> _State:
        """Read the MAIL_* configuration of `app`."""
        state = _State(app.config, app.testing)
        app.extensions = getattr(app, "extensions", {})
        app.extensions["mail"] = state
        return state

    def __getattr__(self, name: str) -> Any:
        # Flask-Mail exposes the configuration as attributes (mail.server, mail.suppress).
        state = self.__dict__.get("state")
        if state is None:
            raise AttributeError(name)
        return getattr(state, name)

    def _state(self) -> _State:
        app = self.app or current_app
        try:
            state: _State = app.extensions["mail"]
        except KeyError:
            raise RuntimeError(
                "The current application was not configured with mailcli.flask"
            ) from None
        return state

    @contextmanager
    def record_messages(self) -> Iterator[list[Message]]:
        """The messages sent within the block, as `email_dispatched` reports them."""
        outbox: list[Message] = []

        def record(app: Any, message: Message, **extra: Any) -> None:
            outbox.append(message)

        with email_dispatched.connected_to(record):
            yield outbox

    def connect(self) -> Connection:
        """One connection for many messages: `with mail.connect() as conn:`."""
        return Connection(self._state())

    def send(self, message: Message) -> Delivery | None:
        """Send one message (over a connection of its own); None while suppressed."""
        message.check(self._state().mailer.default_sender)  # before any connection
        with self.connect() as connection:
            return connection.send(message)

    def send_message(self, *args: Any, **kwargs: Any) -> Delivery | None:
        """Shortcut for `send(Message(*args, **kwargs))`."""
        return self.send(Message(*args, **kwargs))
