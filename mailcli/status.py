"""`mailcli status` and `mailcli.campaign_status`: where a campaign stands.

Read from the campaign's state store and matched against its recipient list. Reading takes no
lock (SQLite's WAL lets it read while a run writes), so status works during a run. Rows of the
list that no run has met yet (appended for a drip campaign) count as pending.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailcli.campaign import Campaign, load_campaign
from mailcli.delivery import RECIPIENT_STATUSES, DeliveryStatus
from mailcli.errors import InputFileError, MailcliError
from mailcli.recipients import RecipientReader, RowProblem, SeenAddresses
from mailcli.state import Entry, RecipientState, RunRecord, StateStore, open_state
from mailcli.suppression import (
    Location,
    SuppressionList,
    for_campaign,
    open_for_reading,
    screened,
)

if TYPE_CHECKING:
    from mailcli.pgstate import HostShare


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
        }
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
    state: StateStore | None = None
    if campaign.state_path.exists():
        state = open_state(campaign.state_path, campaign.name, create=False)
    try:
        if state is not None:
            report.counts = state.counts()
            report.recipients = state.problems()
            report.last_run = state.last_run()
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
        report.counts = state.counts()
        report.recipients = state.problems()
        report.last_run = state.last_run()
        report.hosts = state.hosts()
        report.live_runs = state.live_runs()
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
