"""Durable progress against real servers and real processes: resume, faults, kill -9, SIGTERM,
concurrent runs, rate limits. Nobody gets a message twice; nobody is silently lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    Recorder,
    busiest_second,
    connect_to,
    make_campaign,
    many_rows,
    no_sleep,
    server_args,
    spawn_batch,
    write_csv,
)
from typer.testing import CliRunner

from mailcli.batch import WINDOW, send_batch
from mailcli.campaign import load_campaign
from mailcli.cli import app
from mailcli.errors import ExitCode
from mailcli.sandbox import SmtpServer

runner = CliRunner()
FAST_RETRY = 'retry: {attempts: 3, delay: "50ms"}\n'


@pytest.fixture(params=[False, True], ids=["lockstep", "pipelining"])
def recorder(request: pytest.FixtureRequest) -> Recorder:
    """Every test here runs against a server without and with PIPELINING (RFC 2920)."""
    return Recorder(pipelining=request.param)


@dataclass(frozen=True)
class Scale:
    """How a fault test's campaign runs: the YAML it adds, and its connections."""

    yaml: str
    connections: int = 1

    def transports(self, server: SmtpServer) -> list[Any]:
        return [connect_to(server) for _ in range(self.connections)]


@pytest.fixture(params=["sqlite", "connections-4", "postgresql"])
def scale(request: pytest.FixtureRequest) -> Scale:
    """The fault tests run on one connection with SQLite state (the default), on four
    connections at once, and on a PostgreSQL state shared by hosts."""
    if request.param == "postgresql":
        # A killed run's claims come back after 5 s rather than the default 60.
        request.getfixturevalue("monkeypatch").setenv("MAILCLI_LEASE_SECONDS", "5")
        return Scale(f'state: "{request.getfixturevalue("pg_url")}"\n')
    if request.param == "connections-4":
        return Scale("connections: 4\n", 4)
    return Scale("")


def cli(*args: str | Path) -> Any:
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def status_json(campaign: Path, *extra: str) -> dict[str, Any]:
    result = cli("status", campaign, "--json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def deliveries(recorder: Recorder) -> Counter[str]:
    return Counter(recorder.recipients())


# --- resume ---------------------------------------------------------------------------------


def test_finished_campaign_rerun_sends_nothing_and_does_not_connect(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """A second run of a finished campaign: nothing sent, no connection, exit 0."""
    files = make_campaign(tmp_path, many_rows(40))
    first = cli("batch", files.yaml, *server_args(smtp_server), "--json")
    assert json.loads(first.stdout)["sent"] == 40
    again = cli("batch", files.yaml, *server_args(smtp_server), "--json")
    summary = json.loads(again.stdout)
    assert again.exit_code == 0
    assert (summary["sent"], summary["skipped"], summary["connections"]) == (0, 40, 0)
    assert recorder.connections == 1 and len(recorder.messages) == 40


def test_rows_appended_to_the_list_are_sent_by_the_next_run(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """A drip campaign: 50 rows appended after a run are sent next time, and nobody else."""
    rows = many_rows(150)
    files = make_campaign(tmp_path, rows[:100])
    assert cli("batch", files.yaml, *server_args(smtp_server)).exit_code == 0
    write_csv(files.csv, rows)
    result = cli("batch", files.yaml, *server_args(smtp_server), "--json")
    summary = json.loads(result.stdout)
    assert result.exit_code == 0
    assert (summary["sent"], summary["skipped"], summary["total"]) == (50, 100, 150)
    counts = deliveries(recorder)
    assert len(counts) == 150 and set(counts.values()) == {1}


def test_limit_leaves_the_rest_for_the_next_run(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """--limit 30 sends 30, says 70 are left (exit 75), and the next run sends exactly those."""
    files = make_campaign(tmp_path, many_rows(100))
    first = json.loads(
        cli("batch", files.yaml, *server_args(smtp_server), "--limit", "30", "--json").stdout
    )
    assert (first["sent"], first["pending"], first["exit_code"]) == (30, 70, 75)
    assert status_json(files.yaml)["pending"] == 70
    second = json.loads(cli("batch", files.yaml, *server_args(smtp_server), "--json").stdout)
    assert (second["sent"], second["skipped"], second["exit_code"]) == (70, 30, 0)
    assert set(deliveries(recorder).values()) == {1} and len(recorder.messages) == 100


# --- faults ---------------------------------------------------------------------------------


def test_greylisting_rejections_and_hangups(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder, scale: Scale
) -> None:
    """451 once to some, 550 always to others, a hang-up every 150 messages: every deliverable
    recipient gets exactly one message, the 550s are failed with their code, exit 1, and a
    re-run sends nothing."""
    rows = many_rows(600)
    addresses = [r["email"] for r in rows]
    rejected = set(addresses[7::97])
    recorder.temp_fail_once.update(addresses[3::41])
    recorder.rcpt_replies.update({a: "550 5.1.1 user unknown" for a in rejected})
    recorder.hangup_every = 150
    files = make_campaign(tmp_path, rows, extra=FAST_RETRY + scale.yaml)
    result = cli("batch", files.yaml, *server_args(smtp_server), "--json")
    summary = json.loads(result.stdout)
    assert result.exit_code == 1, result.output
    assert (summary["sent"], summary["failed"]) == (600 - len(rejected), len(rejected))
    assert summary["deferred"] == summary["unknown"] == 0
    assert summary["connections"] >= 4  # reconnected after each hang-up
    counts = deliveries(recorder)
    assert set(counts) == set(addresses) - rejected and set(counts.values()) == {1}
    failed = status_json(files.yaml, "--failed")
    assert failed["failed"] == len(rejected) and failed["sent"] == 600 - len(rejected)
    assert {(r["email"], r["status"], r["code"]) for r in failed["recipients"]} == {
        (a, "failed", 550) for a in rejected
    }
    again = cli("batch", files.yaml, *server_args(smtp_server), "--json")
    assert again.exit_code == 1
    assert json.loads(again.stdout)["sent"] == 0
    assert sum(deliveries(recorder).values()) == 600 - len(rejected)


def test_4xx_retried_up_to_the_limit_then_deferred_for_the_next_run(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder, scale: Scale
) -> None:
    """A recipient that keeps getting 451 is tried `attempts` times, left deferred (exit 75),
    and sent by a later run once the server takes it."""
    recorder.data_reply = lambda env: (
        "451 4.3.0 busy" if env.rcpt_tos == ["user00002@example.com"] else None
    )
    files = make_campaign(tmp_path, many_rows(3), extra=FAST_RETRY + scale.yaml)
    result = cli("batch", files.yaml, *server_args(smtp_server), "--json")
    summary = json.loads(result.stdout)
    assert result.exit_code == 75
    assert (summary["sent"], summary["deferred"]) == (2, 1)
    [row] = status_json(files.yaml, "--failed")["recipients"]
    assert (row["email"], row["status"], row["code"], row["attempts"]) == (
        "user00002@example.com",
        "deferred",
        451,
        3,
    )
    recorder.data_reply = None
    later = json.loads(cli("batch", files.yaml, *server_args(smtp_server), "--json").stdout)
    assert (later["sent"], later["skipped"], later["exit_code"]) == (1, 2, 0)
    assert deliveries(recorder)["user00002@example.com"] == 1


def test_421_before_the_data_reconnects_and_resends(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder, scale: Scale
) -> None:
    """A server that answers MAIL with 421 and closes: reconnect, resend, everyone once."""
    said: list[int] = []

    def closing(accepted: int) -> str | None:
        # Once, at the first MAIL after five messages (on four connections the count can step
        # past five between two MAILs).
        if accepted >= 5 and not said:
            said.append(accepted)
            return "421 4.3.2 shutting down"
        return None

    recorder.mail_reply = closing
    files = make_campaign(tmp_path, many_rows(12), extra=scale.yaml)
    summary = send_batch(load_campaign(files.yaml), scale.transports(smtp_server), sleep=no_sleep)
    assert summary.exit_code == ExitCode.OK and summary.sent == 12
    assert summary.connections == scale.connections + 1
    assert set(deliveries(recorder).values()) == {1}


def test_hangup_before_the_reply_is_unknown_and_retry_unknown_completes(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder, scale: Scale
) -> None:
    """The server takes a message and hangs up before replying: 'unknown', exit 75, not sent
    again by a re-run; --retry-unknown sends it."""
    lost = "user00004@example.com"
    hung: list[str] = []

    def once(env: Any) -> bool:
        if env.rcpt_tos == [lost] and not hung:
            hung.append(lost)
            return True
        return False

    recorder.hangup_after_data = once
    files = make_campaign(tmp_path, many_rows(8), extra=scale.yaml)
    result = cli("batch", files.yaml, *server_args(smtp_server), "--json")
    summary = json.loads(result.stdout)
    assert result.exit_code == 75
    assert (summary["sent"], summary["unknown"]) == (7, 1)
    assert status_json(files.yaml)["unknown"] == 1
    rerun = json.loads(cli("batch", files.yaml, *server_args(smtp_server), "--json").stdout)
    assert (rerun["sent"], rerun["unknown"], rerun["exit_code"]) == (0, 1, 75)
    assert lost not in deliveries(recorder)
    done = json.loads(
        cli("batch", files.yaml, *server_args(smtp_server), "--retry-unknown", "--json").stdout
    )
    assert (done["sent"], done["exit_code"]) == (1, 0)
    assert deliveries(recorder)[lost] == 1


def test_server_gone_for_good_stops_resumably(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder, scale: Scale
) -> None:
    """After 25 messages every MAIL is refused with a hang-up: the run gives up with exit 75,
    nothing is marked unknown, and a later run against a healthy server completes it."""
    recorder.mail_reply = lambda accepted: "421 4.3.2 down" if accepted >= 25 else None
    files = make_campaign(tmp_path, many_rows(60), extra=scale.yaml)
    summary = send_batch(load_campaign(files.yaml), scale.transports(smtp_server), sleep=no_sleep)
    assert summary.exit_code == ExitCode.TEMPFAIL
    assert "lost and not regained" in (summary.error or "")
    # 25 on one connection; on four, a MAIL already past the server's check may land too.
    got = len(recorder.messages)
    assert 25 <= got <= 24 + scale.connections
    assert (summary.sent, summary.unknown) == (got, 0)
    state = status_json(files.yaml)
    assert (state["sent"], state["pending"], state["unknown"]) == (got, 60 - got, 0)
    recorder.mail_reply = None
    resumed = send_batch(load_campaign(files.yaml), scale.transports(smtp_server))
    assert (resumed.sent, resumed.skipped, resumed.exit_code) == (60 - got, got, ExitCode.OK)
    assert set(deliveries(recorder).values()) == {1} and len(recorder.messages) == 60


# --- processes: kill -9, SIGTERM, a second run ----------------------------------------------


@pytest.mark.parametrize("kill_at", [1, 37, 160])
def test_kill_9_then_rerun_never_duplicates_and_loses_nobody(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder, kill_at: int, scale: Scale
) -> None:
    """kill -9 of a real mailcli while the server holds message N, before it replies: a re-run
    sends to everyone else exactly once; whoever is not delivered is 'unknown' (at most one
    group per connection); --retry-unknown completes the list."""
    files = make_campaign(tmp_path, many_rows(240), extra=scale.yaml)
    proc: list[subprocess.Popen[str]] = []
    killed = threading.Event()

    def kill_on(envelope: Any) -> None:
        if len(recorder.messages) + 1 == kill_at and not killed.is_set():
            killed.set()
            os.kill(proc[0].pid, signal.SIGKILL)

    recorder.on_data = kill_on
    proc.append(spawn_batch(files.yaml, smtp_server))
    proc[0].wait(60)
    assert proc[0].returncode == -signal.SIGKILL and killed.is_set()
    after_kill = set(recorder.recipients())
    rerun = cli("batch", files.yaml, *server_args(smtp_server), "--json")
    assert rerun.exit_code == 75  # unknown recipients remain
    counts = deliveries(recorder)
    assert set(counts.values()) == {1}, "a recipient got a message twice"
    state = status_json(files.yaml, "--failed")
    unknown = {r["email"] for r in state["recipients"] if r["status"] == "unknown"}
    assert 1 <= len(unknown) <= WINDOW * scale.connections
    assert state["sent"] + state["unknown"] == 240 and state["pending"] == 0
    assert set(counts) | unknown == {r["email"] for r in many_rows(240)}
    assert unknown.isdisjoint(set(counts) - after_kill)  # the re-run did not touch them
    final = cli("batch", files.yaml, *server_args(smtp_server), "--retry-unknown", "--json")
    assert final.exit_code == 0
    counts = deliveries(recorder)
    assert len(counts) == 240
    assert {a for a, n in counts.items() if n > 1} <= unknown  # only 'unknown' can repeat


def test_sigterm_finishes_the_message_in_flight_and_exits_75(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """SIGTERM mid-run: exit 75, every message the server got is recorded 'sent', none is
    'unknown', and the next run sends exactly the rest."""
    files = make_campaign(tmp_path, many_rows(200), extra='rate: "100/s"\n')
    proc: list[subprocess.Popen[str]] = []
    signalled = threading.Event()

    def term_on(envelope: Any) -> None:
        if len(recorder.messages) == 30 and not signalled.is_set():
            signalled.set()
            os.kill(proc[0].pid, signal.SIGTERM)

    recorder.on_data = term_on
    proc.append(spawn_batch(files.yaml, smtp_server))
    out, err = proc[0].communicate(timeout=60)
    assert proc[0].returncode == 75, err
    summary = json.loads(out)
    assert summary["error"] == "stopped by a signal"
    got = len(recorder.messages)
    assert summary["sent"] == got and summary["unknown"] == 0
    assert summary["pending"] == 200 - got  # the summary tells what the next run will send
    state = status_json(files.yaml)
    assert (state["sent"], state["unknown"], state["pending"]) == (got, 0, 200 - got)
    rest = cli("batch", files.yaml, *server_args(smtp_server), "--json")
    assert json.loads(rest.stdout)["sent"] == 200 - got
    assert set(deliveries(recorder).values()) == {1} and len(recorder.messages) == 200


def test_second_concurrent_run_exits_75_naming_the_first(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """While one run is sending, a second run of the same campaign exits 75 at once."""
    files = make_campaign(tmp_path, many_rows(100), extra='rate: "10/s"\n')
    first = spawn_batch(files.yaml, smtp_server)
    try:
        deadline = time.monotonic() + 30
        while not recorder.messages and time.monotonic() < deadline:
            time.sleep(0.05)
        started = time.monotonic()
        second = cli("batch", files.yaml, *server_args(smtp_server))
        took = time.monotonic() - started
        assert second.exit_code == 75
        assert f"already being sent by pid {first.pid}" in second.stderr
        assert took < 10
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)


# --- rate -----------------------------------------------------------------------------------


def test_rate_is_never_exceeded_and_the_flag_overrides_it(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """rate 20/s: at most 20 arrive in any one-second window, at close to 20/s; --rate 40/s
    overrides it."""
    files = make_campaign(tmp_path, many_rows(50), extra='rate: "20/s"\n')
    summary = json.loads(cli("batch", files.yaml, *server_args(smtp_server), "--json").stdout)
    times = [m.received_at for m in recorder.messages]
    assert busiest_second(times) <= 20
    assert summary["rate_per_s"] >= 16  # not undershot by much (ideal 20)
    second = make_campaign(tmp_path / "fast", many_rows(50), extra='rate: "20/s"\n')
    recorder.messages.clear()
    cli("batch", second.yaml, *server_args(smtp_server), "--rate", "40/s")
    fast = [m.received_at for m in recorder.messages]
    assert 20 < busiest_second(fast) <= 40
