"""The retry policy, in one place: who is due in a run, and when a 4xx is tried again.

Across runs: a recipient is due when it was never tried, is `pending` or `deferred`, was an
invalid row (the data may be fixed since), is `unknown` and the user asked for `--retry-unknown`,
or was refused by a server (5xx) and the user asked for `--resend-failed`. Within a run: a
`deferred` recipient is retried after `retry.delay`, doubling each time, up to `retry.attempts`
tries; after that it stays `deferred` for the next run.
"""

from __future__ import annotations

from mailcli.campaign import Retry
from mailcli.delivery import DeliveryStatus
from mailcli.state import Entry


def is_due(entry: Entry | None, retry_unknown: bool, *, resend_failed: bool = False) -> bool:
    """Whether a recipient is sent in this run, by its recorded status."""
    if entry is None or entry.status in (DeliveryStatus.PENDING, DeliveryStatus.DEFERRED):
        return True
    if entry.status is DeliveryStatus.FAILED:
        # An invalid row is due (its data may be fixed); a server's refusal only when the user
        # says its cause was fixed upstream: sent again unasked, it is refused again and counts
        # against the sender's reputation with that receiver.
        return not entry.rejected or resend_failed
    return entry.status is DeliveryStatus.UNKNOWN and retry_unknown


def due_again(entry: Entry | None, run_id: int | None, retry: Retry, now: float) -> bool:
    """Whether a recipient deferred earlier in this run is due in a retry round at `now`."""
    return (
        entry is not None
        and entry.status is DeliveryStatus.DEFERRED
        and entry.run == run_id
        and entry.run_tries < retry.attempts
        and (entry.next_at or 0) <= now
    )


def tries_in_run(entry: Entry | None, run_id: int | None) -> int:
    """This run's tries for a recipient, counting the one just made."""
    if entry is not None and entry.run == run_id:
        return entry.run_tries + 1
    return 1


def next_try_at(retry: Retry, tries: int, now: float) -> float | None:
    """When a recipient deferred after `tries` tries in this run is tried again (None: not in
    this run): exponential backoff from `retry.delay`."""
    if tries >= retry.attempts:
        return None
    return now + retry.delay_s * 2.0 ** (tries - 1)
