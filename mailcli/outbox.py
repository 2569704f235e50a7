"""The in-memory outbox: a `Transport` that records messages instead of sending them.

For tests and development, as Flask-Mail's `record_messages()`: every Mailer used inside
`with record_messages() as outbox:` (or made with `outbox=True`, or run with
`MAILCLI_SUPPRESS_SEND=1`) delivers into a list, and nothing touches the network. The messages are
the exact bytes a real send would have written, with the envelope, and read back on demand.
"""

from __future__ import annotations

import contextlib
import email.policy
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import getaddresses

from mailcli.compose import Message
from mailcli.delivery import WINDOW, NotSent, Pace, Result, replied
from mailcli.envelope import Built, check_envelope

SUPPRESS_ENV = "MAILCLI_SUPPRESS_SEND"


class SentMessage:
    """One recorded message: its bytes and envelope, with the usual fields read back."""

    def __init__(self, built: Built) -> None:
        self.built = built
        self._parsed: EmailMessage | None = None

    @property
    def message(self) -> Message | None:
        """The `mailcli.Message` this was built from (None for a campaign's messages)."""
        source = self.built.source
        return source if isinstance(source, Message) else None

    @property
    def parsed(self) -> EmailMessage:
        """The message parsed with the standard library (modern policy)."""
        if self._parsed is None:
            parsed = BytesParser(policy=email.policy.default).parsebytes(self.built.data)
            assert isinstance(parsed, EmailMessage)
            self._parsed = parsed
        return self._parsed

    @property
    def message_id(self) -> str:
        """The Message-ID, with its angle brackets."""
        return self.built.message_id

    @property
    def subject(self) -> str:
        """The decoded Subject."""
        return str(self.parsed["Subject"] or "")

    @property
    def sender(self) -> str:
        """The From header, decoded."""
        return str(self.parsed["From"] or "")

    @property
    def recipients(self) -> list[str]:
        """The To addresses (Flask-Mail's meaning of `recipients`)."""
        return self._addresses("To")

    @property
    def cc(self) -> list[str]:
        """The Cc addresses."""
        return self._addresses("Cc")

    @property
    def bcc(self) -> list[str]:
        """Envelope recipients that no header names (Bcc is never written as a header)."""
        shown = {a.lower() for a in (*self.recipients, *self.cc)}
        return [a for a in self.envelope_to if a.lower() not in shown]

    @property
    def envelope_from(self) -> str:
        """MAIL FROM."""
        return self.built.mail_from

    @property
    def envelope_to(self) -> list[str]:
        """RCPT TO, every recipient including Bcc."""
        return list(self.built.rcpt_to)

    @property
    def send_to(self) -> set[str]:
        """Every envelope recipient (Flask-Mail's name)."""
        return set(self.built.rcpt_to)

    @property
    def body(self) -> str | None:
        """The text body as given to the Message, else the text/plain part as read back."""
        if self.message is not None and self.message.body is not None:
            return self.message.body
        return self._text("plain")

    @property
    def html(self) -> str | None:
        """The HTML body as given to the Message, else the text/html part as read back."""
        if self.message is not None and self.message.html is not None:
            return self.message.html
        return self._text("html")

    @property
    def attachments(self) -> list[tuple[str, str, bytes]]:
        """(filename, content type, bytes) for each attachment."""
        found = []
        for part in self.parsed.iter_attachments():
            payload = part.get_payload(decode=True)
            data = payload if isinstance(payload, bytes) else b""
            found.append((part.get_filename() or "", part.get_content_type(), data))
        return found

    def as_bytes(self) -> bytes:
        """The exact bytes that would have gone to the server."""
        return self.built.data

    def as_string(self) -> str:
        """The message as text."""
        return self.built.data.decode("utf-8", "replace")

    def _addresses(self, header: str) -> list[str]:
        values = self.parsed.get_all(header) or []
        return [addr for _, addr in getaddresses([str(v) for v in values]) if addr]

    def _text(self, subtype: str) -> str | None:
        part = self.parsed.get_body(preferencelist=(subtype,))
        if part is None or part.get_content_subtype() != subtype:
            return None
        content = part.get_content()
        # As a reader sees it: line breaks are CRLF on the wire only.
        return content.replace("\r\n", "\n") if isinstance(content, str) else None

    def __repr__(self) -> str:
        return f"<SentMessage {self.message_id} to {', '.join(self.envelope_to)}>"


class Outbox(list[SentMessage]):
    """The recorded messages, in the order they were sent."""


class OutboxTransport:
    """A `Transport` that appends to an `Outbox`; opens no socket, accepts every message."""

    name = "outbox"
    requests = 0
    window = WINDOW

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.connections = 0
        self._open = False

    @property
    def endpoint(self) -> str:
        """Where the messages go."""
        return "the in-memory outbox"

    @property
    def is_open(self) -> bool:
        """Opened and not closed."""
        return self._open

    @property
    def smtputf8(self) -> bool:
        """The outbox carries any address."""
        return True

    def open(self) -> None:
        """Count a session, as SMTP would."""
        self._open = True
        self.connections += 1

    def close(self) -> None:
        """End the session."""
        self._open = False

    def send(
        self,
        messages: Sequence[Built],
        *,
        pace: Pace | None = None,
        idle: Callable[[], object] | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> list[Result]:
        """Record each message and answer as a server that accepts everything would."""
        for message in messages:
            check_envelope(message)  # the same guard as on the wire
        results: list[Result] = []
        for index, message in enumerate(messages):
            if cancel is not None and cancel():
                results.extend(NotSent("stopped") for _ in messages[index:])
                break
            if pace is not None:
                pace()
            self.outbox.append(SentMessage(message))
            results.append(replied(message, 250, "recorded in the outbox", message.rcpt_to, {}))
        if idle is not None:
            idle()
        return results


# The open record_messages() blocks, innermost last. Process-wide, not per thread or task, as
# Flask-Mail's: a test that sends from a worker thread or a task must record too, never send.
_RECORDERS: list[Outbox] = []
_RECORDERS_LOCK = threading.Lock()


@contextlib.contextmanager
def record_messages() -> Iterator[Outbox]:
    """Within the block, every Mailer records into the yielded outbox and sends nothing.

    The block holds for the whole process (every thread), as a test needs; nested blocks each
    get their own outbox, the innermost one recording.
    """
    outbox = Outbox()
    with _RECORDERS_LOCK:
        _RECORDERS.append(outbox)
    try:
        yield outbox
    finally:
        with _RECORDERS_LOCK:
            # By identity: two outboxes with the same messages are equal lists.
            _RECORDERS[:] = [o for o in _RECORDERS if o is not outbox]


def recording() -> Outbox | None:
    """The outbox of the innermost open `record_messages()` block, if any."""
    with _RECORDERS_LOCK:
        return _RECORDERS[-1] if _RECORDERS else None


def suppressed_by_env() -> bool:
    """`MAILCLI_SUPPRESS_SEND` is set to a true value (1, true, yes, on)."""
    return os.environ.get(SUPPRESS_ENV, "").strip().lower() in ("1", "true", "yes", "on")
