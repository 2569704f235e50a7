"""`mailcli status` and `mailcli.campaign_status`: where a campaign stands.

Read from the campaign's state store and matched against its recipient list. Reading takes no
lock (SQLite's WAL lets it read while a run writes), so status works during a run. Rows of the
list that no run has met yet (appended for a drip campaign) count as pending.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from mailcli.addresses import AddressError, address_key, parse_mailbox
from mailcli.campaign import Campaign, load_campaign
from mailcli.delivery import RECIPIENT_STATUSES, DeliveryStatus
from mailcli.errors import CantCreateError, DataError, InputFileError, MailcliError, UsageError
from mailcli.fingerprint import Recorded
from mailcli.recipients import RecipientReader, RowProblem, SeenAddresses
from mailcli.sequence_status import list_steps, step_counts, totals
from mailcli.state import (
    Attempt,
    Entry,
    RecipientRecord,
    RecipientState,
    RunRecord,
    SqliteState,
    open_state,
)
from mailcli.suppression import (
    Location,
    SuppressionList,
    for_campaign,
    open_for_reading,
    screened,
)

if TYPE_CHECKING:
    from mailcli.pgstate import HostShare, PgState


@dataclass
class Status:
    """Counts per status, the last run, and the recipients that were not delivered."""

    campaign: str
    state_file: str
    counts: dict[DeliveryStatus, int]
    new_rows: int = 0
    # Recipients not tried yet whose address is on the suppression list (never sent while so).
    suppressed: int = 0
    invalid_rows: int = 0
    list_error: str | None = None
    last_run: RunRecord | None = None
    recipients: list[RecipientState] = field(default_factory=list)
    # A shared (PostgreSQL) store: what each host did, and the runs sending now.
    hosts: list[HostShare] | None = None
    live_runs: list[RunRecord] = field(default_factory=list)
    # The campaign's fingerprint history, oldest first: when, which file, what changed.
    fingerprints: list[Recorded] = field(default_factory=list)
    # A sequence: messages per status of each step (the counts above are of every step).
    steps: dict[str, dict[str, int]] | None = None

    @property
    def total(self) -> int:
        """Every recipient: those in the state plus list rows no run has met yet."""
        return sum(self.counts.values()) + self.new_rows

    @property
    def pending(self) -> int:
        """Not tried yet, including rows appended since the last run (the suppressed aside)."""
        return self.counts[DeliveryStatus.PENDING] + self.new_rows - self.suppressed

    @property
    def sent(self) -> int:
        """Accepted by the server."""
        return self.counts[DeliveryStatus.SENT]

    @property
    def failed(self) -> int:
        """Refused for good, or invalid."""
        return self.counts[DeliveryStatus.FAILED]

    @property
    def deferred(self) -> int:
        """Refused for now; the next run tries again."""
        return self.counts[DeliveryStatus.DEFERRED]

    @property
    def unknown(self) -> int:
        """Handed over without a confirmed answer; resent only with --retry-unknown."""
        return self.counts[DeliveryStatus.UNKNOWN]

    def to_json(self, *, with_recipients: bool) -> dict[str, Any]:
        """The contract's `status --json` object."""
        run = self.last_run
        obj: dict[str, Any] = {
            "campaign": self.campaign,
            "total": self.total,
            "pending": self.pending,
            "sent": self.sent,
            "failed": self.failed,
            "deferred": self.deferred,
            "unknown": self.unknown,
            "suppressed": self.suppressed,
            "invalid_rows": self.invalid_rows,
            "state_file": self.state_file,
            "last_run": None
            if run is None
            else {
                "id": run.id,
                "started": run.started,
                "finished": run.finished,
                "pid": run.pid,
                "host": run.host,
                "exit_code": run.exit_code,
                "sent": run.sent,
            },
            "list_error": self.list_error,
            "fingerprints": [
                {
                    "recorded": f.recorded,
                    "file": f.fingerprint.file,
                    "host": f.fingerprint.host,
                    "digest": f.fingerprint.digest,
                    "changes": list(f.changes),
                }
                for f in self.fingerprints
            ],
        }
        if self.steps is not None:
            obj["skipped"] = self.counts.get(DeliveryStatus.SKIPPED, 0)
            obj["steps"] = self.steps
        if self.hosts is not None:
            obj["hosts"] = [
                {
                    "host": h.host,
                    "sent": h.sent,
                    "failed": h.failed,
                    "deferred": h.deferred,
                    "unknown": h.unknown,
                }
                for h in self.hosts
            ]
            obj["running"] = [
                {"id": r.id, "started": r.started, "pid": r.pid, "host": r.host}
                for r in self.live_runs
            ]
        if with_recipients:
            obj["recipients"] = [
                {
                    "email": r.email,
                    "row": r.row,
                    **({"step": r.step} if r.step is not None else {}),
                    "status": r.status.value,
                    "code": r.code,
                    "reply": r.reply,
                    "attempts": r.attempts,
                    "updated": r.updated,
                }
                for r in self.recipients
            ]
        return obj


def campaign_status(
    campaign: Campaign | str | Path, *, suppression: Location | bool = True
) -> Status:
    """Read the campaign's state (without creating it) and match it against the list.

    `suppression` (as for `send_campaign`): the list whose addresses are counted as suppressed
    among the recipients not tried yet.
    """
    if not isinstance(campaign, Campaign):
        # status reads only the state and the list: a missing template does not stop it
        campaign = load_campaign(campaign, check_files=False)
    if suppression is True:
        suppression = for_campaign(campaign) or False
    blocklist = open_for_reading(suppression) if isinstance(suppression, Location) else None
    try:
        return _status(campaign, blocklist)
    finally:
        if blocklist is not None:
            blocklist.close()


def _status(campaign: Campaign, blocklist: SuppressionList | None) -> Status:
    if campaign.state_url is not None:
        return _shared_status(campaign, campaign.state_url, blocklist)
    report = Status(campaign.name, str(campaign.state_path), dict.fromkeys(RECIPIENT_STATUSES, 0))
    state: SqliteState | None = None
    if campaign.state_path.exists():
        state = open_state(campaign.state_path, campaign.name, create=False)
    try:
        if state is not None:
            # Counts of another kind of campaign's state would be wrong: refused, as a run is.
            state.check_kind(campaign.is_sequence, write=False)
            report.counts = state.counts()
            report.recipients = state.problems()
            report.last_run = state.last_run()
            report.fingerprints = state.fingerprints()
        if campaign.is_sequence:
            # Every valid row of the list is a recipient of each step: those without a record
            # of a step are pending for it.
            _count_list(campaign, None, report, None)
            in_list, had = list_steps(campaign, state) if not report.list_error else (0, {})
            report.steps = step_counts(campaign, state, in_list, had)
            report.counts, report.new_rows = totals(report.steps), 0
        else:
            _count_list(campaign, state.lookup if state else None, report, blocklist)
    finally:
        if state is not None:
            state.close()
    return report


def _shared_status(campaign: Campaign, url: str, blocklist: SuppressionList | None) -> Status:
    """The whole campaign as a PostgreSQL store holds it, from any host: the store is the list,
    so this host's copy of the CSV is matched only for rows not imported yet."""
    from mailcli.pgstate import PgState

    report = Status(campaign.name, url, dict.fromkeys(RECIPIENT_STATUSES, 0))
    try:
        state = PgState.open(url, campaign.name, create=False)
    except InputFileError:
        # Not sent yet (as a SQLite campaign without its file): the list is all pending.
        report.hosts = []
        _count_list(campaign, None, report, blocklist)
        return report
    with state:
        state.check_kind(campaign.is_sequence)
        report.counts = state.counts()
        report.recipients = state.problems()
        report.last_run = state.last_run()
        report.hosts = state.hosts()
        report.live_runs = state.live_runs()
        report.fingerprints = state.fingerprints()
        if campaign.is_sequence:
            # The store is the list: its members are the recipients of each step.
            report.steps = step_counts(campaign, state, state.members(), state.steps_had())
            report.counts = totals(report.steps)
            return report
        if blocklist is not None:
            rows = screened(state.left_emails(), lambda e: e, blocklist)
            report.suppressed = sum(blocked for _, blocked in rows)
        if campaign.recipients.path.is_file():
            _count_list(campaign, state.contains, report, blocklist)
    return report


def _count_list(
    campaign: Campaign,
    known: Callable[[str], object] | None,
    report: Status,
    blocklist: SuppressionList | None,
) -> None:
    """Rows of the list the state has not met yet count as pending; invalid rows are counted.

    `known(email)` is the state's record of an address (an `Entry`, or True), falsy when it has
    none. Rows not tried yet (new, or pending in a SQLite state) whose address is on the
    suppression list count as suppressed.
    """
    reader = RecipientReader(campaign.recipients)
    try:
        with SeenAddresses() as seen:
            for entry in reader:
                if isinstance(entry, RowProblem):
                    report.invalid_rows += 1
                    continue
                if seen.add(entry.email, entry.row) is not None:
                    continue  # a duplicate
                found = known(entry.email) if known is not None else None
                report.new_rows += not found
                waiting = not found or (
                    isinstance(found, Entry) and found.status is DeliveryStatus.PENDING
                )
                if waiting and blocklist is not None and blocklist.get(entry.email) is not None:
                    report.suppressed += 1
    except MailcliError as exc:
        # The state still answers; say why the list could not be matched against it.
        report.list_error = str(exc)


# --- the send log: `status --export` and `status --recipient` -------------------------------

EXPORT_COLUMNS = (
    "email",
    "row",
    "status",
    "code",
    "reply",
    "message_id",
    "first_attempt",
    "last_attempt",
    "tries",
    "run",
)
# A sequence's export: a row per recipient and step.
SEQUENCE_EXPORT_COLUMNS = (EXPORT_COLUMNS[0], "step", *EXPORT_COLUMNS[1:])
ExportFormat = Literal["csv", "jsonl"]
CHUNK = 1000  # list rows matched against the state per query
# The mark of a try whose outcome the state never got (a stop between hand-over and reply).
NO_ANSWER = "handed over; no answer recorded (the run stopped, or is still waiting for it)"


@dataclass(frozen=True, slots=True)
class StatusExport:
    """What `export_status` wrote."""

    rows: int
    # Of those, rows of the list that no run has met yet (written as pending, never tried).
    not_tried: int = 0
    # Why the list could not be matched against the state (the state's rows were written).
    list_error: str | None = None


@dataclass(frozen=True, slots=True)
class RecipientHistory:
    """One recipient in a campaign: where it stands, and every try the state recorded."""

    campaign: str
    record: RecipientRecord
    attempts: list[Attempt]
    # False: a row of the list that no run has met yet (pending, never tried).
    in_state: bool = True
    # Not tried yet and on the suppression list: not sent while it stays there.
    suppressed: bool = False

    def to_json(self) -> dict[str, Any]:
        """The `status --recipient --json` object."""
        return {
            "campaign": self.campaign,
            **dict(zip(EXPORT_COLUMNS, _values(self.record), strict=True)),
            "in_state": self.in_state,
            "suppressed": self.suppressed,
            "attempts": [
                {
                    "run": a.run,
                    "time": a.at,
                    "status": a.status.value,
                    "code": a.code,
                    "reply": a.reply,
                    "message_id": a.message_id,
                }
                for a in self.attempts
            ],
        }


def parse_statuses(
    values: Iterable[DeliveryStatus | str] | str | None,
) -> frozenset[DeliveryStatus] | None:
    """Status words (each may be a comma list: `failed,deferred`) as a set; None: all."""
    if values is None:
        return None
    found: set[DeliveryStatus] = set()
    for value in [values] if isinstance(values, str) else values:
        for word in str(value).split(","):
            if not (word := word.strip().lower()):
                continue
            if word not in RECIPIENT_STATUSES:
                choices = "|".join(s.value for s in RECIPIENT_STATUSES)
                raise UsageError(f"unknown status {word!r}: choose from {choices}")
            found.add(DeliveryStatus(word))
    if not found:
        raise UsageError("no status given to filter on")
    return frozenset(found)


def export_status(
    campaign: Campaign | str | Path,
    out: str | Path | IO[str],
    *,
    statuses: Iterable[DeliveryStatus | str] | str | None = None,
    format: ExportFormat | None = None,
) -> StatusExport:
    """Write one row per recipient (EXPORT_COLUMNS: address, row, status, code, reply,
    Message-ID, first and last try, tries, run) to a file or a text stream.

    CSV, or JSON Lines (`format`, or a path ending in `.jsonl`). Streamed: memory stays flat
    whatever the campaign's size. Rows of the list that no run has met yet come after the
    state's, as `pending`. A file is written whole or not at all. Takes no lock: works while a
    run sends, and reads one moment of the state.
    """
    wanted = parse_statuses(statuses)
    if format is None:
        named = isinstance(out, str | Path) and str(out).endswith(".jsonl")
        format = "jsonl" if named else "csv"
    if format not in ("csv", "jsonl"):
        raise UsageError(f"the export format is csv or jsonl, not {format!r}")
    if not isinstance(campaign, Campaign):
        campaign = load_campaign(campaign, check_files=False)
    if isinstance(out, str | Path):
        with _replacing(Path(out)) as handle:
            return _export(campaign, handle, wanted, format)
    return _export(campaign, out, wanted, format)


def recipient_history(
    campaign: Campaign | str | Path, address: str, *, suppression: Location | bool = True
) -> RecipientHistory:
    """Where one address stands in a campaign, with every try the state recorded (run, time,
    outcome, code, reply, Message-ID).

    An address of the list that no run has met yet comes back pending, with no tries. One that
    is neither in the state nor in the list raises DataError (exit 65).
    """
    if not isinstance(campaign, Campaign):
        campaign = load_campaign(campaign, check_files=False)
    if campaign.is_sequence:
        raise UsageError(
            f"campaign '{campaign.name}' is a sequence: sequence_place() shows where a "
            "recipient stands in it, step by step"
        )
    try:
        email = parse_mailbox(address).addr
    except AddressError:
        email = address.strip()  # an invalid row recorded by --skip-invalid has such a one
    with _reader(campaign) as state:
        record = state.recipient(email) if state is not None else None
        attempts = state.history(email) if state is not None and record is not None else []
        shared = state is not None and not isinstance(state, SqliteState)
    if record is not None:
        history = RecipientHistory(campaign.name, record, _with_flight(record, attempts))
    else:
        row = _row_in_list(campaign, email, shared=shared)
        history = RecipientHistory(campaign.name, _never_tried(email, row), [], in_state=False)
    if history.record.status is DeliveryStatus.PENDING and suppression is not False:
        location = for_campaign(campaign) if suppression is True else suppression
        blocklist = open_for_reading(location)
        if blocklist is not None:
            try:
                found = blocklist.get(email) is not None
            finally:
                blocklist.close()
            history = dataclasses.replace(history, suppressed=found)
    return history


def _values(r: RecipientRecord) -> tuple[object, ...]:
    return (
        r.email,
        r.row,
        r.status.value,
        r.code,
        r.reply,
        r.message_id,
        r.first_at,
        r.last_at,
        r.tries,
        r.run,
    )


@contextlib.contextmanager
def _reader(campaign: Campaign) -> Iterator[SqliteState | PgState | None]:
    """The campaign's store, for reading only (None: no run has written it yet)."""
    if campaign.state_url is not None:
        from mailcli.pgstate import PgState

        try:
            shared = PgState.open(campaign.state_url, campaign.name, create=False)
        except InputFileError:
            yield None
            return
        with shared:
            shared.check_kind(campaign.is_sequence)
            shared.steps = tuple(s.name for s in campaign.steps)
            yield shared
    elif campaign.state_path.exists():
        with open_state(campaign.state_path, campaign.name, create=False) as state:
            state.check_kind(campaign.is_sequence, write=False)
            yield state
    else:
        yield None


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[IO[str]]:
    """A file written whole or not at all: a private temporary file beside it (the export
    holds addresses), renamed over it at the end."""
    try:
        handle = tempfile.NamedTemporaryFile(  # noqa: SIM115
            "w",
            encoding="utf-8",
            newline="",
            dir=path.parent,
            prefix=f".{path.name}.",
            suffix=".part",
            delete=False,
        )
    except OSError as exc:
        raise CantCreateError(f"cannot write the export: {exc.strerror}", path=path) from None
    try:
        with handle:
            yield handle
        os.replace(handle.name, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(handle.name)
        if isinstance(exc, OSError):
            raise CantCreateError(
                f"cannot write the export: {exc.strerror or exc}", path=path
            ) from None
        raise


def _export(
    campaign: Campaign,
    handle: IO[str],
    wanted: frozenset[DeliveryStatus] | None,
    format: ExportFormat,
) -> StatusExport:
    write = _writer(handle, format, steps=campaign.is_sequence)
    rows = not_tried = 0
    list_error = None
    with contextlib.ExitStack() as stack:
        state = stack.enter_context(_reader(campaign))
        if state is not None:
            stack.enter_context(state.snapshot())
            for record in state.export_rows(wanted, steps=campaign.is_sequence):
                write(record)
                rows += 1
        if wanted is None or DeliveryStatus.PENDING in wanted:
            new = (
                _steps_not_had(campaign, state)
                if campaign.is_sequence
                else _not_met(campaign, state)
            )
            while True:
                try:
                    record = next(new)
                except StopIteration:
                    break
                except MailcliError as exc:  # the list, not the export: say so, go on
                    list_error = str(exc)
                    break
                write(record)
                rows += 1
                not_tried += 1
    handle.flush()
    return StatusExport(rows, not_tried, list_error)


def _writer(
    handle: IO[str], format: ExportFormat, *, steps: bool = False
) -> Callable[[RecipientRecord], None]:
    """Writes one record a line; `steps`: a sequence's, with the step after the address."""
    columns = SEQUENCE_EXPORT_COLUMNS if steps else EXPORT_COLUMNS

    def values(r: RecipientRecord) -> tuple[object, ...]:
        found = _values(r)
        return (found[0], r.step, *found[1:]) if steps else found

    if format == "jsonl":

        def line(r: RecipientRecord) -> None:
            obj = dict(zip(columns, values(r), strict=True))
            handle.write(json.dumps(obj, ensure_ascii=False) + "\n")

        return line
    table = csv.writer(handle)
    table.writerow(columns)

    def row(r: RecipientRecord) -> None:
        table.writerow(["" if v is None else v for v in values(r)])

    return row


def _steps_not_had(
    campaign: Campaign, state: SqliteState | PgState | None
) -> Iterator[RecipientRecord]:
    """Each step of each valid, unique row of the list that the state has no record of:
    pending (one read of the recipient's steps per row)."""
    shared = state is not None and not isinstance(state, SqliteState)
    if shared and not campaign.recipients.path.is_file():
        return  # a host of a shared campaign without the list
    with SeenAddresses() as seen:
        for entry in RecipientReader(campaign.recipients):
            if isinstance(entry, RowProblem) or seen.add(entry.email, entry.row) is not None:
                continue
            had = state.step_records(entry.email) if state is not None else {}
            for step in campaign.steps:
                if step.name not in had:
                    record = _never_tried(entry.email, entry.row)
                    yield dataclasses.replace(record, step=step.name)


def _not_met(campaign: Campaign, state: SqliteState | PgState | None) -> Iterator[RecipientRecord]:
    """The valid, unique rows of the list that the state has no record of: pending. The state
    is asked CHUNK rows at a time (one query each, not one per row)."""
    shared = state is not None and not isinstance(state, SqliteState)
    if shared and not campaign.recipients.path.is_file():
        return  # a host of a shared campaign without the list: the store is the list
    chunk: list[tuple[str, int]] = []
    with SeenAddresses() as seen:
        for entry in RecipientReader(campaign.recipients):
            if isinstance(entry, RowProblem) or seen.add(entry.email, entry.row) is not None:
                continue
            chunk.append((entry.email, entry.row))
            if len(chunk) >= CHUNK:
                yield from _unknown_to(state, chunk)
                chunk = []
        yield from _unknown_to(state, chunk)


def _unknown_to(
    state: SqliteState | PgState | None, rows: list[tuple[str, int]]
) -> Iterator[RecipientRecord]:
    known = state.known([email for email, _ in rows]) if state is not None and rows else set()
    for email, row in rows:
        if address_key(email) not in known:
            yield _never_tried(email, row)


def _never_tried(email: str, row: int | None) -> RecipientRecord:
    return RecipientRecord(
        email, row, DeliveryStatus.PENDING, None, None, None, None, None, 0, None
    )


def _row_in_list(campaign: Campaign, email: str, *, shared: bool) -> int:
    """The row of the list that holds an address the state has not met; DataError (65) when
    the list does not have it, InputFileError (66) when the list cannot be read."""
    where = f"{email} is not in campaign '{campaign.name}'"
    source = campaign.recipients.path
    if shared and not source.is_file():
        raise DataError(f"{where} (not in its state; this host has no copy of its list {source})")
    key = address_key(email)
    invalid: RowProblem | None = None
    try:
        for entry in RecipientReader(campaign.recipients):
            if not isinstance(entry, RowProblem):
                if entry.key == key:
                    return entry.row
            elif entry.email is not None and address_key(entry.email.strip()) == key:
                invalid = invalid or entry
    except MailcliError as exc:  # the list itself is the problem: exit 66, as for the list
        first = str(exc).splitlines()[0]
        raise InputFileError(
            f"{email} is not in the state of campaign '{campaign.name}', and its list cannot "
            f"be read: {first}"
        ) from None
    if invalid is not None:
        raise DataError(f"{where}: its list has it on an invalid {invalid}")
    raise DataError(f"{where} (not in its state, nor in its list {source.name})")


def _with_flight(record: RecipientRecord, attempts: list[Attempt]) -> list[Attempt]:
    """The tries, with the last one as `unknown` when it was handed over and no outcome was
    recorded (the state marks a try before the message leaves; the outcome comes after)."""
    if record.status is not DeliveryStatus.UNKNOWN or record.last_at is None:
        return attempts
    last = attempts[-1] if attempts else None
    if last is not None and last.status is DeliveryStatus.UNKNOWN and last.run == record.run:
        return attempts
    flight = Attempt(record.run, record.last_at, DeliveryStatus.UNKNOWN, None, NO_ANSWER, None)
    return [*attempts, flight]
