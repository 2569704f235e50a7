"""What became of a message, and the `Transport` seam every way of sending implements.

A transport moves finished messages (`Built`: bytes and envelope) to somewhere that takes them
(an SMTP server, an in-memory outbox, later an HTTP API) and answers with one result for each
message, in order: a `Delivery` when the far side said something about it (or may have it), or
`NotSent` when the message provably never left (safe to send again). Refusals are data, never
exceptions; only failing to open at all raises (`UnavailableError`, `AuthError`).

The one rule for a lost answer lives in `lost()`: a message whose data was handed over may have
been queued, so it is `unknown` and never resent by default; one that was not handed over is
`NotSent`, and the caller may send it again on a new connection.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Protocol

from mailcli.envelope import Built


class DeliveryStatus(StrEnum):
    """A recipient's or a message's state: the words of the contract and of the state file."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"
    DEFERRED = "deferred"
    UNKNOWN = "unknown"
    # A message not sent at all: every recipient is on the suppression list (never a
    # recipient's state in a campaign, where a suppressed row stays pending).
    SUPPRESSED = "suppressed"
    # A sequence step whose `if:` was false for the recipient when it came due: never sent.
    SKIPPED = "skipped"


# The statuses a recipient can have in a campaign's state (`suppressed` is only a message's).
RECIPIENT_STATUSES = (
    DeliveryStatus.PENDING,
    DeliveryStatus.SENT,
    DeliveryStatus.FAILED,
    DeliveryStatus.DEFERRED,
    DeliveryStatus.UNKNOWN,
)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A server's refusal of one recipient (or of the whole message): code and text."""

    code: int | None
    reply: str

    @property
    def temporary(self) -> bool:
        """4xx: worth trying again later."""
        return self.code is not None and 400 <= self.code < 500

    def __str__(self) -> str:
        return f"{self.code} {self.reply}" if self.code is not None else self.reply


_NO_REFUSALS: Mapping[str, Refusal] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Delivery:
    """The outcome of one message.

    `status` is `sent` when at least one recipient was accepted, `failed` for a permanent
    refusal, `deferred` for a temporary one (or a message that could not be sent for now), and
    `unknown` when the message was handed over but its answer was lost. `recipients` are the
    accepted addresses; `refused` maps each refused address to its code and reply. A `failed`
    Delivery without a `code` was never offered to the server (it cannot go as it is, e.g. an
    address that needs SMTPUTF8 on a server without it); `reply` says why. Over an HTTP API,
    `code` is the provider's (Postmark's ErrorCode, else the HTTP status) and the status is the
    provider's verdict, not read from the code.
    """

    status: DeliveryStatus
    message_id: str
    recipients: tuple[str, ...] = ()
    refused: Mapping[str, Refusal] = field(default_factory=lambda: _NO_REFUSALS)
    code: int | None = None
    reply: str = ""
    #: The HTTP API provider's own id for the message (None over SMTP).
    provider_id: str | None = None
    #: Recipients left out because they are on the suppression list (never offered).
    suppressed: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """The message was accepted for at least one recipient."""
        return self.status is DeliveryStatus.SENT


@dataclass(frozen=True, slots=True)
class NotSent:
    """A message that never left: the connection broke before its data was handed over."""

    reason: str


Result = Delivery | NotSent


def lost(message: Built, reason: str, *, handed_over: bool) -> Result:
    """The result for a message whose answer never came (the one rule, for every transport)."""
    if handed_over:
        return Delivery(
            DeliveryStatus.UNKNOWN,
            message.message_id,
            code=None,
            reply=f"connection lost before the reply: {reason}",
        )
    return NotSent(reason)


def replied(
    message: Built,
    code: int,
    reply: str,
    accepted: Sequence[str],
    refused: Mapping[str, Refusal],
) -> Delivery:
    """The result for a message the far side answered: `code`/`reply` is the deciding answer."""
    if accepted and code // 100 == 2:
        status = DeliveryStatus.SENT
    elif 400 <= code < 500:
        status = DeliveryStatus.DEFERRED
    else:
        status = DeliveryStatus.FAILED
    return Delivery(
        status,
        message.message_id,
        tuple(accepted) if status is DeliveryStatus.SENT else (),
        MappingProxyType(dict(refused)) if refused else _NO_REFUSALS,
        code,
        reply,
    )


def without_smtputf8(
    messages: Sequence[Built], supported: bool, endpoint: str
) -> tuple[list[Delivery | None], list[int]]:
    """Where the server lacks SMTPUTF8, a message whose addresses need it fails at once, unsent.

    Returns a Delivery for each of those (None for the others) and the indexes of the others.
    """
    results: list[Delivery | None] = [None] * len(messages)
    todo: list[int] = []
    for index, message in enumerate(messages):
        if message.smtputf8 and not supported:
            results[index] = Delivery(
                DeliveryStatus.FAILED,
                message.message_id,
                reply=f"{message.rcpt_to[0]}: an address that needs a server with SMTPUTF8, "
                f"which {endpoint} does not offer",
            )
        else:
            todo.append(index)
    return results, todo


Pace = Callable[[], object]
# Messages marked in flight together (one fsync, one pipelined stream): the most a crash can
# leave 'unknown' over SMTP. Tens, so that a crash strands few; not a handful, so that the fsync
# and the pipeline draining at each group's end cost little per message.
WINDOW = 32


class Transport(Protocol):
    """Moves finished messages; the batch engine and `Mailer` know only this."""

    @property
    def name(self) -> str:
        """ "smtp", "outbox", or an HTTP API provider's name; reported in summaries."""
        ...

    @property
    def connections(self) -> int:
        """Connections (or sessions) opened so far."""
        ...

    @property
    def requests(self) -> int:
        """HTTP requests made so far (0 for SMTP and the outbox)."""
        ...

    @property
    def window(self) -> int:
        """The most messages one `send` call should carry (the batch engine's group)."""
        ...

    @property
    def endpoint(self) -> str:
        """Where the messages go, for messages to the user (host:port, a URL, "outbox")."""
        ...

    @property
    def is_open(self) -> bool:
        """A session is established and `send` can be called."""
        ...

    @property
    def smtputf8(self) -> bool:
        """Messages whose addresses need SMTPUTF8 can be carried."""
        ...

    def open(self) -> None:
        """Establish a session (raise UnavailableError, AuthError or ConfigError)."""
        ...

    def send(
        self,
        messages: Sequence[Built],
        *,
        pace: Pace | None = None,
        idle: Callable[[], object] | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> list[Result]:
        """Send messages in order over the open session: one result for each.

        `pace` (a rate limiter) is called right before each message's data leaves: the data is
        what delivers a message. `idle` is called while the far side works, so the caller can
        prepare what comes next. `cancel` is asked before each message that is not yet under
        way; when it says True, that message and the rest are `NotSent`. A transport that broke
        returns `NotSent` for what it could not hand over and is no longer open. Outcomes are
        never raised; only a message that must not be written at all is (`BadHeaderError` for a
        line break in an envelope address), before any byte of the call is written.
        """
        ...

    def close(self) -> None:
        """End the session; never raises."""
        ...
