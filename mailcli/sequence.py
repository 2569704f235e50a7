"""Sequences: several messages per recipient, each at its own time (`steps:` of a campaign).

A sequence campaign is run again and again by cron; each run sends whatever has come due for
each recipient, at most one step each. This module holds the schedule's parts (`After`,
`Window`, `Step`), reads each row's clock (`start:` and `timezone:`), and decides, from what the
state has recorded of a recipient's steps, what a run at a given moment does for that recipient
(`Schedule.decide`): the one place of the due rule.

The due rule: step k is due at `start + after_k`, and never sooner than `after_k - after_j`
after the last step j that went out to that recipient (a late run keeps the spacing); steps go
in order, each at most once, one per recipient per run; a step whose `if:` is false when it
comes due is skipped for good; with a `window:` a due step waits for the recipient's local
sending hours. Day and week units are calendar days in the recipient's zone, so a step due at
09:00 stays at 09:00 across a daylight saving change; hours and minutes are elapsed time.
"""

from __future__ import annotations

import functools
import re
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailcli.delivery import DeliveryStatus

if TYPE_CHECKING:
    from mailcli.state import Entry

# A (recipient, step) record in the state is keyed by the address key, this separator (which
# no address can hold) and the step's name.
UNIT_SEP = "\x1f"
STEP_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_AFTER_RE = re.compile(r"(\d+)\s*(w|d|h|m)", re.IGNORECASE)
_WINDOW_RE = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")

Clock = Callable[[], datetime]
# The moments a sequence works with: far from the ends of what datetime can hold, so that a
# start plus a hundred years of steps always fits.
MIN_START = datetime(1900, 1, 1, tzinfo=UTC)
MAX_START = datetime(9000, 1, 1, tzinfo=UTC)


def system_clock() -> datetime:
    """Now, as an aware UTC datetime (what `faketime` moves for the CLI)."""
    return datetime.now(UTC)


def unit_key(key: str, step: str | None) -> str:
    """The state's key of one recipient's step (the address key alone without a step)."""
    return key if step is None else f"{key}{UNIT_SEP}{step}"


def step_of(key: str) -> str | None:
    """The step named by a state key (None: a one-message campaign's recipient)."""
    _, sep, step = key.partition(UNIT_SEP)
    return step if sep else None


@dataclass(frozen=True, slots=True)
class After:
    """A step's offset from the recipient's start: whole days (calendar days in the
    recipient's zone) and seconds (elapsed time)."""

    days: int
    seconds: int
    text: str = ""

    @property
    def total_s(self) -> int:
        """The offset in nominal seconds, to order steps by."""
        return self.days * 86400 + self.seconds

    def __sub__(self, other: After) -> After:
        return After(self.days - other.days, self.seconds - other.seconds)

    def __str__(self) -> str:
        return self.text or f"{self.days}d{self.seconds}s"

    def after(self, moment: datetime, zone: tzinfo) -> datetime:
        """`moment` plus this offset: the days on the local calendar, then the seconds."""
        local = moment.astimezone(zone)
        if self.days:
            # Wall-clock arithmetic: the same local time of day, whatever the UTC offset does.
            local = _resolve(local.replace(tzinfo=None) + timedelta(days=self.days), zone)
        # Hours and minutes are elapsed time, across a daylight saving change too.
        return local.astimezone(UTC) + timedelta(seconds=self.seconds)


def parse_after(value: object) -> After:
    """`0d`, `2d`, `1w`, `36h`, `90m`, `1d12h`: an `After`; raise ValueError."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"invalid 'after' {value!r}: expected e.g. '0d', '2d', '12h' or '1w'")
    text = str(value).strip()
    if text == "0":
        return After(0, 0, "0")
    parts = _AFTER_RE.findall(text)
    if not parts or _AFTER_RE.sub("", text).strip():
        raise ValueError(
            f"invalid 'after' {text!r}: expected a duration from the start such as '0d', "
            "'2d', '12h', '90m', '1w' or '1d12h' (whole numbers of w, d, h, m)"
        )
    days = seconds = 0
    for number, unit in parts:
        n = int(number)
        unit = unit.lower()
        if unit == "w":
            days += 7 * n
        elif unit == "d":
            days += n
        else:
            seconds += n * (3600 if unit == "h" else 60)
    if days * 86400 + seconds > 36600 * 86400:
        raise ValueError(f"invalid 'after' {text!r}: more than a hundred years")
    return After(days, seconds, text)


@dataclass(frozen=True, slots=True)
class Window:
    """Local sending hours: from `start` up to, not including, `end` (past midnight when
    `end` is earlier than `start`)."""

    start: time
    end: time
    text: str

    def __contains__(self, moment: time) -> bool:
        if self.start < self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end

    def opens(self, moment: datetime, zone: tzinfo) -> datetime:
        """The first instant at or after `moment` inside the window, in the recipient's zone."""
        local = moment.astimezone(zone)
        if local.timetz().replace(tzinfo=None) in self:
            return moment
        day = local.date()
        for offset in range(3):
            candidate = _resolve(datetime.combine(day + timedelta(days=offset), self.start), zone)
            if candidate >= moment:
                return candidate.astimezone(UTC)
        raise AssertionError("a window opens at least once a day")  # pragma: no cover


def parse_window(value: object) -> Window:
    """`09:00-17:00` (or `22:00-06:00`, past midnight): a `Window`; raise ValueError."""
    m = _WINDOW_RE.match(str(value)) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f"invalid window {value!r}: expected local hours such as '09:00-17:00'")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    if not (h1 < 24 and h2 <= 24 and m1 < 60 and m2 < 60) or (h2 == 24 and m2):
        raise ValueError(f"invalid window {value!r}: hours go from 00:00 to 24:00")
    start = time(h1, m1)
    end = time(0, 0) if h2 == 24 else time(h2, m2)
    if start == end and h2 != 24:
        raise ValueError(f"invalid window {value!r}: it opens and closes at the same time")
    if h2 == 24 and start == time(0, 0):
        raise ValueError(f"invalid window {value!r}: a window of the whole day is no window")
    return Window(start, end, str(value).strip())


@functools.cache
def load_zone(name: str) -> zoneinfo.ZoneInfo:
    """An IANA time zone (`Europe/Paris`); raise ValueError for a name that is none."""
    text = name.strip()
    if not text or text.startswith(("/", ".")) or ".." in text or "\0" in text:
        raise ValueError(f"unknown time zone {name!r}")
    try:
        return zoneinfo.ZoneInfo(text)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"unknown time zone {name!r}: give an IANA name such as 'Europe/Paris' or "
            "'America/New_York'"
        ) from None


def _resolve(naive: datetime, zone: tzinfo) -> datetime:
    """A local wall-clock time in `zone`, as the instant it names (a time skipped by a
    daylight saving change comes out an hour later, as clocks show it)."""
    return naive.replace(tzinfo=zone).astimezone(UTC).astimezone(zone)


def parse_start(text: str, zone: tzinfo) -> datetime:
    """A row's start: an ISO 8601 date (midnight local) or date-time (naive: local); raise
    ValueError."""
    value = text.strip()
    if not value:
        raise ValueError("the start is empty")
    try:
        if len(value) <= 10:
            day = date.fromisoformat(value)
            moment = _resolve(datetime.combine(day, time(0, 0)), zone)
        else:
            moment = datetime.fromisoformat(value)
            if moment.tzinfo is None:
                moment = _resolve(moment, zone)
        moment = moment.astimezone(UTC)
    except ValueError:
        raise ValueError(
            f"the start {value!r} is not an ISO 8601 date or date-time "
            "(e.g. 2026-03-01 or 2026-03-01T14:30)"
        ) from None
    except OverflowError:
        raise ValueError(f"the start {value!r} is out of range") from None
    if not MIN_START <= moment <= MAX_START:
        raise ValueError(f"the start {value!r} is out of range (years 1900 to 9000)")
    return moment


def aware(moment: datetime) -> datetime:
    """A moment in UTC; one without a zone is this machine's local time (as cron's are)."""
    return moment.astimezone(UTC)


def parse_moment(text: str) -> datetime:
    """`--at TIME`: an ISO 8601 date-time (naive: this machine's local time); raise
    ValueError."""
    try:
        moment = datetime.fromisoformat(text.strip())
        if moment.tzinfo is None:
            moment = moment.astimezone()  # the machine's zone, as cron's times are
        moment = moment.astimezone(UTC)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an ISO 8601 date-time (e.g. 2026-03-04T09:30 or "
            "2026-03-04T09:30:00+01:00)"
        ) from None
    except OverflowError:
        raise ValueError(f"{text!r} is out of range") from None
    if not MIN_START <= moment <= MAX_START:
        raise ValueError(f"{text!r} is out of range (years 1900 to 9000)")
    return moment


@dataclass(frozen=True)
class Step:
    """One message of a sequence. The message keys are None where the step takes the
    campaign's top level."""

    name: str
    after: After
    line: int
    condition: str | None = None
    subject: str | None = None
    text: Path | None = None
    html: Path | None = None
    markdown: Path | None = None
    attachments: tuple[Any, ...] | None = None  # campaign.Attachment
    headers: Mapping[str, str] | None = None

    @property
    def sets_body(self) -> bool:
        """The step has bodies of its own (they replace the top level's, all three)."""
        return any((self.text, self.html, self.markdown))


class Action(StrEnum):
    """What a run does for one recipient."""

    SEND = "send"  # a step is due: send it
    WAITING = "waiting"  # the next step is not due yet
    HELD = "held"  # due, but outside the recipient's window
    DONE = "done"  # every step went out (or was skipped), or a refusal ended the sequence


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of the due rule for one recipient at one moment.

    `step` is the step to send (SEND), the next one (WAITING, HELD), the refused one that
    ended the sequence (DONE), or None (DONE: every step went out or was skipped); `skips`
    are the steps whose `if:` was false as they came due: recorded `skipped` by a real run.
    """

    action: Action
    step: Step | None = None
    entry: Entry | None = None
    due_at: datetime | None = None
    skips: tuple[Step, ...] = ()
    # The last step that went out, if it is `unknown` (its answer lost in an earlier run): a
    # run reports it (exit 75) until the recipient's next step goes out.
    unknown: Step | None = None
    # Another live run is sending the recipient's last step now (a shared store): what comes
    # of it is not known yet.
    held: bool = False


class Timing:
    """A step record's status and time, as the due rule reads it from the state; `held`:
    another live run holds it (on a shared store: an `unknown` step it is sending now)."""

    __slots__ = ("at", "entry", "held")

    def __init__(self, entry: Entry, at: datetime | None, held: bool = False) -> None:
        self.entry, self.at, self.held = entry, at, held


# Statuses of a step that went out (or may have: `unknown` was handed over).
_WENT_OUT = (DeliveryStatus.SENT, DeliveryStatus.UNKNOWN)


def decide(
    steps: tuple[Step, ...],
    records: Mapping[str, Timing],
    *,
    start: datetime,
    zone: tzinfo,
    now: datetime,
    run_id: int | None,
    window: Window | None,
    condition: Callable[[Step], bool],
    retry_unknown: bool = False,
    resend_failed: bool = False,
) -> Decision:
    """What a run at `now` does for one recipient, from the records of its steps.

    `condition(step)` evaluates a step's `if:` for the recipient's row. A step is never sent
    after a later one went out (a step inserted into a running sequence is for those who have
    not gone past it).
    """
    # The furthest step the recipient has reached: steps before it with no record (inserted
    # since) are passed over.
    reached = -1
    for index, step in enumerate(steps):
        if step.name in records:
            reached = index
    last: tuple[Step, datetime] | None = None
    skips: list[Step] = []
    # The last step that went out, when its answer was lost in an earlier run (reported), or
    # whether another live run is sending it now.
    lost: Step | None = None
    held = False

    def decision(
        action: Action, step: Step | None, entry: Entry | None = None, due: datetime | None = None
    ) -> Decision:
        return Decision(action, step, entry, due, tuple(skips), lost, held)

    for index, step in enumerate(steps):
        record = records.get(step.name)
        if record is None and index < reached:
            continue
        if record is not None:
            entry = record.entry
            status = entry.status
            if status is DeliveryStatus.SKIPPED:
                continue
            # --retry-unknown sends an unknown step again, unless a later one went out since.
            again = status == DeliveryStatus.UNKNOWN and retry_unknown and index >= reached
            if status in _WENT_OUT and not again:
                # (Another run's step in flight is not lost: its answer is on its way.)
                lost = step if status == DeliveryStatus.UNKNOWN and not record.held else None
                held = record.held
                if entry.run == run_id and run_id is not None:
                    # One step per recipient per run: the next waits for the next run.
                    return decision(Action.WAITING, _next(steps, index))
                if record.at is not None:
                    # Spacing counts from the minute it went out: a run that cron starts at
                    # the same minute two days later finds the step due, though the previous
                    # one left a few seconds into its run.
                    last = (step, record.at.replace(second=0, microsecond=0))
                continue
            if status == DeliveryStatus.FAILED and entry.rejected and not resend_failed:
                return decision(Action.DONE, step)  # the refused step ends the sequence
            # pending, deferred, an invalid row's failure, or asked to be sent again
        due = step.after.after(start, zone)
        if last is not None:
            spaced = (step.after - last[0].after).after(last[1], zone)
            # Never less than a minute after the step before, whatever a daylight saving
            # change makes of a mix of day and hour units (1d, then 24h30m).
            due = max(due, spaced, last[1] + timedelta(minutes=1))
        if now < due:
            return decision(Action.WAITING, step, _entry(record), due)
        # `if:` is asked when the step comes due (not again for one tried already), so the
        # row's data of that day decides.
        untried = record is None or record.entry.attempts == 0
        if untried and step.condition is not None and not condition(step):
            skips.append(step)
            continue
        if window is not None:
            local = now.astimezone(zone).timetz().replace(tzinfo=None)
            if local not in window:
                return decision(Action.HELD, step, _entry(record), window.opens(now, zone))
        return decision(Action.SEND, step, _entry(record), due)
    return decision(Action.DONE, None)


def _entry(record: Timing | None) -> Entry | None:
    return record.entry if record is not None else None


def _next(steps: tuple[Step, ...], index: int) -> Step | None:
    return steps[index + 1] if index + 1 < len(steps) else None
