"""SMTP transport: one persistent connection that carries many messages.

smtplib does the connection, TLS and AUTH; the per-message transaction is driven here, command by
command, so that every recipient gets its own reply and so that the moment the message data has been
handed to the server is known exactly (after it, a lost reply means `unknown`, never a resend).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import smtplib
import socket
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

from mailcli.delivery import WINDOW, NotSent, Pace, Refusal, Result, lost, replied
from mailcli.envelope import Built, check_envelope
from mailcli.errors import AuthError, CertificateError, ConfigError, UnavailableError
from mailcli.smtpproto import ConnectionLost, Outcome, Reply, Transactions, Write

log = logging.getLogger(__name__)
DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}
AUTH_MECHANISMS = ("plain", "login", "cram-md5", "xoauth2")
# PLAIN first (it runs inside TLS); CRAM-MD5 last, as it needs the server to keep the password.
PREFERRED_AUTH = ("PLAIN", "LOGIN", "CRAM-MD5")
Transcript = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    """Where and how to connect: the resolved result of profile, campaign, env and flags."""

    host: str
    port: int
    security: str = "starttls"
    username: str | None = None
    timeout: float = 30.0
    verify: bool = True
    auth: str | None = None  # a mechanism to insist on; None: the best the server offers
    allow_plaintext_auth: bool = False
    local_hostname: str | None = None

    @property
    def endpoint(self) -> str:
        """host:port, for messages."""
        return f"{self.host}:{self.port}"


@dataclass
class SessionInfo:
    """What establishing a session showed: the raw material of `mailcli test-connection`."""

    peer: str | None = None
    banner: str | None = None
    capabilities_before_tls: dict[str, str] = field(default_factory=dict)
    capabilities: dict[str, str] = field(default_factory=dict)
    tls_version: str | None = None
    cipher: str | None = None
    cipher_bits: int | None = None
    certificate_der: bytes | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)

    def phase(self, name: str, started: float) -> None:
        """Record how long a phase took, in milliseconds."""
        self.timings_ms[name] = round((time.perf_counter() - started) * 1000, 1)


def tls_context(verify: bool = True) -> ssl.SSLContext:
    """A client TLS context: system trust store (or SSL_CERT_FILE), hostname checked."""
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def is_loopback(address: str | None) -> bool:
    """True for 127.0.0.0/8 and ::1 (the peer address, not a name that could resolve anywhere)."""
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1 from a dual-stack socket
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


class _TracedMixin:
    """Writes the SMTP dialogue to a transcript, with AUTH secrets and message data left out."""

    _transcript: Transcript | None = None
    _in_auth = False
    in_data = False

    def _trace(self, line: str) -> None:
        if self._transcript is not None:
            self._transcript(line)

    def send(self, s: ReadableBuffer | str) -> None:
        if self._transcript is not None and self.in_data:
            size = len(s) if isinstance(s, str | bytes) else memoryview(s).nbytes
            self._trace(f"C: <message data, {size} bytes>")
        elif self._transcript is not None:
            text = s if isinstance(s, str) else bytes(s).decode("utf-8", "replace")
            if text[:5].upper() == "AUTH ":
                words = text.split()
                hidden = " <redacted>" if len(words) > 2 else ""
                self._trace(f"C: AUTH {words[1] if len(words) > 1 else ''}{hidden}")
                self._in_auth = True
            elif self._in_auth:
                self._trace("C: <redacted>")
            else:
                for line in text.rstrip().split("\r\n"):  # a pipelined write holds several
                    self._trace(f"C: {line}")
        super().send(s)  # type: ignore[misc]

    def getreply(self) -> tuple[int, bytes]:
        code, message = super().getreply()  # type: ignore[misc]
        if self._transcript is not None:
            lines = message.decode("utf-8", "replace").split("\n") or [""]
            for i, line in enumerate(lines):
                sep = " " if i == len(lines) - 1 else "-"
                self._trace(f"S: {code}{sep}{line}")
        if code != 334:
            self._in_auth = False
        return code, message


class _TracedSMTP(_TracedMixin, smtplib.SMTP):
    def __init__(self, transcript: Transcript | None, **kwargs: Any) -> None:
        self._transcript = transcript
        super().__init__(**kwargs)


class _TracedSMTPSSL(_TracedMixin, smtplib.SMTP_SSL):
    def __init__(self, transcript: Transcript | None, **kwargs: Any) -> None:
        self._transcript = transcript
        super().__init__(**kwargs)


def establish(
    settings: SmtpSettings,
    info: SessionInfo | None = None,
    transcript: Transcript | None = None,
) -> smtplib.SMTP:
    """Connect, read the banner, EHLO, and start TLS as the settings say; raise on failure.

    `info` (if given) receives the banner, both EHLO answers, the TLS details and phase timings.
    """
    s = settings
    info = info if info is not None else SessionInfo()
    local = s.local_hostname or socket.gethostname()
    smtp: smtplib.SMTP | None = None
    try:
        started = time.perf_counter()
        if s.security == "tls":
            smtp = _TracedSMTPSSL(
                transcript, local_hostname=local, timeout=s.timeout, context=tls_context(s.verify)
            )
        else:
            smtp = _TracedSMTP(transcript, local_hostname=local, timeout=s.timeout)
        # smtplib takes the name for SNI and the hostname check from _host, set only by __init__.
        smtp._host = s.host  # type: ignore[union-attr]
        code, banner = smtp.connect(s.host, s.port)
        info.phase("connect", started)
        if smtp.sock is not None:
            # mailcli batches its own writes; Nagle's algorithm would only add round trips.
            smtp.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        info.peer = smtp.sock.getpeername()[0] if smtp.sock else None
        info.banner = f"{code} {banner.decode('utf-8', 'replace')}"
        if code == -1:  # smtplib's code for a first line that is not "NNN text"
            raise UnavailableError(
                f"{s.endpoint} is not an SMTP server: its greeting is not an SMTP reply "
                f"(...{banner.decode('ascii', 'replace')[:60]!r})",
                hint="check the port: 587 or 25 speak SMTP; an HTTP or IMAP port does not",
            )
        if code != 220:
            raise UnavailableError(f"{s.endpoint} refused the session: {info.banner}")
        started = time.perf_counter()
        smtp.ehlo_or_helo_if_needed()
        info.phase("ehlo", started)
        if s.security == "starttls":
            info.capabilities_before_tls = dict(smtp.esmtp_features)
            if not smtp.has_extn("starttls"):
                raise UnavailableError(
                    f"{s.endpoint} does not offer STARTTLS",
                    hint="use --security tls for port 465, or --security none only for a "
                    "server on this machine",
                )
            started = time.perf_counter()
            smtp.starttls(context=tls_context(s.verify))
            info.phase("starttls", started)
            started = time.perf_counter()
            smtp.ehlo()
            info.phase("ehlo_tls", started)
        info.capabilities = dict(smtp.esmtp_features)
        if isinstance(smtp.sock, ssl.SSLSocket):
            info.tls_version = smtp.sock.version()
            name, _, bits = smtp.sock.cipher() or (None, None, None)
            info.cipher, info.cipher_bits = name, bits
            info.certificate_der = smtp.sock.getpeercert(binary_form=True)
    except ssl.SSLCertVerificationError as exc:
        _close(smtp)
        raise CertificateError(s.endpoint, str(exc.verify_message or exc.reason or exc)) from None
    except ssl.SSLError as exc:
        _close(smtp)
        raise UnavailableError(f"TLS with {s.endpoint} failed: {exc.reason or exc}") from None
    except UnavailableError:
        _close(smtp)
        raise
    except (smtplib.SMTPException, OSError) as exc:
        _close(smtp)
        raise UnavailableError(f"cannot connect to {s.endpoint}: {os_reason(exc)}") from None
    return smtp


def _close(smtp: smtplib.SMTP | None) -> None:
    if smtp is not None:
        with contextlib.suppress(OSError):
            smtp.close()


def advertised_auth(smtp: smtplib.SMTP) -> list[str]:
    """The AUTH mechanisms the server offers, upper case."""
    return (smtp.esmtp_features.get("auth") or "").upper().split()


def choose_auth(
    offered: list[str], settings: SmtpSettings, *, encrypted: bool, peer: str | None
) -> str:
    """The AUTH mechanism to use, or the reason not to log in (shared by both drivers).

    Refuses to send a password in the clear to a host that is not on this machine unless the
    profile says `allow_plaintext_auth: true`.
    """
    s = settings
    if not encrypted and not is_loopback(peer) and not s.allow_plaintext_auth:
        raise ConfigError(
            f"refusing to send the password for {s.username or ''} unencrypted to {s.endpoint}",
            hint="use --security starttls or tls; or set `allow_plaintext_auth: true` in the "
            "profile if this network is trusted",
        )
    if not offered:
        raise AuthError(
            f"{s.endpoint} does not offer AUTH"
            + ("" if encrypted else " on an unencrypted connection")
        )
    if s.auth is not None:
        mechanism = s.auth.upper()
        _require(offered, mechanism, s)
        return mechanism
    usable = [m for m in PREFERRED_AUTH if m in offered]
    if not usable:
        raise AuthError(
            f"{s.endpoint} offers no login mechanism mailcli knows (offered: {' '.join(offered)})"
        )
    return usable[0]


def login(smtp: smtplib.SMTP, settings: SmtpSettings, password: str) -> str:
    """Authenticate once on an established session; return the mechanism used.

    Refuses to send a password in the clear to a host that is not on this machine unless the
    profile says `allow_plaintext_auth: true`.
    """
    s = settings
    user = s.username or ""
    encrypted = isinstance(smtp.sock, ssl.SSLSocket)
    peer = smtp.sock.getpeername()[0] if smtp.sock else None
    mechanism = choose_auth(advertised_auth(smtp), s, encrypted=encrypted, peer=peer)
    try:
        # One mechanism, one try: smtplib.login() would retry a wrong password with the next
        # mechanism, and every failed try counts toward the provider's account lockout.
        if mechanism == "XOAUTH2":
            token = f"user={user}\x01auth=Bearer {password}\x01\x01"
            code, reply = smtp.auth(
                "XOAUTH2", lambda challenge=None: token if challenge is None else ""
            )
        else:
            smtp.user, smtp.password = user, password
            method = getattr(smtp, "auth_" + mechanism.lower().replace("-", "_"))
            code, reply = smtp.auth(mechanism, method, initial_response_ok=True)
        if code not in (235, 503):
            raise smtplib.SMTPAuthenticationError(code, reply)
        return mechanism
    except smtplib.SMTPAuthenticationError as exc:
        raise AuthError(f"{s.endpoint} refused the login for {user}: {_reply_text(exc)}") from None
    except smtplib.SMTPException as exc:
        raise AuthError(f"login to {s.endpoint} failed: {exc}") from None
    except (OSError, smtplib.SMTPServerDisconnected) as exc:
        raise UnavailableError(
            f"connection to {s.endpoint} lost during login: {os_reason(exc)}"
        ) from None


def _require(offered: list[str], mechanism: str, s: SmtpSettings) -> None:
    if mechanism not in offered:
        raise AuthError(
            f"{s.endpoint} does not offer AUTH {mechanism} (offered: {' '.join(offered) or 'none'})"
        )


class SmtpConnection:
    """A persistent SMTP session; `send()` is called once per message."""

    def __init__(
        self,
        settings: SmtpSettings,
        *,
        password: Callable[[], str] | None = None,
        transcript: Transcript | None = None,
    ) -> None:
        self.settings = settings
        self._password = password
        self._transcript = transcript
        self._smtp: smtplib.SMTP | None = None
        self.connections = 0
        self.extensions: dict[str, str] = {}

    @property
    def is_open(self) -> bool:
        """True while a session is established."""
        return self._smtp is not None

    def open(self) -> None:
        """Connect, say EHLO, start TLS and log in (once per connection); raise on failure."""
        smtp = establish(self.settings, transcript=self._transcript)
        self._smtp = smtp
        self.connections += 1
        self.extensions = dict(smtp.esmtp_features)
        if self.settings.username:
            if self._password is None:
                self.close()
                raise AuthError(
                    f"a username is set for {self.settings.endpoint} but no password source"
                )
            try:
                login(smtp, self.settings, self._password())
            except BaseException:
                self.close()
                raise
        tls = smtp.sock.version() if isinstance(smtp.sock, ssl.SSLSocket) else None
        log.info(
            "connected to %s (%s%s%s)",
            self.settings.endpoint,
            f"TLS {tls}" if tls else "no TLS",
            f", logged in as {self.settings.username}" if self.settings.username else "",
            ", pipelining" if self.pipelining else "",
        )

    def send(self, message: Built, pace: Callable[[], object] | None = None) -> Outcome:
        """Run one MAIL/RCPT/DATA transaction; refusals are data, a broken link ConnectionLost.

        `pace` (the rate limiter) is called right before the data is written: the data is what
        delivers a message, so that is the moment a rate must space out.
        """
        (result,) = self.transactions([message], pace=pace, pipelining=self.pipelining)
        if isinstance(result, ConnectionLost):
            raise result
        return result

    @property
    def pipelining(self) -> bool:
        """The server offers PIPELINING (RFC 2920)."""
        return "pipelining" in self.extensions

    def send_pipelined(
        self,
        messages: Sequence[Built],
        pace: Callable[[], object] | None = None,
        idle: Callable[[], object] | None = None,
    ) -> list[Outcome | ConnectionLost]:
        """Send several messages with RFC 2920 pipelining: one result for each, in order.

        Each message's MAIL, RCPT and DATA go out in one write; its data, the end of data and the
        next message's commands go out together, so a message costs about one round trip. When
        the connection breaks, a message whose data was sent gets
        ConnectionLost(handed_over=True) ('unknown'), the others
        ConnectionLost(handed_over=False) (safe to send again). `pace` (the rate limiter) is
        called before each message's data is written: the data is what delivers a message.
        `idle` is called after each write, while the server works: the caller prepares its
        next messages there.
        """
        return self.transactions(messages, pace=pace, idle=idle, pipelining=True)

    def transactions(
        self,
        messages: Sequence[Built],
        *,
        pace: Callable[[], object] | None = None,
        idle: Callable[[], object] | None = None,
        pipelining: bool,
    ) -> list[Outcome | ConnectionLost]:
        """Drive the protocol core (`smtpproto.Transactions`) over this session's socket."""
        for message in messages:  # before the first write: it carries several messages' commands
            check_envelope(message)
        smtp = self._smtp
        if smtp is None:
            return [ConnectionLost("not connected", handed_over=False) for _ in messages]
        core = Transactions(messages, self._mail_options, pipelining=pipelining)
        try:
            self._write(smtp, core.start(), pace, idle)
            if idle is not None:
                idle()
            while not core.done:
                code, text = smtp.getreply()
                if code == -1:  # smtplib's code for a line that is not "NNN text"
                    self._drop()
                    return core.abandon(f"not an SMTP reply: {_decode(text)[:60]!r}")
                self._write(smtp, core.receive(Reply(code, _decode(text))), pace, idle)
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            self._drop()
            return core.abandon(os_reason(exc))
        if core.closing is not None:
            self._drop()
            return core.abandon(f"server closing the connection: {core.closing}")
        return core.outcomes()

    @staticmethod
    def _write(
        smtp: smtplib.SMTP,
        writes: list[Write],
        pace: Callable[[], object] | None,
        idle: Callable[[], object] | None,
    ) -> None:
        for write in writes:
            if write.data:
                if pace is not None:
                    pace()  # the rate counts deliveries, and the data is what delivers
                _send_data(smtp, write.data, write.after_data)
                if idle is not None:
                    idle()
            else:
                smtp.send(write.commands)

    def _mail_options(self, message: Built) -> list[str]:
        return mail_options(message, self.extensions)

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


class SmtpTransport:
    """The `Transport` over SMTP: one persistent session, pipelined (RFC 2920) where offered."""

    name = "smtp"
    requests = 0  # no HTTP
    window = WINDOW

    def __init__(
        self,
        settings: SmtpSettings,
        *,
        password: Callable[[], str] | None = None,
        transcript: Transcript | None = None,
    ) -> None:
        self.connection = SmtpConnection(settings, password=password, transcript=transcript)

    @property
    def settings(self) -> SmtpSettings:
        """Where and how this transport connects."""
        return self.connection.settings

    @property
    def connections(self) -> int:
        """SMTP sessions opened so far."""
        return self.connection.connections

    @property
    def endpoint(self) -> str:
        """host:port."""
        return self.connection.settings.endpoint

    @property
    def is_open(self) -> bool:
        """A session is established."""
        return self.connection.is_open

    @property
    def smtputf8(self) -> bool:
        """The server offers SMTPUTF8."""
        return "smtputf8" in self.connection.extensions

    @property
    def pipelining(self) -> bool:
        """The server offers PIPELINING."""
        return self.connection.pipelining

    def open(self) -> None:
        """Connect, EHLO, STARTTLS and log in."""
        self.connection.open()

    def close(self) -> None:
        """QUIT and close; never raises."""
        self.connection.close()

    def send(
        self,
        messages: Sequence[Built],
        *,
        pace: Pace | None = None,
        idle: Callable[[], object] | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> list[Result]:
        """One result per message: pipelined when offered, else one transaction at a time.

        `cancel` is asked before each lock-step transaction; a pipelined group, about one round
        trip a message, is finished once started.
        """
        for message in messages:  # none of the group is written while one is unsafe
            check_envelope(message)
        if self.connection.pipelining and len(messages) > 1:
            outcomes = self.connection.send_pipelined(messages, pace, idle)
            return [result_of(m, o) for m, o in zip(messages, outcomes, strict=True)]
        results: list[Result] = []
        for index, message in enumerate(messages):
            if cancel is not None and cancel():
                results.extend(NotSent("stopped") for _ in messages[index:])
                break
            try:
                outcome: Outcome | ConnectionLost = self.connection.send(message, pace)
            except ConnectionLost as exc:
                results.append(result_of(message, exc))
                # Nothing after a broken transaction was handed over: safe to send again.
                results.extend(NotSent(exc.reason) for _ in messages[index + 1 :])
                break
            results.append(result_of(message, outcome))
        return results


def mail_options(message: Built, extensions: Mapping[str, str]) -> list[str]:
    """The MAIL FROM parameters a message needs, among those the server offers."""
    options = ["SMTPUTF8"] if message.smtputf8 and "smtputf8" in extensions else []
    if not message.data.isascii() and "8bitmime" in extensions:
        options.append("BODY=8BITMIME")  # declared only for the 8-bit data it covers
    if "size" in extensions:
        options.append(f"SIZE={len(message.data)}")
    return options


def result_of(message: Built, outcome: Outcome | ConnectionLost) -> Result:
    """The transport-level result of one transaction (the one rule for a lost answer)."""
    if isinstance(outcome, ConnectionLost):
        return lost(message, outcome.reason, handed_over=outcome.handed_over)
    refused = {a: Refusal(r.code, r.text) for a, r in outcome.refused.items()}
    if outcome.delivered:
        return replied(message, outcome.reply.code, outcome.reply.text, outcome.accepted, refused)
    # Not delivered: the deciding reply is the refusal of the (first) recipient or of the
    # message; for a one-recipient message its own refusal says why.
    first = refused.get(message.rcpt_to[0]) if len(message.rcpt_to) == 1 else None
    if first is not None:
        code, text = first.code or outcome.reply.code, first.reply
    else:
        code, text = outcome.reply.code, outcome.reply.text
    return replied(message, code, text, (), refused)


def _send_data(smtp: smtplib.SMTP, data: bytes, following: bytes = b"") -> None:
    """Send message data (and pipelined commands after it) in one write; a transcript shows
    the data's size, not its content."""
    traced = isinstance(smtp, _TracedMixin) and smtp._transcript is not None
    if not traced:
        smtp.send(data + following)
        return
    smtp.in_data = True  # type: ignore[attr-defined]
    try:
        smtp.send(data)
    finally:
        smtp.in_data = False  # type: ignore[attr-defined]
    if following:
        smtp.send(following)


def _decode(text: bytes | str) -> str:
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else text


def _reply_text(exc: smtplib.SMTPResponseException) -> str:
    return f"{exc.smtp_code} {_decode(exc.smtp_error)}"


def os_reason(exc: BaseException) -> str:
    """A short reason for a network error."""
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or exc.__class__.__name__
