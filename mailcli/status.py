"""`mailcli status`: where a campaign stands, from its state database and its recipient list.

Reading takes no lock (SQLite's WAL lets it read while a run writes), so status works during a
run. Rows of the list that no run has met yet (appended for a drip campaign) count as pending.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from mailcli.campaign import Campaign
from mailcli.errors import MailcliError
from mailcli.recipients import RecipientReader, RowProblem, SeenAddresses
from mailcli.state import STATUSES, RecipientState, State


@dataclass
class StatusReport:
    """Counts per status, the last run, and the recipients that were not delivered."""

    campaign: str
    state_file: str
    counts: dict[str, int]
    new_rows: int = 0
    invalid_rows: int = 0
    list_error: str | None = None
    last_run: dict[str, Any] | None = None
    recipients: list[RecipientState] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Every recipient: those in the state plus list rows no run has met yet."""
        return sum(self.counts.values()) + self.new_rows

    def to_json(self, *, with_recipients: bool) -> dict[str, Any]:
        """The contract's `status --json` object."""
        obj: dict[str, Any] = {
            "campaign": self.campaign,
            "total": self.total,
            "pending": self.counts["pending"] + self.new_rows,
            **{k: self.counts[k] for k in STATUSES if k != "pending"},
            "invalid_rows": self.invalid_rows,
            "state_file": self.state_file,
            "last_run": self.last_run,
            "list_error": self.list_error,
        }
        if with_recipients:
            obj["recipients"] = [
                {
                    "email": r.email,
                    "row": r.row,
                    "status": r.status,
                    "code": r.code,
                    "reply": r.reply,
                    "attempts": r.attempts,
                    "updated": r.updated,
                }
                for r in self.recipients
            ]
        return obj


def campaign_status(campaign: Campaign) -> StatusReport:
    """Read the campaign's state (without creating it) and match it against the list."""
    report = StatusReport(campaign.name, str(campaign.state_path), dict.fromkeys(STATUSES, 0))
    state: State | None = None
    if campaign.state_path.exists():
        state = State.open(campaign.state_path, campaign.name, create=False)
    try:
        if state is not None:
            report.counts = state.counts()
            report.recipients = state.problems()
            report.last_run = _last_run(state.db)
        _count_list(campaign, state, report)
    finally:
        if state is not None:
            state.db.close()
    return report


def _count_list(campaign: Campaign, state: State | None, report: StatusReport) -> None:
    reader = RecipientReader(campaign.recipients)
    try:
        with SeenAddresses() as seen:
            for entry in reader:
                if isinstance(entry, RowProblem):
                    report.invalid_rows += 1
                elif seen.add(entry.email, entry.row) is None and (
                    state is None or state.lookup(entry.email) is None
                ):
                    report.new_rows += 1
    except MailcliError as exc:
        # The state still answers; say why the list could not be matched against it.
        report.list_error = str(exc)


def _last_run(db: sqlite3.Connection) -> dict[str, Any] | None:
    row = db.execute(
        "SELECT id, started, finished, pid, host, summary FROM runs ORDER BY id DESC LIMIT 1"
    ).fetchone()
    if row is None:
        return None
    summary = json.loads(row[5]) if row[5] else {}
    return {
        "id": row[0],
        "started": row[1],
        "finished": row[2],
        "pid": row[3],
        "host": row[4],
        "exit_code": summary.get("exit_code"),
        "sent": summary.get("sent"),
    }
