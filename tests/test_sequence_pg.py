"""Sequences (`steps:`) on a shared PostgreSQL state (`state: postgresql://...`), against a real
PostgreSQL server and real aiosmtpd servers.

Library runs take an injected clock; `mailcli` processes run under `faketime`, several at once
from separate copies of the campaign folder that share only the URL, one of them killed with
kill -9. What each run sends is read on the server side (To and Subject) and checked against the
due rule worked out here, against the same campaign on a SQLite state, and against what
`dry_run(at=...)` predicted; each (recipient, step) goes out at most once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import Recorder, server_args, write_csv
from faketimed import Mailcli
from typer.testing import CliRunner

import mailcli
from mailcli.batch import dry_run
from mailcli.campaign import load_campaign
from mailcli.cli import app
from mailcli.delivery import WINDOW, DeliveryStatus
from mailcli.errors import ConfigError, ExitCode
from mailcli.pgstate import PgState
from mailcli.preview import Preview
from mailcli.sandbox import SmtpServer
from mailcli.state import Flight, Outcome
from mailcli.summary import Summary

DAY0 = datetime(2026, 3, 2, tzinfo=UTC)  # the first run's day (a Monday)
STEPS = {"welcome": 0, "tips": 2, "offer": 7}  # each step's `after`, in days
ORDER = list(STEPS)

Pair = tuple[str, str]  # (recipient, step)
runner = CliRunner()


def day(n: float, hour: int = 0, minute: int = 0) -> datetime:
    return DAY0 + timedelta(days=n, hours=hour, minutes=minute)


def cli(*args: str | Path) -> Any:
    """`mailcli` in this process, on the machine's clock (for what does not depend on it)."""
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def step_line(name: str, days: int, condition: str | None = None) -> str:
    """One step of `steps:`; its subject names it, so what the server got tells which step."""
    cond = f', if: "{condition}"' if condition else ""
    return f'  - {{name: {name}, after: {days}d, subject: "[{name}] {{{{ first_name }}}}"{cond}}}\n'


def write_sequence(
    folder: Path,
    rows: list[dict[str, str]],
    *,
    state: str | None,
    steps: dict[str, int] | None = None,
    conditions: dict[str, str] | None = None,
    name: str = "drip",
    extra: str = "",
) -> Path:
    """A sequence in `folder` (YAML, CSV, one text template), started by each row's
    `signed_up_at` (an ISO date: midnight UTC); its state in PostgreSQL when `state` is a URL,
    else in SQLite beside the file."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "body.txt.j2").write_text("Hi {{ first_name }},\nmore soon.\n", encoding="utf-8")
    write_csv(folder / "list.csv", rows)
    conditions = conditions or {}
    lines = "".join(
        step_line(n, d, conditions.get(n))
        for n, d in (steps if steps is not None else STEPS).items()
    )
    yaml = folder / "campaign.yaml"
    yaml.write_text(
        f"name: {name}\n"
        'from: "Test Sender <sender@example.com>"\n'
        "recipients: list.csv\n"
        'start: "{{ signed_up_at }}"\n'
        "timezone: UTC\n"
        "text: body.txt.j2\n"
        "retry: {attempts: 1}\n"
        + (f'state: "{state}"\n' if state else "")
        + extra
        + "steps:\n"
        + lines,
        encoding="utf-8",
    )
    return yaml


def member(i: int, start: float, **columns: str) -> dict[str, str]:
    return {
        "email": f"user{i:03d}@example.com",
        "first_name": f"U{i}",
        "signed_up_at": day(start).date().isoformat(),
        **columns,
    }


def copies(first: Path, hosts: int) -> list[Path]:
    """The campaign folder of `first` copied `hosts - 1` times beside it, as on other machines."""
    found = [first]
    for i in range(1, hosts):
        folder = first.parent.parent / f"{first.parent.name}-host{i}"
        shutil.copytree(first.parent, folder)
        found.append(folder / first.name)
    return found


def received(recorder: Recorder, since: int = 0) -> list[Pair]:
    """(To, step) of each message the server got, in order."""
    pairs = []
    for got in recorder.messages[since:]:
        message = got.message
        to = message["To"].addresses[0].addr_spec
        assert got.rcpt_tos == [to]
        subject = str(message["Subject"])
        assert subject.startswith("["), subject
        pairs.append((to, subject[1 : subject.index("]")]))
    return pairs


@dataclass
class Library:
    """Runs a campaign file in this process at chosen moments (an injected clock)."""

    server: SmtpServer
    recorder: Recorder

    def run(self, yaml: Path, at: datetime, **options: Any) -> tuple[Summary, list[Pair]]:
        before = len(self.recorder.messages)
        summary = mailcli.send_campaign(
            load_campaign(yaml),
            mailcli.Mailer(host="127.0.0.1", port=self.server.port, security="none"),
            clock=lambda: at,
            **options,
        )
        got = received(self.recorder, before)
        assert len(got) == len(set(got)), f"a step went twice to someone in one run: {got}"
        return summary, got

    @staticmethod
    def dry(yaml: Path, at: datetime) -> tuple[Summary, list[Pair]]:
        previews: list[Preview] = []
        summary = dry_run(load_campaign(yaml), at=at, on_message=previews.append)
        return summary, [(p.email, str(p.step)) for p in previews]


@pytest.fixture
def library(smtp_server: SmtpServer, recorder: Recorder) -> Library:
    return Library(smtp_server, recorder)


def expected_due(
    starts: dict[str, datetime], history: dict[str, list[tuple[str, datetime]]], now: datetime
) -> list[Pair]:
    """The (recipient, step) pairs a run at `now` sends, in list order, by the due rule as the
    contract states it: step k at start + after_k, and never sooner than after_k - after_j after
    the step j sent before it; one step per recipient per run, in order."""
    due = []
    for email, start in starts.items():
        done = history.get(email, [])
        if len(done) == len(ORDER):
            continue
        step = ORDER[len(done)]
        at = start + timedelta(days=STEPS[step])
        if done:
            last, sent_at = done[-1]
            at = max(at, sent_at + timedelta(days=STEPS[step] - STEPS[last]))
        if now >= at:
            due.append((email, step))
    return due


def pg_rows(url: str, query: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()


# --- faketime'd `mailcli` processes -----------------------------------------------------------


@pytest.fixture
def faked(faketime: str) -> Mailcli:
    return Mailcli(faketime)


@pytest.fixture
def three_servers() -> Iterator[list[tuple[SmtpServer, Recorder]]]:
    """One SMTP relay per host: what each server got is what that host sent."""
    # PIPELINING: a run prepares its next group while the server works on the one it sent.
    recorders = [Recorder(pipelining=True) for _ in range(3)]
    servers = [SmtpServer(r, hostname=f"relay{i}.test").start() for i, r in enumerate(recorders)]
    try:
        yield list(zip(servers, recorders, strict=True))
    finally:
        for server in servers:
            server.stop()


def run_hosts(
    faked: Mailcli,
    campaigns: list[Path],
    relays: list[tuple[SmtpServer, Recorder]],
    at: datetime,
    procs: list[subprocess.Popen[str]] | None = None,
) -> list[tuple[int, str, str]]:
    """`mailcli batch --json` on every copy at once, each host through its own relay, all at the
    faked moment `at`; (exit code, stdout, stderr) of each."""
    started = [
        faked.spawn("batch", c, *server_args(server), "--json", at=at)
        for c, (server, _) in zip(campaigns, relays, strict=True)
    ]
    if procs is not None:
        procs.extend(started)
    outs = [p.communicate(timeout=120) for p in started]
    return [(p.returncode, out, err) for p, (out, err) in zip(started, outs, strict=True)]


# --- 1. one host: the due rule, as on SQLite, as the dry run said ------------------------------


def test_runs_on_a_shared_state_send_the_due_steps_as_sqlite_does_and_as_the_dry_run_said(
    tmp_path: Path, library: Library, recorder: Recorder, pg_url: str, faked: Mailcli
) -> None:
    """Six recipients starting on days -1, 0 and 3, steps welcome 0d, tips 2d, offer 7d; runs on
    days 0, 5 (three days late for the tips), 7, 10, 12 and 13 at 09:00. The PostgreSQL
    campaign sends exactly the steps due at each run, each (recipient, step) once, the same as
    the same campaign on SQLite, and `dry_run(at=)` predicts each run exactly: the late tips
    push the offer to five days after them (day 10, not day 7). `status --json` counts each
    step from the store as SQLite's does, and `status --recipient` shows each step's time and
    the next one."""
    rows = [member(i, (-1, 0, 3)[i % 3]) for i in range(1, 7)]
    shared = write_sequence(tmp_path / "pg", rows, state=pg_url)
    local = write_sequence(tmp_path / "sqlite", rows, state=None)
    starts = {
        r["email"]: datetime.fromisoformat(r["signed_up_at"]).replace(tzinfo=UTC) for r in rows
    }
    history: dict[str, list[tuple[str, datetime]]] = {}
    sent_per_run = []
    for moment in (day(0, 9), day(5, 9), day(7, 9), day(10, 9), day(12, 9), day(13, 9)):
        expected = expected_due(starts, history, moment)
        dry, predicted = library.dry(shared, moment)
        assert predicted == expected, moment
        assert dry.would_send == len(expected)
        summary, got = library.run(shared, moment)
        assert sorted(got) == sorted(expected), moment
        assert (summary.sent, summary.unknown, summary.exit_code) == (len(got), 0, ExitCode.OK)
        assert summary.steps is not None
        assert {n: c["sent"] for n, c in summary.steps.items()} == {
            n: sum(1 for _, s in expected if s == n) for n in ORDER
        }
        _, on_sqlite = library.run(local, moment)
        assert sorted(on_sqlite) == sorted(got), moment
        for email, step in expected:
            history.setdefault(email, []).append((step, moment))
        sent_per_run.append(len(expected))

        if moment == day(7, 9):
            # Midway: every step counted from the store, as SQLite counts it from its file.
            pg_status = cli("status", shared, "--json")
            assert pg_status.exit_code == 0, pg_status.output
            steps = json.loads(pg_status.stdout)["steps"]
            assert steps == json.loads(cli("status", local, "--json").stdout)["steps"]
            assert {n: (c["sent"], c["pending"]) for n, c in steps.items()} == {
                "welcome": (6, 0),
                "tips": (6, 0),
                "offer": (0, 6),
            }
            # user002 (start day 3): welcome on day 5, tips on day 7; the offer waits for
            # start + 7d (day 10) and five days after the tips (day 12, 09:00).
            place = faked(
                "status", shared, "--recipient", "user002@example.com", "--json", at=day(8)
            )
            assert place.returncode == 0, place.stderr
            shown = json.loads(place.stdout)
            assert [(s["step"], s["status"], s["time"]) for s in shown["steps"]] == [
                ("welcome", "sent", "2026-03-07T09:00:00+00:00"),
                ("tips", "sent", "2026-03-09T09:00:00+00:00"),
                ("offer", "pending", None),
            ]
            assert shown["next"] == {
                "step": "offer",
                "action": "waiting",
                "due_at": "2026-03-14T09:00:00+00:00",
            }
            assert shown["in_list"] is True
            on_sqlite_place = faked(
                "status", local, "--recipient", "user002@example.com", "--json", at=day(8)
            )
            assert json.loads(on_sqlite_place.stdout)["next"] == shown["next"]

    assert sent_per_run == [4, 6, 2, 4, 2, 0]
    everything = received(recorder)
    assert Counter(everything)[("user001@example.com", "welcome")] == 2  # once per store
    assert set(Counter(everything).values()) == {2}  # every pair once on each store
    final = json.loads(cli("status", shared, "--json").stdout)
    assert {n: (c["sent"], c["pending"]) for n, c in final["steps"].items()} == {
        n: (6, 0) for n in ORDER
    }
    assert final["sent"] == 18


def test_a_cli_run_times_its_steps_by_the_hosts_clock_as_on_sqlite(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder, pg_url: str, faked: Mailcli
) -> None:
    """`mailcli batch` on the host's clock (faketime: 2 March, 10:00) sends the welcomes, and
    the run of 4 March at 11:00, two days later, the tips: on PostgreSQL as on SQLite. The
    welcome's time is the host's, the clock the due rule reads, not the database server's."""
    rows = [member(1, -1), member(2, -1)]
    for store in ("sqlite", "postgresql"):
        yaml = write_sequence(
            tmp_path / store, rows, state=pg_url if store == "postgresql" else None
        )
        before = len(recorder.messages)
        first = faked("batch", yaml, *server_args(smtp_server), "--json", at=day(0, 10))
        assert first.returncode == 0, first.stderr
        place = faked("status", yaml, "--recipient", rows[0]["email"], "--json", at=day(1))
        welcome = json.loads(place.stdout)["steps"][0]
        assert welcome["step"] == "welcome", welcome
        assert welcome["time"].startswith("2026-03-02T10:00:"), (store, welcome["time"])
        second = faked("batch", yaml, *server_args(smtp_server), "--json", at=day(2, 11))
        assert second.returncode == 0, second.stderr
        assert sorted(received(recorder, before)) == sorted(
            [(r["email"], "welcome") for r in rows] + [(r["email"], "tips") for r in rows]
        ), store


# --- 2. three hosts at once ------------------------------------------------------------------


def test_three_hosts_share_each_step_and_send_every_recipient_step_once(
    tmp_path: Path,
    pg_url: str,
    faked: Mailcli,
    three_servers: list[tuple[SmtpServer, Recorder]],
) -> None:
    """Three `mailcli batch` processes, each from its own copy of the folder and through its own
    relay, sharing only the PostgreSQL URL, all at the same faked moment: 300 recipients whose
    welcome is due get it exactly once, every host sending some; two days later the three send
    the tips likewise, and no welcome again. No fault anywhere: every run exits 0."""
    rows = [member(i, -1) for i in range(1, 301)]
    everyone = {r["email"] for r in rows}
    first = write_sequence(tmp_path / "drip", rows, state=pg_url, extra='rate: "80/s"\n')
    campaigns = copies(first, 3)
    relays = three_servers
    for moment, step in ((day(0, 10), "welcome"), (day(2, 11), "tips")):
        before = [len(r.messages) for _, r in relays]
        results = run_hosts(faked, campaigns, relays, moment)
        summaries = [json.loads(out) for _, out, _ in results]
        per_host = [received(r, n) for (_, r), n in zip(relays, before, strict=True)]
        together = [pair for got in per_host for pair in got]
        assert Counter(together) == Counter({(e, step): 1 for e in everyone}), step
        assert all(per_host), (step, [len(p) for p in per_host])  # every host sent some
        assert [s["sent"] for s in summaries] == [len(p) for p in per_host]
        assert all(s["steps"][step]["sent"] == s["sent"] for s in summaries)

        state = json.loads(cli("status", campaigns[2], "--json").stdout)
        assert state["steps"][step]["sent"] == 300 and state["steps"][step]["pending"] == 0
        assert state["steps"][step]["unknown"] == 0
        # One machine, one host name: every step sent so far.
        assert [h["sent"] for h in state["hosts"]] == [300 * (ORDER.index(step) + 1)]
        # No fault anywhere: every host exits 0, and none reports a step `unknown` (another
        # host's message in flight is not one whose answer was lost).
        exits = [(code, s["unknown"]) for (code, _, _), s in zip(results, summaries, strict=True)]
        assert exits == [(0, 0)] * 3, (step, exits)


# --- 3. kill -9 -------------------------------------------------------------------------------


def live_run_of(url: str, proc: subprocess.Popen[str]) -> int:
    """The id of the run the process group of `proc` (faketime and its mailcli) is making."""
    for run_id, pid in pg_rows(url, "SELECT id, pid FROM mailcli_runs WHERE finished IS NULL"):
        try:
            if os.getpgid(pid) == proc.pid:
                return int(run_id)
        except ProcessLookupError:
            continue
    raise AssertionError("the process has no live run")


def held_by(url: str, run_id: int) -> list[tuple[str, str]]:
    """(key, status) of every row the run holds the lease of."""
    return [
        (key, status)
        for key, status in pg_rows(
            url, "SELECT key, status FROM mailcli_recipients WHERE lease_run = %s", run_id
        )
    ]


def email_of(key: str) -> str:
    return key.split("\x1f")[0]


def test_kill_9_of_one_of_three_hosts_loses_nobody_and_sends_no_step_twice(
    tmp_path: Path,
    pg_url: str,
    faked: Mailcli,
    three_servers: list[tuple[SmtpServer, Recorder]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kill -9 of one of three hosts while its relay holds its 20th welcome: the other two go
    on and, once its 5-second lease has run out, take the members it had claimed and the steps
    it had leased but not handed over; a re-run then sends nothing and reports the welcomes
    left `unknown` (at most one group, that host's; exit 75); nobody got one twice."""
    monkeypatch.setenv("MAILCLI_LEASE_SECONDS", "5")
    rows = [member(i, -1) for i in range(1, 301)]
    everyone = {r["email"] for r in rows}
    first = write_sequence(tmp_path / "drip", rows, state=pg_url, extra='rate: "80/s"\n')
    campaigns = copies(first, 3)
    relays = three_servers
    moment = day(0, 10)
    procs: list[subprocess.Popen[str]] = []
    killed = threading.Event()
    at_kill: dict[str, Any] = {}
    victim = relays[1][1]

    def kill_on(envelope: Any) -> None:
        if len(victim.messages) + 1 == 20 and not at_kill:
            run_id = live_run_of(pg_url, procs[1])
            os.killpg(procs[1].pid, signal.SIGKILL)
            at_kill["run"], at_kill["held"] = run_id, held_by(pg_url, run_id)
            killed.set()

    victim.on_data = kill_on
    results = run_hosts(faked, campaigns, relays, moment, procs)
    assert killed.wait(10) and results[1][0] == -signal.SIGKILL
    for i in (0, 2):
        assert results[i][0] in (0, 75), results[i][2]
    victim.on_data = None
    time.sleep(0.2)  # the relay records the message it held when the kill came
    # What the killed run held: its group in flight (unknown), and members or steps it had
    # claimed but not sent, which the others take once the lease runs out.
    in_flight = {email_of(k) for k, s in at_kill["held"] if "\x1f" in k and s == "unknown"}
    # (A member stays held while its step is in flight: those are not sent again.)
    claimed = {email_of(k) for k, s in at_kill["held"] if s == "pending"} - in_flight
    assert 1 <= len(in_flight) <= WINDOW
    assert claimed, at_kill["held"]

    # The members and steps it had claimed came back once its lease was over: the two others
    # sent them.
    survivors = {e for (_, r) in (relays[0], relays[2]) for e, _ in received(r)}
    assert claimed <= survivors, sorted(claimed - survivors)

    after_kill = len(relays[1][1].messages)
    # (A minute on: each process's clock starts at the moment it is given, and the others ran
    # for seconds past `moment`; a host's clock does not go back.)
    rerun = faked(
        "batch",
        campaigns[1],
        *server_args(relays[1][0]),
        "--json",
        at=moment + timedelta(minutes=1),
    )
    got = [pair for _, r in relays for pair in received(r)]
    assert {step for _, step in got} == {"welcome"}
    assert set(Counter(got).values()) == {1}, "a welcome went out twice"
    assert received(relays[1][1], after_kill) == []  # the others had completed the step
    state = json.loads(cli("status", campaigns[0], "--json", "--failed").stdout)
    welcome = state["steps"]["welcome"]
    unknown = {r["email"] for r in state["recipients"] if r["status"] == "unknown"}
    assert unknown == in_flight  # the killed run's group, and only it
    assert (welcome["unknown"], welcome["pending"]) == (len(unknown), 0)
    assert welcome["sent"] + welcome["unknown"] == 300
    assert {e for e, _ in got} | unknown == everyone
    # Those left `unknown` are reported by every run (exit 75) until their next step goes out.
    assert rerun.returncode == ExitCode.TEMPFAIL, rerun.stdout[:300]
    assert json.loads(rerun.stdout)["steps"]["welcome"]["unknown"] == len(in_flight)


def test_a_rerun_at_once_after_kill_9_sends_what_the_dead_run_held_once_its_lease_is_over(
    tmp_path: Path,
    smtp_server: SmtpServer,
    recorder: Recorder,
    pg_url: str,
    faked: Mailcli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One host killed with kill -9 while the server holds its 37th welcome, and a re-run
    started at once, inside the dead run's 5-second lease: the re-run waits for the lease, then
    sends every welcome the dead run had not handed over (the members it had claimed, the steps
    it had leased for its next group); the dead run's group stays `unknown` (the re-run reports
    it: exit 75), nobody gets a welcome twice."""
    monkeypatch.setenv("MAILCLI_LEASE_SECONDS", "5")
    rows = [member(i, -1) for i in range(1, 201)]
    everyone = {r["email"] for r in rows}
    yaml = write_sequence(tmp_path / "drip", rows, state=pg_url)
    moment = day(0, 10)
    proc: list[subprocess.Popen[str]] = []
    at_kill: dict[str, Any] = {}
    seen = threading.Event()

    def kill_on(envelope: Any) -> None:
        if len(recorder.messages) + 1 == 37 and not seen.is_set():
            run_id = live_run_of(pg_url, proc[0])
            os.killpg(proc[0].pid, signal.SIGKILL)
            at_kill["held"] = held_by(pg_url, run_id)
            seen.set()

    # PIPELINING: the run prepares its next group while the server works on this one, so the
    # kill finds members and steps claimed for it.
    recorder.pipelining = True
    recorder.on_data = kill_on
    proc.append(faked.spawn("batch", yaml, *server_args(smtp_server), "--json", at=moment))
    proc[0].communicate(timeout=60)
    assert seen.wait(10) and proc[0].returncode == -signal.SIGKILL
    recorder.on_data = None
    in_flight = {email_of(k) for k, s in at_kill["held"] if "\x1f" in k and s == "unknown"}
    left = {email_of(k) for k, s in at_kill["held"] if s == "pending"}
    assert 1 <= len(in_flight) <= WINDOW and left
    deadline = time.monotonic() + 10
    while len(recorder.messages) < 37 and time.monotonic() < deadline:
        time.sleep(0.01)
    after_kill = len(recorder.messages)

    rerun = faked("batch", yaml, *server_args(smtp_server), "--json", at=moment)
    again = {e for e, _ in received(recorder, after_kill)}
    assert left - in_flight <= again, sorted(left - in_flight - again)
    # The step is complete; the dead run's group is reported `unknown` (exit 75).
    assert rerun.returncode == ExitCode.TEMPFAIL, rerun.stderr
    reported = json.loads(rerun.stdout)
    assert (reported["sent"], reported["unknown"]) == (len(again), len(in_flight))
    assert reported["steps"]["welcome"]["unknown"] == len(in_flight)
    got = received(recorder)
    assert set(Counter(got).values()) == {1}, "a welcome went out twice"
    state = json.loads(cli("status", yaml, "--json", "--failed").stdout)
    welcome = state["steps"]["welcome"]
    unknown = {r["email"] for r in state["recipients"] if r["status"] == "unknown"}
    assert unknown == in_flight and unknown.isdisjoint(again)
    assert (welcome["sent"] + welcome["unknown"], welcome["pending"]) == (200, 0)
    assert {e for e, _ in got} | unknown == everyone


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_a_step_left_unknown_is_reported_by_every_run_until_the_next_step_goes_out(
    tmp_path: Path, library: Library, recorder: Recorder, pg_url: str, store: str
) -> None:
    """The server hangs up after bob's welcome (its answer lost: `unknown`). Every later run
    before his tips reports it (exit 75, steps.welcome.unknown 1) and sends him nothing, on a
    shared state as on SQLite; the run that sends his tips goes on past it (exit 0)."""
    rows = [member(1, -1), member(2, -1)]
    ann, bob = (r["email"] for r in rows)
    yaml = write_sequence(tmp_path / store, rows, state=pg_url if store == "postgresql" else None)
    recorder.hangup_after_data = lambda envelope: envelope.rcpt_tos == [bob]
    summary, got = library.run(yaml, day(0, 9))
    assert got == [(ann, "welcome")] and summary.exit_code == ExitCode.TEMPFAIL
    recorder.hangup_after_data = None
    for moment in (day(0, 10), day(1, 9), day(2, 8)):
        summary, got = library.run(yaml, moment)
        assert got == [], moment
        assert summary.steps is not None
        assert (summary.unknown, summary.steps["welcome"]["unknown"]) == (1, 1), moment
        assert summary.exit_code == ExitCode.TEMPFAIL, moment
    summary, got = library.run(yaml, day(2, 9))
    assert sorted(got) == [(ann, "tips"), (bob, "tips")]
    assert (summary.unknown, summary.exit_code) == (0, ExitCode.OK)


# --- 4. a host without the list, a member who left it, if:, suppression -----------------------


def test_a_host_without_the_list_sends_what_the_store_holds_and_leavers_if_and_suppressed(
    tmp_path: Path, library: Library, pg_url: str
) -> None:
    """Two hosts: the importer has the CSV, the other's copy of the folder has none and sends
    what the store holds. A member removed from the importer's CSV gets no further step; the
    offer's `if: plan == 'free'` false is recorded skipped (status steps.offer.skipped); a
    suppressed member gets no step (counted suppressed, pending)."""
    rows = [
        member(1, -1, plan="free"),
        member(2, -1, plan="paid"),
        member(3, -1, plan="free"),
        member(4, -1, plan="free"),
    ]
    ann, bob, chloe, dan = (r["email"] for r in rows)
    importer = write_sequence(
        tmp_path / "drip", rows, state=pg_url, conditions={"offer": "plan == 'free'"}
    )
    [_, listless] = copies(importer, 2)
    (listless.parent / "list.csv").unlink()

    first, got = library.run(importer, day(0, 9), limit=1)
    assert got == [(ann, "welcome")] and first.total == 4
    summary, got = library.run(listless, day(0, 9))
    assert sorted(got) == [(bob, "welcome"), (chloe, "welcome"), (dan, "welcome")]
    assert (summary.total, summary.exit_code) == (4, ExitCode.OK)

    write_csv(importer.parent / "list.csv", [r for r in rows if r["email"] != chloe])
    blocklist = mailcli.suppression_list(pg_url)
    assert blocklist.add(dan, mailcli.SuppressionReason.UNSUBSCRIBED)
    blocklist.close()
    _, got = library.run(importer, day(2, 9), limit=1)  # imports: chloe has left the list
    assert got == [(ann, "tips")]
    summary, got = library.run(listless, day(2, 9))
    assert got == [(bob, "tips")]
    assert summary.steps is not None and summary.steps["tips"]["suppressed"] == 1
    assert (summary.suppressed, summary.total, summary.exit_code) == (1, 3, ExitCode.OK)

    summary, got = library.run(listless, day(9, 9))
    assert got == [(ann, "offer")]  # bob is on the paid plan: skipped; chloe left; dan blocked
    assert summary.steps is not None and summary.steps["offer"]["skipped"] == 1
    for moment in (day(9, 10), day(30)):
        assert library.run(importer, moment)[1] == []
        assert library.run(listless, moment)[1] == []

    state = json.loads(cli("status", importer, "--json").stdout)
    assert state["skipped"] == 1
    assert {n: (c["sent"], c["skipped"], c["pending"]) for n, c in state["steps"].items()} == {
        "welcome": (4, 0, 0),
        "tips": (2, 0, 1),  # of the three members the list has, dan has not had it
        "offer": (1, 1, 1),
    }
    assert json.loads(cli("status", listless, "--json").stdout)["steps"] == state["steps"]
    gone = json.loads(cli("status", importer, "--recipient", chloe, "--json").stdout)
    assert gone["in_list"] is False and gone["next"] is None
    assert [s["status"] for s in gone["steps"]] == ["sent", "pending", "pending"]


# --- 5. a step added to a finished sequence -------------------------------------------------


def test_a_step_added_at_the_end_goes_to_those_who_had_finished(
    tmp_path: Path, library: Library, pg_url: str
) -> None:
    """welcome 0d and tips 5d, finished by ann and bob on day 5; carol (start day 4) waits for
    her tips. Adding `bonus: 8d` at the end sends it on day 8 to ann and bob (three days after
    their tips), and not to carol; then moving the tips to 2d sends carol hers at once (a
    schedule edit makes every member looked at again, even one whose next look was days
    away), each run as the dry run said."""
    rows = [member(1, 0), member(2, 0), member(3, 4)]
    ann, bob, carol = (r["email"] for r in rows)
    folder = tmp_path / "drip"
    v1 = {"welcome": 0, "tips": 5}
    yaml = write_sequence(folder, rows, state=pg_url, steps=v1)

    def run(at: datetime) -> list[Pair]:
        predicted = library.dry(yaml, at)[1]
        got = library.run(yaml, at)[1]
        assert got == predicted, at
        return sorted(got)

    assert run(day(0, 9)) == [(ann, "welcome"), (bob, "welcome")]
    assert run(day(5, 9)) == [(ann, "tips"), (bob, "tips"), (carol, "welcome")]
    assert run(day(6, 9)) == []  # carol's tips: day 10, 09:00 (five days after her welcome)
    assert run(day(7, 9)) == []

    write_sequence(folder, rows, state=pg_url, steps={**v1, "bonus": 8})
    assert run(day(8, 9)) == [(ann, "bonus"), (bob, "bonus")]
    write_sequence(folder, rows, state=pg_url, steps={"welcome": 0, "tips": 2, "bonus": 8})
    assert run(day(8, 10)) == [(carol, "tips")]  # due since day 7, 09:00
    assert run(day(20)) == [(carol, "bonus")]
    assert run(day(40)) == []


# --- 6. one kind of campaign per state --------------------------------------------------------


ONE_MESSAGE = """\
name: {name}
from: "Test Sender <sender@example.com>"
recipients: list.csv
subject: "[single] {{{{ first_name }}}}"
text: body.txt.j2
state: "{url}"
"""


def test_a_one_message_campaigns_state_is_refused_to_a_sequence_of_its_name(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder, pg_url: str
) -> None:
    """A one-message campaign sent on PostgreSQL, then its file turned into a sequence of the
    same name: the run and the dry run are refused with exit 78 (the state holds a one-message
    campaign's progress), nothing is sent."""
    rows = [member(i, -1) for i in range(1, 4)]
    yaml = write_sequence(tmp_path / "c", rows, state=pg_url, name="news")
    yaml.write_text(ONE_MESSAGE.format(name="news", url=pg_url), encoding="utf-8")
    sent = cli("batch", yaml, *server_args(smtp_server), "--json")
    assert sent.exit_code == 0, sent.output
    assert len(recorder.messages) == 3

    write_sequence(tmp_path / "c", rows, state=pg_url, name="news")
    for args in (server_args(smtp_server), ["--dry-run"]):
        refused = cli("batch", yaml, *args)
        assert refused.exit_code == ExitCode.CONFIG, refused.output
        assert "one-message campaign" in refused.stderr
    assert len(recorder.messages) == 3


def test_a_sequences_state_is_refused_to_a_one_message_campaign_of_its_name(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder, pg_url: str
) -> None:
    """A sequence sent on PostgreSQL (its welcome), then its file turned into a one-message
    campaign of the same name: refused with exit 78 (the state holds a sequence's progress),
    nothing sent: the members must not get the one message on top of their welcome."""
    rows = [member(i, -1) for i in range(1, 4)]
    yaml = write_sequence(tmp_path / "c", rows, state=pg_url, name="news")
    sent = cli("batch", yaml, *server_args(smtp_server), "--json")
    assert sent.exit_code == 0, sent.output
    assert len(recorder.messages) == 3

    yaml.write_text(ONE_MESSAGE.format(name="news", url=pg_url), encoding="utf-8")
    refused = cli("batch", yaml, *server_args(smtp_server), "--json")
    assert [step for _, step in received(recorder, 3)] == [], "the one message went out"
    assert refused.exit_code == ExitCode.CONFIG, refused.output
    assert "sequence" in refused.stderr
    with pytest.raises(ConfigError, match="sequence"):
        mailcli.send_campaign(
            load_campaign(yaml),
            mailcli.Mailer(host="127.0.0.1", port=smtp_server.port, security="none"),
        )
    assert len(recorder.messages) == 3


# --- 7. races between runs (found by review) ------------------------------------------------


def test_two_runs_at_once_over_many_finished_members_both_end_and_send_the_due_step(
    tmp_path: Path, pg_url: str, smtp_server: SmtpServer, recorder: Recorder, monkeypatch: Any
) -> None:
    """Two runs started together (two hosts' cron in the same minute) over 3,000 members
    whose sequence is over and one new member whose welcome is due: each member is looked at
    once (a newer run may take one back from an older one, never the other way), so both
    runs end, and the welcome goes out once."""
    rows = [member(i, -1, plan="free") for i in range(1, 3001)]
    first = write_sequence(
        tmp_path / "drip",
        rows,
        state=pg_url,
        steps={"welcome": 0},
        conditions={"welcome": "plan == 'paid'"},
    )
    mailer = mailcli.Mailer(host="127.0.0.1", port=smtp_server.port, security="none")
    assert mailcli.send_campaign(load_campaign(first), mailer, clock=lambda: day(0, 10)).sent == 0
    write_csv(first.parent / "list.csv", [*rows, member(9999, 1, plan="paid")])
    a, b = copies(first, 2)
    barrier = threading.Barrier(2)
    start_run = PgState.start_run

    def together(self: PgState) -> int:
        barrier.wait(timeout=30)
        return start_run(self)

    monkeypatch.setattr(PgState, "start_run", together)
    stopping = threading.Event()
    results: dict[str, Summary] = {}

    def run(name: str, yaml: Path) -> None:
        campaign = load_campaign(yaml)
        moment = day(1, 10)
        results[name] = mailcli.send_campaign(
            campaign, mailer, clock=lambda: moment, stop=stopping.is_set
        )

    threads = [
        threading.Thread(target=run, args=(n, y), daemon=True) for n, y in (("a", a), ("b", b))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    alive = [thread.is_alive() for thread in threads]
    stopping.set()
    for thread in threads:
        thread.join(timeout=30)
    assert alive == [False, False], "two runs at once never ended"
    assert received(recorder) == [("user9999@example.com", "welcome")]
    assert sum(s.sent for s in results.values()) == 1


def test_a_step_another_run_has_sent_since_it_was_read_is_not_leased_again(
    tmp_path: Path, pg_url: str
) -> None:
    """Run A leases a member's welcome and records it sent; run B, which read the member's
    steps before that (no record of the welcome), asks for the step's lease: refused, since the
    step is no longer what B read, so B cannot send it a second time."""
    rows = [member(1, -1)]
    yaml = write_sequence(tmp_path / "drip", rows, state=pg_url, steps={"welcome": 0})
    campaign = load_campaign(yaml)
    email = rows[0]["email"]
    with PgState.open(pg_url, campaign.name) as a, PgState.open(pg_url, campaign.name) as b:
        a.import_rows([r.recipient for r in _ready(campaign)], members=True, met=day(0))
        a.steps = b.steps = ("welcome",)
        a.start_run()
        b.start_run()
        assert a.claim_members(10, day(0, 10).timestamp())
        assert a.lease_unit(email, "welcome", None)
        a.begin_flight([Flight(email, 1, None, "welcome")])
        a.record(Outcome(f"{email}\x1fwelcome", DeliveryStatus.SENT, 250, "ok"))
        a.flush()
        assert not b.lease_unit(email, "welcome", None)
        assert b.step_records(email)["welcome"].entry.status is DeliveryStatus.SENT


def _ready(campaign: Any) -> list[Any]:
    from mailcli.pipeline import Pipeline, Ready

    return [i for i in Pipeline(campaign).items(render=False) if isinstance(i, Ready)]


def test_a_database_that_sorts_by_an_icu_collation_finds_each_step_once(
    tmp_path: Path, pg_cluster: Any, library: Library, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A production database often sorts text by a locale (ICU's or glibc's), which ignores
    the separator between an address and its step: the steps' records are looked up by their
    exact keys, so a run finds what went out and sends nothing twice."""
    url = pg_cluster.create_database(f"icu_{uuid.uuid4().hex[:10]}", icu_locale="en-US")
    monkeypatch.setenv("PGPASSWORD", pg_cluster.password)
    rows = [member(1, -1), member(2, 0)]
    yaml = write_sequence(tmp_path / "icu", rows, state=url)
    _, got = library.run(yaml, day(0, 10))
    assert sorted(got) == [("user001@example.com", "welcome"), ("user002@example.com", "welcome")]
    assert library.run(yaml, day(0, 11))[1] == []  # nothing twice
    _, got = library.run(yaml, day(2, 10))
    # Tips only (two days after each welcome), not the welcome again.
    assert sorted(got) == [("user001@example.com", "tips"), ("user002@example.com", "tips")]
    state = json.loads(cli("status", yaml, "--json").stdout)
    assert state["steps"]["welcome"]["sent"] == 2 and state["steps"]["welcome"]["pending"] == 0
