"""Where a sequence stands: counts per step (`status`), and one recipient's place in it
(`status --recipient`).

Read from the campaign's SQLite state without writing to it, and matched against the list: a
recipient of the list who has not had a step yet counts as pending for it. The next step of one
recipient is worked out by the same due rule a run applies (`mailcli.sequence.decide`), at the
system's present moment.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2

from mailcli.addresses import AddressError, address_key, parse_mailbox
from mailcli.campaign import Campaign, load_campaign
from mailcli.delivery import RECIPIENT_STATUSES, DeliveryStatus
from mailcli.errors import DataError, InputFileError, MailcliError, UsageError
from mailcli.pipeline import row_context
from mailcli.recipients import Recipient, RecipientReader, RowProblem, SeenAddresses
from mailcli.render import BoundedSandbox, RenderError
from mailcli.sequence import Action, decide, system_clock
from mailcli.sequence_rows import RowClock
from mailcli.state import Attempt, RecipientRecord, SqliteState
from mailcli.suppression import Location, for_campaign, open_for_reading

if TYPE_CHECKING:
    from mailcli.pgstate import PgState

# The counts of each step in `status --json`.
STEP_STATUS_KEYS = ("sent", "pending", "skipped", "failed", "deferred", "unknown")


def step_counts(
    campaign: Campaign,
    state: SqliteState | PgState | None,
    in_list: int,
    had: Mapping[str, int],
) -> dict[str, dict[str, int]]:
    """Messages per status of each step (of every recipient the state has met, in the list
    or not); `pending`: recipients of the list now (`in_list`) who have not had the step
    (`had`: how many of them have)."""
    recorded = state.step_counts() if state is not None else {}
    steps: dict[str, dict[str, int]] = {}
    for step in campaign.steps:
        counts = recorded.get(step.name, {})
        row = {key: counts.get(DeliveryStatus(key), 0) for key in STEP_STATUS_KEYS}
        row["pending"] = max(0, in_list - had.get(step.name, 0))
        steps[step.name] = row
    return steps


def list_steps(campaign: Campaign, state: SqliteState | None) -> tuple[int, dict[str, int]]:
    """The valid, unique recipients of the list, and how many of them have had each step
    (a record other than pending): one read of each recipient's steps."""
    in_list, had = 0, dict.fromkeys((s.name for s in campaign.steps), 0)
    with SeenAddresses() as seen:
        for entry in RecipientReader(campaign.recipients):
            if isinstance(entry, RowProblem) or seen.add(entry.email, entry.row) is not None:
                continue
            in_list += 1
            if state is None:
                continue
            for name, record in state.step_records(entry.email).items():
                if name in had and record.entry.status is not DeliveryStatus.PENDING:
                    had[name] += 1
    return in_list, had


def totals(steps: dict[str, dict[str, int]]) -> dict[DeliveryStatus, int]:
    """The messages of every step per status (the top-level counts of a sequence's status)."""
    counts = dict.fromkeys((*RECIPIENT_STATUSES, DeliveryStatus.SKIPPED), 0)
    for row in steps.values():
        for key, n in row.items():
            counts[DeliveryStatus(key)] += n
    return counts


@dataclass(frozen=True, slots=True)
class StepPlace:
    """One step of one recipient: its record (None: not had yet) and its tries."""

    step: str
    record: RecipientRecord | None
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def status(self) -> str:
        return self.record.status.value if self.record is not None else "pending"


@dataclass(frozen=True, slots=True)
class SequencePlace:
    """Where one recipient is in a sequence (`status --recipient` of a sequence)."""

    campaign: str
    email: str
    row: int | None
    in_list: bool
    suppressed: bool
    steps: list[StepPlace]
    # What the next run does for the recipient: its next step, whether it is due (`due`),
    # not yet (`waiting`), due outside the window (`held`), nothing is left (`done`), or the
    # sequence ended at a refused step (`stopped`, with that step).
    next_step: str | None = None
    next_action: str | None = None
    next_at: datetime | None = None
    problem: str | None = None  # why the next step cannot be worked out (the row's start)

    def to_json(self) -> dict[str, Any]:
        """The `status --recipient --json` object of a sequence."""
        return {
            "campaign": self.campaign,
            "email": self.email,
            "row": self.row,
            "in_list": self.in_list,
            "suppressed": self.suppressed,
            "steps": [
                {
                    "step": p.step,
                    "status": p.status,
                    "time": p.record.last_at if p.record is not None else None,
                    "code": p.record.code if p.record is not None else None,
                    "reply": p.record.reply if p.record is not None else None,
                    "message_id": p.record.message_id if p.record is not None else None,
                    "tries": p.record.tries if p.record is not None else 0,
                }
                for p in self.steps
            ],
            "next": None
            if self.next_action is None
            else {
                "step": self.next_step,
                "action": self.next_action,
                "due_at": self.next_at.isoformat(timespec="seconds") if self.next_at else None,
            },
            "problem": self.problem,
            "attempts": [
                {
                    "step": p.step,
                    "run": a.run,
                    "time": a.at,
                    "status": a.status.value,
                    "code": a.code,
                    "reply": a.reply,
                    "message_id": a.message_id,
                }
                for p in self.steps
                for a in p.attempts
            ],
        }


def sequence_place(
    campaign: Campaign | str | Path,
    address: str,
    *,
    suppression: Location | bool = True,
    now: datetime | None = None,
) -> SequencePlace:
    """Where one address is in a sequence: each step's status and time, and what the next run
    does for it (`now`: at that moment, default the system's). DataError (65) when neither
    the state nor the list has the address."""
    if not isinstance(campaign, Campaign):
        # Like `status`: the state and the list are read; a missing template does not stop it.
        campaign = load_campaign(campaign, check_files=False)
    if not campaign.is_sequence:
        raise UsageError(
            f"campaign '{campaign.name}' is not a sequence: recipient_history() shows where a "
            "recipient of a one-message campaign stands"
        )
    try:
        email = parse_mailbox(address).addr
    except AddressError:
        email = address.strip()
    recipient = _find(campaign, email)
    state = _reader(campaign)
    from mailcli.pgstate import PgState

    if recipient is None and isinstance(state, PgState):
        recipient = state.member(email)  # the store is the list of a shared sequence
    try:
        records = state.step_records(email) if state is not None else {}
        if recipient is None and not records:
            raise DataError(
                f"{email} is not in campaign '{campaign.name}' (not in its state, nor in its "
                f"list {campaign.recipients.path.name})"
            )
        places = [
            StepPlace(
                step.name,
                state.recipient(email, step.name) if state is not None else None,
                state.history(email, step.name) if step.name in records and state else [],
            )
            for step in campaign.steps
        ]
        place = SequencePlace(
            campaign.name,
            email,
            recipient.row if recipient is not None else _recorded_row(places),
            recipient is not None,
            _suppressed(campaign, email, suppression),
            places,
        )
        if recipient is None or place.suppressed:
            return place  # no further step for it
        met = state.met([email]).get(address_key(email)) if state is not None else None
        return _with_next(campaign, place, recipient, records, met, now or system_clock())
    finally:
        if state is not None:
            state.close()


def _with_next(
    campaign: Campaign,
    place: SequencePlace,
    recipient: Recipient,
    records: Any,
    met: datetime | None,
    now: datetime,
) -> SequencePlace:
    from dataclasses import replace

    clock = RowClock(campaign, BoundedSandbox(undefined=jinja2.StrictUndefined))
    context = row_context(campaign, recipient)
    try:
        zone = clock.zone(context)
        start = clock.start(context, zone, met or now)
        decision = decide(
            campaign.steps,
            records,
            start=start,
            zone=zone,
            now=now,
            run_id=None,
            window=campaign.window,
            condition=lambda step: clock.condition(step, context),
        )
    except RenderError as exc:
        return replace(place, problem=str(exc))
    action = "due" if decision.action is Action.SEND else decision.action.value
    if decision.action is Action.DONE and decision.step is not None:
        action = "stopped"  # that step was refused: no later one goes out
    step = decision.step.name if decision.step is not None else None
    return replace(place, next_step=step, next_action=action, next_at=decision.due_at)


def _reader(campaign: Campaign) -> SqliteState | PgState | None:
    """The sequence's store, read only (None: no run has written it yet)."""
    if campaign.state_url is None:
        state = SqliteState.read_only(campaign.state_path)
        if state is not None:
            _checked(state, lambda: state.check_kind(True, write=False))
        return state
    from mailcli.pgstate import PgState

    try:
        shared = PgState.open(campaign.state_url, campaign.name, create=False)
    except InputFileError:
        return None
    _checked(shared, lambda: shared.check_kind(True))
    shared.steps = tuple(s.name for s in campaign.steps)
    return shared


def _checked(state: SqliteState | PgState, check: Callable[[], None]) -> None:
    """A state of another kind of campaign is refused (closed, then the error raised)."""
    try:
        check()
    except MailcliError:
        state.close()
        raise


def _find(campaign: Campaign, email: str) -> Recipient | None:
    key = address_key(email)
    try:
        for entry in RecipientReader(campaign.recipients):
            if not isinstance(entry, RowProblem) and entry.key == key:
                return entry
    except MailcliError:
        return None  # the list cannot be read: the state still tells what was sent
    return None


def _recorded_row(places: list[StepPlace]) -> int | None:
    return next((p.record.row for p in places if p.record is not None), None)


def _suppressed(campaign: Campaign, email: str, choice: Location | bool) -> bool:
    if choice is False:
        return False
    location = for_campaign(campaign) if choice is True else choice
    blocklist = open_for_reading(location)
    if blocklist is None:
        return False
    try:
        return blocklist.get(email) is not None
    finally:
        blocklist.close()
