"""The SMTP client protocol without I/O (as h11 is for HTTP): replies in, bytes to write out.

`Transactions` runs MAIL / RCPT / DATA for a list of messages over an established session, in
lock-step or with RFC 2920 pipelining, and decides each message's outcome. It never touches a
socket: a driver writes what it returns and feeds it every reply. The blocking driver
(`mailcli.transport`, replies read by smtplib) and the asyncio driver (`mailcli.aio`, replies
read by `ReplyReader`) share it, so there is one implementation of the rules:

- a message's data and the next message's commands leave in one write (pipelining), and the
  data is counted as handed over before that write, since its end sits in the middle of it;
- a refused transaction is reset (RSET) before the next one;
- a 421 means the server is closing: what has no outcome yet was not taken (`closing`);
- a message whose data was handed over and whose final reply never came is `unknown`
  (`abandon` gives it `ConnectionLost(handed_over=True)`), the others may be sent again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from mailcli.envelope import Built

MAX_REPLY_LINE = 64 * 1024


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


class ProtocolError(Exception):
    """The peer's bytes are not SMTP replies."""


class ReplyReader:
    """Bytes from the server in, complete (multi-line) replies out."""

    def __init__(self) -> None:
        self._buffer = b""
        self._lines: list[str] = []

    @property
    def pending(self) -> bool:
        """Bytes received that are not a complete reply yet."""
        return bool(self._buffer or self._lines)

    def feed(self, data: bytes) -> list[Reply]:
        """Every reply completed by `data` (a partial one waits for more)."""
        self._buffer += data
        replies: list[Reply] = []
        while (end := self._buffer.find(b"\n")) >= 0:
            line, self._buffer = self._buffer[:end].rstrip(b"\r"), self._buffer[end + 1 :]
            if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in (b"", b" ", b"-"):
                raise ProtocolError(f"not an SMTP reply: {line[:60]!r}")
            self._lines.append(line[4:].decode("utf-8", "replace"))
            if line[3:4] != b"-":
                replies.append(Reply(int(line[:3]), "\n".join(self._lines)))
                self._lines = []
        if len(self._buffer) > MAX_REPLY_LINE:
            raise ProtocolError("a reply line of more than 64 KB")
        return replies


class Write(NamedTuple):
    """Bytes to write, in order. `data` is a message's data (dot-stuffed, with its end): a rate
    limiter spaces these, and a transcript shows only their size; `commands` follow it."""

    commands: bytes
    data: bytes = b""
    # The commands come after the data in the same write (pipelining).
    after_data: bytes = b""


@dataclass
class _Txn:
    mail: Reply | None = None
    accepted: list[str] = field(default_factory=list)
    refused: dict[str, Reply] = field(default_factory=dict)
    handed_over: bool = False


class Transactions:
    """MAIL/RCPT/DATA for `messages`, one outcome each (sans I/O; see the module docstring)."""

    def __init__(
        self,
        messages: Sequence[Built],
        options: Callable[[Built], list[str]],
        *,
        pipelining: bool,
    ) -> None:
        self.messages = messages
        self.options = options
        self.pipelining = pipelining
        self.results: list[Outcome | ConnectionLost | None] = [None] * len(messages)
        self.txns = [_Txn() for _ in messages]
        self.closing: Reply | None = None  # a 421: the server is going away
        self._expect: deque[tuple[str, int, str]] = deque()
        self._held: deque[tuple[bytes, tuple[str, int, str]]] = deque()  # lock-step only
        self._next = 0

    @property
    def done(self) -> bool:
        """Every message has its outcome and no reply is awaited (or the server is closing)."""
        return self.closing is not None or (
            not self._expect and not self._held and all(r is not None for r in self.results)
        )

    def start(self) -> list[Write]:
        """What to write first."""
        return self._begin_next(rset=False)

    def receive(self, reply: Reply) -> list[Write]:
        """Account for one reply; what to write next (often nothing)."""
        kind, index, rcpt = self._expect.popleft()
        txn = self.txns[index]
        if reply.code == 421 and kind != "discard":
            if kind == "end":
                self.results[index] = Outcome(reply, tuple(txn.accepted), txn.refused)
            self.closing = reply
            return []
        if kind in ("rset", "discard"):
            return self._begin_next(rset=False) if not self.pipelining else []
        if kind == "end":
            self.results[index] = Outcome(reply, tuple(txn.accepted), txn.refused)
            return self._begin_next(rset=False) if not self.pipelining else []
        if kind == "mail":
            txn.mail = reply
            if not self.pipelining and reply.code != 250:
                return self._refuse(index, reply)
            return self._release()
        if kind == "rcpt":
            if txn.mail is not None and txn.mail.code != 250:
                # Pipelined behind a refused MAIL: the server answers 503 to each RCPT, which
                # says nothing about the recipient; the MAIL reply decides (a 451 stays 4xx).
                return self._release()
            if reply.code in (250, 251):
                txn.accepted.append(rcpt)
            else:
                txn.refused[rcpt] = reply
            if not self.pipelining and not self._held_for(index, "rcpt") and not txn.accepted:
                return self._refuse(index, next(iter(txn.refused.values())))
            return self._release()
        return self._after_data(index, txn, reply)

    def abandon(self, reason: str) -> list[Outcome | ConnectionLost]:
        """The connection broke (or is closing): every message without an outcome gets
        ConnectionLost, handed over or not."""
        for index, result in enumerate(self.results):
            if result is None:
                self.results[index] = ConnectionLost(
                    reason, handed_over=self.txns[index].handed_over
                )
        return self.outcomes()

    def outcomes(self) -> list[Outcome | ConnectionLost]:
        """The outcome of every message (after `done`)."""
        assert all(r is not None for r in self.results)
        return [r for r in self.results if r is not None]

    # -- the steps ---------------------------------------------------------------------------

    def _after_data(self, index: int, txn: _Txn, reply: Reply) -> list[Write]:
        assert txn.mail is not None
        if txn.mail.code == 250 and txn.accepted and reply.code == 354:
            payload = _dot_stuff(self.messages[index].data) + b".\r\n"
            self._expect.append(("end", index, ""))
            # Counted as handed over before the write: the end of data sits in the middle of
            # it, so a failure part-way may come after the server has the whole message.
            txn.handed_over = True
            following = self._commands(rset=False) if self.pipelining else []
            return [Write(b"", payload, self._push(following))]
        writes: list[Write] = []
        if reply.code == 354:
            # DATA accepted although no recipient was: end an empty message at once.
            writes.append(Write(b".\r\n"))
            self._expect.append(("discard", index, ""))
        if txn.mail.code != 250:
            deciding = txn.mail
        elif not txn.accepted:
            deciding = next(iter(txn.refused.values()))
        else:
            deciding = reply
        return writes + self._refuse(index, deciding)

    def _refuse(self, index: int, deciding: Reply) -> list[Write]:
        """A refused transaction: its outcome, then RSET before the next one (pipelined with
        the next message's commands)."""
        self.results[index] = Outcome(deciding, (), self.txns[index].refused)
        if self.pipelining and self._next < len(self.messages):
            return [Write(self._push(self._commands(rset=True)))]
        self._held.clear()  # lock-step: the rest of this transaction is not sent
        self._expect.append(("rset", index, ""))
        return [Write(b"RSET\r\n")]

    def _begin_next(self, *, rset: bool) -> list[Write]:
        commands = self._commands(rset=rset)
        if not commands:
            return []
        if self.pipelining:
            return [Write(self._push(commands))]
        self._held.extend(commands)
        return self._release()

    def _release(self) -> list[Write]:
        """Lock-step: the next held command, if its turn has come."""
        if self.pipelining or not self._held or self._expect:
            return []
        line, expectation = self._held.popleft()
        self._expect.append(expectation)
        return [Write(line)]

    def _held_for(self, index: int, kind: str) -> bool:
        return any(e[0] == kind and e[1] == index for _, e in self._held)

    def _push(self, commands: list[tuple[bytes, tuple[str, int, str]]]) -> bytes:
        for _, expectation in commands:
            self._expect.append(expectation)
        return b"".join(line for line, _ in commands)

    def _commands(self, *, rset: bool) -> list[tuple[bytes, tuple[str, int, str]]]:
        """The next message's RSET?/MAIL/RCPT/DATA with the replies they await; [] at the end."""
        index = self._next
        if index >= len(self.messages):
            return []
        self._next += 1
        message = self.messages[index]
        lines: list[tuple[bytes, tuple[str, int, str]]] = []
        if rset:
            lines.append((b"RSET\r\n", ("rset", index, "")))
        # Addresses are validated, normalised and checked for line breaks already: no need for
        # smtplib.quoteaddr(), which runs the full address parser.
        options = "".join(" " + o for o in self.options(message))
        lines.append(
            (f"MAIL FROM:<{message.mail_from}>{options}\r\n".encode(), ("mail", index, ""))
        )
        for rcpt in message.rcpt_to:
            lines.append((f"RCPT TO:<{rcpt}>\r\n".encode(), ("rcpt", index, rcpt)))
        lines.append((b"DATA\r\n", ("data", index, "")))
        return lines


def _dot_stuff(data: bytes) -> bytes:
    """Transparency (RFC 5321 4.5.2): double a leading dot, end with CRLF."""
    if data.startswith(b"."):
        data = b"." + data
    data = data.replace(b"\r\n.", b"\r\n..")
    return data if data.endswith(b"\r\n") else data + b"\r\n"
