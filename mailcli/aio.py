"""asyncio: `Mailer.send_async`, `Mailer.connect_async`, on the protocol core the blocking
transport uses (`mailcli.smtpproto`), never blocking the event loop.

The transactions (MAIL/RCPT/DATA, pipelined or lock-step, outcomes, what a lost answer means)
are `smtpproto.Transactions`, the same object the blocking transport drives; this module only
moves its bytes over asyncio streams, and opens the session (banner, EHLO, STARTTLS, AUTH) with
the same policy (`transport.choose_auth`). Everything that could block runs off the loop: DNS
(the loop's resolver), loading the TLS trust store, looking up the password (keyring,
password_command) and building messages (attachments and images are read from disk) go to
threads; every wait is bounded by the timeout.

Concurrent `send_async` calls share a small pool of connections per event loop
(`Mailer(max_connections=N)`, 8 by default): each connection takes the messages waiting in the
queue, up to 32 at a time, and sends them in one pipelined run, so 200 concurrent calls make a
few connections and about one round trip a message, not 200 connections.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import logging
import socket
import ssl
import threading
import weakref
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING

from mailcli.delivery import Delivery, DeliveryStatus, NotSent, Result, without_smtputf8
from mailcli.envelope import Built, check_envelope
from mailcli.errors import AuthError, CertificateError, MailcliError, UnavailableError
from mailcli.outbox import OutboxTransport
from mailcli.sender import RECONNECT_DELAYS, Rounds, Stopped
from mailcli.smtpproto import ProtocolError, Reply, ReplyReader, Transactions, Write
from mailcli.transport import (
    SmtpSettings,
    choose_auth,
    mail_options,
    os_reason,
    result_of,
    tls_context,
)

if TYPE_CHECKING:
    from mailcli.compose import Message
    from mailcli.mailer import Connection, Mailer

log = logging.getLogger(__name__)
_smtp_log = logging.getLogger("mailcli.smtp")
# A pooled connection with nothing to send for this long is closed (servers drop idle ones).
POOL_IDLE_S = 10.0
BATCH = 32  # the most messages one pipelined run of a pooled connection carries
BUILD_SLICE = 8  # messages built between two turns of the event loop


class AsyncSmtpTransport:
    """One SMTP session over asyncio streams."""

    name = "smtp"

    def __init__(
        self,
        settings: SmtpSettings,
        *,
        password: Callable[[], str] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.settings = settings
        self._password = password
        self._tls = tls
        self.connections = 0
        self.extensions: dict[str, str] = {}
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._replies = ReplyReader()
        self._encrypted = False

    @property
    def endpoint(self) -> str:
        """host:port."""
        return self.settings.endpoint

    @property
    def is_open(self) -> bool:
        """A session is established."""
        return self._writer is not None

    @property
    def smtputf8(self) -> bool:
        """The server offers SMTPUTF8."""
        return "smtputf8" in self.extensions

    @property
    def pipelining(self) -> bool:
        """The server offers PIPELINING."""
        return "pipelining" in self.extensions

    async def open(self) -> None:
        """Connect, read the banner, EHLO, STARTTLS and log in; raise on failure."""
        s = self.settings
        try:
            if s.security != "none" and self._tls is None:
                # Loading the trust store reads files: not on the loop.
                self._tls = await asyncio.to_thread(tls_context, s.verify)
            implicit = self._tls if s.security == "tls" else None
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    s.host, s.port, ssl=implicit, server_hostname=s.host if implicit else None
                ),
                s.timeout,
            )
            self._reader, self._writer = reader, writer
            self._replies = ReplyReader()
            self._encrypted = implicit is not None
            banner = await self._reply()
            if banner.code != 220:
                raise UnavailableError(f"{s.endpoint} refused the session: {banner}")
            await self._ehlo()
            if s.security == "starttls":
                await self._starttls()
            if s.username:
                await self._login()
        except ssl.SSLCertVerificationError as exc:
            await self._drop()
            reason = str(exc.verify_message or exc.reason or exc)
            raise CertificateError(s.endpoint, reason) from None
        except ssl.SSLError as exc:
            await self._drop()
            raise UnavailableError(f"TLS with {s.endpoint} failed: {exc.reason or exc}") from None
        except MailcliError:
            await self._drop()
            raise
        except (OSError, TimeoutError, ProtocolError, asyncio.IncompleteReadError) as exc:
            await self._drop()
            raise UnavailableError(f"cannot connect to {s.endpoint}: {os_reason(exc)}") from None
        self.connections += 1
        log.info("connected to %s (asyncio%s)", s.endpoint, ", pipelining" * self.pipelining)

    async def send(self, messages: Sequence[Built]) -> list[Result]:
        """One result per message, pipelined when offered (see `Transport.send`)."""
        for message in messages:  # none of the group is written while one is unsafe
            check_envelope(message)
        if self._writer is None:
            return [NotSent("not connected") for _ in messages]
        failed, todo = without_smtputf8(messages, self.smtputf8, self.endpoint)
        results: list[Result | None] = list(failed)
        sent = await self._transactions([messages[i] for i in todo])
        for index, result in zip(todo, sent, strict=True):
            results[index] = result
        return [r for r in results if r is not None]

    async def _transactions(self, messages: Sequence[Built]) -> list[Result]:
        if not messages:
            return []
        core = Transactions(
            messages, lambda m: mail_options(m, self.extensions), pipelining=self.pipelining
        )
        try:
            await self._write(core.start())
            while not core.done:
                for reply in await self._replies_now():
                    await self._write(core.receive(reply))
                    if core.done:
                        break
        except (OSError, TimeoutError, ProtocolError) as exc:
            await self._drop()
            outcomes = core.abandon(os_reason(exc))
        except BaseException:
            # Cancelled (or worse) mid-transaction: replies are still on their way, and the
            # next command would be answered by them. The connection cannot be used again.
            self._abort()
            raise
        else:
            if core.closing is not None:
                await self._drop()
                outcomes = core.abandon(f"server closing the connection: {core.closing}")
            else:
                outcomes = core.outcomes()
        return [result_of(m, o) for m, o in zip(messages, outcomes, strict=True)]

    async def close(self) -> None:
        """QUIT and close; never raises."""
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._trace("C: QUIT")
                self._writer.write(b"QUIT\r\n")
                await asyncio.wait_for(self._reply(), min(self.settings.timeout, 5.0))
        await self._drop()

    # -- the session -----------------------------------------------------------------------

    async def _ehlo(self) -> None:
        name = self.settings.local_hostname or socket.gethostname()
        reply = await self._command(f"EHLO {name}\r\n".encode())
        if reply.code != 250:
            raise UnavailableError(f"{self.endpoint} refused EHLO: {reply}")
        self.extensions = {}
        for line in reply.text.split("\n")[1:]:
            keyword, _, params = line.partition(" ")
            self.extensions[keyword.lower()] = params

    async def _starttls(self) -> None:
        if "starttls" not in self.extensions:
            raise UnavailableError(
                f"{self.endpoint} does not offer STARTTLS",
                hint="use --security tls for port 465, or --security none only for a server on "
                "this machine",
            )
        reply = await self._command(b"STARTTLS\r\n")
        if reply.code != 220:
            raise UnavailableError(f"{self.endpoint} refused STARTTLS: {reply}")
        if self._replies.pending:
            # Bytes after the 220, before the TLS handshake, would be read as if they had come
            # over TLS (STARTTLS command injection): refuse the session.
            raise UnavailableError(f"{self.endpoint} sent data after its STARTTLS reply")
        assert self._writer is not None and self._tls is not None
        await asyncio.wait_for(
            self._writer.start_tls(self._tls, server_hostname=self.settings.host),
            self.settings.timeout,
        )
        self._encrypted = True
        self._replies = ReplyReader()
        await self._ehlo()

    async def _login(self) -> None:
        s = self.settings
        assert self._writer is not None
        peer = self._writer.get_extra_info("peername")
        offered = (self.extensions.get("auth") or "").upper().split()
        mechanism = choose_auth(
            offered, s, encrypted=self._encrypted, peer=peer[0] if peer else None
        )
        if self._password is None:
            raise AuthError(f"a username is set for {s.endpoint} but no password source")
        # The keyring or a password_command may block: not on the loop.
        password = await asyncio.to_thread(self._password)
        user = s.username or ""
        if mechanism == "PLAIN":
            token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
            reply = await self._command(f"AUTH PLAIN {token}\r\n".encode(), secret=True)
        elif mechanism == "LOGIN":
            reply = await self._command(b"AUTH LOGIN\r\n")
            if reply.code == 334:
                reply = await self._command(_b64line(user), secret=True)
            if reply.code == 334:
                reply = await self._command(_b64line(password), secret=True)
        elif mechanism == "CRAM-MD5":
            reply = await self._command(b"AUTH CRAM-MD5\r\n")
            if reply.code == 334:
                challenge = base64.b64decode(reply.text.strip())
                digest = hmac.new(password.encode(), challenge, "md5").hexdigest()
                reply = await self._command(_b64line(f"{user} {digest}"), secret=True)
        else:  # XOAUTH2
            token = f"user={user}\x01auth=Bearer {password}\x01\x01"
            reply = await self._command(f"AUTH XOAUTH2 {_b64(token)}\r\n".encode(), secret=True)
            if reply.code == 334:  # an error report in a challenge: answer empty to end it
                reply = await self._command(b"\r\n")
        if reply.code not in (235, 503):
            raise AuthError(f"{s.endpoint} refused the login for {user}: {reply}")

    async def _command(self, line: bytes, *, secret: bool = False) -> Reply:
        assert self._writer is not None
        self._trace("C: <redacted>" if secret else f"C: {line.decode('utf-8', 'replace').rstrip()}")
        self._writer.write(line)
        await asyncio.wait_for(self._writer.drain(), self.settings.timeout)
        return await self._reply()

    async def _reply(self) -> Reply:
        while True:
            replies = await self._replies_now()
            if replies:
                return replies[0]  # during the session set-up one reply answers one command

    async def _replies_now(self) -> list[Reply]:
        assert self._reader is not None
        data = await asyncio.wait_for(self._reader.read(65536), self.settings.timeout)
        if not data:
            raise ConnectionResetError("the server closed the connection")
        replies = self._replies.feed(data)
        for reply in replies:
            self._trace(f"S: {reply}")
        return replies

    async def _write(self, writes: list[Write]) -> None:
        assert self._writer is not None
        for write in writes:
            if write.data:
                self._trace(f"C: <message data, {len(write.data)} bytes>")
                self._writer.write(write.data + write.after_data)
                if write.after_data:
                    self._trace(f"C: {write.after_data.decode('utf-8', 'replace').rstrip()}")
            else:
                self._trace(f"C: {write.commands.decode('utf-8', 'replace').rstrip()}")
                self._writer.write(write.commands)
        # A server that stops reading must not hang the sender: the timeout bounds this too.
        await asyncio.wait_for(self._writer.drain(), self.settings.timeout)

    def _abort(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()

    async def _drop(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    def _trace(self, line: str) -> None:
        if _smtp_log.isEnabledFor(logging.DEBUG):
            for part in line.split("\r\n"):
                _smtp_log.debug("%s", part)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _b64line(text: str) -> bytes:
    return (_b64(text) + "\r\n").encode()


class AsyncGroupSender:
    """Sends a group over an asyncio transport with the one reconnect policy (`Rounds`)."""

    def __init__(self, transport: AsyncSmtpTransport) -> None:
        self.transport = transport

    async def send(self, messages: Sequence[Built]) -> list[Delivery]:
        """A Delivery for every message; raises Stopped when the server stays away."""
        rounds = Rounds(len(messages), None)
        while rounds.todo:
            if not self.transport.is_open:
                if self.transport.connections == 0:
                    await self.transport.open()  # the first: its error is the caller's
                else:
                    try:
                        regained = await self.reconnect()
                    except MailcliError as exc:  # the login refused on the new connection
                        raise Stopped(str(exc), rounds.results, exc) from exc
                    if not regained:
                        raise Stopped(rounds.lost(self.transport.endpoint), rounds.results)
            answers = await self.transport.send([messages[i] for i in rounds.todo])
            if rounds.settle(answers):
                raise Stopped(rounds.lost(self.transport.endpoint), rounds.results)
        return rounds.deliveries()

    async def reconnect(self) -> bool:
        """Reconnect with backoff; False after RECONNECT_DELAYS failures in a row."""
        for delay in RECONNECT_DELAYS:
            log.warning("reconnecting to %s in %.0f s", self.transport.endpoint, delay)
            await asyncio.sleep(delay)
            try:
                await self.transport.close()
                await self.transport.open()
                return True
            except UnavailableError as exc:
                log.warning("reconnecting failed: %s", exc)
        return False


def _deferred(stopped: Stopped, built: Sequence[Built]) -> list[Delivery]:
    return [
        result
        if result is not None
        else Delivery(DeliveryStatus.DEFERRED, message.message_id, reply=stopped.reason)
        for result, message in zip(stopped.results, built, strict=True)
    ]


async def _build(mailer: Mailer, messages: Sequence[Message]) -> list[Built]:
    """The messages built without blocking the loop.

    What reads files (inline images given as paths, the DKIM key the first time) is done in a
    thread. The rest is a fraction of a millisecond a message: it is done here, a few messages
    at a time with the loop let through in between, since building in threads would only
    contend for the GIL with the loop and delay it more.
    """
    if mailer.signer_pending():
        await asyncio.to_thread(mailer.signer)
    built: list[Built] = []
    for start in range(0, len(messages), BUILD_SLICE):
        part = messages[start : start + BUILD_SLICE]
        if any(m.reads_files() for m in part):
            built += await asyncio.to_thread(mailer.build, part)
        else:
            built += mailer.build(part)
        if start + BUILD_SLICE < len(messages):
            await asyncio.sleep(0)
    return built


def _transport(mailer: Mailer) -> AsyncSmtpTransport:
    from mailcli.errors import ConfigError

    if mailer.settings is None:
        raise ConfigError(
            "no SMTP server given",
            hint="pass host= to Mailer, or use Mailer.from_profile() / Mailer.from_env()",
        )
    return AsyncSmtpTransport(mailer.settings, password=mailer.password_source())


def _record(mailer: Mailer, built: Sequence[Built]) -> list[Delivery] | None:
    """Inside record_messages() (or with an outbox): recorded, no socket; else None."""
    outbox = mailer.recorder()
    if outbox is None:
        return None
    results = OutboxTransport(outbox).send(built)
    return [r for r in results if isinstance(r, Delivery)]


class AsyncConnection:
    """One connection of a Mailer for asyncio: `async with mailer.connect_async() as conn:`."""

    def __init__(self, mailer: Mailer) -> None:
        self.mailer = mailer
        self.transport: AsyncSmtpTransport | None = None
        # An HTTP API provider: its blocking connection, driven from a worker thread.
        self.api: Connection | None = None

    async def __aenter__(self) -> AsyncConnection:
        if self.mailer.recorder() is not None:
            return self
        if self.mailer.api is not None:
            self.api = self.mailer.connect()
            await asyncio.to_thread(self.api.__enter__)
            return self
        self.transport = _transport(self.mailer)
        await self.transport.open()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.transport is not None:
            await self.transport.close()
        if self.api is not None:
            await asyncio.to_thread(self.api.close)

    @property
    def connections(self) -> int:
        """Connections opened so far (more than one after a reconnect)."""
        if self.api is not None:
            return self.api.connections
        return self.transport.connections if self.transport is not None else 0

    async def send(self, message: Message) -> Delivery:
        """Send one message; its outcome, refusals included, is data."""
        return (await self.send_many([message]))[0]

    async def send_many(self, messages: Sequence[Message]) -> list[Delivery]:
        """Send messages in order, pipelined where offered: one Delivery for each."""
        if not messages:
            return []
        if self.api is not None:
            return await asyncio.to_thread(self.api.send_many, messages)
        screened = await self.mailer.screen_async(await _build(self.mailer, messages))
        built = screened.todo
        if not built:
            return screened.finish([])
        recorded = _record(self.mailer, built)
        if recorded is not None:
            return screened.finish(recorded)
        assert self.transport is not None
        try:
            return screened.finish(await AsyncGroupSender(self.transport).send(built))
        except Stopped as stopped:
            return screened.finish(_deferred(stopped, built))


class ConnectionPool:
    """The connections concurrent `send_async` calls share (one pool per Mailer and loop)."""

    def __init__(self, mailer: Mailer, size: int) -> None:
        self.mailer = mailer
        self.size = size
        self.queue: asyncio.Queue[tuple[Message, asyncio.Future[Delivery]]] = asyncio.Queue()
        self.workers: set[asyncio.Task[None]] = set()

    async def send(self, message: Message) -> Delivery:
        """Queue one (checked) message and wait for its Delivery; a worker builds it."""
        future: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((message, future))
        if len(self.workers) < self.size:
            task = asyncio.create_task(self._work())
            self.workers.add(task)
            task.add_done_callback(self.workers.discard)
        return await future

    async def close(self) -> None:
        """Stop the workers (their connections say QUIT); what still waits is cancelled."""
        for task in list(self.workers):
            task.cancel()
        await asyncio.gather(*self.workers, return_exceptions=True)
        while not self.queue.empty():
            _, future = self.queue.get_nowait()
            future.cancel()

    async def _work(self) -> None:
        transport = _transport(self.mailer)
        try:
            while True:
                try:
                    first = await asyncio.wait_for(self.queue.get(), POOL_IDLE_S)
                except TimeoutError:
                    # Idle: let the connection go. Out of the pool first, so that a message
                    # queued while it says QUIT starts a worker of its own.
                    self.workers.discard(asyncio.current_task())
                    return
                batch = [first]
                while len(batch) < BATCH and not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                await self._send(transport, batch)
        finally:
            await transport.close()

    async def _send(
        self,
        transport: AsyncSmtpTransport,
        queued: list[tuple[Message, asyncio.Future[Delivery]]],
    ) -> None:
        # Built here, a slice at a time, rather than by each caller: 200 calls made at once
        # would otherwise all build in one turn of the loop.
        futures = [future for _, future in queued]
        try:
            batch: list[tuple[Built, asyncio.Future[Delivery]]] = []
            for message, future in queued:
                try:
                    (one,) = await _build(self.mailer, [message])
                except MailcliError as exc:
                    _settle(future, exc)
                    continue
                batch.append((one, future))
            screened = await self.mailer.screen_async([b for b, _ in batch])
            built = screened.todo
            try:
                deliveries = await AsyncGroupSender(transport).send(built) if built else []
            except Stopped as stopped:
                deliveries = _deferred(stopped, built)
            outcomes = screened.finish(deliveries)
            for (_, future), delivery in zip(batch, outcomes, strict=True):
                _settle(future, delivery)
        except MailcliError as exc:  # the server cannot be reached, the login is refused
            for future in futures:
                _settle(future, exc)
        except BaseException as exc:
            # Cancelled, or a bug: no caller may wait forever.
            for future in futures:
                if not future.done():
                    if isinstance(exc, asyncio.CancelledError):
                        future.cancel()
                    else:
                        future.set_exception(
                            MailcliError(f"sending failed: {exc.__class__.__name__}: {exc}")
                        )
            raise


def _settle(future: asyncio.Future[Delivery], outcome: Delivery | MailcliError) -> None:
    """Resolve a caller's future unless it is done already (the caller gave up)."""
    if future.done():
        return
    if isinstance(outcome, MailcliError):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


_POOLS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, ConnectionPool]] = (
    weakref.WeakKeyDictionary()
)


def pool_of(mailer: Mailer, size: int) -> ConnectionPool:
    """The pool of `mailer` on the running event loop."""
    pools = _POOLS.setdefault(asyncio.get_running_loop(), {})
    pool = pools.get(id(mailer))
    if pool is None or pool.mailer is not mailer:
        pool = pools[id(mailer)] = ConnectionPool(mailer, size)
    return pool


async def send_async(mailer: Mailer, message: Message) -> Delivery:
    """`Mailer.send_async`: one message through the Mailer's pool on this loop."""
    if mailer.recorder() is not None:
        screened = await mailer.screen_async(await _build(mailer, [message]))
        recorded = _record(mailer, screened.todo) if screened.todo else []
        assert recorded is not None
        return screened.finish(recorded)[0]
    # A bad header is raised here, before any connection; checking inline images given as
    # paths reads the files, so that part goes to a thread.
    if message.reads_files():
        await asyncio.to_thread(message.check, mailer.default_sender)
    else:
        message.check(mailer.default_sender)
    if mailer.api is not None:
        return await api_pool_of(mailer).send(message)
    return await pool_of(mailer, mailer.max_connections).send(message)


class ApiPool:
    """Concurrent `send_async` calls over an HTTP API provider: at most `max_connections`
    blocking connections (each one kept-alive HTTP connection), driven from worker threads so
    the event loop never waits on them; an idle connection is reused by the next call."""

    def __init__(self, mailer: Mailer) -> None:
        self.mailer = mailer
        self.slots = asyncio.Semaphore(mailer.max_connections)
        self.idle: list[Connection] = []
        self.lock = threading.Lock()

    async def send(self, message: Message) -> Delivery:
        """Send one message on a free connection."""
        async with self.slots:
            return await asyncio.to_thread(self._send, message)

    def _send(self, message: Message) -> Delivery:
        with self.lock:
            connection = self.idle.pop() if self.idle else None
        if connection is None:
            connection = self.mailer.connect()
            connection.__enter__()
        try:
            return connection.send(message)
        finally:
            with self.lock:
                self.idle.append(connection)

    async def close(self) -> None:
        """Close the idle connections."""
        with self.lock:
            idle, self.idle = self.idle, []
        for connection in idle:
            await asyncio.to_thread(connection.close)


_API_POOLS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, ApiPool]] = (
    weakref.WeakKeyDictionary()
)


def api_pool_of(mailer: Mailer) -> ApiPool:
    """The HTTP API pool of `mailer` on the running event loop."""
    pools = _API_POOLS.setdefault(asyncio.get_running_loop(), {})
    pool = pools.get(id(mailer))
    if pool is None or pool.mailer is not mailer:
        pool = pools[id(mailer)] = ApiPool(mailer)
    return pool


async def close_pool(mailer: Mailer) -> None:
    """`Mailer.aclose`: close the Mailer's pooled connections on this loop."""
    pools = _POOLS.get(asyncio.get_running_loop(), {})
    pool = pools.pop(id(mailer), None)
    if pool is not None:
        await pool.close()
    api = _API_POOLS.get(asyncio.get_running_loop(), {}).pop(id(mailer), None)
    if api is not None:
        await api.close()
