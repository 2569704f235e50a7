"""The batch engine: a whole campaign, dry-run or delivered over one transport.

A real run checks every due row before it connects (render included), so a bad row stops the run
before anyone gets a message; then it streams the list again and sends, a group at a time. The
pieces, each in its own module: which rows are due (`selection`), when a 4xx is tried again
(`retry`), sending a group with the one reconnect policy (`sender`), where progress is kept
(`state`), and the counts (`summary`). Per-recipient outcomes are counted, never raised.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path

from mailcli import fingerprint, workers
from mailcli import retry as policy
from mailcli.campaign import MAX_CONNECTIONS, Campaign, Rate, as_campaign, parse_rate
from mailcli.compose import address_text
from mailcli.delivery import WINDOW, Delivery, DeliveryStatus, Transport
from mailcli.envelope import Built
from mailcli.errors import ConfigError, ExitCode, InputFileError, MailcliError, TempFailError
from mailcli.mailer import Mailer, sandbox_mailer
from mailcli.outbox import recording, suppressed_by_env
from mailcli.pgstate import PgState
from mailcli.pipeline import Duplicate, Item, Pipeline, Ready
from mailcli.pool import Answer, ConnectionPool
from mailcli.preview import Preview
from mailcli.ratelimit import RateLimiter
from mailcli.recipients import RowProblem
from mailcli.render import RenderError
from mailcli.selection import ClaimedRows, DueRows, Queued, RenderCache, check_due_rows
from mailcli.sender import GroupSender, Stopped
from mailcli.sequence import Action, Clock, aware, system_clock
from mailcli.sequence_rows import (
    SequenceClaims,
    Sequencer,
    SequenceRows,
    check_sequence_rows,
    count_decision,
    counted,
    schedule_digest,
)
from mailcli.state import (
    BYTES_PER_RECIPIENT,
    Flight,
    Outcome,
    SqliteState,
    StateStore,
    open_state,
    read_fingerprints,
    scratch_copy,
)
from mailcli.summary import MAX_PROBLEMS, Failure, Progress, Summary
from mailcli.suppression import (
    Location,
    SuppressionList,
    for_campaign,
    open_for_reading,
    screened,
)

__all__ = [
    "MAX_PROBLEMS",
    "WINDOW",
    "Failure",
    "Progress",
    "RenderCache",
    "Summary",
    "dry_run",
    "send_batch",
    "send_campaign",
]

log = logging.getLogger(__name__)


def dry_run(
    campaign: Campaign | str | Path,
    *,
    sender: str | None = None,
    limit: int | None = None,
    progress: Progress | None = None,
    on_message: Callable[[Preview], None] | None = None,
    jobs: int | None = None,
    suppression: Location | bool = True,
    at: datetime | None = None,
    every_step: bool = False,
    retry_unknown: bool = False,
    resend_failed: bool = False,
) -> Summary:
    """Read, validate, render and build every row; open no connection, write no state.

    Rows whose address is on the suppression list (see `send_batch`) are counted as
    suppressed, not as would-send, as a real run would.

    A sequence (`steps:`): what a run at `at` (default now) would send, one step per
    recipient, read from the campaign's state without writing to it; `every_step` builds
    every step of every row instead (the step's `if:` aside), whenever it is due.
    `retry_unknown` and `resend_failed` predict a run with `--retry-unknown` and
    `--resend-failed` (a one-message campaign's dry run builds every row anyway).

    `jobs` worker processes render and build (None: every core for a big list, see
    `workers.default_jobs`); the outcome is the same for any number. `on_message` needs the
    bytes, so it keeps the work in this process.
    """
    campaign = as_campaign(campaign)
    if campaign.api is not None:
        # What the campaign's provider cannot carry is a configuration error in a dry run too.
        Mailer(api=campaign.api, outbox=False).check_campaign(campaign)
    _dry_fingerprint(campaign, sender)
    started = time.monotonic()
    summary = Summary(campaign=campaign.name, dry_run=True, phase="building")
    pipeline = Pipeline(campaign, sender=sender)
    if campaign.is_sequence:
        with _closing(_blocklist(campaign, suppression)) as blocklist:
            if every_step:
                _dry_every_step(pipeline, summary, blocklist, on_message, progress)
            else:
                moment = aware(at) if at is not None else system_clock()
                flags = (retry_unknown, resend_failed)
                _dry_sequence(
                    pipeline, summary, blocklist, moment, limit, on_message, progress, flags
                )
        summary.elapsed_s = time.monotonic() - started
        summary.exit_code = ExitCode.DATAERR if summary.invalid else ExitCode.OK
        return summary
    if at is not None:
        raise ConfigError("a dry run --at a moment is for a sequence (a campaign with steps:)")
    if on_message is not None:
        jobs = 1
    elif jobs is None:
        jobs = workers.default_jobs(campaign.recipients.path)
    rows = workers.checked(pipeline, jobs) if jobs > 1 else _checked_here(pipeline)
    with _closing(_blocklist(campaign, suppression)) as blocklist:
        screen = screened(rows, lambda pair: _email_of(pair[0]), blocklist)
        for (item, outcome), blocked in screen:
            _count_dry(summary, item, outcome, blocked, limit, on_message)
            if progress is not None:
                progress(summary)
    summary.elapsed_s = time.monotonic() - started
    summary.exit_code = ExitCode.DATAERR if summary.invalid else ExitCode.OK
    return summary


def _email_of(item: Item) -> str | None:
    return item.recipient.email if isinstance(item, Ready) else None


def _count_dry(
    summary: Summary,
    item: Item,
    outcome: Built | RowProblem | int | None,
    blocked: bool,
    limit: int | None,
    on_message: Callable[[Preview], None] | None,
) -> None:
    summary.total += 1
    if isinstance(item, RowProblem):
        summary.problem(item)
    elif isinstance(item, Duplicate):
        summary.duplicates += 1
    elif blocked:
        if limit is None or summary.would_send < limit:
            summary.suppressed += 1  # a real run meets it before reaching the limit
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


def _checked_here(pipeline: Pipeline) -> Iterator[tuple[Item, Built | RowProblem | None]]:
    for item in pipeline.items(render=False):
        yield item, pipeline.check_recipient(item.recipient) if isinstance(item, Ready) else None


def _dry_sequence(
    pipeline: Pipeline,
    summary: Summary,
    blocklist: SuppressionList | None,
    at: datetime,
    limit: int | None,
    on_message: Callable[[Preview], None] | None,
    progress: Progress | None,
    flags: tuple[bool, bool] = (False, False),
) -> None:
    """A sequence's dry run: the step each row would get from a run at `at` (`flags`:
    --retry-unknown and --resend-failed)."""
    campaign = pipeline.campaign
    summary.for_steps([s.name for s in campaign.steps])
    state = _read_store(campaign)
    try:
        if isinstance(state, SqliteState):
            state.check_kind(True, write=False)
        elif state is not None:
            state.check_kind(True)
        seq = Sequencer(
            pipeline, state, now=at, write=False, retry_unknown=flags[0], resend_failed=flags[1]
        )
        rows = screened(pipeline.items(render=False), _email_of, blocklist)
        for item, blocked, decision in counted(summary, seq.plan(rows), progress):
            if limit is not None and summary.would_send >= limit:
                continue
            count_decision(summary, decision)
            if decision.action is not Action.SEND or decision.step is None:
                summary.skipped += 1
            elif blocked:
                summary.suppressed += 1
                summary.step_count(decision.step.name, "suppressed")
            else:
                _dry_step(pipeline, summary, item, decision.step.name, on_message)
    finally:
        if state is not None:
            state.close()


def _read_store(campaign: Campaign) -> SqliteState | PgState | None:
    """A sequence's store opened for reading only (None: no run has written it yet): what
    has gone out decides what a run would send."""
    if campaign.state_url is None:
        return SqliteState.read_only(campaign.state_path)
    try:
        shared = PgState.open(campaign.state_url, campaign.name, create=False)
    except InputFileError:
        return None
    except TempFailError as exc:
        log.warning(
            "cannot read the shared state (%s): the dry run takes it that no step has gone out",
            exc.message,
        )
        return None
    shared.steps = tuple(s.name for s in campaign.steps)
    return shared


def _dry_every_step(
    pipeline: Pipeline,
    summary: Summary,
    blocklist: SuppressionList | None,
    on_message: Callable[[Preview], None] | None,
    progress: Progress | None,
) -> None:
    """`preview --all` of a sequence: every step of every row, whenever it is due (a step
    whose `if:` is false for a row is counted as skipped)."""
    steps = pipeline.campaign.steps
    summary.for_steps([s.name for s in steps])
    seq = Sequencer(pipeline, None, now=system_clock(), write=False)
    rows = screened(pipeline.items(render=False), _email_of, blocklist)
    for item, blocked, _ in counted(summary, seq.plan(rows), progress):
        if blocked:
            summary.suppressed += 1
            continue
        context = pipeline.context(item.recipient)
        for step in steps:
            try:
                wanted = step.condition is None or seq.clock.condition(step, context)
            except RenderError as exc:
                r = item.recipient
                summary.problem(RowProblem(r.row, r.line, str(exc), r.email))
                break
            if wanted:
                _dry_step(pipeline, summary, item, step.name, on_message)
            else:
                summary.step_count(step.name, "skipped")


def _dry_step(
    pipeline: Pipeline,
    summary: Summary,
    item: Ready,
    step: str,
    on_message: Callable[[Preview], None] | None,
) -> None:
    r = item.recipient
    built = pipeline.check_recipient(r, step)
    if isinstance(built, RowProblem):
        summary.problem(RowProblem(r.row, r.line, f"step {step!r}: {built.problem}", r.email))
        return
    summary.would_send += 1
    summary.step_count(step, "would_send")
    summary.bytes += len(built.data)
    log.info("would send step %r to row %d <%s>", step, r.row, r.email)
    if on_message is not None:
        on_message(Preview(r.row, r.email, built, step))


def send_batch(
    campaign: Campaign,
    transport: Transport | Sequence[Transport],
    *,
    sender: str | None = None,
    limit: int | None = None,
    rate: Rate | None = None,
    skip_invalid: bool = False,
    retry_unknown: bool = False,
    progress: Progress | None = None,
    sleep: Callable[[float], None] = time.sleep,
    stop: Callable[[], bool] | None = None,
    suppression: Location | bool = True,
    resend_failed: bool = False,
    clock: Clock = system_clock,
) -> Summary:
    """Deliver a campaign over one transport (or several at once), resuming from its state.

    A sequence (`steps:`) sends each recipient the step due at `clock()` (see
    `mailcli.sequence`); the times the state records of its steps come from `clock` too.

    `suppression`: True checks the campaign's list (`suppression:`, else the default one),
    False none, a Location that list. A suppressed address is counted, never sent.

    `retry_unknown` also sends to recipients left `unknown` (they may get the message twice);
    `resend_failed` to recipients a server refused (5xx) in an earlier run, once the cause is
    fixed upstream (a refusal that was not fixed is refused again, at a cost to the sender's
    reputation). A suppressed address is not sent either way.

    Holds the campaign's lock for the whole run; validates every row that is due before
    connecting; retries 4xx replies with backoff; leaves state that the next run resumes from.
    The transports are opened only when something is due, and closed at the end. Several
    transports (`connections: N`) send in parallel from the same ordered list, under one rate.
    """
    started = time.monotonic()
    transports = [transport] if not isinstance(transport, Sequence) else list(transport)
    if not transports:
        raise ConfigError("send_batch needs at least one transport")
    first = transports[0]
    summary = Summary(campaign=campaign.name, transport=first.name)
    pipeline = Pipeline(campaign, sender=sender)
    stopping = stop or (lambda: False)
    limiter = RateLimiter(rate or campaign.rate, sleep=sleep)
    size = group_size(first.window, limiter.rate, len(transports))
    blocklist = _blocklist(campaign, suppression)
    try:
        with _open_store(campaign) as state, _closing(blocklist):
            # A campaign that changed kind (one message, a sequence) under its name is refused
            # before anything is written.
            state.check_kind(campaign.is_sequence)
            _check_fingerprint(campaign, state, sender)
            rows: DueRows | ClaimedRows | SequenceRows | SequenceClaims
            seq: Sequencer | None = None
            if campaign.is_sequence:
                summary.for_steps([s.name for s in campaign.steps])
                if isinstance(state, PgState):
                    state.steps = tuple(s.name for s in campaign.steps)
                cache = RenderCache()
                seq = Sequencer(
                    pipeline,
                    state,
                    now=aware(clock()),
                    write=False,  # rows met for the first time are recorded once valid
                    fresh=isinstance(state, SqliteState) and state.empty,
                    retry_unknown=retry_unknown,
                    resend_failed=resend_failed,
                )
                if isinstance(state, SqliteState):
                    state.clock = clock
                    valid = check_sequence_rows(
                        seq, summary, cache=cache, progress=progress, suppression=blocklist
                    )
                else:
                    # A sequence's steps are timed by the hosts' clock (what the due rule
                    # reads), not the database's; leases stay on the database's.
                    state.clock = clock
                    valid = _check_and_import_members(
                        seq, state, summary, progress, skip=skip_invalid, suppression=blocklist
                    )
            elif isinstance(state, SqliteState):
                # On a first run no row has a record: the per-row lookups of the first pass are
                # skipped.
                fresh = state.empty
                cache = RenderCache()
                valid = check_due_rows(
                    pipeline,
                    state,
                    summary,
                    retry_unknown=retry_unknown,
                    fresh=fresh,
                    cache=cache,
                    progress=progress,
                    suppression=blocklist,
                    resend_failed=resend_failed,
                )
            else:
                valid = _check_and_import(
                    pipeline,
                    state,
                    summary,
                    progress,
                    retry_unknown=retry_unknown,
                    skip=skip_invalid,
                    suppression=blocklist,
                    resend_failed=resend_failed,
                )
            if not valid and not skip_invalid:
                summary.elapsed_s = time.monotonic() - started
                summary.exit_code = ExitCode.DATAERR
                return summary
            summary.problems.clear()
            summary.invalid = 0
            summary.phase = "sending"
            if isinstance(state, SqliteState):
                _check_space(state, summary.would_send)
            log.info(
                "campaign %r: %d rows read, %d due in this run",
                campaign.name,
                summary.total,
                summary.would_send,
            )
            if progress is not None:
                progress(summary)
            state.start_run()
            if seq is not None and isinstance(state, PgState):
                seq.fresh = False
                rows = SequenceClaims(
                    seq,
                    state,
                    summary,
                    retry=campaign.retry,
                    limit=limit,
                    group_size=size,
                    smtputf8=lambda: first.smtputf8,
                    stop=stopping,
                    sleep=sleep,
                    suppression=blocklist,
                    clock=clock,
                )
            elif seq is not None:
                assert isinstance(state, SqliteState)
                seq.fresh = False  # the run's own records count from now on
                seq.write = True
                rows = SequenceRows(
                    seq,
                    state,
                    summary,
                    retry=campaign.retry,
                    limit=limit,
                    cache=cache,
                    smtputf8=lambda: first.smtputf8,
                    suppression=blocklist,
                )
            elif isinstance(state, SqliteState):
                rows = DueRows(
                    pipeline,
                    state,
                    summary,
                    retry=campaign.retry,
                    retry_unknown=retry_unknown,
                    limit=limit,
                    fresh=fresh,
                    cache=cache,
                    smtputf8=lambda: first.smtputf8,
                    suppression=blocklist,
                    resend_failed=resend_failed,
                )
            else:
                rows = ClaimedRows(
                    pipeline,
                    state,
                    summary,
                    retry=campaign.retry,
                    retry_unknown=retry_unknown,
                    limit=limit,
                    group_size=size,
                    smtputf8=lambda: first.smtputf8,
                    stop=stopping,
                    sleep=sleep,
                    suppression=blocklist,
                    resend_failed=resend_failed,
                )
            pool = None
            if len(transports) > 1:
                pool = ConnectionPool(transports, pace=limiter.wait, sleep=sleep, stop=stopping)
            run = _Run(
                rows,
                state,
                GroupSender(first, sleep=sleep, stop=stopping),
                summary,
                limiter=limiter,
                progress=progress,
                group_size=size,
                pool=pool,
            )
            failure: MailcliError | None = None
            interrupted = False
            try:
                run.execute()
            except MailcliError as exc:
                summary.error, failure = str(exc), exc
                raise
            except KeyboardInterrupt:
                interrupted = True
                raise
            finally:
                if pool is not None:
                    pool.close(wait=not interrupted)
                else:
                    first.close()
                summary.connections = sum(t.connections for t in transports)
                summary.requests = sum(t.requests for t in transports)
                if isinstance(state, PgState) and seq is None:
                    _count_shared(state, summary, rows.count_left())
                summary.elapsed_s = time.monotonic() - started
                # The run record tells how the run ended, an error's own exit code included.
                summary.exit_code = int(failure.exit_code) if failure else exit_code(summary)
                try:
                    state.finish_run(summary.to_json())
                except MailcliError as exc:
                    # Not written (a full disk): the record says the run did not finish, exit 75.
                    log.info("the run's end was not recorded: %s", exc.message)
                    if failure is None and not interrupted:
                        summary.error, summary.exit_code = str(exc), int(exc.exit_code)
                        raise
    except MailcliError as exc:
        # What the run did is kept with the error: `--json` prints the whole summary, and the
        # library's caller finds it as `exc.summary`.
        summary.error = summary.error or str(exc)
        summary.exit_code = int(exc.exit_code)
        summary.elapsed_s = time.monotonic() - started
        exc.summary = summary
        raise
    return summary


def _check_space(state: SqliteState, due: int) -> None:
    """Warn before sending when the state file may outgrow the free space of its device (it
    costs about BYTES_PER_RECIPIENT a recipient, and twice that while SQLite's write-ahead
    log is folded back): a run stopped by a full disk is resumable, but better avoided."""
    try:
        free = shutil.disk_usage(state.path.parent).free
    except OSError:
        return
    needed = 2 * due * BYTES_PER_RECIPIENT
    if needed > free:
        log.warning(
            "the state file %s may outgrow the free space on its device: about %.1f MB for "
            "%d recipients, %.1f MB free; a run stopped by a full disk can be resumed",
            state.path,
            needed / 1e6,
            due,
            free / 1e6,
        )


def _blocklist(campaign: Campaign, choice: Location | bool) -> SuppressionList | None:
    """The suppression list a run checks (None: none)."""
    if choice is True:
        return open_for_reading(for_campaign(campaign))
    return open_for_reading(choice) if isinstance(choice, Location) else None


@contextlib.contextmanager
def _closing(blocklist: SuppressionList | None) -> Iterator[SuppressionList | None]:
    try:
        yield blocklist
    finally:
        if blocklist is not None:
            blocklist.close()


def group_size(window: int, rate: Rate | None, connections: int) -> int:
    """The group, the unknown window of a connection: what the transport carries best at once
    (WINDOW over SMTP, a batch call over an HTTP API), and about a second's worth of the rate
    over all connections at a slow rate, so a crash strands few recipients in 'unknown'."""
    per_second = rate.count / rate.per_s / connections if rate else float(window)
    return max(1, min(window, int(per_second)))


def _check_fingerprint(
    campaign: Campaign, state: SqliteState | PgState, sender: str | None
) -> None:
    """Before anything is sent: refuse a campaign file other than the one that made the state
    (a copy that kept the name), note a moved or edited one (see `mailcli.fingerprint`)."""
    current = fingerprint.compute(campaign, sender=sender)
    shared = isinstance(state, PgState)
    fingerprint.check(state, current, campaign=campaign.name, shared=shared)


def _dry_fingerprint(campaign: Campaign, sender: str | None) -> None:
    """A dry run refuses what a real run would, reading a SQLite state without writing to it;
    a PostgreSQL state is not read (a dry run opens no connection)."""
    if campaign.state_url is not None:
        return
    past = read_fingerprints(campaign.state_path, campaign.name)
    current = fingerprint.compute(campaign, sender=sender)
    if campaign.sender is None and sender is None:
        # The From of a real run comes from its profile, which a dry run does not read.
        current = fingerprint.with_sender_of(current, past)
    history = fingerprint.Snapshot(past)
    fingerprint.check(history, current, campaign=campaign.name, shared=False, record=False)


def _open_store(campaign: Campaign) -> contextlib.AbstractContextManager[SqliteState | PgState]:
    """The campaign's store: SQLite under its lock (a second run: exit 75), or PostgreSQL,
    shared by every host that runs the campaign."""
    if campaign.state_url is None:
        return open_state(campaign.state_path, campaign.name, for_run=True)
    return PgState.open(campaign.state_url, campaign.name)


def _check_and_import(
    pipeline: Pipeline,
    state: PgState,
    summary: Summary,
    progress: Progress | None,
    *,
    retry_unknown: bool,
    skip: bool,
    suppression: SuppressionList | None,
    resend_failed: bool = False,
) -> bool:
    """Pass 1 for a shared store: check every row of the list (if this host has it), then
    import the list into the store. False, with nothing imported, when a row is invalid (with
    --skip-invalid the valid rows are imported all the same)."""
    path = pipeline.campaign.recipients.path
    if path.is_file():
        # The store, not this host, knows which rows are due: every row is checked.
        valid = check_due_rows(
            pipeline,
            state,
            summary,
            retry_unknown=retry_unknown,
            fresh=True,
            cache=RenderCache(),
            progress=progress,
            suppression=suppression,
        )
        if not valid and not skip:
            return False
        added = state.import_rows(
            item.recipient for item in pipeline.items(render=False) if isinstance(item, Ready)
        )
        log.info("campaign %r: %d new rows imported into the shared state", summary.campaign, added)
    else:
        valid = True
        log.info("no recipient list on this host (%s): sending what the shared state holds", path)
    summary.total = state.total()
    summary.would_send = state.due(retry_unknown=retry_unknown, resend_failed=resend_failed)
    if suppression is not None and summary.would_send:
        # The suppressed are not due: a campaign whose only rows left are suppressed opens no
        # connection.
        emails = state.due_emails(retry_unknown=retry_unknown, resend_failed=resend_failed)
        due = screened(emails, lambda e: e, suppression)
        summary.would_send -= sum(blocked for _, blocked in due)
    return valid


def _check_and_import_members(
    seq: Sequencer,
    state: PgState,
    summary: Summary,
    progress: Progress | None,
    *,
    skip: bool,
    suppression: SuppressionList | None,
) -> bool:
    """Pass 1 of a sequence on a shared store: check the due step of every row of the list
    (if this host has it), then import the list as the sequence's members; a host without the
    list sends what the store holds. False, with nothing imported, when a row is invalid."""
    pipeline = seq.pipeline
    path = pipeline.campaign.recipients.path
    if path.is_file():
        valid = check_sequence_rows(
            seq, summary, cache=RenderCache(), progress=progress, suppression=suppression
        )
        if not valid and not skip:
            return False
        items = pipeline.items(render=False)
        added = state.import_rows(
            (item.recipient for item in items if isinstance(item, Ready)),
            members=True,
            met=seq.now,
        )
        log.info(
            "campaign %r: %d new members imported into the shared state", summary.campaign, added
        )
    else:
        valid = True
        log.info("no recipient list on this host (%s): sending what the shared state holds", path)
        summary.would_send = state.members_due(seq.now.timestamp())
    state.check_schedule(schedule_digest(pipeline.campaign))
    summary.total = state.members()
    return valid


def _count_shared(state: PgState, summary: Summary, left: int) -> None:
    """The end of a run on a shared store: what the other runs did counts as skipped, and
    `unknown` or refused recipients of any run are reported as SQLite's are. `left`: the
    recipients nobody has tried yet (the suppressed aside)."""
    handled = summary.sent + summary.failed + summary.deferred + summary.unknown
    summary.skipped = max(0, summary.total - handled - left - summary.suppressed)
    summary.failed_before = state.failed_before()
    summary.unknown += state.stranded_unknown()
    if summary.error is None and not summary.pending:
        summary.pending = left


def send_campaign(
    campaign: Campaign | str | Path,
    mailer: Mailer | None = None,
    *,
    limit: int | None = None,
    rate: Rate | str | None = None,
    retry_unknown: bool = False,
    skip_invalid: bool = False,
    progress: Progress | None = None,
    stop: Callable[[], bool] | None = None,
    sandbox: str | Path | None = None,
    sleep: Callable[[float], None] = time.sleep,
    connections: int | None = None,
    resend_failed: bool = False,
    clock: Clock = system_clock,
) -> Summary:
    """Send a campaign as `mailcli batch` does: the same state, resume and guarantees.

    `mailer=None` uses the campaign's own `smtp:` settings (with the CLI's profiles and MAILCLI_*
    variables); inside `record_messages()` the campaign goes into the outbox. `sandbox=DIR`
    delivers to an embedded capture server that saves .eml files in DIR, with the progress kept
    in DIR too, so a trial never marks the real recipients as sent. `stop()` is asked between
    groups; when it says True the run ends cleanly (exit code 75, resumable). `connections`
    (else the campaign's `connections:`, else the profile's, else 1) sessions send at once.
    `retry_unknown` and `resend_failed` are `batch --retry-unknown` and `--resend-failed` (see
    `send_batch`). `clock` (a callable returning an aware datetime) is the time a sequence's
    steps come due by (default the system's).
    """
    campaign = as_campaign(campaign)
    try:
        pace = parse_rate(rate) if isinstance(rate, str) else rate
    except ValueError as exc:
        raise ConfigError(f"rate: {exc}") from None
    if connections is not None and not 1 <= connections <= MAX_CONNECTIONS:
        raise ConfigError(f"connections must be from 1 to {MAX_CONNECTIONS}, not {connections}")

    def run(c: Campaign, via: Mailer, sender: str | None = None) -> Summary:
        profile = mailer.batch_connections if mailer is not None else None
        count = connections or c.connections or profile or 1
        make = via.transport
        # The campaign's list, else the Mailer's (or its profile's), else the default one.
        blocklist = for_campaign(c, profile=via.suppression_choice())
        return send_batch(
            c,
            [make() for _ in range(count)],
            sender=sender,
            limit=limit,
            rate=pace,
            retry_unknown=retry_unknown,
            resend_failed=resend_failed,
            skip_invalid=skip_invalid,
            progress=progress,
            stop=stop,
            sleep=sleep,
            suppression=blocklist if blocklist is not None else False,
            clock=clock,
        )

    if sandbox is not None:
        from mailcli.sandbox import sandboxed

        with sandbox_mailer(sandbox, like=mailer) as trial:
            trial_campaign = sandboxed(campaign, Path(sandbox))
            return run(trial_campaign, trial, _sender(campaign, trial))
    if mailer is None:
        quiet = recording() is not None or suppressed_by_env()
        mailer = (
            Mailer()
            if quiet
            else Mailer.from_profile(campaign=campaign.smtp, campaign_api=campaign.api)
        )
    mailer.check_campaign(campaign)
    # The password is looked up before any row is read: a missing one fails at once.
    mailer.check_password()
    mailer.transport()  # a Mailer that cannot make one says so before any row is read
    if mailer.recorder() is not None:
        # Recorded, not sent: the run starts from the campaign's progress, on a copy of it
        # that is thrown away, so that nobody is marked as sent who was not.
        with scratch_copy(campaign.state_path) as scratch:
            scratched = dataclasses.replace(campaign, state_path=scratch, state_url=None)
            return run(scratched, mailer, _sender(campaign, mailer))
    return run(campaign, mailer, _sender(campaign, mailer))


def _sender(campaign: Campaign, mailer: Mailer) -> str | None:
    """The campaign's `from`, else the Mailer's default sender (a profile's `from`)."""
    if campaign.sender or mailer.default_sender is None:
        return None
    return address_text(mailer.default_sender)


def exit_code(s: Summary) -> int:
    """The contract's exit code for a finished (or stopped) real run."""
    if s.error is not None or s.deferred or s.unknown or s.pending:
        return ExitCode.TEMPFAIL
    if s.failed or s.failed_before:
        return ExitCode.REJECTED
    return ExitCode.OK


class _Run:
    """One real run: the first pass over the due rows, then retry rounds, a group at a time."""

    def __init__(
        self,
        rows: DueRows | ClaimedRows | SequenceRows | SequenceClaims,
        state: StateStore,
        sender: GroupSender,
        summary: Summary,
        *,
        limiter: RateLimiter,
        progress: Progress | None,
        group_size: int,
        pool: ConnectionPool | None = None,
    ) -> None:
        self.rows, self.state, self.sender, self.summary = rows, state, sender, summary
        self.limiter, self.progress, self.pool = limiter, progress, pool
        self.retry = rows.retry
        self.group_size = group_size

    def execute(self) -> None:
        """Main pass, then retry rounds for 4xx replies, until done or stopped."""
        try:
            if self.summary.would_send == 0:
                # Nothing is due (a finished campaign run again by cron): count what the list
                # holds and leave the server alone.
                self._pass(self.rows.first_pass())
                return
            if self.pool is not None:
                self.pool.open()
            else:
                self.sender.transport.open()
            due = self.summary.would_send
            self._pass(self.rows.first_pass(), expected=min(due, self.rows.limit or due))
            while self.rows.others_hold():  # a shared store: wait for the other runs
                self._pass(self.rows.first_pass())
            if self.rows.limit is not None:
                self.summary.pending = self.rows.count_left()
            while (due_at := self.state.next_retry(self.retry.attempts)) is not None:
                log.info("retrying deferred recipients in %.0f s", max(0.0, due_at - time.time()))
                self._wait_until(due_at)
                if not self._pass(self.rows.retry_round(time.time())):
                    break  # nothing was due after all (the rows left the list): never spin
        except Stopped as exc:
            log.warning("run stopped: %s", exc.reason)
            self.summary.error = exc.reason
            if exc.error is not None:
                self.state.flush()
                self.summary.pending = self.rows.count_left()
                raise exc.error from None  # its own exit code (77 for a refused login)
        except KeyboardInterrupt:
            # A second signal: whatever was in flight stays 'unknown'; the rest is recorded.
            self.summary.error = "interrupted"
        finally:
            self.state.flush()
        if self.summary.error is not None:
            self.summary.pending = self.rows.count_left()  # what the next run will pick up

    def _wait_until(self, when: float) -> None:
        while (left := when - time.time()) > 0:
            if self.sender.stop():
                raise Stopped("stopped by a signal", [])
            self.sender.sleep(min(left, 0.5))

    def _pass(self, source: Iterator[Queued], expected: int | None = None) -> int:
        """Send what `source` yields, a group at a time; returns how many messages.

        `expected`: about how many it will yield, so that several connections end together.
        """
        if self.pool is not None:
            return self._pass_pooled(source, self.pool, expected)
        group = list(itertools.islice(source, self.group_size))
        count = 0
        while group:
            count += len(group)
            upcoming: list[Queued] = []

            trouble: list[Exception] = []

            def prepare(
                upcoming: list[Queued] = upcoming, trouble: list[Exception] = trouble
            ) -> None:
                # Called while the server works on what was just written: the next group is
                # rendered and built in the time the connection would otherwise sit idle. An
                # error here (the list changed under the run) must not reach the transport,
                # which has messages in flight: it is raised once their outcomes are recorded.
                if len(upcoming) < self.group_size and not trouble:
                    try:
                        queued = next(source, None)
                    except Exception as exc:
                        trouble.append(exc)
                        return
                    if queued is not None:
                        upcoming.append(queued)

            self._send_group(group, prepare)
            if trouble:
                raise trouble[0]
            upcoming.extend(itertools.islice(source, self.group_size - len(upcoming)))
            group = upcoming
        self.state.flush()  # the retry rounds read what this pass recorded
        return count

    def _pass_pooled(
        self, source: Iterator[Queued], pool: ConnectionPool, expected: int | None
    ) -> int:
        """`_pass` over several connections: a group to each idle one, answers as they come.

        Each group is marked in flight before it is handed to its connection, so at most one
        group per connection is `unknown`. What a stopped group never handed over is reverted;
        the other connections finish their groups before the run stops.
        """
        flights: dict[int, tuple[list[Queued], set[int]]] = {}
        numbers = itertools.count()
        count = 0
        stopped: Stopped | None = None
        trouble: Exception | None = None
        crash: BaseException | None = None

        taken = 0

        def take() -> list[Queued]:
            nonlocal trouble, taken
            size = self.group_size
            if expected is not None and taken < expected:
                # Near the end the rest is shared out evenly: one connection sending a whole
                # last group while the others sit idle would hold up the end of the run.
                # (Not below a few: each group ends with a round trip of its own.)
                size = min(size, max(4, -(-(expected - taken) // pool.size)))
            try:
                group = list(itertools.islice(source, size))
            except Exception as exc:  # the list changed under the run: raised once drained
                trouble = exc
                return []
            taken += len(group)
            return group

        upcoming = take()
        try:
            while True:
                while upcoming and pool.free and not (stopped or trouble or crash):
                    if self.sender.stop():
                        stopped = Stopped("stopped by a signal", [])
                        break
                    number = next(numbers)
                    try:
                        self._begin_flight(upcoming)
                    except MailcliError as exc:  # e.g. a shared store's claim was lost
                        trouble = exc
                        break
                    flights[number] = (upcoming, set())
                    pool.submit(number, [q.built for q in upcoming])
                    count += len(upcoming)
                    upcoming = take()
                if not flights:
                    break
                event = pool.next_event()
                group, answered = flights[event.group]
                if isinstance(event, Answer):
                    answered.add(event.index)
                    self._record(group[event.index], event.delivery)
                    continue
                del flights[event.group]
                if event.crash is not None:
                    # A fault of the transport itself: what has no answer may have left.
                    self._unanswered_unknown(group, answered)
                    crash = crash or event.crash
                elif event.stopped is not None:
                    self._revert([q for i, q in enumerate(group) if i not in answered])
                    stopped = stopped or event.stopped
        except KeyboardInterrupt:
            for group, answered in flights.values():
                self._unanswered_unknown(group, answered)
            raise
        if crash is not None:
            raise crash
        if stopped is not None:
            raise stopped
        if trouble is not None:
            raise trouble
        self.state.flush()
        return count

    def _unanswered_unknown(self, group: list[Queued], answered: set[int]) -> None:
        """Messages that may have been handed over stay `unknown` in the state; count them so."""
        for index, q in enumerate(group):
            if index not in answered:
                self.summary.moved(q.counted, DeliveryStatus.UNKNOWN, q.step)

    def _begin_flight(self, group: list[Queued]) -> None:
        # Durable as 'unknown' before a byte of them leaves: a crash cannot cause a resend.
        self.state.begin_flight(
            Flight(q.ready.recipient.email, q.ready.recipient.row, q.entry, q.step) for q in group
        )

    def _send_group(self, group: list[Queued], prepare: Callable[[], None]) -> None:
        self._begin_flight(group)
        answered: set[int] = set()

        def record(index: int, delivery: Delivery) -> None:
            answered.add(index)
            self._record(group[index], delivery)

        try:
            self.sender.send(
                [q.built for q in group], pace=self.limiter.wait, idle=prepare, on_result=record
            )
        except Stopped as exc:
            self._revert([q for q, r in zip(group, exc.results, strict=True) if r is None])
            raise
        except KeyboardInterrupt:
            # Stopped at once (a second signal): what has no answer may have been handed
            # over; it stays 'unknown' in the state, and is counted so.
            self._unanswered_unknown(group, answered)
            raise
        except MailcliError:
            # Reconnecting failed for good (a refused login, a bad profile): nothing without
            # an answer was handed over on the connection that could not be made.
            self._revert([q for index, q in enumerate(group) if index not in answered])
            raise

    def _record(self, queued: Queued, delivery: Delivery) -> None:
        r = queued.ready.recipient
        status = delivery.status
        key = queued.key
        self.summary.moved(queued.counted, status, queued.step)
        if status is DeliveryStatus.SENT:
            log.debug(
                "row %d %s%s: sent (%s %s)",
                r.row,
                r.email,
                f" step {queued.step!r}" if queued.step else "",
                delivery.code,
                delivery.reply,
            )
            self.state.record(
                Outcome(key, status, delivery.code, delivery.reply, delivery.message_id)
            )
        elif status is DeliveryStatus.DEFERRED:
            tries = policy.tries_in_run(queued.entry, self.state.run_id)
            next_at = policy.next_try_at(self.retry, tries, time.time())
            log.info("row %d %s: deferred: %s %s", r.row, r.email, delivery.code, delivery.reply)
            self.state.record(Outcome(key, status, delivery.code, delivery.reply, next_at=next_at))
        elif status is DeliveryStatus.UNKNOWN:
            # The server may have queued it; sending again could make a duplicate.
            log.warning("row %d %s: unknown: %s", r.row, r.email, delivery.reply)
            self.state.record(Outcome(key, status, None, delivery.reply, delivery.message_id))
        else:
            log.info("row %d %s: failed: %s %s", r.row, r.email, delivery.code, delivery.reply)
            self.state.record(Outcome(key, status, delivery.code, delivery.reply))
        if status is not DeliveryStatus.SENT:
            self.summary.failure(Failure(r.row, r.email, status, delivery.code, delivery.reply))
        if self.progress is not None:
            self.progress(self.summary)

    def _revert(self, never_sent: list[Queued]) -> None:
        """Messages marked in flight but never handed over go back to what they were."""
        for q in never_sent:
            self.state.revert(q.ready.recipient.email, q.entry, q.step)
            previous = q.entry.status if q.entry is not None else DeliveryStatus.PENDING
            if previous in (DeliveryStatus.DEFERRED, DeliveryStatus.UNKNOWN):
                self.summary.moved(q.counted, previous, q.step)
            elif q.entry is not None and q.entry.rejected:
                self.summary.failed_before += 1  # --resend-failed: still refused from before
