"""Rate limiting: never more than N messages in any window of the rate's period.

Messages are spaced evenly, at least `period / N` apart measured from the previous send, so that no
window of any length holds more than its share, even after a pause or a reconnect (the limiter lives
outside the connection). The spacing is 1% wider than the exact share: what counts is the window
at the receiving server, where network jitter can bring two messages closer than they were sent.

One limiter is shared by every connection of a run (`connections: N`): `wait()` is thread-safe,
and the connections take turns under its lock, so the spacing holds across all of them. The time
kept is when a message was let go, after the sleep, not when it was due: a thread that woke late
does not let the next one go early.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from mailcli.campaign import Rate

# Extra spacing that absorbs arrival jitter of up to 1% of the period (10 ms at "N/s").
SAFETY = 0.01


class RateLimiter:
    """Blocks in `wait()` until the next message may go."""

    def __init__(
        self,
        rate: Rate | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._last: float | None = None
        self._lock = threading.Lock()

    def wait(self) -> float:
        """Sleep until the next send is allowed; return the seconds slept."""
        if self.rate is None:
            return 0.0
        spacing = self.rate.interval_s * (1 + SAFETY)
        with self._lock:  # one waiter at a time: the others queue behind it
            now = self._clock()
            slept = 0.0
            if self._last is not None:
                due = self._last + spacing
                if due > now:
                    slept = due - now
                    self._sleep(slept)
                    now = self._clock()
            self._last = max(now, self._last + spacing if self._last is not None else now)
        return slept
