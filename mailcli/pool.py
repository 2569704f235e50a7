"""Several connections for one run (`connections: N`): one sender thread per transport.

The batch engine stays the only one that touches the state and the list: it builds groups, marks
each in flight, and hands it to an idle connection here. Each connection's thread sends its group
with the one reconnect policy (`GroupSender`) and reports every answer back as an event; the
engine records them in the order they come. Every connection paces itself on the run's one
`RateLimiter`, so the rate holds for all of them together. A connection that breaks is reopened
by its own thread while the others go on.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mailcli.delivery import Delivery, Pace, Transport
from mailcli.envelope import Built
from mailcli.errors import MailcliError, UnavailableError
from mailcli.sender import GroupSender, Stopped

Job = tuple[int, Sequence[Built]] | None  # a group number and its messages; None: stop

log = logging.getLogger(__name__)
SWITCH_INTERVAL = 0.0005  # seconds (Python's default: 0.005)


@dataclass(frozen=True, slots=True)
class Answer:
    """One message of a group got its Delivery."""

    group: int
    index: int
    delivery: Delivery


@dataclass(frozen=True, slots=True)
class Finished:
    """A connection is done with a group: every message answered, or `stopped` says why not."""

    group: int
    stopped: Stopped | None = None
    # An exception no transport should raise (a bug): what had no answer may have been sent.
    crash: BaseException | None = None


Event = Answer | Finished


class ConnectionPool:
    """N transports, each driven by its own thread; groups in, events out."""

    def __init__(
        self,
        transports: Sequence[Transport],
        *,
        pace: Pace,
        sleep: Callable[[float], None],
        stop: Callable[[], bool],
    ) -> None:
        self.transports = list(transports)
        self.pace = pace
        self._senders = [GroupSender(t, sleep=sleep, stop=stop) for t in self.transports]
        self._events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._inboxes: list[queue.SimpleQueue[Job]] = []
        self._threads: list[threading.Thread] = []
        self._idle: list[int] = []
        self._busy: dict[int, int] = {}  # group -> connection
        self._switch: float | None = None

    @property
    def size(self) -> int:
        """Connections sending (those that opened)."""
        return len(self._inboxes)

    @property
    def free(self) -> bool:
        """A connection is idle and can take a group."""
        return bool(self._idle)

    def open(self) -> None:
        """Open every transport at once; go on with those that opened.

        Raises the first error when none opened, and a login or configuration error at once
        (the others would meet the same). A server that takes fewer sessions than asked (421
        "too many connections") leaves the run on the ones it took, with a warning.
        """
        # The connection threads spend their time waiting for replies, and a reply must not
        # wait for the interpreter lock while the engine renders the next group: switch often.
        self._switch = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch, SWITCH_INTERVAL))
        errors: list[BaseException | None] = [None] * len(self.transports)

        def opener(index: int) -> None:
            try:
                self.transports[index].open()
            except BaseException as exc:  # reported below, in the engine's thread
                errors[index] = exc

        threads = [
            threading.Thread(target=opener, args=(i,), name=f"mailcli-open-{i}", daemon=True)
            for i in range(len(self.transports))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        opened = [i for i, e in enumerate(errors) if e is None]
        for error in errors:
            if error is not None and not isinstance(error, UnavailableError):
                self.close()
                raise error  # a refused login or a bad certificate: every connection meets it
        if not opened:
            self.close()
            first = next(e for e in errors if e is not None)
            raise first
        if len(opened) < len(self.transports):
            reason = next(e for e in errors if e is not None)
            log.warning(
                "%d of %d connections opened; going on with those (%s)",
                len(opened),
                len(self.transports),
                reason,
            )
        for index in opened:
            inbox: queue.SimpleQueue[Job] = queue.SimpleQueue()
            thread = threading.Thread(
                target=self._work,
                args=(index, inbox),
                name=f"mailcli-connection-{index}",
                daemon=True,
            )
            self._inboxes.append(inbox)
            self._threads.append(thread)
            self._idle.append(len(self._inboxes) - 1)
            thread.start()

    def submit(self, group: int, messages: Sequence[Built]) -> None:
        """Hand a group to an idle connection (call only when `free`)."""
        worker = self._idle.pop()
        self._busy[group] = worker
        self._inboxes[worker].put((group, messages))

    def next_event(self) -> Event:
        """The next answer or finished group; waits in short steps so signals get through."""
        while True:
            try:
                event = self._events.get(timeout=0.2)
            except queue.Empty:
                continue
            if isinstance(event, Finished):
                self._idle.append(self._busy.pop(event.group))
            return event

    def close(self, *, wait: bool = True) -> None:
        """Let the threads end after their groups, then close every transport.

        `wait=False` (a second signal) leaves at once: a thread still sending is a daemon and
        ends with the process, and its transport is not touched under it.
        """
        for inbox in self._inboxes:
            inbox.put(None)
        if self._switch is not None:
            sys.setswitchinterval(self._switch)
            self._switch = None
        if not wait:
            return
        for thread in self._threads:
            thread.join()
        self._inboxes.clear()
        self._threads.clear()
        for transport in self.transports:
            with contextlib.suppress(Exception):
                transport.close()

    def _work(self, index: int, inbox: queue.SimpleQueue[Job]) -> None:
        sender = self._senders[index]
        events = self._events
        while (job := inbox.get()) is not None:
            group, messages = job

            def answer(i: int, delivery: Delivery, group: int = group) -> None:
                events.put(Answer(group, i, delivery))

            try:
                sender.send(messages, pace=self.pace, on_result=answer)
            except Stopped as exc:
                events.put(Finished(group, stopped=exc))
            except MailcliError as exc:  # not raised by GroupSender; kept safe all the same
                events.put(Finished(group, stopped=Stopped(str(exc), [], exc)))
            except BaseException as exc:
                events.put(Finished(group, crash=exc))
            else:
                events.put(Finished(group))
