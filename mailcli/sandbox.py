"""The capture server behind `--sandbox` and `mailcli sink`: real SMTP (aiosmtpd), saved to .eml.

It runs aiosmtpd's protocol on an asyncio loop in a background thread, bound to a loopback port
(port 0 picks a free one), so the client side is exercised exactly as against a real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import ssl
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP as SMTPProtocol

from mailcli.campaign import Campaign
from mailcli.errors import UnavailableError

logging.getLogger("mail.log").setLevel(logging.CRITICAL)


class EmlWriter:
    """An aiosmtpd handler that saves every message as a .eml file in a folder.

    The envelope (which a message's headers do not show, e.g. Bcc recipients) is recorded in two
    headers put in front of the message, as aiosmtpd's own handlers do: X-MailFrom and X-RcptTo.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = 0
        self._lock = threading.Lock()
        self._stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        """Save the message; reply 250 naming the file."""
        data = envelope.original_content or b""
        path = self.save(envelope.mail_from or "", list(envelope.rcpt_tos), data)
        return f"250 2.0.0 OK saved as {path.name}"

    def save(self, mail_from: str, rcpt_tos: list[str], data: bytes) -> Path:
        """Write one message to the folder without ever overwriting a file."""
        with self._lock:
            self.count += 1
            number = self.count
        first = rcpt_tos[0] if rcpt_tos else "unknown"
        safe = re.sub(r"[^A-Za-z0-9@._+-]", "_", first)[:80]
        envelope = f"X-MailFrom: <{mail_from}>\r\nX-RcptTo: {', '.join(rcpt_tos)}\r\n"
        self.folder.mkdir(parents=True, exist_ok=True)
        for attempt in range(1000):
            suffix = f"-{attempt}" if attempt else ""
            path = self.folder / f"{self._stamp}-{number:06d}-{safe}{suffix}.eml"
            try:
                with open(path, "xb") as handle:
                    handle.write(envelope.encode("utf-8") + data)
                return path
            except FileExistsError:
                continue
        raise OSError(f"cannot find a free file name in {self.folder}")


class SmtpServer:
    """A real aiosmtpd SMTP server on a loopback port, served from a background thread."""

    def __init__(
        self,
        handler: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ssl_context: ssl.SSLContext | None = None,
        **smtp_options: Any,
    ) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        smtp_options.setdefault("hostname", "mailcli.sandbox")
        smtp_options.setdefault("ident", "mailcli sandbox")
        smtp_options.setdefault("enable_SMTPUTF8", True)
        self.smtp_options = smtp_options
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> SmtpServer:
        """Bind and start serving; return once the port is known."""
        self._thread = threading.Thread(target=self._run, name="mailcli-smtp", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            reason = getattr(self._error, "strerror", None) or str(self._error)
            raise UnavailableError(f"cannot listen on {self.host}:{self.port}: {reason}")
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)

        def factory() -> SMTPProtocol:
            return SMTPProtocol(self.handler, loop=loop, **self.smtp_options)

        try:
            server = loop.run_until_complete(
                loop.create_server(factory, self.host, self.port, ssl=self.ssl_context)
            )
        except OSError as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            loop.run_until_complete(server.wait_closed())
            for task in asyncio.all_tasks(loop):
                task.cancel()
            with contextlib.suppress(Exception):
                loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    def stop(self) -> None:
        """Stop serving and wait for the thread to end."""
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> SmtpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def sandbox(folder: Path) -> Iterator[tuple[SmtpServer, EmlWriter]]:
    """Run a capture server into `folder` for the length of a `with` block."""
    writer = EmlWriter(folder)
    with SmtpServer(writer) as server:
        yield server, writer


def sandboxed(campaign: Campaign, folder: Path) -> Campaign:
    """The campaign with its progress kept inside the sandbox folder.

    A trial run must never mark the real recipients of a campaign as sent.
    """
    state = folder.resolve() / ".mailcli" / f"{campaign.name}.sqlite"
    return dataclasses.replace(campaign, state_path=state, state_url=None)
