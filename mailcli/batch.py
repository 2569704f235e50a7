"""The batch engine: a whole campaign, dry-run or delivered over one persistent SMTP connection.

A real run checks every row before it connects (render included), so a bad row stops the run before
anyone gets a message; then it streams the list again and sends. Per-recipient outcomes are counted
in a `Summary`, never raised.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailcli import workers
from mailcli.campaign import Campaign, Rate, Retry
from mailcli.envelope import Built
from mailcli.errors import ExitCode, UnavailableError
from mailcli.pipeline import Duplicate, Item, Pipeline, Ready
from mailcli.preview import Preview
from mailcli.ratelimit import RateLimiter
from mailcli.recipients import Recipient, RowProblem
from mailcli.render import Rendered, RenderError
from mailcli.state import CampaignLock, Entry, Outcome, State
from mailcli.transport import ConnectionLost, SmtpConnection
from mailcli.transport import Outcome as SmtpOutcome

log = logging.getLogger(__name__)
# Problems kept for the report; beyond this only the count grows, so memory stays bounded.
MAX_PROBLEMS = 1000
RECONNECT_DELAYS = (1.0, 2.0, 4.0)
# Messages marked in flight together (one fsync, one pipelined stream): the most a crash can
# leave 'unknown'. Tens, so that a crash strands few; not a handful, so that the fsync and the
# pipeline draining at each group's end cost little per message.
WINDOW = 32


@dataclass(frozen=True, slots=True)
class Failure:
    """A recipient the server refused."""

    row: int
    email: str
    status: str
    code: int | None
    reply: str


@dataclass
class Summary:
    """Counts for one run; `to_json()` is the contract's `--json` object."""

    campaign: str
    dry_run: bool = False
    total: int = 0
    sent: int = 0
    failed: int = 0
    deferred: int = 0
    unknown: int = 0
    skipped: int = 0
    failed_before: int = 0
    pending: int = 0
    invalid: int = 0
    duplicates: int = 0
    would_send: int = 0
    bytes: int = 0
    elapsed_s: float = 0.0
    connections: int = 0
    exit_code: int = 0
    error: str | None = None
    # "checking" (pass 1 of a real run), "sending", or "building" (a dry run); for displays.
    phase: str = "checking"
    problems: list[RowProblem] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    @property
    def rate_per_s(self) -> float:
        """Messages handled per second (built for a dry run, sent otherwise)."""
        done = self.would_send if self.dry_run else self.sent + self.failed + self.deferred
        return done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def problem(self, problem: RowProblem) -> None:
        """Count an invalid row, keeping the first MAX_PROBLEMS for the report."""
        self.invalid += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)

    def to_json(self) -> dict[str, Any]:
        """The machine-readable summary."""
        return {
            "campaign": self.campaign,
            "dry_run": self.dry_run,
            "total": self.total,
            "sent": self.sent,
            "failed": self.failed,
            "deferred": self.deferred,
            "unknown": self.unknown,
            "skipped": self.skipped,
            "failed_before": self.failed_before,
            "pending": self.pending,
            "invalid": self.invalid,
            "duplicates": self.duplicates,
            "would_send": self.would_send,
            "bytes": self.bytes,
            "elapsed_s": round(self.elapsed_s, 3),
            "rate_per_s": round(self.rate_per_s, 1),
            "connections": self.connections,
            "exit_code": self.exit_code,
            "error": self.error,
            "problems": [
                {"row": p.row, "line": p.line, "email": p.email, "problem": p.problem}
                for p in self.problems
            ],
            "failures": [
                {
                    "row": f.row,
                    "email": f.email,
                    "status": f.status,
                    "code": f.code,
                    "reply": f.reply,
                }
                for f in self.failures
            ],
        }


Progress = Callable[[Summary], None]


def dry_run(
    campaign: Campaign,
    *,
    sender: str | None = None,
    limit: int | None = None,
    progress: Progress | None = None,
    on_message: Callable[[Preview], None] | None = None,
    jobs: int | None = None,
) -> Summary:
    """Read, validate, render and build every row; open no connection, write no state.

    `jobs` worker processes render and build (None: every core for a big list, see
    `workers.default_jobs`); the outcome is the same for any number. `on_message` needs the
    bytes, so it keeps the work in this process.
    """
    started = time.monotonic()
    summary = Summary(campaign=campaign.name, dry_run=True, phase="building")
    pipeline = Pipeline(campaign, sender=sender)
    if on_message is not None:
        jobs = 1
    elif jobs is None:
        jobs = workers.default_jobs(campaign.recipients.path)
    rows = workers.checked(pipeline, jobs) if jobs > 1 else _checked_here(pipeline)
    for item, outcome in rows:
        summary.total += 1
        if isinstance(item, RowProblem):
            summary.problem(item)
        elif isinstance(item, Duplicate):
            summary.duplicates += 1
        elif isinstance(outcome, RowProblem):
            summary.problem(outcome)
        elif outcome is not None and (limit is None or summary.would_send < limit):
            summary.would_send += 1
            if isinstance(outcome, int):
                summary.bytes += outcome
            else:
                summary.bytes += len(outcome.data)
                if on_message is not None:
                    on_message(Preview(item.recipient.row, item.recipient.email, outcome))
        if progress is not None:
            progress(summary)
    summary.elapsed_s = time.monotonic() - started
    summary.exit_code = ExitCode.DATAERR if summary.invalid else ExitCode.OK
    return summary


def _checked_here(pipeline: Pipeline) -> Iterator[tuple[Item, Built | RowProblem | None]]:
    for item in pipeline.items(render=False):
        yield item, pipeline.check_recipient(item.recipient) if isinstance(item, Ready) else None


def send_batch(
    campaign: Campaign,
    connect: Callable[[], SmtpConnection],
    *,
    sender: str | None = None,
    limit: int | None = None,
    rate: Rate | None = None,
    skip_invalid: bool = False,
    retry_unknown: bool = False,
    progress: Progress | None = None,
    sleep: Callable[[float], None] = time.sleep,
    stop: Callable[[], bool] | None = None,
) -> Summary:
    """Deliver a campaign over one persistent connection, resuming from its state on disk.

    Holds the campaign's lock for the whole run; validates every row that is due before
    connecting; retries 4xx replies with backoff; leaves state that the next run resumes from.
    """
    started = time.monotonic()
    summary = Summary(campaign=campaign.name)
    pipeline = Pipeline(campaign, sender=sender)
    with (
        CampaignLock(lock_path(campaign), campaign.name),
        State.open(campaign.state_path, campaign.name) as state,
    ):
        # On a first run no row has a record: the per-row lookups of the first pass are skipped.
        fresh = state.empty
        cache = RenderCache()
        if (
            not _validate(pipeline, state, summary, retry_unknown, fresh, cache, progress)
            and not skip_invalid
        ):
            summary.elapsed_s = time.monotonic() - started
            summary.exit_code = ExitCode.DATAERR
            return summary
        summary.problems.clear()
        summary.invalid = 0
        summary.phase = "sending"
        log.info(
            "campaign %r: %d rows read, %d due in this run",
            campaign.name,
            summary.total,
            summary.would_send,
        )
        if progress is not None:
            progress(summary)
        state.start_run()
        run = _Run(
            pipeline,
            state,
            connect(),
            summary,
            limiter=RateLimiter(rate or campaign.rate, sleep=sleep),
            retry=campaign.retry,
            limit=limit,
            retry_unknown=retry_unknown,
            skip_invalid=skip_invalid,
            progress=progress,
            sleep=sleep,
            stop=stop or (lambda: False),
            fresh=fresh,
            cache=cache,
        )
        try:
            run.execute()
        finally:
            run.connection.close()
            summary.connections = run.connection.connections
            summary.elapsed_s = time.monotonic() - started
            summary.exit_code = _exit_code(summary)
            state.finish_run(summary.to_json())
    return summary


def lock_path(campaign: Campaign) -> Path:
    """The lock file beside the state database."""
    return campaign.state_path.with_name(campaign.state_path.name + ".lock")


class RenderCache:
    """What pass 1 rendered, kept for the sending pass within a fixed budget.

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


def _validate(
    pipeline: Pipeline,
    state: State,
    summary: Summary,
    retry_unknown: bool,
    fresh: bool,
    cache: RenderCache,
    progress: Progress | None = None,
) -> bool:
    """Pass 1: read every row and render every one that is due; no connection yet.

    Counts the due rows in `summary.would_send`.
    """
    for item in pipeline.items(render=False):
        summary.total += 1
        if progress is not None:
            progress(summary)
        if isinstance(item, RowProblem):
            summary.problem(item)
        elif isinstance(item, Duplicate):
            summary.duplicates += 1
        elif fresh or _due(state.lookup(item.recipient.email), retry_unknown):
            try:
                r = item.recipient
                cache.put(r.row, r.email, pipeline.render(r))
                summary.would_send += 1
            except RenderError as exc:
                r = item.recipient
                summary.problem(RowProblem(r.row, r.line, str(exc), r.email))
    return summary.invalid == 0


def _due(entry: Entry | None, retry_unknown: bool) -> bool:
    """Whether a recipient is sent in this run, by its recorded status.

    An earlier invalid row (failed without an SMTP code) is due again: the data may be fixed.
    """
    if entry is None or entry.status in ("pending", "deferred"):
        return True
    if entry.status == "failed":
        return not entry.rejected
    return entry.status == "unknown" and retry_unknown


def _exit_code(s: Summary) -> int:
    if s.error is not None or s.deferred or s.unknown or s.pending:
        return ExitCode.TEMPFAIL
    if s.failed or s.failed_before:
        return ExitCode.REJECTED
    return ExitCode.OK


class _Stop(Exception):
    """The run ends early (a signal, or the server stays unreachable); state is consistent."""


@dataclass
class _Queued:
    ready: Ready
    built: Built
    entry: Entry | None


class _Run:
    """One real run: streams the due rows in groups, sends, records, retries."""

    def __init__(
        self,
        pipeline: Pipeline,
        state: State,
        connection: SmtpConnection,
        summary: Summary,
        *,
        limiter: RateLimiter,
        retry: Retry,
        limit: int | None,
        retry_unknown: bool,
        skip_invalid: bool,
        progress: Progress | None,
        sleep: Callable[[float], None],
        stop: Callable[[], bool],
        fresh: bool = False,
        cache: RenderCache | None = None,
    ) -> None:
        self.pipeline, self.state, self.connection = pipeline, state, connection
        self.summary, self.limiter, self.retry = summary, limiter, retry
        self.limit, self.retry_unknown, self.skip_invalid = limit, retry_unknown, skip_invalid
        self.progress, self.sleep, self.stop = progress, sleep, stop
        self.attempted = 0
        self.produced = 0
        self.fresh = fresh
        self.cache = cache or RenderCache()
        rate = limiter.rate
        # The group is the unknown window: at most WINDOW messages, and about a second's worth
        # at a slow rate, so a crash strands few recipients in 'unknown'.
        per_second = rate.count / rate.per_s if rate else float(WINDOW)
        self.group_size = max(1, min(WINDOW, int(per_second)))

    def execute(self) -> None:
        """Main pass, then retry rounds for 4xx replies, until done or stopped."""
        try:
            if self.summary.would_send == 0:
                # Nothing is due (a finished campaign run again by cron): count what the list
                # holds and leave the server alone.
                self._pass(first=True)
                return
            self.connection.open()
            self._pass(first=True)
            while True:
                due_at = self.state.next_retry(self.retry.attempts)
                if due_at is None:
                    break
                log.info("retrying deferred recipients in %.0f s", max(0.0, due_at - time.time()))
                self._wait_until(due_at)
                self._pass(first=False)
        except _Stop as exc:
            log.warning("run stopped: %s", exc)
            self.summary.error = str(exc)
        except KeyboardInterrupt:
            # A second signal: whatever was in flight stays 'unknown'; the rest is recorded.
            self.summary.error = "interrupted"
        finally:
            self.state.flush()
        if self.summary.error is not None:
            self.summary.pending = self._count_left()  # what the next run will pick up

    def _wait_until(self, when: float) -> None:
        while (left := when - time.time()) > 0:
            if self.stop():
                raise _Stop("stopped by a signal")
            self.sleep(min(left, 0.5))

    def _pass(self, *, first: bool) -> None:
        source = self._candidates(first=first, now=time.time())
        group = list(itertools.islice(source, self.group_size))
        while group:
            upcoming: list[_Queued] = []

            def prepare(upcoming: list[_Queued] = upcoming) -> None:
                # Called while the server works on what was just written: the next group is
                # rendered and built in the time the connection would otherwise sit idle.
                if len(upcoming) < self.group_size:
                    queued = next(source, None)
                    if queued is not None:
                        upcoming.append(queued)

            self._send_group(group, prepare)
            upcoming.extend(itertools.islice(source, self.group_size - len(upcoming)))
            group = upcoming
        self.state.flush()  # the retry rounds read what this pass recorded
        if first and self.limit is not None:
            self.summary.pending = self._count_left()

    def _candidates(self, *, first: bool, now: float) -> Iterator[_Queued]:
        """The messages due in this pass, rendered and built, in list order (at most --limit)."""
        for item in self.pipeline.items(render=False):
            if isinstance(item, RowProblem):
                if first:  # reached only with --skip-invalid: record it and go on
                    self.summary.problem(item)
                    if item.email:
                        self.state.record_invalid(item.email, item.row, item.problem)
                continue
            if isinstance(item, Duplicate):
                continue  # counted in pass 1
            if self.limit is not None and self.produced >= self.limit:
                if first:
                    continue  # keep counting skipped rows; the rest is left for the next run
                return
            queued = self._consider(item, first=first, now=now)
            if queued is not None:
                self.produced += 1
                yield queued

    def _consider(self, item: Ready, *, first: bool, now: float) -> _Queued | None:
        """A queued message when this row is due now, else None (counted as skipped etc.)."""
        r = item.recipient
        # In the first pass of a first run every row is new (duplicates are gone already).
        entry = None if first and self.fresh else self.state.lookup(r.email)
        if first:
            if not _due(entry, self.retry_unknown):
                assert entry is not None
                self.summary.skipped += 1
                self.summary.failed_before += entry.rejected
                self.summary.unknown += entry.status == "unknown"
                return None
        elif not (
            entry is not None
            and entry.status == "deferred"
            and entry.run == self.state.run_id
            and entry.run_tries < self.retry.attempts
            and (entry.next_at or 0) <= now
        ):
            return None
        try:
            rendered = (self.cache.take(r.row, r.email) if first else None) or (
                self.pipeline.render(r)
            )
        except RenderError as exc:
            self._invalid(r, str(exc))
            return None
        built = self.pipeline.check(
            Ready(r, rendered), smtputf8="smtputf8" in self.connection.extensions
        )
        if isinstance(built, RowProblem):
            self._invalid(r, built.problem)
            return None
        if entry is not None and entry.status == "deferred" and not first:
            self.summary.deferred -= 1  # counted again below if it is deferred once more
        return _Queued(Ready(r, rendered), built, entry)

    def _invalid(self, r: Recipient, problem: str) -> None:
        self.summary.problem(RowProblem(r.row, r.line, problem, r.email))
        self.state.record_invalid(r.email, r.row, problem)

    def _send_group(self, group: list[_Queued], prepare: Callable[[], None]) -> None:
        self.state.begin_flight(
            (q.ready.recipient.email, q.ready.recipient.row, q.entry) for q in group
        )
        if self.connection.pipelining and len(group) > 1:
            self._send_group_pipelined(group, prepare)
            return
        for index, queued in enumerate(group):
            if self.stop():
                self._revert(group[index:])
                raise _Stop("stopped by a signal")
            self.attempted += 1
            try:
                outcome = _send_with_reconnect(
                    self.connection, queued.built, self.sleep, self.limiter.wait
                )
            except ConnectionLost as exc:
                if not exc.handed_over:
                    self._revert(group[index:])
                    raise _Stop(
                        f"connection to {self.connection.settings.endpoint} lost and "
                        f"not regained: {exc.reason}"
                    ) from None
                # The server may have queued it; sending again could make a duplicate.
                self._record_unknown(queued, f"connection lost before the reply: {exc.reason}")
                if not _reconnect(self.connection, self.sleep):
                    self._revert(group[index + 1 :])
                    raise _Stop(
                        f"connection to {self.connection.settings.endpoint} lost and "
                        f"not regained: {exc.reason}"
                    ) from None
                continue
            self._record(queued, outcome)
            if self.progress is not None:
                self.progress(self.summary)

    def _send_group_pipelined(self, group: list[_Queued], prepare: Callable[[], None]) -> None:
        """The group in one pipelined stream; what was not handed over is resent after a
        reconnect, and the run stops after RECONNECT_DELAYS rounds without progress."""
        todo = group
        idle_rounds = 0
        while todo:
            if self.stop():
                self._revert(todo)
                raise _Stop("stopped by a signal")
            if not self.connection.is_open and not _reconnect(self.connection, self.sleep):
                self._revert(todo)
                raise _Stop(
                    f"connection to {self.connection.settings.endpoint} lost and not regained"
                )
            self.attempted += len(todo)
            results = self.connection.send_pipelined(
                [q.built for q in todo], pace=self.limiter.wait, idle=prepare
            )
            again: list[_Queued] = []
            reason = ""
            for queued, result in zip(todo, results, strict=True):
                if isinstance(result, ConnectionLost):
                    reason = result.reason
                    if result.handed_over:
                        # The server may have queued it; sending again could make a duplicate.
                        self._record_unknown(queued, f"connection lost before the reply: {reason}")
                    else:
                        again.append(queued)
                    continue
                self._record(queued, result)
                if self.progress is not None:
                    self.progress(self.summary)
            self.attempted -= len(again)
            idle_rounds = idle_rounds + 1 if len(again) == len(todo) else 0
            if again and idle_rounds >= len(RECONNECT_DELAYS):
                self._revert(again)
                raise _Stop(
                    f"connection to {self.connection.settings.endpoint} lost and not "
                    f"regained: {reason}"
                )
            todo = again

    def _record(self, queued: _Queued, outcome: SmtpOutcome) -> None:
        r = queued.ready.recipient
        key = r.key
        refusal = outcome.refused.get(queued.built.rcpt_to[0])
        if outcome.delivered:
            self.summary.sent += 1
            log.debug(
                "row %d %s: sent (%d %s)", r.row, r.email, outcome.reply.code, outcome.reply.text
            )
            self.state.record(
                Outcome(
                    key, "sent", outcome.reply.code, outcome.reply.text, queued.built.message_id
                )
            )
            return
        deciding = refusal or outcome.reply
        if deciding.temporary:
            tries = self._tries(queued.entry)
            next_at = None
            if tries < self.retry.attempts:
                next_at = time.time() + self.retry.delay_s * 2 ** (tries - 1)
            self.summary.deferred += 1
            log.info("row %d %s: deferred: %d %s", r.row, r.email, deciding.code, deciding.text)
            self.state.record(
                Outcome(key, "deferred", deciding.code, deciding.text, next_at=next_at)
            )
            _fail(self.summary, r.row, r.email, "deferred", deciding.code, deciding.text)
        else:
            self.summary.failed += 1
            log.info("row %d %s: failed: %d %s", r.row, r.email, deciding.code, deciding.text)
            self.state.record(Outcome(key, "failed", deciding.code, deciding.text))
            _fail(self.summary, r.row, r.email, "failed", deciding.code, deciding.text)

    def _tries(self, entry: Entry | None) -> int:
        """This run's tries for a recipient, counting the one just made."""
        if entry is not None and entry.run == self.state.run_id:
            return entry.run_tries + 1
        return 1

    def _record_unknown(self, queued: _Queued, reason: str) -> None:
        r = queued.ready.recipient
        self.summary.unknown += 1
        log.warning("row %d %s: unknown: %s", r.row, r.email, reason)
        self.state.record(Outcome(r.key, "unknown", None, reason, queued.built.message_id))
        _fail(self.summary, r.row, r.email, "unknown", None, reason)

    def _revert(self, queued: list[_Queued]) -> None:
        """Messages marked in flight but never handed over go back to what they were."""
        for q in queued:
            self.state.revert(q.ready.recipient.email, q.entry)
            previous = q.entry.status if q.entry is not None else "pending"
            self.summary.deferred += previous == "deferred"
            self.summary.unknown += previous == "unknown"

    def _count_left(self) -> int:
        """Rows not yet tried that the next run will send (left by --limit or a stop)."""
        left = 0
        for item in self.pipeline.items(render=False):
            if isinstance(item, Ready):
                entry = self.state.lookup(item.recipient.email)
                if entry is None or entry.status == "pending":
                    left += 1
        return left


def _send_with_reconnect(
    connection: SmtpConnection,
    built: Built,
    sleep: Callable[[float], None],
    pace: Callable[[], object] | None = None,
) -> SmtpOutcome:
    """Send; if the connection broke before the message was handed over, reconnect and resend."""
    tries = len(RECONNECT_DELAYS)
    for attempt in range(tries):
        if not connection.is_open and not _reconnect(connection, sleep):
            raise ConnectionLost("reconnecting failed", handed_over=False)
        try:
            return connection.send(built, pace)
        except ConnectionLost as exc:
            if exc.handed_over or attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


def _reconnect(connection: SmtpConnection, sleep: Callable[[float], None]) -> bool:
    """Reconnect with backoff; False after RECONNECT_DELAYS consecutive failures."""
    for delay in RECONNECT_DELAYS:
        log.warning("reconnecting to %s in %.0f s", connection.settings.endpoint, delay)
        sleep(delay)
        try:
            connection.close()
            connection.open()
            return True
        except UnavailableError as exc:
            log.warning("reconnecting failed: %s", exc)
            continue
    return False


def _fail(
    summary: Summary, row: int, email: str, status: str, code: int | None, reply: str
) -> None:
    if len(summary.failures) < MAX_PROBLEMS:
        summary.failures.append(Failure(row, email, status, code, reply))
