"""The suppression list: `mailcli suppress ...`, and every way of sending checking it.

Real parts only: campaigns are delivered into a real aiosmtpd server, the list is a real SQLite
file (or a table in the test PostgreSQL cluster), the CLI runs in-process through Typer.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    ROWS,
    Recorder,
    SmtpServer,
    make_campaign,
    many_rows,
    relay_profile,
    server_args,
    spawn_batch,
)
from typer.testing import CliRunner

import mailcli
from mailcli.cli import app
from mailcli.suppression import Reason, SqliteSuppression

runner = CliRunner()


def cli(*args: str | Path) -> Any:
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def cli_json(*args: str | Path, code: int = 0) -> dict[str, Any]:
    result = cli(*args, "--json")
    assert result.exit_code == code, result.output
    obj = json.loads(result.stdout)
    assert isinstance(obj, dict)
    return obj


def batch_json(campaign: Path, server: SmtpServer, *extra: str) -> dict[str, Any]:
    return cli_json("batch", campaign, *server_args(server), *extra)


def listed(*extra: str) -> dict[str, str]:
    obj = cli_json("suppress", "list", *extra)
    return {e["email"]: e["reason"] for e in obj["entries"]}


def test_suppressed_addresses_are_not_sent_and_are_counted(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    files = make_campaign(tmp_path / "camp", many_rows(6))
    added = cli_json("suppress", "add", "user00002@example.com", "USER00004@Example.com")
    assert added["added"] == ["user00002@example.com", "USER00004@example.com"]

    summary = batch_json(files.yaml, smtp_server)
    assert (summary["sent"], summary["suppressed"], summary["pending"]) == (4, 2, 0)
    assert summary["exit_code"] == 0  # being suppressed is not a failure
    assert sorted(recorder.recipients()) == [f"user0000{i}@example.com" for i in (1, 3, 5, 6)]
    status = cli_json("status", files.yaml)
    assert (status["sent"], status["suppressed"], status["pending"]) == (4, 2, 0)
    assert status["total"] == 6

    # Removed from the list: the next run sends to that address, and only to it.
    assert cli_json("suppress", "remove", "user00002@example.com")["removed"] == [
        "user00002@example.com"
    ]
    again = batch_json(files.yaml, smtp_server)
    assert (again["sent"], again["suppressed"], again["skipped"]) == (1, 1, 4)
    assert recorder.recipients().count("user00002@example.com") == 1
    assert "user00004@example.com" not in [a.lower() for a in recorder.recipients()]
    assert cli_json("status", files.yaml)["suppressed"] == 1


def test_an_address_sent_before_it_was_suppressed_counts_as_done(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    files = make_campaign(tmp_path / "camp", many_rows(3))
    assert batch_json(files.yaml, smtp_server)["sent"] == 3
    cli_json("suppress", "add", "user00001@example.com")
    summary = batch_json(files.yaml, smtp_server)
    assert (summary["skipped"], summary["suppressed"], summary["sent"]) == (3, 0, 0)


def test_dry_run_and_the_human_summary_count_the_suppressed(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    files = make_campaign(tmp_path / "camp", many_rows(5))
    cli("suppress", "add", "user00003@example.com")
    dry = cli_json("batch", files.yaml, "--dry-run")
    assert (dry["would_send"], dry["suppressed"]) == (4, 1)
    result = cli("batch", files.yaml, *server_args(smtp_server))
    assert result.exit_code == 0, result.output
    assert "1 suppressed" in result.stdout


def test_import_checks_every_row_first_and_export_round_trips(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("Email,reason\nann@example.com,\nnot-an-address,\nbob@example.com,oops\n")
    result = cli("suppress", "import", bad, "--column", "Email")
    assert result.exit_code == 65
    assert "bad.csv: line 3: invalid address 'not-an-address'" in result.output
    assert "bad.csv: line 4: unknown reason 'oops'" in result.output
    assert listed() == {}  # nothing imported

    good = tmp_path / "good.csv"
    good.write_text("email,reason\nann@example.com,complaint\nbob@example.com,\n")
    obj = cli_json("suppress", "import", good, "--reason", "unsubscribed")
    assert (obj["rows"], obj["added"]) == (2, 2)
    assert listed() == {"ann@example.com": "complaint", "bob@example.com": "unsubscribed"}
    assert listed("--reason", "complaint") == {"ann@example.com": "complaint"}

    exported = tmp_path / "out.csv"
    assert cli("suppress", "export", exported).exit_code == 0
    other = tmp_path / "other.sqlite"
    assert cli("suppress", "import", exported, "--list", other).exit_code == 0
    assert listed("--list", str(other)) == listed()

    missing = cli("suppress", "import", tmp_path / "nope.csv")
    assert missing.exit_code == 66 and "nope.csv" in missing.output
    no_column = cli("suppress", "import", good, "--column", "mail")
    assert no_column.exit_code == 65 and "no column 'mail'" in no_column.output


def test_list_prints_one_address_a_line_with_its_reason() -> None:
    cli("suppress", "add", "ann@example.com", "--reason", "hard-bounce")
    cli("suppress", "add", "bob@example.com")
    lines = cli("suppress", "list").stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["ann@example.com", "hard-bounce"],
        ["bob@example.com", "manual"],
    ]


def test_bad_input_is_one_line_and_the_right_exit_code() -> None:
    assert cli("suppress", "add", "nobody").exit_code == 65
    assert cli("suppress", "add", "a@example.com", "--reason", "spite").exit_code == 2
    both = cli("suppress", "list", "--list", "x.sqlite", "--campaign", "c.yaml")
    assert both.exit_code == 2 and "not both" in both.output
    secret = cli("suppress", "list", "--list", "postgresql://u:pw@127.0.0.1/db")
    assert secret.exit_code == 2 and "pw" not in secret.output


def test_a_campaign_may_name_its_list_or_turn_it_off(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    cli("suppress", "add", "user00001@example.com")  # the default list
    own = make_campaign(tmp_path / "own", many_rows(2), extra="suppression: lists/own.sqlite\n")
    cli("suppress", "add", "user00002@example.com", "--campaign", own.yaml)
    assert (own.folder / "lists" / "own.sqlite").exists()
    assert batch_json(own.yaml, smtp_server)["suppressed"] == 1
    assert recorder.recipients() == ["user00001@example.com"]

    transactional = make_campaign(tmp_path / "tx", many_rows(2), extra="suppression: false\n")
    summary = batch_json(transactional.yaml, smtp_server)
    assert (summary["sent"], summary["suppressed"]) == (2, 0)

    broken = make_campaign(tmp_path / "bad", many_rows(1), extra="suppression: 3\n")
    result = cli("batch", broken.yaml, "--dry-run")
    assert result.exit_code == 78
    assert "campaign.yaml:8" in result.output and "suppression" in result.output


def test_the_library_leaves_suppressed_recipients_out(
    smtp_server: SmtpServer, recorder: Recorder, tmp_path: Path
) -> None:
    cli("suppress", "add", "gone@example.com")
    mailer = mailcli.Mailer("127.0.0.1", smtp_server.port, "none")
    alone = mailer.send(
        mailcli.Message("Hi", ["Gone <gone@example.com>"], "text", sender=ROWS[0]["email"])
    )
    assert alone.status is mailcli.DeliveryStatus.SUPPRESSED
    assert alone.suppressed == ("gone@example.com",)
    assert recorder.connections == 0  # nothing to send: no connection at all

    with mailer.connect() as conn:
        mixed, kept = conn.send_many(
            [
                mailcli.Message(
                    "Hi", ["gone@example.com", "ann@example.com"], "x", sender="s@example.com"
                ),
                mailcli.Message("Hi", ["bob@example.com"], "y", sender="s@example.com"),
            ]
        )
    assert mixed.status is mailcli.DeliveryStatus.SENT
    assert (mixed.recipients, mixed.suppressed) == (("ann@example.com",), ("gone@example.com",))
    assert kept.suppressed == ()
    assert recorder.recipients() == ["ann@example.com", "bob@example.com"]

    # A transactional Mailer opts out; another list can be named.
    transactional = mailcli.Mailer("127.0.0.1", smtp_server.port, "none", suppression=False)
    msg = mailcli.Message("Reset", ["gone@example.com"], "code", sender="s@example.com")
    assert transactional.send(msg).status is mailcli.DeliveryStatus.SENT
    other = mailcli.Mailer(
        "127.0.0.1", smtp_server.port, "none", suppression=tmp_path / "empty.sqlite"
    )
    assert other.send(msg).ok


def test_a_list_made_after_the_mailer_started_is_seen(
    smtp_server: SmtpServer, recorder: Recorder
) -> None:
    mailer = mailcli.Mailer("127.0.0.1", smtp_server.port, "none")
    msg = mailcli.Message("Hi", ["late@example.com"], "x", sender="s@example.com")
    assert mailer.send(msg).ok  # no list yet
    lst = mailcli.suppression_list()
    assert lst.add("late@example.com", mailcli.SuppressionReason.UNSUBSCRIBED)
    lst.close()
    assert mailer.send(msg).status is mailcli.DeliveryStatus.SUPPRESSED
    assert recorder.recipients() == ["late@example.com"]


def test_send_reports_a_suppressed_recipient(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay_profile(tmp_path, smtp_server, monkeypatch)
    cli("suppress", "add", "gone@example.com")
    args = ["send", "--profile", "relay", "--subject", "Hi", "--text", "x"]
    result = cli(*args, "--to", "gone@example.com", "--to", "ann@example.com")
    assert result.exit_code == 0, result.output
    assert "suppressed: gone@example.com is on the suppression list" in result.output
    assert recorder.recipients() == ["ann@example.com"]
    obj = cli_json(*args, "--to", "gone@example.com")
    assert (obj["status"], obj["suppressed"]) == ("suppressed", ["gone@example.com"])
    assert recorder.recipients() == ["ann@example.com"]

    # A transactional profile names no list.
    config = tmp_path / "config.yaml"
    config.write_text(config.read_text().rstrip("}\n") + ", suppression: false}\n")
    assert cli_json(*args, "--to", "gone@example.com")["status"] == "sent"


def test_soft_bounces_suppress_at_the_limit_and_reports_count_once(tmp_path: Path) -> None:
    lst = SqliteSuppression.open(tmp_path / "s.sqlite")
    assert [lst.soft_bounce("full@example.net", limit=3) for _ in range(2)] == [1, 2]
    assert lst.get("full@example.net") is None
    assert lst.soft_bounce("FULL@example.net", limit=3, campaign="spring") == 3
    entry = lst.get("full@example.net")
    assert entry is not None and (entry.reason, entry.campaign) == (Reason.SOFT_BOUNCE, "spring")
    assert lst.remove("full@example.net")
    assert lst.soft_bounce("full@example.net", limit=3) == 1  # forgotten with the entry
    assert not lst.was_read("<r1@x>")
    lst.mark_read("<r1@x>")
    assert lst.was_read("<r1@x>")
    lst.close()
    mode = (tmp_path / "s.sqlite").stat().st_mode & 0o777
    assert mode == 0o600
    with sqlite3.connect(tmp_path / "s.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.postgres
def test_a_postgresql_campaign_keeps_its_list_in_the_same_database(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder, pg_url: str
) -> None:
    files = make_campaign(tmp_path / "camp", many_rows(5), extra=f"state: {pg_url}\n")
    added = cli_json("suppress", "add", "user00005@example.com", "--campaign", files.yaml)
    assert added["list"].startswith("postgresql://")
    summary = batch_json(files.yaml, smtp_server)
    assert (summary["sent"], summary["suppressed"], summary["pending"]) == (4, 1, 0)
    assert summary["exit_code"] == 0
    assert "user00005@example.com" not in recorder.recipients()
    status = cli_json("status", files.yaml)
    assert (status["suppressed"], status["pending"], status["sent"]) == (1, 0, 4)
    assert listed("--campaign", str(files.yaml)) == {"user00005@example.com": "manual"}
    cli("suppress", "remove", "user00005@example.com", "--list", pg_url)
    assert batch_json(files.yaml, smtp_server)["sent"] == 1
    assert recorder.recipients().count("user00005@example.com") == 1


def test_a_profile_that_names_a_list_is_honoured_by_batch_and_status(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = relay_profile(tmp_path, smtp_server, monkeypatch)
    own = tmp_path / "relay-list.sqlite"
    config.write_text(config.read_text().rstrip("}\n") + f", suppression: {own}}}\n")
    cli("suppress", "add", "user00002@example.com", "--list", own)
    files = make_campaign(tmp_path / "camp", many_rows(3), extra="smtp: {profile: relay}\n")
    summary = cli_json("batch", files.yaml)
    assert (summary["sent"], summary["suppressed"]) == (2, 1)
    assert "user00002@example.com" not in recorder.recipients()
    assert cli_json("status", files.yaml)["suppressed"] == 1
    # The campaign's own key wins over the profile's.
    override = make_campaign(
        tmp_path / "own", many_rows(3), extra="smtp: {profile: relay}\nsuppression: false\n"
    )
    assert cli_json("batch", override.yaml)["sent"] == 3


@pytest.mark.parametrize(
    "store", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_an_unsubscribe_while_a_retry_waits_stops_only_that_recipient(
    tmp_path: Path,
    smtp_server: SmtpServer,
    recorder: Recorder,
    store: str,
    request: pytest.FixtureRequest,
) -> None:
    """Two recipients are greylisted; one unsubscribes during the backoff: the other is still
    retried and sent, the one who left is counted suppressed (not deferred), and the run ends
    with exit 0."""
    extra = 'retry: {attempts: 3, delay: "1s"}\n'
    where = None  # the default list; a PostgreSQL campaign keeps its list in its database
    if store == "postgresql":
        where = request.getfixturevalue("pg_url")
        extra += f"state: {where}\n"
    files = make_campaign(tmp_path / "camp", many_rows(5), extra=extra)
    recorder.temp_fail_once.update({"user00001@example.com", "user00003@example.com"})
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        if not waits:
            lst = mailcli.suppression_list(where)
            lst.add("user00001@example.com", mailcli.SuppressionReason.UNSUBSCRIBED)
            lst.close()
        waits.append(seconds)
        time.sleep(seconds)

    summary = mailcli.send_campaign(
        files.yaml, mailcli.Mailer("127.0.0.1", smtp_server.port, "none"), sleep=sleep
    )
    assert waits, "the run never waited for a retry"
    got = (summary.sent, summary.deferred, summary.suppressed, summary.exit_code)
    assert got == (4, 0, 1, 0)
    assert sorted(recorder.recipients()) == [f"user0000{i}@example.com" for i in (2, 3, 4, 5)]
    status = mailcli.campaign_status(files.yaml)
    assert (status.suppressed, status.pending, status.deferred) == (1, 0, 0)


@pytest.mark.postgres
def test_two_hosts_with_suppressed_rows_never_wait_for_each_other(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder, pg_url: str
) -> None:
    rows = many_rows(2000)
    blocked = {r["email"] for r in rows[::40]}
    lst = mailcli.suppression_list(pg_url)
    for address in blocked:
        lst.add(address, mailcli.SuppressionReason.MANUAL)
    lst.close()
    hosts = []
    for n in range(2):
        files = make_campaign(tmp_path / f"host{n}", rows, extra=f"state: {pg_url}\n")
        hosts.append(spawn_batch(files.yaml, smtp_server))
    started = time.monotonic()
    summaries = []
    for proc in hosts:
        out, err = proc.communicate(timeout=50)
        assert proc.returncode == 0, err
        summaries.append(json.loads(out))
    # A wait on the other host's suppressed rows would last until its lease ran out (60 s).
    assert time.monotonic() - started < 30
    got = recorder.recipients()
    assert len(got) == len(set(got)) == 2000 - len(blocked)
    assert not blocked & set(got)
    assert sum(s["sent"] for s in summaries) == 2000 - len(blocked)
    assert all(s["pending"] == 0 for s in summaries)


@pytest.mark.postgres
def test_a_postgresql_campaign_with_only_suppressed_rows_left_opens_no_connection(
    tmp_path: Path, smtp_server: SmtpServer, pg_url: str
) -> None:
    files = make_campaign(tmp_path / "camp", many_rows(5), extra=f"state: {pg_url}\n")
    cli("suppress", "add", "user00003@example.com", "--campaign", files.yaml)
    first = batch_json(files.yaml, smtp_server)
    assert (first["would_send"], first["sent"], first["suppressed"]) == (4, 4, 1)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    again = cli_json(
        "batch", files.yaml, "--host", "127.0.0.1", "--port", str(port), "--security", "none"
    )
    assert (again["would_send"], again["connections"], again["exit_code"]) == (0, 0, 0)
    assert again["suppressed"] == 1


def test_dry_run_counts_the_suppressed_a_limited_run_would_meet(tmp_path: Path) -> None:
    files = make_campaign(tmp_path / "camp", many_rows(6))
    cli("suppress", "add", "user00002@example.com", "user00006@example.com")
    dry = cli_json("batch", files.yaml, "--dry-run", "--limit", "3")
    assert (dry["would_send"], dry["suppressed"]) == (3, 1)
