"""Past one connection and one host: `connections: N` in one process, and several `mailcli batch`
processes sharing one campaign through a real PostgreSQL state. Real servers, real processes,
kill -9; nobody gets a message twice, nobody is lost."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import (
    Recorder,
    busiest_second,
    make_campaign,
    many_rows,
    server_args,
    spawn_batch,
    write_csv,
)
from typer.testing import CliRunner

from mailcli.batch import WINDOW
from mailcli.cli import app
from mailcli.delivery import DeliveryStatus
from mailcli.sandbox import SmtpServer

runner = CliRunner()


def cli(*args: str | Path) -> Any:
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


# --- connections: N ---------------------------------------------------------------------------


def test_four_connections_send_everyone_once_and_report_them(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """connections: 4 opens four sessions that all carry messages; every recipient once, and
    the list order holds within each connection."""
    recorder.pipelining = True
    files = make_campaign(tmp_path, many_rows(400), extra="connections: 4\n")
    result = cli("batch", files.yaml, *server_args(smtp_server), "--json")
    summary = json.loads(result.stdout)
    assert result.exit_code == 0, result.output
    assert (summary["sent"], summary["connections"]) == (400, 4)
    counts = Counter(recorder.recipients())
    assert len(counts) == 400 and set(counts.values()) == {1}
    by_peer: dict[Any, list[str]] = {}
    for message in recorder.messages:
        by_peer.setdefault(message.peer, []).extend(message.rcpt_tos)
    assert len(by_peer) == 4
    for addresses in by_peer.values():
        assert addresses == sorted(addresses)  # each connection takes groups in list order


def test_the_flag_overrides_the_campaign_and_the_profile(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--connections beats the campaign's key, which beats the profile's."""
    config = tmp_path / "config.yaml"
    config.write_text("profiles:\n  default:\n    connections: 3\n", encoding="utf-8")
    monkeypatch.setenv("MAILCLI_CONFIG", str(config))
    plain = make_campaign(tmp_path / "a", many_rows(90))
    assert (
        json.loads(cli("batch", plain.yaml, *server_args(smtp_server), "--json").stdout)[
            "connections"
        ]
        == 3
    )
    keyed = make_campaign(tmp_path / "b", many_rows(90), extra="connections: 2\n")
    assert (
        json.loads(cli("batch", keyed.yaml, *server_args(smtp_server), "--json").stdout)[
            "connections"
        ]
        == 2
    )
    flagged = make_campaign(tmp_path / "c", many_rows(90), extra="connections: 2\n")
    summary = json.loads(
        cli("batch", flagged.yaml, *server_args(smtp_server), "--connections", "1", "--json").stdout
    )
    assert (summary["connections"], summary["sent"]) == (1, 90)


@pytest.mark.parametrize(
    ("value", "message"),
    [("0", "must be from 1 to 50, not 0"), ("many", "must be a whole number")],
)
def test_a_bad_connections_value_names_the_line(tmp_path: Path, value: str, message: str) -> None:
    files = make_campaign(tmp_path, many_rows(3), extra=f"connections: {value}\n")
    result = cli("batch", files.yaml, "--dry-run")
    assert result.exit_code == 78
    assert "campaign.yaml:" in result.stderr and message in result.stderr


def test_four_connections_share_one_rate_at_the_server(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """rate 40/s over four connections: no one-second window at the server holds more than 40,
    and the run still goes at close to 40 a second."""
    recorder.pipelining = True
    files = make_campaign(tmp_path, many_rows(160), extra='connections: 4\nrate: "40/s"\n')
    summary = json.loads(cli("batch", files.yaml, *server_args(smtp_server), "--json").stdout)
    assert (summary["sent"], summary["connections"]) == (160, 4)
    times = sorted(m.received_at for m in recorder.messages)
    assert busiest_second(times) <= 40
    assert len({m.peer for m in recorder.messages}) == 4
    assert summary["rate_per_s"] >= 30  # not undershot by much (ideal 40)


def test_a_server_that_takes_fewer_sessions_leaves_the_run_on_those_it_took(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """A server that refuses connections past two (421 at EHLO) does not stop the run: it goes
    on with the two, with a warning, and everyone gets one message."""
    original = recorder.handle_EHLO
    sessions: list[Any] = []

    async def limited(
        server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> Any:
        if session not in sessions:
            sessions.append(session)
        if sessions.index(session) >= 2:
            server.transport.close()
            return ["421 4.7.0 too many connections from your address"]
        return await original(server, session, envelope, hostname, responses)

    recorder.handle_EHLO = limited  # type: ignore[method-assign]
    files = make_campaign(tmp_path, many_rows(100), extra="connections: 4\n")
    result = cli("batch", files.yaml, *server_args(smtp_server), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["sent"] == 100
    assert "2 of 4 connections opened" in result.stderr
    assert set(Counter(recorder.recipients()).values()) == {1}


# --- PostgreSQL: several processes, one campaign ----------------------------------------------


def copies(tmp_path: Path, rows: int, url: str, hosts: int) -> list[Path]:
    """The same campaign in `hosts` separate folders, as on separate machines."""
    first = make_campaign(tmp_path / "host0", many_rows(rows), extra=f'state: "{url}"\n')
    folders = [first.yaml]
    for i in range(1, hosts):
        folder = tmp_path / f"host{i}"
        shutil.copytree(first.yaml.parent, folder)
        folders.append(folder / first.yaml.name)
    return folders


def test_three_processes_share_a_campaign_and_send_everyone_once(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder, pg_url: str
) -> None:
    """Must-show 1: three `mailcli batch` processes with their own copies of the campaign,
    sharing only the PostgreSQL URL, send 3,000 recipients together: all three deliver, every
    recipient exactly once, and `status` from any copy shows the whole campaign."""
    recorder.pipelining = True
    campaigns = copies(tmp_path, 3000, pg_url, 3)
    procs = [spawn_batch(c, smtp_server) for c in campaigns]
    summaries = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        summaries.append(json.loads(out))
    assert all(s["sent"] > 0 for s in summaries), [s["sent"] for s in summaries]
    assert sum(s["sent"] for s in summaries) == 3000
    for s in summaries:
        assert s["sent"] + s["skipped"] == 3000 and s["unknown"] == s["pending"] == 0
    counts = Counter(recorder.recipients())
    assert len(counts) == 3000 and set(counts.values()) == {1}
    for campaign in campaigns:
        state = json.loads(cli("status", campaign, "--json").stdout)
        assert (state["sent"], state["pending"], state["total"]) == (3000, 0, 3000)
        assert state["state_file"] == pg_url
        assert sum(h["sent"] for h in state["hosts"]) == 3000 and state["running"] == []
    with psycopg.connect(pg_url) as conn:
        runs = conn.execute("SELECT (summary->>'sent')::int FROM mailcli_runs").fetchall()
    assert sorted(r[0] for r in runs) == sorted(s["sent"] for s in summaries)


def test_kill_9_of_one_of_three_processes_then_a_rerun_completes_the_list(
    tmp_path: Path,
    smtp_server: SmtpServer,
    recorder: Recorder,
    pg_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Must-show 1: one of three processes is killed with kill -9 mid-run. The others go on and
    take over what it had claimed once its lease runs out; a re-run completes the list; nobody
    gets a message twice; at most one group of the killed process is 'unknown'."""
    monkeypatch.setenv("MAILCLI_LEASE_SECONDS", "5")
    recorder.pipelining = True
    campaigns = copies(tmp_path, 3000, pg_url, 3)
    procs: list[subprocess.Popen[str]] = []
    killed = threading.Event()

    def kill_on(envelope: Any) -> None:
        if len(recorder.messages) >= 900 and not killed.is_set() and len(procs) == 3:
            killed.set()
            os.kill(procs[1].pid, signal.SIGKILL)

    recorder.on_data = kill_on
    procs.extend(spawn_batch(c, smtp_server) for c in campaigns)
    outs = [p.communicate(timeout=180) for p in procs]
    assert killed.is_set() and procs[1].returncode == -signal.SIGKILL
    for i in (0, 2):
        assert procs[i].returncode in (0, 75), outs[i][1]
    after = Counter(recorder.recipients())
    assert set(after.values()) == {1}
    rerun = cli("batch", campaigns[1], *server_args(smtp_server), "--json")
    assert rerun.exit_code in (0, 75), rerun.output
    counts = Counter(recorder.recipients())
    assert set(counts.values()) == {1}, "a recipient got a message twice"
    state = json.loads(cli("status", campaigns[0], "--json", "--failed").stdout)
    unknown = {r["email"] for r in state["recipients"] if r["status"] == "unknown"}
    assert len(unknown) <= WINDOW
    assert state["sent"] + len(unknown) == 3000 and state["pending"] == 0
    assert set(counts) | unknown == {r["email"] for r in many_rows(3000)}
    final = cli("batch", campaigns[2], *server_args(smtp_server), "--retry-unknown", "--json")
    assert final.exit_code == 0, final.output
    counts = Counter(recorder.recipients())
    assert len(counts) == 3000
    assert {a for a, n in counts.items() if n > 1} <= unknown  # only 'unknown' can repeat


def test_a_host_without_the_list_sends_what_the_store_holds(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder, pg_url: str
) -> None:
    """The CSV is needed only where the import runs: a second host without it sends the rows
    the first imported (here the first imports with --limit 10 and leaves the rest)."""
    importer, sender = copies(tmp_path, 50, pg_url, 2)
    (sender.parent / "list.csv").unlink()
    first = json.loads(
        cli("batch", importer, *server_args(smtp_server), "--limit", "10", "--json").stdout
    )
    assert (first["sent"], first["pending"]) == (10, 40)
    second = cli("batch", sender, *server_args(smtp_server), "--json")
    assert second.exit_code == 0, second.output
    assert (json.loads(second.stdout)["sent"], json.loads(second.stdout)["total"]) == (40, 50)
    assert set(Counter(recorder.recipients()).values()) == {1}
    assert len(recorder.messages) == 50


def test_rows_appended_on_the_importing_host_are_added_by_the_next_run(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder, pg_url: str
) -> None:
    """The import is idempotent: a re-run imports only the appended rows and sends them."""
    [campaign] = copies(tmp_path, 20, pg_url, 1)
    assert (
        json.loads(cli("batch", campaign, *server_args(smtp_server), "--json").stdout)["sent"] == 20
    )
    csv = campaign.parent / "list.csv"
    with csv.open("a", encoding="utf-8") as handle:
        handle.write("new@example.com,New Person,New\n")
    again = json.loads(cli("batch", campaign, *server_args(smtp_server), "--json").stdout)
    assert (again["sent"], again["skipped"], again["total"]) == (1, 20, 21)
    assert Counter(recorder.recipients())["new@example.com"] == 1
    assert len(recorder.messages) == 21


def test_a_pending_row_takes_the_lists_new_data_and_a_sent_one_keeps_its_own(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder, pg_url: str
) -> None:
    """A row fixed in the list before it is sent goes out with the fix; a row already sent is
    not touched by the next import."""
    [campaign] = copies(tmp_path, 3, pg_url, 1)
    cli("batch", campaign, *server_args(smtp_server), "--limit", "1")
    rows = many_rows(3)
    rows[0]["first_name"], rows[2]["first_name"] = "Changed", "Fixed"
    write_csv(campaign.parent / "list.csv", rows)
    again = json.loads(cli("batch", campaign, *server_args(smtp_server), "--json").stdout)
    assert (again["sent"], again["skipped"]) == (2, 1)
    subjects = {m.rcpt_tos[0]: m.data for m in recorder.messages}
    assert b"Subject: Hello Fixed" in subjects["user00003@example.com"]
    with psycopg.connect(pg_url) as conn:
        [(first,)] = conn.execute(
            "SELECT fields->>'first_name' FROM mailcli_recipients WHERE key = %s",
            ("user00001@example.com",),
        ).fetchall()
    assert first == "U1"  # sent before the change: its record keeps what was sent


def test_a_password_in_the_state_url_is_refused(tmp_path: Path, pg_url: str) -> None:
    """Secrets never in YAML: the URL is refused with the line, before anything connects."""
    leaked = pg_url.replace("@", ":hunter2@", 1)
    files = make_campaign(tmp_path, many_rows(2), extra=f'state: "{leaked}"\n')
    result = cli("batch", files.yaml, "--dry-run")
    assert result.exit_code == 78
    assert "campaign.yaml:" in result.stderr and "PGPASSWORD" in result.stderr
    assert "hunter2" not in result.stderr


def test_a_wrong_password_is_a_config_error_and_a_dead_server_a_temporary_one(
    tmp_path: Path, smtp_server: SmtpServer, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = make_campaign(tmp_path, many_rows(2), extra=f'state: "{pg_url}"\n')
    monkeypatch.setenv("PGPASSWORD", "wrong")
    refused = cli("batch", files.yaml, *server_args(smtp_server))
    assert refused.exit_code == 78
    assert "refused the login" in refused.stderr and "wrong" not in refused.stderr
    gone = make_campaign(
        tmp_path / "gone", many_rows(2), extra='state: "postgresql://x@127.0.0.1:1/db"\n'
    )
    down = cli("batch", gone.yaml, *server_args(smtp_server))
    assert down.exit_code == 75 and "cannot reach the state database" in down.stderr


def test_two_processes_on_four_connections_each_share_a_campaign(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder, pg_url: str
) -> None:
    """Both scale-outs at once: two processes with connections: 4 on one PostgreSQL state."""
    recorder.pipelining = True
    campaigns = copies(tmp_path, 800, pg_url, 2)
    procs = [spawn_batch(c, smtp_server, "--connections", "4") for c in campaigns]
    summaries = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        summaries.append(json.loads(out))
    assert [s["connections"] for s in summaries] == [4, 4]
    assert sum(s["sent"] for s in summaries) == 800
    counts = Counter(recorder.recipients())
    assert len(counts) == 800 and set(counts.values()) == {1}


# --- SQLite stays the default -------------------------------------------------------------------


def test_sqlite_stays_the_default_and_a_second_run_is_still_refused(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """Must-show 5: without the new keys a campaign keeps its SQLite file and its lock; a
    second run while the first sends exits 75, with four connections too."""
    files = make_campaign(tmp_path, many_rows(100), extra='rate: "20/s"\nconnections: 4\n')
    first = spawn_batch(files.yaml, smtp_server)
    try:
        deadline = time.monotonic() + 30
        while not recorder.messages and time.monotonic() < deadline:
            time.sleep(0.05)
        second = cli("batch", files.yaml, *server_args(smtp_server))
        assert second.exit_code == 75
        assert f"already being sent by pid {first.pid}" in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert (tmp_path / ".mailcli" / "test-campaign.sqlite").is_file()


def test_claims_are_disjoint_bounded_and_come_back_when_released(pg_url: str) -> None:
    """Two stores on one campaign: each claim holds at most what was asked, no row is claimed
    twice, and rows claimed but never handed over go back when their run closes."""
    from mailcli.addresses import Mailbox
    from mailcli.pgstate import PgState
    from mailcli.recipients import Recipient

    rows = [
        Recipient(i, i + 1, Mailbox("", f"user{i:03d}@example.com"), {"n": str(i)})
        for i in range(1, 101)
    ]
    a, b = PgState.open(pg_url, "shared"), PgState.open(pg_url, "shared")
    try:
        assert a.import_rows(rows) == 100 and b.import_rows(rows) == 0  # idempotent
        a.start_run()
        b.start_run()
        first = a.claim(10, retry_unknown=False, retry_round=False, attempts=3)
        second = b.claim(10, retry_unknown=False, retry_round=False, attempts=3)
        assert len(first) == len(second) == 10
        taken = {c.recipient.email for c in first} | {c.recipient.email for c in second}
        assert len(taken) == 20
        assert [c.recipient.row for c in first] == sorted(c.recipient.row for c in first)
        assert first[0].recipient.fields == {"n": str(first[0].recipient.row)}
        assert b.held_by_others()  # a's claims are live
    finally:
        a.close()  # a never handed its ten over: they go back
    try:
        rest = b.claim(100, retry_unknown=False, retry_round=False, attempts=3)
        assert len(rest) == 90
        assert {c.recipient.email for c in rest}.isdisjoint(c.recipient.email for c in second)
    finally:
        b.close()


def test_a_run_that_lost_its_lease_sends_none_of_the_group(pg_url: str) -> None:
    """A run that could not renew its lease for a whole lease (a frozen VM) finds its rows taken
    by another run: marking them in flight fails and nothing of the group is marked or sent."""
    from mailcli.addresses import Mailbox
    from mailcli.errors import TempFailError
    from mailcli.pgstate import PgState
    from mailcli.recipients import Recipient

    rows = [Recipient(i, i + 1, Mailbox("", f"u{i}@example.com"), {}) for i in range(1, 6)]
    a, b = PgState.open(pg_url, "lost"), PgState.open(pg_url, "lost")
    try:
        a.import_rows(rows)
        a.start_run()
        b.start_run()
        mine = a.claim(5, retry_unknown=False, retry_round=False, attempts=3)
        with psycopg.connect(pg_url, autocommit=True) as conn:  # a's lease runs out
            conn.execute("UPDATE mailcli_recipients SET lease_until = now() - interval '1 s'")
        theirs = b.claim(5, retry_unknown=False, retry_round=False, attempts=3)
        assert len(mine) == len(theirs) == 5
        with pytest.raises(TempFailError, match="lost its claim on 5 recipients"):
            a.begin_flight((c.recipient.email, c.recipient.row, c.entry) for c in mine)
        b.begin_flight((c.recipient.email, c.recipient.row, c.entry) for c in theirs)
        assert b.counts()[DeliveryStatus.UNKNOWN] == 5
    finally:
        a.close()
        b.close()


def test_skip_invalid_on_a_shared_state_sends_the_valid_rows(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder, pg_url: str
) -> None:
    rows = [*many_rows(3), {"email": "not an address", "name": "X", "first_name": "X"}]
    files = make_campaign(tmp_path, rows, extra=f'state: "{pg_url}"\n')
    refused = cli("batch", files.yaml, *server_args(smtp_server), "--json")
    assert refused.exit_code == 65 and not recorder.messages
    sent = cli("batch", files.yaml, *server_args(smtp_server), "--skip-invalid", "--json")
    assert json.loads(sent.stdout)["sent"] == 3, sent.output
    assert len(recorder.messages) == 3


def test_the_database_cut_mid_run_stops_with_75_and_a_rerun_sends_nobody_twice(
    tmp_path: Path,
    smtp_server: SmtpServer,
    recorder: Recorder,
    pg_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PostgreSQL drops mailcli's sessions mid-run (a restart, a failover): one line, exit 75,
    no 'internal error'; a re-run finishes the list and nobody gets a message twice."""
    monkeypatch.setenv("MAILCLI_LEASE_SECONDS", "5")  # the cut run cannot give its claims back
    cut = threading.Event()

    def cut_on(envelope: Any) -> None:
        if len(recorder.messages) == 70 and not cut.is_set():
            cut.set()
            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'mailcli'"
                )

    recorder.on_data = cut_on
    files = make_campaign(tmp_path, many_rows(200), extra=f'state: "{pg_url}"\n')
    result = cli("batch", files.yaml, *server_args(smtp_server), "--json")
    assert cut.is_set() and result.exit_code == 75, result.output
    assert "state database" in result.stderr and "internal error" not in result.stderr
    recorder.on_data = None
    rerun = cli("batch", files.yaml, *server_args(smtp_server), "--json")
    assert rerun.exit_code in (0, 75), rerun.output
    counts = Counter(recorder.recipients())
    assert set(counts.values()) == {1}
    state = json.loads(cli("status", files.yaml, "--json").stdout)
    assert state["sent"] + state["unknown"] == 200 and state["unknown"] <= WINDOW


def test_status_before_the_first_run_counts_the_list_as_pending(
    tmp_path: Path, pg_url: str
) -> None:
    [campaign] = copies(tmp_path, 7, pg_url, 1)
    result = cli("status", campaign, "--json")
    assert result.exit_code == 0, result.output
    state = json.loads(result.stdout)
    assert (state["total"], state["pending"], state["sent"], state["hosts"]) == (7, 7, 0, [])
