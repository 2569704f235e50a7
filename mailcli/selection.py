"""Choosing the rows a run sends: the check before connecting, then the due rows in list order.

A real run reads the list twice. The first pass (`check_due_rows`) renders every row that is due,
so that a bad row stops the run before anyone gets a message; the second (`DueRows`) streams the
list again and yields each due row's message, rendered and built, for the engine to send.
Whether a row is due is the retry policy's (`mailcli.retry`); what the state says is the store's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mailcli import retry as policy
from mailcli.campaign import Retry
from mailcli.delivery import DeliveryStatus
from mailcli.envelope import Built
from mailcli.pipeline import Duplicate, Item, Pipeline, Ready
from mailcli.recipients import Recipient, RowProblem
from mailcli.render import Rendered, RenderError
from mailcli.sequence import unit_key
from mailcli.state import Entry, Outcome, StateStore
from mailcli.suppression import SuppressionList, key_of, screened

if TYPE_CHECKING:
    from mailcli.pgstate import Claimed, PgState
from mailcli.summary import Progress, Summary


def _address(item: Item) -> str | None:
    return item.recipient.email if isinstance(item, Ready) else None


@dataclass
class Queued:
    """A due row's message, ready to hand over, and what the state said of it before."""

    ready: Ready
    built: Built
    entry: Entry | None
    # Its status as this run counted it before (None: not yet; `deferred` in a retry round).
    counted: DeliveryStatus | None = None
    step: str | None = None  # the step of a sequence it is (None: a one-message campaign)

    @property
    def key(self) -> str:
        """The state's key of what it is: the recipient's, or the recipient's step."""
        return unit_key(self.ready.recipient.key, self.step)


class RenderCache:
    """What the first pass rendered, kept for the sending pass within a fixed budget.

    Every due row is rendered before connecting (to validate it) and again to send it; for the
    first rows up to the budget the second rendering is skipped. The budget, not the list,
    bounds the memory.
    """

    MAX_ENTRIES = 20_000
    MAX_CHARS = 16_000_000

    def __init__(self) -> None:
        self._items: dict[tuple[int, str], Rendered] = {}
        self._chars = 0

    def put(self, row: int, email: str, rendered: Rendered) -> None:
        """Keep a rendering if the budget allows."""
        size = len(rendered.subject) + len(rendered.text or "") + len(rendered.html or "")
        if len(self._items) < self.MAX_ENTRIES and self._chars + size <= self.MAX_CHARS:
            self._items[(row, email)] = rendered
            self._chars += size

    def take(self, row: int, email: str) -> Rendered | None:
        """The kept rendering of a row, once."""
        rendered = self._items.pop((row, email), None)
        if rendered is not None:
            self._chars -= (
                len(rendered.subject) + len(rendered.text or "") + len(rendered.html or "")
            )
        return rendered


def check_due_rows(
    pipeline: Pipeline,
    state: StateStore,
    summary: Summary,
    *,
    retry_unknown: bool,
    fresh: bool,
    cache: RenderCache,
    progress: Progress | None = None,
    suppression: SuppressionList | None = None,
    resend_failed: bool = False,
) -> bool:
    """Pass 1: read every row and render every one that is due; no connection yet.

    Counts rows, duplicates and problems, and the due rows in `summary.would_send`; True when
    no due row is invalid. A suppressed row is neither rendered nor counted as due (the
    sending pass counts it as suppressed).
    """
    for item, blocked in screened(pipeline.items(render=False), _address, suppression):
        summary.total += 1
        if progress is not None:
            progress(summary)
        if isinstance(item, RowProblem):
            summary.problem(item)
        elif isinstance(item, Duplicate):
            summary.duplicates += 1
        elif blocked:
            continue
        elif fresh or policy.is_due(
            state.lookup(item.recipient.email), retry_unknown, resend_failed=resend_failed
        ):
            r = item.recipient
            try:
                cache.put(r.row, r.email, pipeline.render(r))
                summary.would_send += 1
            except RenderError as exc:
                summary.problem(RowProblem(r.row, r.line, str(exc), r.email))
    return summary.invalid == 0


class DueRows:
    """The messages due in each pass of a run, in list order, at most `limit` in the run."""

    def __init__(
        self,
        pipeline: Pipeline,
        state: StateStore,
        summary: Summary,
        *,
        retry: Retry,
        retry_unknown: bool,
        limit: int | None,
        fresh: bool,
        cache: RenderCache,
        smtputf8: Callable[[], bool],
        suppression: SuppressionList | None = None,
        resend_failed: bool = False,
    ) -> None:
        self.pipeline, self.state, self.summary = pipeline, state, summary
        self.retry, self.retry_unknown, self.limit = retry, retry_unknown, limit
        self.fresh, self.cache, self.smtputf8 = fresh, cache, smtputf8
        self.suppression = suppression
        self.resend_failed = resend_failed
        self.produced = 0

    def first_pass(self) -> Iterator[Queued]:
        """Every due row once; counts the rows handled in earlier runs as skipped, and the due
        rows whose address is on the suppression list as suppressed."""
        rows = screened(self.pipeline.items(render=False), _address, self.suppression)
        for item, blocked in rows:
            if isinstance(item, RowProblem):
                # Reached only with --skip-invalid: recorded, and the run goes on.
                self.summary.problem(item)
                if item.email:
                    self.state.record_invalid(item.email, item.row, item.problem)
                continue
            if isinstance(item, Duplicate):
                continue  # counted in pass 1
            if self.limit is not None and self.produced >= self.limit:
                continue  # keep counting skipped rows; the rest is left for the next run
            r = item.recipient
            # In the first pass of a first run every row is new (duplicates are gone already).
            entry = None if self.fresh else self.state.lookup(r.email)
            if not policy.is_due(entry, self.retry_unknown, resend_failed=self.resend_failed):
                assert entry is not None
                self.summary.skipped += 1
                self.summary.failed_before += entry.rejected
                self.summary.unknown += entry.status is DeliveryStatus.UNKNOWN
                continue
            if blocked:
                self.summary.suppressed += 1
                # A refusal due again (--resend-failed) whose address is suppressed is not
                # sent: it stays `failed`, and the run's exit code says so.
                self.summary.failed_before += entry is not None and entry.rejected
                continue
            queued = self._queued(r, entry, self.cache.take(r.row, r.email), counted=None)
            if queued is not None:
                self.produced += 1
                yield queued

    def retry_round(self, now: float) -> Iterator[Queued]:
        """The recipients deferred earlier in this run whose backoff has passed.

        Not bounded by `limit`: each of them was counted against it when first sent.
        """
        rows = screened(self.pipeline.items(render=False), _address, self.suppression)
        for item, blocked in rows:
            if not isinstance(item, Ready):
                continue
            r = item.recipient
            entry = self.state.lookup(r.email)
            if not policy.due_again(entry, self.state.run_id, self.retry, now):
                continue
            if blocked:  # suppressed while this run waited (an unsubscribe): never sent
                # Pending again (due once off the list), so no retry round waits for it.
                self.state.record(Outcome(key_of(r.email), DeliveryStatus.PENDING))
                _suppressed_while_deferred(self.summary)
                continue
            queued = self._queued(r, entry, None, counted=DeliveryStatus.DEFERRED)
            if queued is not None:
                yield queued

    def others_hold(self) -> bool:
        """Another run holds some of the list (never, with a store of one run at a time)."""
        return False

    def count_left(self) -> int:
        """Rows not yet tried that the next run will send (left by --limit or a stop)."""
        left = 0
        rows = screened(self.pipeline.items(render=False), _address, self.suppression)
        for item, blocked in rows:
            if isinstance(item, Ready) and not blocked:
                entry = self.state.lookup(item.recipient.email)
                if entry is None or entry.status is DeliveryStatus.PENDING:
                    left += 1
        return left

    def _queued(
        self,
        r: Recipient,
        entry: Entry | None,
        rendered: Rendered | None,
        *,
        counted: DeliveryStatus | None,
    ) -> Queued | None:
        return queue_row(
            self.pipeline, self.state, self.summary, r, entry, rendered, counted, self.smtputf8()
        )


def queue_row(
    pipeline: Pipeline,
    state: StateStore,
    summary: Summary,
    r: Recipient,
    entry: Entry | None,
    rendered: Rendered | None,
    counted: DeliveryStatus | None,
    smtputf8: bool,
    *,
    step: str | None = None,
) -> Queued | None:
    """A due row (or a row's due step) rendered (unless it already was) and built; None,
    counted and recorded as `failed`, when it cannot be."""
    problem: str
    try:
        rendered = rendered or pipeline.render(r, step)
    except RenderError as exc:
        problem = str(exc)
    else:
        ready = Ready(r, rendered)
        built = pipeline.check(ready, smtputf8=smtputf8)
        if not isinstance(built, RowProblem):
            return Queued(ready, built, entry, counted, step)
        problem = built.problem
    if step is not None:
        problem = f"step {step!r}: {problem}"
    summary.problem(RowProblem(r.row, r.line, problem, r.email))
    state.record_invalid(r.email, r.row, problem, step)
    return None


class ClaimedRows:
    """The due rows of a store shared by several hosts, claimed a group at a time.

    The same interface as `DueRows`, but the rows come from the store, not the list: each group
    is leased to this run before it is rendered, so no other host takes it. When nothing is
    left to claim but another live run holds rows, `others_hold` makes the engine wait for them
    (they come back if that run dies) rather than end early.
    """

    WAIT_S = 0.25  # between looks at what other runs hold (an indexed query)

    def __init__(
        self,
        pipeline: Pipeline,
        state: PgState,
        summary: Summary,
        *,
        retry: Retry,
        retry_unknown: bool,
        limit: int | None,
        group_size: int,
        smtputf8: Callable[[], bool],
        stop: Callable[[], bool],
        sleep: Callable[[float], None],
        suppression: SuppressionList | None = None,
        resend_failed: bool = False,
    ) -> None:
        self.pipeline, self.state, self.summary = pipeline, state, summary
        self.retry, self.retry_unknown, self.limit = retry, retry_unknown, limit
        self.group_size, self.smtputf8 = group_size, smtputf8
        self.stop, self.sleep = stop, sleep
        self.suppression = suppression
        self.resend_failed = resend_failed
        self.produced = 0

    def first_pass(self) -> Iterator[Queued]:
        """Every due row of the store once, shared with the other hosts."""
        while self.limit is None or self.produced < self.limit:
            wanted = self.group_size
            if self.limit is not None:
                wanted = min(wanted, self.limit - self.produced)
            claimed = self.state.claim(
                wanted,
                retry_unknown=self.retry_unknown,
                retry_round=False,
                attempts=self.retry.attempts,
                resend_failed=self.resend_failed,
            )
            if not claimed:
                return
            # A suppressed recipient is given back at once, still pending (a refusal due again
            # by --resend-failed stays `failed`), and this run does not claim it again.
            blocked = self._blocked(claimed)
            for c in claimed:
                if key_of(c.recipient.email) in blocked:
                    self.summary.suppressed += 1
                    continue
                queued = self._queued(c)
                if queued is not None:
                    self.produced += 1
                    yield queued

    def others_hold(self) -> bool:
        """Called between passes, with nothing of this run in flight: another live run holds
        recipients (claimed, or in flight). The engine waits and claims again, so a run ends
        only once the campaign is settled, and takes over a dead run's claims when its lease
        runs out."""
        if self.limit is not None and self.produced >= self.limit:
            return False
        if self.state.held_by_others():
            self.sleep(self.WAIT_S)
            return not self.stop()
        # Nobody else holds rows now; some may have come free since this pass ended (a dead
        # run's lease ran out in between): one more pass takes them.
        due = self.state.claimable(
            retry_unknown=self.retry_unknown, resend_failed=self.resend_failed
        )
        return due and not self.stop()

    def retry_round(self, now: float) -> Iterator[Queued]:
        """This run's deferred recipients whose backoff has passed."""
        while claimed := self.state.claim(
            self.group_size,
            retry_unknown=False,
            retry_round=True,
            attempts=self.retry.attempts,
        ):
            blocked = self._blocked(claimed)
            for c in claimed:
                if key_of(c.recipient.email) in blocked:
                    _suppressed_while_deferred(self.summary)
                    continue
                queued = self._queued(c, counted=DeliveryStatus.DEFERRED)
                if queued is not None:
                    yield queued

    def count_left(self) -> int:
        """Recipients nobody has tried yet and no live run holds (the suppressed aside)."""
        if self.suppression is None:
            return self.state.left()
        rows = screened(self.state.left_emails(), lambda e: e, self.suppression)
        return sum(1 for _, blocked in rows if not blocked)

    def _blocked(self, claimed: list[Claimed]) -> set[str]:
        if self.suppression is None:
            return set()
        blocked = self.suppression.suppressed([c.recipient.email for c in claimed])
        if blocked:
            self.state.set_aside(
                [c.recipient.email for c in claimed if key_of(c.recipient.email) in blocked]
            )
        return blocked

    def _queued(self, claimed: Claimed, counted: DeliveryStatus | None = None) -> Queued | None:
        return queue_row(
            self.pipeline,
            self.state,
            self.summary,
            claimed.recipient,
            claimed.entry,
            None,
            counted,
            self.smtputf8(),
        )


def _suppressed_while_deferred(summary: Summary) -> None:
    """A recipient deferred earlier in this run was suppressed since (an unsubscribe while it
    waited): counted as suppressed, no longer as deferred."""
    summary.deferred -= 1
    summary.suppressed += 1
