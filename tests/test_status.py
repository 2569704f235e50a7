"""`mailcli status`: counts from the state database matched against the recipient list."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from conftest import CampaignFiles, make_campaign, many_rows
from typer.testing import CliRunner

import mailcli
from mailcli.addresses import address_key
from mailcli.campaign import load_campaign
from mailcli.cli import app
from mailcli.state import Outcome, SqliteState
from mailcli.status import campaign_status

runner = CliRunner()
CONTRACT_KEYS = {"campaign", "total", "pending", "sent", "failed", "deferred", "unknown"}


def status(*args: str | Path) -> Any:
    result = runner.invoke(app, ["status", *(str(a) for a in args)])
    assert "Traceback" not in result.output, result.output
    return result


def status_json(*args: str | Path) -> dict[str, Any]:
    result = status(*args, "--json")
    assert result.exit_code == 0, result.output
    obj = json.loads(result.stdout)
    assert isinstance(obj, dict)
    return obj


def user(i: int) -> str:
    return f"user{i:05d}@example.com"


def write_state(path: Path, name: str = "test-campaign") -> None:
    """Rows 1-2 sent, 3 failed (550), 4 deferred (451), 5 unknown; marked in reverse order."""
    with SqliteState.open(path, name) as state:
        state.start_run()
        state.begin_flight((user(i), i, None) for i in (5, 4, 3, 2, 1))
        for i in (1, 2):
            state.record(Outcome(address_key(user(i)), "sent", 250, "2.0.0 queued", f"<{i}@x>"))
        state.record(Outcome(address_key(user(3)), "failed", 550, "5.1.1 no such user"))
        state.record(Outcome(address_key(user(4)), "deferred", 451, "4.7.1 try later", None, 9.0))
        state.flush()


def sent_campaign(tmp_path: Path, rows: int = 6) -> CampaignFiles:
    """A campaign of `rows` rows whose state holds the five recipients of write_state."""
    files = make_campaign(tmp_path / "camp", many_rows(rows))
    write_state(load_campaign(files.yaml).state_path)
    return files


def test_never_sent_campaign_is_all_pending(tmp_path: Path) -> None:
    """Without state, every valid unique row is pending, and status creates no state file."""
    rows = [*many_rows(4), {"email": "USER00002@example.com", "name": "Dup", "first_name": "D"}]
    files = make_campaign(tmp_path / "camp", rows)
    obj = status_json(files.yaml)
    assert {k: obj[k] for k in CONTRACT_KEYS} == {
        "campaign": "test-campaign",
        "total": 4,
        "pending": 4,
        "sent": 0,
        "failed": 0,
        "deferred": 0,
        "unknown": 0,
    }
    human = status(files.yaml)
    assert human.exit_code == 0
    assert "No run yet." in human.stdout
    assert not load_campaign(files.yaml).state_path.exists()


def test_json_counts_come_from_the_state(tmp_path: Path) -> None:
    """status --json has the contract keys with the state's numbers; row 6 is still pending."""
    files = sent_campaign(tmp_path)
    obj = status_json(files.yaml)
    assert set(obj) >= CONTRACT_KEYS
    assert {k: obj[k] for k in CONTRACT_KEYS} == {
        "campaign": "test-campaign",
        "total": 6,
        "pending": 1,
        "sent": 2,
        "failed": 1,
        "deferred": 1,
        "unknown": 1,
    }
    assert "recipients" not in obj


def test_rows_appended_to_the_list_count_as_pending(tmp_path: Path) -> None:
    """Rows added to the CSV after a run are pending and part of the total."""
    files = sent_campaign(tmp_path)
    files.write_rows(many_rows(9))
    obj = status_json(files.yaml)
    assert (obj["total"], obj["pending"], obj["sent"]) == (9, 4, 2)


def test_failed_json_lists_the_undelivered_in_row_order(tmp_path: Path) -> None:
    """--failed --json lists failed, deferred and unknown recipients by row with code and reply."""
    files = sent_campaign(tmp_path)
    obj = status_json(files.yaml, "--failed")
    got = [{k: r[k] for k in ("email", "status", "code", "reply")} for r in obj["recipients"]]
    assert got == [
        {"email": user(3), "status": "failed", "code": 550, "reply": "5.1.1 no such user"},
        {"email": user(4), "status": "deferred", "code": 451, "reply": "4.7.1 try later"},
        {"email": user(5), "status": "unknown", "code": None, "reply": None},
    ]


def test_human_report_shows_the_counts(tmp_path: Path) -> None:
    """The table has one line per count, the last run, and the hint to use --failed."""
    files = sent_campaign(tmp_path)
    result = status(files.yaml)
    assert result.exit_code == 0
    table = dict(re.findall(r"^\| (\w+) +\| +(\d+) \|", result.stdout, re.M))
    assert table == {
        "total": "6",
        "sent": "2",
        "pending": "1",
        "failed": "1",
        "deferred": "1",
        "unknown": "1",
    }
    assert "Last run: started" in result.stdout
    assert "--failed" in result.stdout


def test_human_failed_lists_rows(tmp_path: Path) -> None:
    """status --failed prints each undelivered recipient with its row, code and reply."""
    files = sent_campaign(tmp_path)
    out = status(files.yaml, "--failed").stdout
    assert "Not delivered: 3" in out
    assert re.search(
        rf"^\| +3 \| {re.escape(user(3))} +\| failed +\| +550 \| 5\.1\.1 no such user +\|$",
        out,
        re.M,
    )
    assert out.index(user(3)) < out.index(user(4)) < out.index(user(5))


def test_invalid_rows_are_reported_but_not_counted(tmp_path: Path) -> None:
    """Invalid rows appear as invalid_rows and in the table, but not in total or pending."""
    rows = [*many_rows(3), {"email": "not-an-address", "name": "X", "first_name": "X"}]
    rows.append({"email": "also@bad@example.com", "name": "Y", "first_name": "Y"})
    files = make_campaign(tmp_path / "camp", rows)
    obj = status_json(files.yaml)
    assert (obj["invalid_rows"], obj["total"], obj["pending"]) == (2, 3, 3)
    out = status(files.yaml).stdout
    assert re.search(r"^\| invalid rows +\| +2 \| not counted \|$", out, re.M)


def test_missing_list_still_reports_the_state(tmp_path: Path) -> None:
    """With the CSV gone, status gives the state's counts and a list_error, and exits 0."""
    files = sent_campaign(tmp_path)
    files.csv.unlink()
    obj = status_json(files.yaml)
    assert (obj["total"], obj["sent"], obj["failed"], obj["pending"]) == (5, 2, 1, 0)
    assert obj["list_error"] and "list.csv" in obj["list_error"]
    human = status(files.yaml)
    assert human.exit_code == 0
    assert "list.csv" in human.stderr


def test_unreadable_list_still_reports_the_state(tmp_path: Path) -> None:
    """A list that cannot be read (no email column) gives the state's counts and a warning."""
    files = sent_campaign(tmp_path)
    files.csv.write_text("name,first_name\nAnn,Ann\n", encoding="utf-8")
    obj = status_json(files.yaml)
    assert (obj["total"], obj["sent"], obj["unknown"], obj["pending"]) == (5, 2, 1, 0)
    assert "no 'email' column" in obj["list_error"]
    human = status(files.yaml)
    assert human.exit_code == 0
    assert "warning: the list could not be read" in human.stderr


def test_sandbox_reads_the_sandbox_state(tmp_path: Path) -> None:
    """--sandbox DIR reads DIR/.mailcli/<name>.sqlite and leaves the real state alone."""
    files = make_campaign(tmp_path / "camp", many_rows(6))
    outbox = tmp_path / "outbox"
    write_state(outbox / ".mailcli" / "test-campaign.sqlite")
    sandboxed = status_json(files.yaml, "--sandbox", outbox)
    assert (sandboxed["sent"], sandboxed["failed"], sandboxed["pending"]) == (2, 1, 1)
    assert sandboxed["state_file"] == str(outbox.resolve() / ".mailcli" / "test-campaign.sqlite")
    real = status_json(files.yaml)
    assert (real["sent"], real["pending"]) == (0, 6)


def test_campaign_status_library_call(tmp_path: Path) -> None:
    """campaign_status() works without the CLI and reports the last run's pid."""
    files = sent_campaign(tmp_path)
    report = campaign_status(load_campaign(files.yaml))
    assert report.counts == {"pending": 0, "sent": 2, "failed": 1, "deferred": 1, "unknown": 1}
    assert (report.new_rows, report.total) == (1, 6)
    assert (report.pending, report.sent, report.failed, report.deferred, report.unknown) == (
        1,
        2,
        1,
        1,
        1,
    )
    assert report.last_run is not None and report.last_run.finished is None
    assert report.last_run.pid > 0
    assert [r.row for r in report.recipients] == [3, 4, 5]
    assert [r.status for r in report.recipients] == [
        mailcli.DeliveryStatus.FAILED,
        mailcli.DeliveryStatus.DEFERRED,
        mailcli.DeliveryStatus.UNKNOWN,
    ]
