"""Sending a group of messages over a transport, with the one reconnect policy.

The transport moves the bytes and says, for each message, whether it was answered, may have been
taken (`unknown`), or provably never left (`NotSent`). Here, what never left is sent again on a
new connection: reconnecting with backoff (1, 2, 4 s), and giving up after as many rounds in a
row that send nothing. The batch engine and `Connection.send_many` both send through this.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from mailcli.delivery import Delivery, NotSent, Pace, Result, Transport
from mailcli.envelope import Built
from mailcli.errors import MailcliError, UnavailableError

log = logging.getLogger(__name__)
RECONNECT_DELAYS = (1.0, 2.0, 4.0)


class Stopped(Exception):
    """A group was left unfinished: a stop was asked for, or the server stays unreachable.

    `results` holds a Delivery for each message that got one and None for those that were never
    handed over (safe to send later).
    """

    def __init__(
        self, reason: str, results: list[Delivery | None], error: MailcliError | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.results = results
        # What stopped it when that was an error of its own (a login refused on reconnect):
        # the caller may raise it once it has recorded what was sent.
        self.error = error


class GroupSender:
    """Sends groups over one transport, reconnecting when it breaks."""

    def __init__(
        self,
        transport: Transport,
        *,
        sleep: Callable[[float], None] = time.sleep,
        stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.transport = transport
        self.sleep = sleep
        self.stop = stop

    def send(
        self,
        messages: Sequence[Built],
        *,
        pace: Pace | None = None,
        idle: Callable[[], object] | None = None,
        on_result: Callable[[int, Delivery], None] | None = None,
    ) -> list[Delivery]:
        """A Delivery for every message, in order; raises Stopped if that cannot be had.

        `on_result(index, delivery)` is called as each result comes in.
        """
        rounds = Rounds(len(messages), on_result)
        while rounds.todo:
            if self.stop():
                raise Stopped("stopped by a signal", rounds.results)
            if not self.transport.is_open:
                try:
                    regained = self.reconnect()
                except MailcliError as exc:  # e.g. the login refused on the new connection
                    raise Stopped(str(exc), rounds.results, exc) from exc
                if not regained:
                    raise Stopped(rounds.lost(self.transport.endpoint), rounds.results)
            try:
                answers = self.transport.send(
                    [messages[i] for i in rounds.todo], pace=pace, idle=idle, cancel=self.stop
                )
            except MailcliError as exc:
                # Refused before a byte was written (BadHeaderError): what has no answer yet
                # was never handed over, and the caller must know which those are.
                raise Stopped(str(exc), rounds.results) from exc
            if rounds.settle(answers):
                raise Stopped(rounds.lost(self.transport.endpoint), rounds.results)
        return rounds.deliveries()

    def reconnect(self) -> bool:
        """Reconnect with backoff; False after RECONNECT_DELAYS failures in a row."""
        for delay in RECONNECT_DELAYS:
            log.warning("reconnecting to %s in %.0f s", self.transport.endpoint, delay)
            self.sleep(delay)
            try:
                self.transport.close()
                self.transport.open()
                return True
            except UnavailableError as exc:
                if not exc.retry:
                    raise  # e.g. an untrusted certificate: waiting will not help; stop (69)
                log.warning("reconnecting failed: %s", exc)
        return False


class Rounds:
    """The bookkeeping of the reconnect policy, for the blocking and the asyncio sender alike:
    which messages still need sending, and when to give up (after RECONNECT_DELAYS rounds in a
    row that send nothing)."""

    def __init__(self, count: int, on_result: Callable[[int, Delivery], None] | None) -> None:
        self.results: list[Delivery | None] = [None] * count
        self.todo = list(range(count))
        self.on_result = on_result
        self.fruitless = 0
        self.reason = ""

    def settle(self, answers: Sequence[Result]) -> bool:
        """Take one round's answers; True when the policy gives up."""
        again: list[int] = []
        for index, answer in zip(self.todo, answers, strict=True):
            if isinstance(answer, NotSent):
                again.append(index)
                self.reason = answer.reason
                continue
            self.results[index] = answer
            if self.on_result is not None:
                self.on_result(index, answer)
        self.fruitless = self.fruitless + 1 if len(again) == len(self.todo) else 0
        self.todo = again
        return bool(again) and self.fruitless >= len(RECONNECT_DELAYS)

    def deliveries(self) -> list[Delivery]:
        """Every message's Delivery, in order (once `todo` is empty)."""
        return [r for r in self.results if r is not None]

    def lost(self, endpoint: str) -> str:
        """Why the rest could not be sent."""
        text = f"connection to {endpoint} lost and not regained"
        return f"{text}: {self.reason}" if self.reason else text
