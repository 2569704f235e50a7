"""The send log: `mailcli status --export` (one row per recipient, CSV or JSON Lines) and
`mailcli status --recipient` (one recipient's tries), after real runs into aiosmtpd, on SQLite
and PostgreSQL state, on state files of the older schema, and while a run is sending."""

from __future__ import annotations

import csv
import io
import json
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import (
    CampaignFiles,
    Recorder,
    make_campaign,
    many_rows,
    server_args,
    spawn_batch,
)
from typer.testing import CliRunner

import mailcli
from mailcli import pgstate
from mailcli.addresses import address_key
from mailcli.campaign import load_campaign
from mailcli.cli import app
from mailcli.sandbox import SmtpServer
from mailcli.state import Outcome, SqliteState
from mailcli.status import EXPORT_COLUMNS, NO_ANSWER

runner = CliRunner()

SENT, REFUSED, GREYLISTED, LOST = (
    "user00001@example.com",
    "user00002@example.com",
    "user00003@example.com",
    "user00004@example.com",
)
NEW = "user00007@example.com"  # appended to the list after the run: never met by a run
# One try per run: a 4xx stays `deferred` for the next run.
ONE_TRY = 'retry: {attempts: 1, delay: "50ms"}\n'
TWO_TRIES = 'retry: {attempts: 3, delay: "50ms"}\n'

# The state file as mailcli wrote it before the send log (schema 1): no first_at, no attempts.
OLD_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE recipients (
    key TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    row INTEGER,
    status TEXT NOT NULL CHECK (status IN ('pending','sent','failed','deferred','unknown')),
    attempts INTEGER NOT NULL DEFAULT 0,
    run INTEGER,
    run_tries INTEGER NOT NULL DEFAULT 0,
    next_at REAL,
    code INTEGER,
    reply TEXT,
    message_id TEXT,
    updated TEXT NOT NULL,
    sent_at TEXT
) WITHOUT ROWID;
CREATE INDEX recipients_status ON recipients (status);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    started TEXT NOT NULL,
    finished TEXT,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    summary TEXT
);
"""


def cli(*args: str | Path) -> Any:
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def by_email(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["email"]: r for r in rows}


def message_ids(recorder: Recorder) -> dict[str, str]:
    """The Message-ID the server received, per recipient."""
    return {m.rcpt_tos[0]: str(m.message["Message-ID"]) for m in recorder.messages}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def state_yaml(request: pytest.FixtureRequest) -> str:
    """The campaign keys that choose its state: SQLite (the default) or PostgreSQL."""
    if request.param == "postgresql":
        return f'state: "{request.getfixturevalue("pg_url")}"\n'
    return ""


def mixed_run(
    tmp_path: Path, server: SmtpServer, recorder: Recorder, extra: str = ""
) -> CampaignFiles:
    """Six rows sent once: 1, 5, 6 accepted, 2 refused (550), 3 greylisted (451, one try per
    run: left deferred), 4 taken and hung up on before the reply (unknown); then row 7 is
    appended to the list."""
    recorder.rcpt_replies[REFUSED] = "550 5.1.1 no such user"
    recorder.temp_fail_once.add(GREYLISTED)
    hung: list[str] = []

    def hang_up_once(envelope: Any) -> bool:
        if envelope.rcpt_tos == [LOST] and not hung:
            hung.append(LOST)
            return True
        return False

    recorder.hangup_after_data = hang_up_once
    files = make_campaign(tmp_path / "camp", many_rows(6), extra=ONE_TRY + extra)
    result = cli("batch", files.yaml, *server_args(server), "--json")
    summary = json.loads(result.stdout)
    assert result.exit_code == 75, result.output
    assert (summary["sent"], summary["failed"], summary["deferred"], summary["unknown"]) == (
        3,
        1,
        1,
        1,
    )
    files.write_rows(many_rows(7))
    return files


# --- --export -------------------------------------------------------------------------------


def test_export_has_a_row_per_recipient_with_the_message_id_the_server_got(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder, state_yaml: str
) -> None:
    """After a run with every outcome, the CSV has one row per recipient in list order: the
    status, the server's code and reply, the Message-ID the server received, both times, the
    tries and the run; the row appended since comes last, pending and never tried."""
    files = mixed_run(tmp_path, smtp_server, recorder, state_yaml)
    out = tmp_path / "log.csv"
    result = cli("status", files.yaml, "--export", out)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"exported 7 recipients (1 not tried yet) to {out}\n"
    text = out.read_text(encoding="utf-8")
    assert text.splitlines()[0] == ",".join(EXPORT_COLUMNS)
    rows = read_csv(text)
    assert [r["email"] for r in rows] == [f"user{i:05d}@example.com" for i in range(1, 8)]
    assert [r["row"] for r in rows] == [str(i) for i in range(1, 8)]
    got = by_email(rows)
    assert {e: r["status"] for e, r in got.items()} == {
        SENT: "sent",
        REFUSED: "failed",
        GREYLISTED: "deferred",
        LOST: "unknown",
        "user00005@example.com": "sent",
        "user00006@example.com": "sent",
        NEW: "pending",
    }
    assert (got[REFUSED]["code"], got[REFUSED]["reply"]) == ("550", "5.1.1 no such user")
    assert got[GREYLISTED]["code"] == "451" and "greylisted" in got[GREYLISTED]["reply"]
    assert got[SENT]["code"] == "250" and got[SENT]["reply"].startswith("2.0.0")
    received = message_ids(recorder)
    for email in (SENT, "user00005@example.com", "user00006@example.com"):
        assert got[email]["message_id"] == received[email]
    assert got[REFUSED]["message_id"] == ""  # refused at RCPT: no message went
    for email, r in got.items():
        if email == NEW:
            assert (r["first_attempt"], r["last_attempt"], r["tries"], r["run"]) == (
                "",
                "",
                "0",
                "",
            )
        else:
            assert r["first_attempt"] and r["first_attempt"] <= r["last_attempt"], r
            assert r["first_attempt"].endswith("+00:00")
            assert (r["tries"], r["run"]) == ("1", got[SENT]["run"]) and r["run"]


def test_jsonl_and_the_status_filter(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder, state_yaml: str
) -> None:
    """A FILE ending in .jsonl gets one JSON object a line, with numbers as numbers and null
    for what is unknown; --status takes a comma list, and can be repeated."""
    files = mixed_run(tmp_path, smtp_server, recorder, state_yaml)
    out = tmp_path / "problems.jsonl"
    result = cli("status", files.yaml, "--export", out, "--status", "failed,deferred")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [(r["email"], r["status"], r["code"]) for r in lines] == [
        (REFUSED, "failed", 550),
        (GREYLISTED, "deferred", 451),
    ]
    assert list(lines[0]) == list(EXPORT_COLUMNS)
    assert lines[0]["message_id"] is None and lines[0]["tries"] == 1
    repeated = cli(
        "status", files.yaml, "--export", "-", "--status", "pending", "--status", "unknown"
    )
    assert repeated.exit_code == 0, repeated.output
    assert [(r["email"], r["status"]) for r in read_csv(repeated.stdout)] == [
        (LOST, "unknown"),
        (NEW, "pending"),
    ]


def test_export_to_stdout_and_json_summary(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """`--export -` writes only the CSV on stdout; with a FILE, --json prints one object."""
    files = mixed_run(tmp_path, smtp_server, recorder)
    to_stdout = cli("status", files.yaml, "--export", "-", "--status", "sent")
    assert to_stdout.exit_code == 0
    assert to_stdout.stdout.splitlines()[0] == ",".join(EXPORT_COLUMNS)
    assert len(read_csv(to_stdout.stdout)) == 3
    summary = cli("status", files.yaml, "--export", tmp_path / "all.csv", "--json")
    assert json.loads(summary.stdout) == {
        "campaign": "test-campaign",
        "file": str(tmp_path / "all.csv"),
        "format": "csv",
        "exported": 7,
        "not_tried": 1,
        "list_error": None,
    }


def test_export_before_any_run_lists_the_list_as_pending(tmp_path: Path) -> None:
    """No state yet: every valid, unique row is exported pending; no state file is created."""
    rows = [*many_rows(3), {"email": "USER00002@example.com", "name": "Dup", "first_name": "D"}]
    files = make_campaign(tmp_path / "camp", rows)
    result = cli("status", files.yaml, "--export", "-")
    assert [(r["email"], r["status"], r["tries"]) for r in read_csv(result.stdout)] == [
        (f"user{i:05d}@example.com", "pending", "0") for i in (1, 2, 3)
    ]
    assert not load_campaign(files.yaml).state_path.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--status", "sent"], "--status filters an export"),
        (["--export", "x.csv", "--status", "bounced"], "unknown status 'bounced'"),
        (["--export", "-", "--json"], "--json cannot print there too"),
        (["--export", "x.csv", "--recipient", "a@example.com"], "do not go together"),
        (["--failed", "--recipient", "a@example.com"], "do not go together"),
    ],
)
def test_misused_options_are_usage_errors(
    campaign_files: CampaignFiles, args: list[str], message: str
) -> None:
    result = cli("status", campaign_files.yaml, *args)
    assert result.exit_code == 2 and message in result.stderr


def test_an_export_that_cannot_be_written_is_73_and_leaves_nothing(
    tmp_path: Path, campaign_files: CampaignFiles
) -> None:
    result = cli("status", campaign_files.yaml, "--export", tmp_path / "missing" / "x.csv")
    assert result.exit_code == 73 and "cannot write the export" in result.stderr
    assert not (tmp_path / "missing").exists()


def test_export_while_a_run_is_sending(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """The export takes no lock: it answers while a run holds the campaign's lock and sends,
    with every recipient once (sent so far, in flight, or not met yet)."""
    files = make_campaign(tmp_path, many_rows(200), extra='rate: "50/s"\n')
    run = spawn_batch(files.yaml, smtp_server)
    try:
        deadline = time.monotonic() + 30
        # Outcomes are committed with the next group's flight mark: past two groups, some
        # are recorded as sent.
        while len(recorder.messages) < 80 and time.monotonic() < deadline:
            time.sleep(0.05)
        result = cli("status", files.yaml, "--export", "-")
        assert run.poll() is None, "the run ended before the export: make it slower"
    finally:
        run.send_signal(signal.SIGTERM)
        run.communicate(timeout=60)
    assert result.exit_code == 0, result.output
    rows = read_csv(result.stdout)
    assert sorted(r["email"] for r in rows) == [f"user{i:05d}@example.com" for i in range(1, 201)]
    statuses = {r["status"] for r in rows}
    assert "sent" in statuses and "pending" in statuses


def test_library_export_to_a_stream_and_to_a_file(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """mailcli.export_status writes to any text stream (CSV by default, or format="jsonl") and
    to a path; it returns what it wrote."""
    files = mixed_run(tmp_path, smtp_server, recorder)
    stream = io.StringIO()
    done = mailcli.export_status(files.yaml, stream, statuses=["unknown"], format="jsonl")
    assert isinstance(done, mailcli.StatusExport)
    assert (done.rows, done.not_tried, done.list_error) == (1, 0, None)
    assert json.loads(stream.getvalue())["email"] == LOST
    campaign = mailcli.load_campaign(files.yaml)
    done = mailcli.export_status(campaign, tmp_path / "all.jsonl")
    assert (done.rows, done.not_tried) == (7, 1)
    assert len((tmp_path / "all.jsonl").read_text(encoding="utf-8").splitlines()) == 7
    assert not list(tmp_path.glob(".all.jsonl.*"))  # the temporary file is gone


def test_a_list_that_cannot_be_read_still_exports_the_state(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    files = mixed_run(tmp_path, smtp_server, recorder)
    files.csv.unlink()
    result = cli("status", files.yaml, "--export", "-")
    assert result.exit_code == 0
    assert len(read_csv(result.stdout)) == 6
    assert "warning: the list could not be read" in result.stderr


# --- --recipient ----------------------------------------------------------------------------


def test_recipient_deferred_then_sent_shows_both_tries(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder, state_yaml: str
) -> None:
    """A recipient greylisted once and accepted on the retry of the same run: two tries, the
    451 then the 250 with the Message-ID the server received; first try before the last."""
    recorder.temp_fail_once.add(GREYLISTED)
    files = make_campaign(tmp_path / "camp", many_rows(4), extra=TWO_TRIES + state_yaml)
    assert cli("batch", files.yaml, *server_args(smtp_server)).exit_code == 0
    result = cli("status", files.yaml, "--recipient", "User00003@Example.com", "--json")
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    received = message_ids(recorder)[GREYLISTED]
    assert (got["email"], got["row"], got["status"], got["tries"]) == (GREYLISTED, 3, "sent", 2)
    assert got["message_id"] == received
    assert got["first_attempt"] <= got["last_attempt"]
    tries = got["attempts"]
    assert [(a["status"], a["code"], a["run"]) for a in tries] == [
        ("deferred", 451, got["run"]),
        ("sent", 250, got["run"]),
    ]
    assert "greylisted" in tries[0]["reply"]
    assert tries[1]["message_id"] == received
    assert tries[0]["time"] <= tries[1]["time"]
    human = cli("status", files.yaml, "--recipient", GREYLISTED)
    assert human.exit_code == 0
    assert "Tries: 2" in human.stdout and received in human.stdout
    assert "deferred" in human.stdout and "451" in human.stdout


def test_recipient_tried_in_two_runs(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """Deferred in run 1 (one try per run), sent by run 2: one try in each run."""
    files = mixed_run(tmp_path, smtp_server, recorder)
    assert cli("batch", files.yaml, *server_args(smtp_server)).exit_code == 75  # LOST: unknown
    got = json.loads(cli("status", files.yaml, "--recipient", GREYLISTED, "--json").stdout)
    assert [(a["run"], a["status"]) for a in got["attempts"]] == [(1, "deferred"), (2, "sent")]
    assert (got["tries"], got["run"]) == (2, 2)
    # a try is marked before it leaves; its outcome is logged when the answer is recorded
    assert got["first_attempt"] <= got["attempts"][0]["time"] <= got["last_attempt"]


def test_recipient_never_tried_is_pending_and_an_unknown_address_is_65(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """An address of the list no run has met: exit 0, pending, "not tried yet". One that is in
    neither the state nor the list: exit 65 and one line that says so."""
    files = mixed_run(tmp_path, smtp_server, recorder)
    pending = cli("status", files.yaml, "--recipient", NEW)
    assert pending.exit_code == 0, pending.output
    assert "Not tried yet" in pending.stdout and "row 7" in pending.stdout
    got = json.loads(cli("status", files.yaml, "--recipient", NEW, "--json").stdout)
    assert (got["status"], got["tries"], got["in_state"], got["attempts"]) == (
        "pending",
        0,
        False,
        [],
    )
    missing = cli("status", files.yaml, "--recipient", "ann@example.com")
    assert missing.exit_code == 65
    assert missing.stderr == (
        "mailcli: error: ann@example.com is not in campaign 'test-campaign' "
        "(not in its state, nor in its list list.csv)\n"
    )
    as_json = cli("status", files.yaml, "--recipient", "ann@example.com", "--json")
    assert json.loads(as_json.stdout)["exit_code"] == 65


def test_recipient_on_an_invalid_row_is_65_and_an_unreadable_list_66(tmp_path: Path) -> None:
    """The list holds the address on an invalid row: 65 naming the row and the problem. The
    state has no record and the list cannot be read: 66, as for a missing list."""
    rows = [*many_rows(2), {"email": "ann@@example.com", "name": "Ann", "first_name": "Ann"}]
    files = make_campaign(tmp_path / "camp", rows)
    invalid = cli("status", files.yaml, "--recipient", "ann@@example.com")
    assert invalid.exit_code == 65
    assert "its list has it on an invalid row 3: " in invalid.stderr
    files.csv.unlink()
    unreadable = cli("status", files.yaml, "--recipient", "user00001@example.com")
    assert unreadable.exit_code == 66
    assert "its list cannot be read" in unreadable.stderr


def test_recipient_lost_in_flight_shows_the_try_without_an_answer(tmp_path: Path) -> None:
    """A try marked in flight whose outcome never came (the run was killed) is listed as
    unknown, with no answer, at the time it was handed over."""
    files = make_campaign(tmp_path / "camp", many_rows(2))
    with SqliteState.open(load_campaign(files.yaml).state_path, "test-campaign") as state:
        state.start_run()
        state.begin_flight([("user00001@example.com", 1, None)])
    history = mailcli.recipient_history(files.yaml, "user00001@example.com")
    assert isinstance(history, mailcli.RecipientHistory)
    [flight] = history.attempts
    assert (flight.status, flight.reply, flight.run) == ("unknown", NO_ANSWER, 1)
    assert flight.at == history.record.first_at == history.record.last_at


def test_a_suppressed_recipient_not_tried_says_so(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    files = mixed_run(tmp_path, smtp_server, recorder)
    assert cli("suppress", "add", NEW).exit_code == 0
    got = json.loads(cli("status", files.yaml, "--recipient", NEW, "--json").stdout)
    assert (got["status"], got["suppressed"]) == ("pending", True)
    assert "suppression list" in cli("status", files.yaml, "--recipient", NEW).stdout


# --- the state: first try, and files of the older schema -------------------------------------


def test_first_try_time_is_kept_across_tries(tmp_path: Path) -> None:
    """first_at is set by the first flight and kept by later ones; a reverted first flight
    (never handed over) clears it again."""
    path = tmp_path / "s.sqlite"
    with SqliteState.open(path, "c") as state:
        state.start_run()
        state.begin_flight([("a@example.com", 1, None), ("b@example.com", 2, None)])
        state.record(Outcome(address_key("a@example.com"), "deferred", 451, "later"))
        state.flush()
        first = state.recipient("a@example.com")
        assert first is not None and first.first_at is not None
        state.db.execute("UPDATE recipients SET first_at='2000-01-01T00:00:00+00:00'")
        state.begin_flight([("a@example.com", 1, state.lookup("a@example.com"))])
        again = state.recipient("a@example.com")
        assert again is not None and again.tries == 2
        assert again.first_at == "2000-01-01T00:00:00+00:00"
    with SqliteState.open(path, "c") as state:
        # b as an invalid row recorded by --skip-invalid: failed, never tried
        state.db.execute(
            "UPDATE recipients SET attempts=0, status='failed' WHERE key=?", ["b@example.com"]
        )
        state.start_run()
        entry = state.lookup("b@example.com")
        state.begin_flight([("b@example.com", 2, entry)])
        assert state.recipient("b@example.com").first_at is not None  # type: ignore[union-attr]
        state.revert("b@example.com", entry)
        state.flush()
        assert state.recipient("b@example.com").first_at is None  # type: ignore[union-attr]


def old_state(path: Path, campaign: str) -> None:
    """A state file as the schema-1 mailcli left it: row 1 sent, 2 refused, 3 deferred."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    db.execute(
        "INSERT INTO meta VALUES ('campaign', ?), ('schema', '1'), ('created', ?)",
        (campaign, "2025-03-01T08:00:00+00:00"),
    )
    db.execute(
        "INSERT INTO runs VALUES (1, '2025-03-01T08:00:00+00:00', '2025-03-01T08:01:00+00:00',"
        " 42, 'mail1', '{\"exit_code\": 75, \"sent\": 1}')"
    )
    for i, status, code, reply, mid in (
        (1, "sent", 250, "2.0.0 queued", "<march-1@acme.example>"),
        (2, "failed", 550, "5.1.1 no such user", None),
        (3, "deferred", 451, "4.7.1 try later", None),
    ):
        email = f"user{i:05d}@example.com"
        db.execute(
            "INSERT INTO recipients (key, email, row, status, attempts, run, run_tries, code,"
            " reply, message_id, updated, sent_at) VALUES (?, ?, ?, ?, 1, 1, 1, ?, ?, ?, ?, ?)",
            (
                email,
                email,
                i,
                status,
                code,
                reply,
                mid,
                "2025-03-01T08:00:30+00:00",
                "2025-03-01T08:00:30+00:00" if status == "sent" else None,
            ),
        )
    db.commit()
    db.close()


def test_a_state_file_of_the_old_schema_is_upgraded_and_exported(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """A schema-1 file: the export reads it (no first try time, which it never recorded), the
    file gains first_at and the attempts table and says schema 2; a new run then sends the
    deferred recipient and its second try is logged, the first one is "not listed"."""
    files = make_campaign(tmp_path / "camp", many_rows(4))
    path = load_campaign(files.yaml).state_path
    old_state(path, "test-campaign")
    result = cli("status", files.yaml, "--export", "-")
    assert result.exit_code == 0, result.output
    got = by_email(read_csv(result.stdout))
    assert [(e, r["status"]) for e, r in got.items()] == [
        ("user00001@example.com", "sent"),
        ("user00002@example.com", "failed"),
        ("user00003@example.com", "deferred"),
        ("user00004@example.com", "pending"),
    ]
    assert got["user00001@example.com"]["message_id"] == "<march-1@acme.example>"
    assert got["user00001@example.com"]["first_attempt"] == ""
    assert got["user00001@example.com"]["last_attempt"] == "2025-03-01T08:00:30+00:00"
    db = sqlite3.connect(path)
    assert "first_at" in {c[1] for c in db.execute("PRAGMA table_info(recipients)")}
    assert db.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == ("2",)
    db.close()

    rerun = cli("batch", files.yaml, *server_args(smtp_server), "--json")
    assert rerun.exit_code == 1, rerun.output  # row 2 was refused in March
    assert json.loads(rerun.stdout)["sent"] == 2
    history = cli("status", files.yaml, "--recipient", "user00003@example.com")
    assert history.exit_code == 0, history.output
    assert "Tries: 1" in history.stdout and "1 earlier try is not listed" in history.stdout
    assert "first try   not recorded" in history.stdout
    fresh = json.loads(
        cli("status", files.yaml, "--recipient", "user00004@example.com", "--json").stdout
    )
    assert fresh["first_attempt"] and fresh["tries"] == 1
    assert [a["status"] for a in fresh["attempts"]] == ["sent"]


@pytest.mark.postgres
def test_a_postgresql_store_of_the_old_schema_is_read_then_upgraded_by_a_run(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder, pg_url: str
) -> None:
    """A store made by a schema-1 mailcli: `status` (which never writes) exports it as it is;
    the next run adds first_at and mailcli_attempts and logs its tries."""
    files = make_campaign(tmp_path / "camp", many_rows(3), extra=f'state: "{pg_url}"\n')
    assert cli("batch", files.yaml, *server_args(smtp_server)).exit_code == 0
    with psycopg.connect(pg_url, autocommit=True) as conn:  # back to schema 1
        conn.execute("DROP TABLE mailcli_attempts")
        conn.execute("ALTER TABLE mailcli_recipients DROP COLUMN first_at")
        conn.execute("UPDATE mailcli_meta SET value = '1' WHERE key = 'schema'")
    old = cli("status", files.yaml, "--export", "-")
    assert old.exit_code == 0, old.output
    rows = read_csv(old.stdout)
    assert [(r["status"], r["first_attempt"]) for r in rows] == [("sent", "")] * 3
    assert all(r["last_attempt"] for r in rows)
    before = json.loads(cli("status", files.yaml, "--recipient", SENT, "--json").stdout)
    assert (before["tries"], before["attempts"]) == (1, [])
    files.write_rows(many_rows(4))
    assert cli("batch", files.yaml, *server_args(smtp_server)).exit_code == 0
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT value FROM mailcli_meta WHERE key = 'schema'").fetchone() == (
            str(pgstate.SCHEMA_VERSION),
        )
    after = json.loads(
        cli("status", files.yaml, "--recipient", "user00004@example.com", "--json").stdout
    )
    assert after["first_attempt"] and [a["status"] for a in after["attempts"]] == ["sent"]
