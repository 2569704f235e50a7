"""The rows of a sequence's run: for each recipient of the list, the one step due now.

The same two passes as a one-message campaign (`mailcli.selection`): the check before
connecting renders the step due for each row, then the sending pass streams the list again
and yields each due step's message. Both ask `Sequencer.plan`, which reads each row's clock
(`start:`, `timezone:`) and its steps' records and applies the due rule of
`mailcli.sequence.decide` at the run's one moment `now`, so the check validates exactly what
is then sent, and a dry run `--at` a moment predicts exactly what a run then would send.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any

import jinja2

from mailcli import retry as policy
from mailcli.campaign import Campaign, Retry, is_template
from mailcli.delivery import DeliveryStatus
from mailcli.pipeline import Duplicate, Item, Pipeline, Ready
from mailcli.recipients import Recipient, RowProblem
from mailcli.render import Rendered, RenderError
from mailcli.selection import Queued, RenderCache, queue_row
from mailcli.sequence import (
    Action,
    Clock,
    Decision,
    Step,
    Timing,
    aware,
    decide,
    load_zone,
    parse_start,
    system_clock,
    unit_key,
)
from mailcli.state import Entry, Outcome, SqliteState

if TYPE_CHECKING:
    from mailcli.pgstate import Claimed, PgState
from mailcli.summary import Progress, Summary
from mailcli.suppression import SuppressionList, screened

log = logging.getLogger(__name__)

Planned = tuple[Item, bool, Decision | RowProblem | None]
CHUNK = 500  # rows whose first-met times are read (and written) at once


class RowClock:
    """Each row's zone and start, and its steps' conditions, from the campaign's templates
    (compiled once, in the sandbox the messages are rendered in)."""

    def __init__(self, campaign: Campaign, env: jinja2.Environment) -> None:
        self.env = env
        zone = campaign.timezone
        self.fixed: tzinfo | None = UTC
        self.zone_t: Callable[[dict[str, Any]], str] | None = None
        if zone is not None and is_template(zone):
            self.fixed, self.zone_t = None, _text_of(env, zone)
        elif zone is not None:
            self.fixed = load_zone(zone)
        self.start_t = _text_of(env, campaign.start) if campaign.start else None
        self.conditions = {
            s.name: env.compile_expression(s.condition, undefined_to_none=False)
            for s in campaign.steps
            if s.condition is not None
        }

    def zone(self, context: dict[str, Any]) -> tzinfo:
        """The row's zone (RenderError: unknown, or the template fails)."""
        if self.fixed is not None:
            return self.fixed
        assert self.zone_t is not None
        name = _evaluate(lambda: self.zone_t(context), "timezone")  # type: ignore[misc]
        try:
            return load_zone(str(name))
        except ValueError as exc:
            raise RenderError(f"timezone: {exc}") from None

    def start(self, context: dict[str, Any], zone: tzinfo, met: datetime) -> datetime:
        """When the row's sequence starts: its `start:`, else when a run first met it."""
        if self.start_t is None:
            return met
        text = _evaluate(lambda: self.start_t(context), "start")  # type: ignore[misc]
        try:
            return parse_start(str(text), zone)
        except ValueError as exc:
            raise RenderError(f"start: {exc}") from None

    def condition(self, step: Step, context: dict[str, Any]) -> bool:
        """Whether a step's `if:` holds for the row (RenderError: the expression fails)."""
        expression = self.conditions[step.name]
        return bool(_evaluate(lambda: expression(**context), f"step {step.name!r} 'if'"))


_COLUMN = re.compile(r"^\s*\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}\s*$")


def _text_of(env: jinja2.Environment, source: str) -> Callable[[dict[str, Any]], str]:
    """A per-row template as a function of the row's variables. The usual `{{ column }}` of a
    CSV column (a string) is read straight from them, a tenth of Jinja's cost per row;
    anything else is rendered in the sandbox (with its errors)."""
    template = env.from_string(source)
    m = _COLUMN.match(source)
    if m is None:
        return template.render
    name = m.group(1)

    def column(context: dict[str, Any]) -> str:
        value = context.get(name)
        return value if isinstance(value, str) else template.render(context)

    return column


def _evaluate(call: Callable[[], Any], what: str) -> Any:
    try:
        return call()
    except jinja2.UndefinedError as exc:
        raise RenderError(f"{what}: {exc.message}") from None
    except Exception as exc:  # the expression is user code: any failure belongs to the row
        raise RenderError(f"{what}: {exc.__class__.__name__}: {exc}") from None


class Sequencer:
    """The due rule applied to every row of a run at one moment.

    `state` None: no state yet (a dry run of a new campaign); `write`: a real run, which
    records when it first met each row (the default start).
    """

    def __init__(
        self,
        pipeline: Pipeline,
        state: SqliteState | PgState | None,
        *,
        now: datetime,
        write: bool,
        fresh: bool = False,
        retry_unknown: bool = False,
        resend_failed: bool = False,
    ) -> None:
        self.pipeline, self.state, self.now = pipeline, state, now
        self.campaign = pipeline.campaign
        self.write, self.fresh = write, fresh
        self.retry_unknown, self.resend_failed = retry_unknown, resend_failed
        self.clock = RowClock(self.campaign, pipeline.renderer.text_env)

    def plan(self, rows: Iterable[tuple[Item, bool]]) -> Iterator[Planned]:
        """Each row with whether it is suppressed and what is due for it now (None for a
        duplicate or an invalid row)."""
        source = iter(rows)
        while chunk := list(itertools.islice(source, CHUNK)):
            met = self._met([item for item, _ in chunk if isinstance(item, Ready)])
            for item, blocked in chunk:
                if not isinstance(item, Ready):
                    yield item, blocked, None
                    continue
                yield item, blocked, self.decide(item.recipient, met.get(item.recipient.key))

    def decide(
        self, r: Recipient, met: datetime | None, records: Mapping[str, Timing] | None = None
    ) -> Decision | RowProblem:
        """What is due for one row now, or the row's problem (its start or zone); `records`:
        its steps' records when the caller has read them already."""
        context = self.pipeline.context(r)
        try:
            zone = self.clock.zone(context)
            start = self.clock.start(context, zone, met or self.now)
            if records is None:
                records = (
                    {} if self.fresh or self.state is None else self.state.step_records(r.email)
                )
            return decide(
                self.campaign.steps,
                records,
                start=start,
                zone=zone,
                now=self.now,
                run_id=self.state.run_id if self.state is not None else None,
                window=self.campaign.window,
                condition=lambda step: self.clock.condition(step, context),
                retry_unknown=self.retry_unknown,
                resend_failed=self.resend_failed,
            )
        except RenderError as exc:
            return RowProblem(r.row, r.line, str(exc), r.email)

    def _met(self, ready: list[Ready]) -> dict[str, datetime]:
        """When a run first met each row (without `start:` only); a real run records now for
        the rows it meets for the first time."""
        if self.campaign.start is not None or self.state is None:
            return {}
        emails = [item.recipient.email for item in ready]
        met = self.state.met(emails)
        if self.write and isinstance(self.state, SqliteState):
            new = [(r.email, r.row) for r in (i.recipient for i in ready) if r.key not in met]
            self.state.meet(new, at=self.now)
        return met


def schedule_digest(campaign: Campaign) -> str:
    """A hash of what decides when steps are due (the steps' names, offsets and conditions,
    `start`, `timezone`, `window`): a shared store looks again at every member once it
    changes."""
    what = [
        [(s.name, s.after.days, s.after.seconds, s.condition) for s in campaign.steps],
        campaign.start,
        campaign.timezone,
        campaign.window.text if campaign.window is not None else None,
    ]
    return hashlib.sha256(json.dumps(what).encode("utf-8")).hexdigest()


def _next_look(decision: Decision, now: float) -> float:
    """When a member with nothing to send now is next worth a look (an epoch)."""
    if decision.unknown is not None or (
        decision.action is Action.DONE and decision.step is not None
    ):
        return now  # reported again by the next run; a refusal may be resent (--resend-failed)
    if decision.action is Action.DONE:
        return float("inf")
    if decision.due_at is None:
        return now  # its step went out in this run: the next waits for the next run
    return decision.due_at.timestamp()


def count_decision(summary: Summary, decision: Decision) -> None:
    """A row's skipped steps, and the step it waits for (or is held from by its window)."""
    for step in decision.skips:
        summary.step_count(step.name, "skipped")
    if decision.action is Action.WAITING and decision.step is not None:
        summary.step_count(decision.step.name, "waiting")
    elif decision.action is Action.HELD and decision.step is not None:
        summary.step_count(decision.step.name, "held")


def count_lost(summary: Summary, decision: Decision) -> None:
    """A real run reports a recipient whose last step is `unknown` (its answer lost in an
    earlier run: the message may or may not have arrived), exit 75, until the recipient's next
    step goes out."""
    if decision.unknown is not None and decision.action is not Action.SEND:
        summary.unknown += 1
        summary.step_count(decision.unknown.name, "unknown")


def counted(
    summary: Summary, planned: Iterable[Planned], progress: Progress | None
) -> Iterator[tuple[Ready, bool, Decision]]:
    """Count every planned row (a duplicate, an invalid row, one whose start or zone does not
    work); yield the others, with whether they are suppressed and what is due for them."""
    for item, blocked, decision in planned:
        summary.total += 1
        if progress is not None:
            progress(summary)
        if isinstance(item, RowProblem):
            summary.problem(item)
        elif isinstance(item, Duplicate):
            summary.duplicates += 1
        elif isinstance(decision, RowProblem):
            summary.problem(decision)
        elif isinstance(item, Ready) and decision is not None:
            yield item, blocked, decision


def check_sequence_rows(
    seq: Sequencer,
    summary: Summary,
    *,
    cache: RenderCache,
    progress: Progress | None = None,
    suppression: SuppressionList | None = None,
) -> bool:
    """Pass 1 of a sequence's run: read every row, work out its due step, render it; True
    when no row is invalid (a start or zone that does not work counts, due or not)."""
    pipeline = seq.pipeline
    rows = screened(pipeline.items(render=False), _address, suppression)
    for item, blocked, decision in counted(summary, seq.plan(rows), progress):
        if not blocked and decision.action is Action.SEND and decision.step is not None:
            r = item.recipient
            try:
                cache.put(r.row, r.email, pipeline.render(r, decision.step.name))
                summary.would_send += 1
            except RenderError as exc:
                problem = f"step {decision.step.name!r}: {exc}"
                summary.problem(RowProblem(r.row, r.line, problem, r.email))
    return summary.invalid == 0


def _address(item: Item) -> str | None:
    return item.recipient.email if isinstance(item, Ready) else None


class _Steps:
    """What the two sources of a sequence's messages share: queueing a due step, and a step
    deferred earlier in the run whose recipient was suppressed since."""

    pipeline: Pipeline
    state: SqliteState | PgState
    summary: Summary
    smtputf8: Callable[[], bool]

    def _queued(
        self,
        r: Recipient,
        entry: Entry | None,
        rendered: Rendered | None,
        step: str,
        *,
        again: bool = False,
    ) -> Queued | None:
        """A step rendered (unless it was) and built; `again`: a retry round's (deferred)."""
        counted_as = DeliveryStatus.DEFERRED if again else None
        return queue_row(
            self.pipeline,
            self.state,
            self.summary,
            r,
            entry,
            rendered,
            counted_as,
            self.smtputf8(),
            step=step,
        )

    def _suppressed_since(self, r: Recipient, step: str) -> None:
        """A step deferred earlier in this run whose recipient was suppressed while it waited
        (an unsubscribe): never sent, pending again, counted as suppressed."""
        self.state.record(Outcome(unit_key(r.key, step), DeliveryStatus.PENDING))
        self.summary.deferred -= 1
        self.summary.suppressed += 1
        self.summary.step_count(step, "deferred", -1)
        self.summary.step_count(step, "suppressed")


class SequenceRows(_Steps):
    """The messages of a sequence due in each pass of a run, in list order: at most one step
    per recipient, at most `limit` in the run (the interface of `selection.DueRows`)."""

    state: SqliteState

    def __init__(
        self,
        seq: Sequencer,
        state: SqliteState,
        summary: Summary,
        *,
        retry: Retry,
        limit: int | None,
        cache: RenderCache,
        smtputf8: Callable[[], bool],
        suppression: SuppressionList | None = None,
    ) -> None:
        self.seq, self.pipeline, self.state, self.summary = seq, seq.pipeline, state, summary
        self.retry, self.limit, self.cache, self.smtputf8 = retry, limit, cache, smtputf8
        self.suppression = suppression
        self.produced = 0

    def _rows(self) -> Iterator[tuple[Item, bool]]:
        return screened(self.pipeline.items(render=False), _address, self.suppression)

    def first_pass(self) -> Iterator[Queued]:
        """Each recipient's due step once; skipped steps are recorded as they come due."""
        for item, blocked, decision in self.seq.plan(self._rows()):
            if isinstance(item, RowProblem):
                self.summary.problem(item)  # reached only with --skip-invalid
                continue
            if not isinstance(item, Ready) or decision is None:
                continue
            if isinstance(decision, RowProblem):
                self.summary.problem(decision)
                continue
            if self.limit is not None and self.produced >= self.limit:
                continue  # the rest is left for the next run
            r = item.recipient
            for step in decision.skips:
                self.state.record_skip(r.email, r.row, step.name)
            count_decision(self.summary, decision)
            count_lost(self.summary, decision)
            if decision.action is not Action.SEND:
                self.summary.skipped += 1
                continue
            assert decision.step is not None
            name = decision.step.name
            if blocked:
                self.summary.suppressed += 1
                self.summary.step_count(name, "suppressed")
                continue
            queued = self._queued(r, decision.entry, self.cache.take(r.row, r.email), name)
            if queued is not None:
                self.produced += 1
                yield queued

    def retry_round(self, now: float) -> Iterator[Queued]:
        """The steps deferred earlier in this run whose backoff has passed."""
        run_id = self.state.run_id
        for item, blocked in self._rows():
            if not isinstance(item, Ready):
                continue
            r = item.recipient
            for name, record in self.state.step_records(r.email).items():
                if not policy.due_again(record.entry, run_id, self.retry, now):
                    continue
                if blocked:
                    self._suppressed_since(r, name)
                    continue
                queued = self._queued(r, record.entry, None, name, again=True)
                if queued is not None:
                    yield queued

    def others_hold(self) -> bool:
        """Another run holds some of the list: never, with SQLite's one run at a time."""
        return False

    def count_left(self) -> int:
        """Steps due now that nobody has tried yet (left by --limit or a stop)."""
        left = 0
        counting = Sequencer(
            self.pipeline,
            self.state,
            now=self.seq.now,
            write=False,
            retry_unknown=self.seq.retry_unknown,
            resend_failed=self.seq.resend_failed,
        )
        for _item, blocked, decision in counting.plan(self._rows()):
            if (
                isinstance(decision, Decision)
                and decision.action is Action.SEND
                and not blocked
                and (decision.entry is None or decision.entry.status is DeliveryStatus.PENDING)
            ):
                left += 1
        return left


class SequenceClaims(_Steps):
    """The messages of a sequence whose state is shared by several hosts (PostgreSQL): the
    interface of `SequenceRows`, but the rows come from the store, a group of members at a
    time.

    Each member is claimed (leased, and marked as looked at by this run) before its due step
    is worked out; the step then gets a lease of its own before it is rendered, so no other
    host sends it, and the member goes back at once with when it is next worth a look (its
    next step's due time, or the next run after a send). When nothing is left to claim but
    another live run holds members or steps, the engine waits for them, as for a one-message
    campaign (`selection.ClaimedRows`).
    """

    state: PgState
    WAIT_S = 0.25

    def __init__(
        self,
        seq: Sequencer,
        state: PgState,
        summary: Summary,
        *,
        retry: Retry,
        limit: int | None,
        group_size: int,
        smtputf8: Callable[[], bool],
        stop: Callable[[], bool],
        sleep: Callable[[float], None],
        suppression: SuppressionList | None = None,
        clock: Clock = system_clock,
    ) -> None:
        self.seq, self.pipeline, self.state, self.summary = seq, seq.pipeline, state, summary
        self.retry, self.limit, self.group_size = retry, limit, group_size
        self.smtputf8, self.stop, self.sleep = smtputf8, stop, sleep
        # The moment moves on as the run goes: a member comes due for a look while the run
        # waits (a dead run's lease running out), and its step is judged at that moment.
        self.clock = clock
        self.suppression = suppression
        self.produced = 0
        self.busy: list[str] = []  # members whose due step another run held

    def _now(self) -> float:
        self.seq.now = aware(self.clock())
        return self.seq.now.timestamp()

    def first_pass(self) -> Iterator[Queued]:
        """Each member's due step once, the members shared with the other hosts: a group of
        members at a time, each step of the group read, leased and its member given back in
        one round trip to the store."""
        while self.limit is None or self.produced < self.limit:
            claimed = self.state.claim_members(self.group_size, self._now())
            if not claimed:
                break
            yield from self._look_at(claimed)
        if self.busy:
            # Looked at again by the next pass, which the engine makes while another run
            # holds anything (or once the holder's lease has run out).
            self.state.look_again(self.busy)
            self.busy = []

    def _look_at(self, claimed: list[Claimed]) -> Iterator[Queued]:
        now = self.seq.now.timestamp()
        blocked = self._blocked(claimed)
        records = self.state.steps_of([c.recipient.email for c in claimed])
        # When a member is next worth a look: by the next run (now: this run has looked), the
        # next step's due time, or never (its sequence is over; an edit of the schedule or of
        # its row brings it back).
        settle: list[tuple[str, float, bool]] = []
        wanted: list[tuple[Claimed, Decision]] = []
        for c in claimed:
            r = c.recipient
            if self.limit is not None and self.produced + len(wanted) >= self.limit:
                settle.append((r.email, 0.0, False))  # left for the next run
                continue
            decision = self.seq.decide(r, c.met, records.get(r.key, {}))
            if isinstance(decision, RowProblem):
                # The row as the store has it cannot be scheduled (imported with
                # --skip-invalid): counted, and looked at again by the next run.
                self.summary.problem(decision)
                settle.append((r.email, now, False))
                continue
            if decision.held:
                # Another run is sending this member's last step: looked at again once that
                # run is done with it (or its lease has run out: it died, and it is unknown).
                settle.append((r.email, now, False))
                self.busy.append(r.email)
                continue
            for step in decision.skips:
                self.state.record_skip(r.email, r.row, step.name)
            count_decision(self.summary, decision)
            count_lost(self.summary, decision)
            if decision.action is not Action.SEND:
                self.summary.skipped += 1
                settle.append((r.email, _next_look(decision, now), False))
                continue
            assert decision.step is not None
            if r.key in blocked:
                self.summary.suppressed += 1
                self.summary.step_count(decision.step.name, "suppressed")
                settle.append((r.email, now, False))
                continue
            wanted.append((c, decision))
        leased = self.state.lease_units(
            [(c.recipient.email, d.step.name, d.entry) for c, d in wanted if d.step is not None]
        )
        sending: list[tuple[Claimed, Decision]] = []
        for c, decision in wanted:
            if c.recipient.key in leased:
                # Held by this run while it sends the step: looked at again by the next run
                # (the next step waits for its spacing), or, if this run dies, once its
                # lease runs out.
                settle.append((c.recipient.email, 0.0, True))
                sending.append((c, decision))
            else:
                # Another run holds the step, or has sent it since this run read it: looked
                # at again once that run is done with it.
                settle.append((c.recipient.email, now, False))
                self.busy.append(c.recipient.email)
        # The skips are written before the members' next looks are.
        self.state.flush()
        self.state.settle_members(settle)
        for c, decision in sending:
            assert decision.step is not None
            queued = self._queued(c.recipient, decision.entry, None, decision.step.name)
            if queued is not None:
                self.produced += 1
                yield queued

    def retry_round(self, now: float) -> Iterator[Queued]:
        """This run's deferred steps whose backoff has passed."""
        while claimed := self.state.claim(
            self.group_size, retry_unknown=False, retry_round=True, attempts=self.retry.attempts
        ):
            blocked = self._blocked(claimed)
            for c in claimed:
                if c.step is None:
                    continue
                if c.recipient.key in blocked:
                    self._suppressed_since(c.recipient, c.step)
                    continue
                queued = self._queued(c.recipient, c.entry, None, c.step, again=True)
                if queued is not None:
                    yield queued

    def others_hold(self) -> bool:
        """Between passes: another live run holds members or steps (wait and look again), or
        some came free since this pass ended (one more pass takes them)."""
        if self.limit is not None and self.produced >= self.limit:
            return False
        if self.state.held_by_others():
            self.sleep(self.WAIT_S)
            return not self.stop()
        return self.state.members_due(self._now()) > 0 and not self.stop()

    def count_left(self) -> int:
        """Members that are worth a look now and no run has looked at."""
        return self.state.members_due(self._now())

    def _blocked(self, claimed: list[Claimed]) -> set[str]:
        if self.suppression is None:
            return set()
        return self.suppression.suppressed([c.recipient.email for c in claimed])
