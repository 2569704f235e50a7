"""SMTP transport: one persistent connection that carries many messages.

smtplib does the connection, TLS and AUTH; the per-message transaction is driven here, command by
command, so that every recipient gets its own reply and so that the moment the message data has been
handed to the server is known exactly (after it, a lost reply means `unknown`, never a resend).
"""

from __future__ import annotations

import smtplib
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from mailcli.errors import AuthError, UnavailableError
from mailcli.message import Built

DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    """Where and how to connect: the resolved result of profile, campaign, env and flags."""

    host: str
    port: int
    security: str = "starttls"
    username: str | None = None
    timeout: float = 30.0
    verify: bool = True
    local_hostname: str | None = None

    @property
    def endpoint(self) -> str:
        """host:port, for messages."""
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Reply:
    """An SMTP reply: code and text."""

    code: int
    text: str

    @property
    def ok(self) -> bool:
        """2xx or 3xx."""
        return 200 <= self.code < 400

    @property
    def temporary(self) -> bool:
        """4xx: try again later."""
        return 400 <= self.code < 500

    def __str__(self) -> str:
        return f"{self.code} {self.text}".strip()


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one message: the deciding reply, and the recipients the server accepted."""

    reply: Reply
    accepted: tuple[str, ...] = ()
    refused: dict[str, Reply] = field(default_factory=dict)

    @property
    def delivered(self) -> bool:
        """The server took responsibility for the message (250 after the data)."""
        return self.reply.code // 100 == 2 and bool(self.accepted)


class ConnectionLost(Exception):
    """The connection broke during a transaction.

    `handed_over` is True when the whole message had been sent and only the final reply was lost:
    the server may have queued it, so the message must be treated as `unknown`, never resent.
    """

    def __init__(self, reason: str, *, handed_over: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.handed_over = handed_over


def tls_context(verify: bool = True) -> ssl.SSLContext:
    """A client TLS context: system trust store (or SSL_CERT_FILE), hostname checked."""
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class SmtpConnection:
    """A persistent SMTP session; `send()` is called once per message."""

    def __init__(
        self,
        settings: SmtpSettings,
        *,
        password: Callable[[], str] | None = None,
    ) -> None:
        self.settings = settings
        self._password = password
        self._smtp: smtplib.SMTP | None = None
        self.connections = 0
        self.extensions: dict[str, str] = {}

    @property
    def is_open(self) -> bool:
        """True while a session is established."""
        return self._smtp is not None

    def open(self) -> None:
        """Connect, say EHLO, start TLS and log in as the settings say; raise on failure."""
        s = self.settings
        local = s.local_hostname or socket.gethostname()
        try:
            if s.security == "tls":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    s.host,
                    s.port,
                    local_hostname=local,
                    timeout=s.timeout,
                    context=tls_context(s.verify),
                )
            else:
                smtp = smtplib.SMTP(s.host, s.port, local_hostname=local, timeout=s.timeout)
            smtp.ehlo_or_helo_if_needed()
            if s.security == "starttls":
                if not smtp.has_extn("starttls"):
                    smtp.close()
                    raise UnavailableError(
                        f"{s.endpoint} does not offer STARTTLS",
                        hint="use --security tls for port 465, or --security none only for a "
                        "server on this machine",
                    )
                smtp.starttls(context=tls_context(s.verify))
                smtp.ehlo()
        except ssl.SSLCertVerificationError as exc:
            raise UnavailableError(
                f"TLS certificate of {s.endpoint} not trusted: {exc.verify_message}"
            ) from None
        except ssl.SSLError as exc:
            raise UnavailableError(f"TLS with {s.endpoint} failed: {exc.reason or exc}") from None
        except smtplib.SMTPConnectError as exc:
            raise UnavailableError(
                f"{s.endpoint} refused the session: {_reply_text(exc)}"
            ) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise UnavailableError(f"cannot connect to {s.endpoint}: {_os_reason(exc)}") from None
        self._smtp = smtp
        self.connections += 1
        self.extensions = dict(smtp.esmtp_features)
        if s.username:
            self._login(smtp)

    def _login(self, smtp: smtplib.SMTP) -> None:
        s = self.settings
        if self._password is None:
            raise AuthError(f"a username is set for {s.endpoint} but no password source")
        try:
            smtp.login(s.username or "", self._password())
        except smtplib.SMTPAuthenticationError as exc:
            self.close()
            raise AuthError(
                f"{s.endpoint} refused the login for {s.username}: {_reply_text(exc)}"
            ) from None
        except smtplib.SMTPNotSupportedError:
            self.close()
            raise AuthError(f"{s.endpoint} does not offer AUTH") from None
        except smtplib.SMTPException as exc:
            self.close()
            raise AuthError(f"login to {s.endpoint} failed: {exc}") from None

    def send(self, message: Built) -> Outcome:
        """Run one MAIL/RCPT/DATA transaction; refusals are data, a broken link ConnectionLost."""
        smtp = self._smtp
        if smtp is None:
            raise ConnectionLost("not connected", handed_over=False)
        handed_over = False
        try:
            options = ["SMTPUTF8"] if message.smtputf8 and smtp.has_extn("smtputf8") else []
            if not message.data.isascii() and smtp.has_extn("8bitmime"):
                options.append("BODY=8BITMIME")  # declared only for the 8-bit data it covers
            if smtp.has_extn("size"):
                options.append(f"SIZE={len(message.data)}")
            code, text = smtp.mail(message.mail_from, options)
            if code != 250:
                return self._refused(Reply(code, _decode(text)))
            accepted: list[str] = []
            refused: dict[str, Reply] = {}
            for rcpt in message.rcpt_to:
                code, text = smtp.rcpt(rcpt)
                if code in (250, 251):
                    accepted.append(rcpt)
                else:
                    refused[rcpt] = Reply(code, _decode(text))
            if not accepted:
                first = next(iter(refused.values()))
                return self._refused(first, refused=refused)
            smtp.putcmd("data")
            code, text = smtp.getreply()
            if code != 354:
                return self._refused(Reply(code, _decode(text)), refused=refused)
            smtp.send(_dot_stuff(message.data) + b".\r\n")
            # From here on the server may have the whole message: a lost reply is 'unknown'.
            handed_over = True
            code, text = smtp.getreply()
            return Outcome(Reply(code, _decode(text)), tuple(accepted), refused)
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            self._drop()
            raise ConnectionLost(_os_reason(exc), handed_over=handed_over) from None

    def _refused(self, reply: Reply, refused: dict[str, Reply] | None = None) -> Outcome:
        """Reset the transaction after a refusal so the next message starts clean."""
        smtp = self._smtp
        assert smtp is not None
        if reply.code == 421:
            self._drop()  # the server is closing the channel; RSET would only fail
        else:
            try:
                smtp.rset()
            except (smtplib.SMTPException, OSError):
                self._drop()
        return Outcome(reply, (), refused or {})

    def _drop(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.close()
            finally:
                self._smtp = None

    def close(self) -> None:
        """Say QUIT and close; never raises."""
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()

    def __enter__(self) -> SmtpConnection:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _dot_stuff(data: bytes) -> bytes:
    """Transparency (RFC 5321 4.5.2): double a leading dot, end with CRLF."""
    if data.startswith(b"."):
        data = b"." + data
    data = data.replace(b"\r\n.", b"\r\n..")
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def _decode(text: bytes | str) -> str:
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else text


def _reply_text(exc: smtplib.SMTPResponseException) -> str:
    return f"{exc.smtp_code} {_decode(exc.smtp_error)}"


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or exc.__class__.__name__
