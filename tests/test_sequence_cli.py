"""Sequences (`steps:`) end to end: real `mailcli` processes whose clock `faketime` moves to
chosen days, against a real SMTP server that keeps the real clock.

What each run sends is read on the server side (To and Subject) and checked against the due rule
worked out independently here, and against what `batch --dry-run --at` of the same moment
predicted; kill -9 in the middle of a step loses nobody and sends no step twice.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import Recorder, make_campaign, server_args, write_csv
from faketimed import Mailcli

from mailcli.delivery import WINDOW
from mailcli.errors import ExitCode
from mailcli.sandbox import SmtpServer

DAY0 = datetime(2026, 3, 2, tzinfo=UTC)  # the day of the first run
STEPS = {"welcome": 0, "tips": 2, "offer": 7}  # each step's `after`, in days
ORDER = list(STEPS)
# What `-v` logs for each message a dry run would send.
WOULD_SEND = re.compile(r"would send step '([^']+)' to row (\d+) <([^>]+)>$")
STEP_KEYS = ("sent", "failed", "deferred", "unknown", "skipped", "suppressed", "waiting", "held")
DRY_STEP_KEYS = ("would_send", "skipped", "suppressed", "waiting", "held")
STATUS_STEP_KEYS = ("sent", "pending", "skipped", "failed", "deferred", "unknown")

Pair = tuple[str, str]  # (recipient, step)


@pytest.fixture
def mailcli(faketime: str) -> Mailcli:
    return Mailcli(faketime)


def write_sequence(folder: Path, rows: list[dict[str, str]]) -> Path:
    """A three-step sequence (subjects "[welcome] ...", "[tips] ...", "[offer] ...") started by
    each row's `signed_up_at`, in UTC, without a window."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "body.txt.j2").write_text("Hi {{ first_name }},\nmore soon.\n", encoding="utf-8")
    write_csv(folder / "list.csv", rows)
    steps = "".join(
        f'  - {{name: {name}, after: {days}d, subject: "[{name}] {{{{ first_name }}}}"}}\n'
        for name, days in STEPS.items()
    )
    yaml = folder / "campaign.yaml"
    yaml.write_text(
        "name: onboarding\n"
        'from: "Test Sender <sender@example.com>"\n'
        "recipients: list.csv\n"
        'start: "{{ signed_up_at }}"\n'
        "timezone: UTC\n"
        "text: body.txt.j2\n"
        "steps:\n" + steps,
        encoding="utf-8",
    )
    return yaml


def signed_up(n: int, day: Any) -> list[dict[str, str]]:
    """n rows; `day(i)` is row i's start, in days from DAY0 (an ISO date: midnight UTC)."""
    return [
        {
            "email": f"user{i:03d}@example.com",
            "first_name": f"U{i}",
            "signed_up_at": (DAY0 + timedelta(days=day(i))).date().isoformat(),
        }
        for i in range(1, n + 1)
    ]


def received(recorder: Recorder, since: int = 0) -> list[Pair]:
    """(To, step) of each message the server got, in order; the envelope says the same."""
    pairs = []
    for got in recorder.messages[since:]:
        message = got.message
        to = message["To"].addresses[0].addr_spec
        assert got.rcpt_tos == [to]
        m = re.match(r"\[(\w+)\] ", str(message["Subject"]))
        assert m is not None, message["Subject"]
        pairs.append((to, m.group(1)))
    return pairs


def due_now(
    starts: dict[str, datetime], history: dict[str, list[tuple[str, datetime]]], now: datetime
) -> list[Pair]:
    """The (recipient, step) pairs a run at `now` sends, in list order, by the due rule as the
    contract states it: step k at start + after_k, and never sooner than after_k - after_j after
    the step j sent before it (when its run ran); one step per recipient per run, in order."""
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
        # A run takes seconds after its moment; the schedule keeps every due time far from a
        # run, so those seconds never decide.
        assert abs(now - at) >= timedelta(minutes=30), (email, step, at, now)
        if now >= at:
            due.append((email, step))
    return due


def waiting(
    starts: dict[str, datetime], history: dict[str, list[tuple[str, datetime]]], sent: list[Pair]
) -> Counter[str]:
    """Recipients per step that is their next one but not due (nor sent) in this run."""
    now_sent = {email for email, _ in sent}
    return Counter(
        ORDER[len(history.get(email, []))]
        for email in starts
        if email not in now_sent and len(history.get(email, [])) < len(ORDER)
    )


def predicted(result: Any) -> list[Pair]:
    """The (recipient, step) pairs a `batch --dry-run -v` logged, in order."""
    pairs = []
    for line in result.stderr.splitlines():
        if m := WOULD_SEND.search(line):
            pairs.append((m.group(3), m.group(1)))
    return pairs


def step_counts(keys: tuple[str, ...], **per_key: Counter[str]) -> dict[str, dict[str, int]]:
    return {name: {key: per_key.get(key, Counter())[name] for key in keys} for name in ORDER}


@pytest.mark.faketime
def test_runs_on_days_0_2_and_7_send_exactly_the_due_steps_as_the_dry_run_predicts(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder, mailcli: Mailcli
) -> None:
    """30 recipients who signed up over ten days (3 a day, days -5 to 4), welcome 0d, tips 2d,
    offer 7d: runs on day 0, day 2 and day 7 (twice) send exactly the steps due then, each
    (recipient, step) once and in order, as `batch --dry-run --at` of that moment said; the
    spacing holds back the offer on day 7 at 09:00 for those who had their tips on day 2 at
    10:00, though start + 7d has passed for them."""
    # The days are interleaved in the list: list order is not start order.
    rows = signed_up(30, lambda i: i % 10 - 5)
    yaml = write_sequence(tmp_path / "onboarding", rows)
    starts = {r["email"]: DAY0 + timedelta(days=i % 10 - 5) for i, r in enumerate(rows, 1)}
    row_of = {r["email"]: n for n, r in enumerate(rows, 1)}
    history: dict[str, list[tuple[str, datetime]]] = {}
    runs = [
        DAY0 + timedelta(hours=9),
        DAY0 + timedelta(days=2, hours=10),
        DAY0 + timedelta(days=7, hours=9),
        DAY0 + timedelta(days=7, hours=12),
    ]
    sent_per_run = []
    for moment in runs:
        expected = due_now(starts, history, moment)
        # The dry run runs on the machine's clock; --at (naive: local time, TZ=UTC) is the moment.
        at = f"{moment:%Y-%m-%dT%H:%M}"
        dry = mailcli("batch", yaml, "--dry-run", "--at", at, "-v", "--json")
        assert dry.returncode == 0, dry.stderr
        assert predicted(dry) == expected
        assert all(f"to row {row_of[e]} <{e}>" in dry.stderr for e, _ in expected)
        would = Counter(step for _, step in expected)
        assert json.loads(dry.stdout)["steps"] == step_counts(
            DRY_STEP_KEYS, would_send=would, waiting=waiting(starts, history, expected)
        )

        before = len(recorder.messages)
        run = mailcli("batch", yaml, *server_args(smtp_server), "--json", at=moment)
        assert run.returncode == 0, run.stderr
        assert received(recorder, before) == expected
        summary = json.loads(run.stdout)
        assert (summary["sent"], summary["failed"], summary["unknown"]) == (len(expected), 0, 0)
        assert summary["steps"] == step_counts(
            STEP_KEYS, sent=would, waiting=waiting(starts, history, expected)
        )
        for email, step in expected:
            history.setdefault(email, []).append((step, moment))
        sent_per_run.append(len(expected))

        state = mailcli("status", yaml, "--json")
        assert state.returncode == 0, state.stderr
        had = Counter(step for done in history.values() for step, _ in done)
        pending = Counter({name: 30 - had[name] for name in ORDER})
        assert json.loads(state.stdout).get("steps") == step_counts(
            STATUS_STEP_KEYS, sent=had, pending=pending
        )

    # The schedule is not trivial: every run sends something, and the spacing held 18 offers
    # from the run on day 7 at 09:00 to the one at 12:00.
    assert sent_per_run == [18, 24, 12, 18]
    everything = received(recorder)
    assert len(everything) == len(set(everything)) == 30 + 24 + 18
    for email in starts:
        steps = [step for to, step in everything if to == email]
        assert steps == ORDER[: len(steps)], email  # in order, none twice


@pytest.mark.faketime
def test_kill_9_during_a_step_then_reruns_send_each_step_once(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder, mailcli: Mailcli
) -> None:
    """kill -9 of a real sequence run while the server holds the 37th welcome: at most one group
    is left `unknown`; a re-run at the same faked moment sends the other welcomes, none twice;
    the run on day 2 sends tips to all 200, those whose welcome is unknown included (it counts
    as gone out), and no welcome again."""
    rows = signed_up(200, lambda i: -1)
    everyone = {r["email"] for r in rows}
    yaml = write_sequence(tmp_path / "onboarding", rows)
    moment = DAY0 + timedelta(hours=10)
    proc: list[subprocess.Popen[str]] = []
    killed = threading.Event()

    def kill_on(envelope: Any) -> None:
        if len(recorder.messages) + 1 == 37 and not killed.is_set():
            killed.set()
            os.killpg(proc[0].pid, signal.SIGKILL)

    recorder.on_data = kill_on
    proc.append(mailcli.spawn("batch", yaml, *server_args(smtp_server), "--json", at=moment))
    proc[0].communicate(timeout=60)
    assert proc[0].returncode == -signal.SIGKILL and killed.is_set()
    recorder.on_data = None
    # The server records the message it held (its reply went nowhere) just after the kill.
    deadline = time.monotonic() + 10
    while len(recorder.messages) < 37 and time.monotonic() < deadline:
        time.sleep(0.01)
    after_kill = len(recorder.messages)
    assert after_kill == 37

    rerun = mailcli("batch", yaml, *server_args(smtp_server), "--json", at=moment)
    # Every other welcome due went out; those whose answer the kill lost are reported unknown
    # (exit 75) until the recipient's next step goes out, and never sent again.
    assert rerun.returncode == 75, rerun.stderr
    welcomes = received(recorder)
    assert {step for _, step in welcomes} == {"welcome"}
    assert len(welcomes) == len(set(welcomes)), "a welcome went out twice"
    state = json.loads(mailcli("status", yaml, "--json", "--failed").stdout)
    counts = state["steps"]["welcome"]
    assert 1 <= counts["unknown"] <= WINDOW
    assert counts["sent"] + counts["unknown"] == 200 and counts["pending"] == 0
    unknown = {r["email"] for r in state["recipients"] if r["status"] == "unknown"}
    assert len(unknown) == counts["unknown"]
    assert {to for to, _ in welcomes} | unknown == everyone
    assert unknown.isdisjoint(to for to, _ in received(recorder, after_kill))
    assert json.loads(rerun.stdout)["steps"]["welcome"]["sent"] == len(welcomes) - after_kill
    assert json.loads(rerun.stdout)["unknown"] == len(unknown)
    assert json.loads(rerun.stdout)["steps"]["welcome"]["unknown"] == len(unknown)

    before = len(recorder.messages)
    day2 = mailcli(
        "batch", yaml, *server_args(smtp_server), "--json", at=moment + timedelta(days=2, hours=1)
    )
    tips = received(recorder, before)
    assert sorted(tips) == sorted((email, "tips") for email in everyone)
    summary = json.loads(day2.stdout)
    assert summary["steps"]["tips"]["sent"] == 200 and summary["sent"] == 200
    assert summary["steps"]["welcome"]["sent"] == 0
    # The day-2 run sent every step due, tips included to those whose welcome is unknown: no
    # recipient's last step is unknown any more.
    assert day2.returncode == 0, day2.stderr
    assert summary["unknown"] == 0
    assert all(n == 1 for n in Counter(received(recorder)).values())


@pytest.mark.faketime
def test_a_run_with_nothing_due_exits_0_and_sends_nothing(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder, mailcli: Mailcli
) -> None:
    """Everyone signs up after the run's moment: exit 0 (nothing is left for a next run, no 75)
    and nothing is sent; each recipient waits for the welcome."""
    yaml = write_sequence(tmp_path / "onboarding", signed_up(5, lambda i: i))
    run = mailcli("batch", yaml, *server_args(smtp_server), "--json", at=DAY0)
    assert run.returncode == 0, run.stderr
    assert recorder.messages == []
    summary = json.loads(run.stdout)
    assert (summary["sent"], summary["pending"], summary["exit_code"]) == (0, 0, 0)
    assert summary["steps"]["welcome"]["waiting"] == 5


def test_at_is_for_a_dry_run_of_a_sequence_with_an_iso_time(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    """--at without --dry-run, --at garbage, and --at on a one-message campaign: usage errors,
    one line on stderr each."""
    mailcli = Mailcli(None)
    yaml = write_sequence(tmp_path / "onboarding", signed_up(3, lambda i: 0))
    one = make_campaign(tmp_path / "one").yaml
    cases = [
        ((yaml, *server_args(smtp_server), "--at", "2026-03-02T10:00"), "--at goes with --dry-run"),
        ((yaml, "--dry-run", "--at", "garbage"), "--at: 'garbage' is not an ISO 8601 date-time"),
        ((one, "--dry-run", "--at", "2026-03-02T10:00"), "--at is for a sequence"),
    ]
    for args, message in cases:
        result = mailcli("batch", *args)
        assert result.returncode == ExitCode.USAGE, result.stderr
        assert result.stderr.startswith(f"mailcli: error: {message}")
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert result.stdout == ""


def test_dry_run_at_reads_an_offset_or_the_machines_local_time(tmp_path: Path) -> None:
    """--at with an offset is that instant; without one it is the machine's local time (TZ):
    recipients who start on 2026-03-03 (midnight UTC) are due from then, not before."""
    mailcli = Mailcli(None)
    yaml = write_sequence(tmp_path / "onboarding", signed_up(3, lambda i: 1))
    cases = [
        ("2026-03-03T00:30", "UTC", 3),
        ("2026-03-03T00:30:00+01:00", "UTC", 0),  # 23:30 UTC the day before
        ("2026-03-03T08:30", "Asia/Tokyo", 0),  # 23:30 UTC the day before
        ("2026-03-03T09:30", "Asia/Tokyo", 3),
    ]
    for at, tz, due in cases:
        dry = mailcli("batch", yaml, "--dry-run", "--at", at, "--json", tz=tz)
        assert dry.returncode == 0, dry.stderr
        assert json.loads(dry.stdout)["steps"]["welcome"]["would_send"] == due, (at, tz)


@pytest.mark.faketime
def test_a_window_holds_steps_to_local_hours_in_two_zones_across_a_dst_change(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder, mailcli: Mailcli
) -> None:
    """Must-show 3 with real processes: two recipients, in Paris and New York, a window of
    09:00-17:00 local and a step a day; cron-like runs every hour over New York's change to
    summer time (2026-03-08). Each step goes with the first run inside the recipient's local
    window: 09:00 local both before and after the change, so at 13:00 UTC before it and 12:00
    UTC after it for New York, and at 08:00 UTC for Paris (whose change is on 29 March)."""
    folder = tmp_path / "dst"
    folder.mkdir()
    (folder / "body.txt.j2").write_text("Hi {{ first_name }}\n", encoding="utf-8")
    write_csv(
        folder / "list.csv",
        [
            {"email": "paris@example.com", "first_name": "P", "tz": "Europe/Paris"},
            {"email": "ny@example.com", "first_name": "N", "tz": "America/New_York"},
        ],
    )
    steps = "".join(
        f'  - {{name: d{day}, after: {day}d, subject: "[d{day}] {{{{ first_name }}}}"}}\n'
        for day in range(4)
    )
    yaml = folder / "campaign.yaml"
    yaml.write_text(
        "name: dst\n"
        'from: "Test Sender <sender@example.com>"\n'
        "recipients: list.csv\n"
        'start: "2026-03-06"\n'
        'timezone: "{{ tz }}"\n'
        'window: "09:00-17:00"\n'
        "text: body.txt.j2\n"
        "steps:\n" + steps,
        encoding="utf-8",
    )
    sent_at: dict[Pair, datetime] = {}
    # The hours around each opening of the window (in UTC), each day: a run an hour before it
    # finds the step held.
    for day in range(6, 10):
        for hour in (7, 8, 12, 13, 14):
            moment = datetime(2026, 3, day, hour, tzinfo=UTC)
            before = len(recorder.messages)
            run = mailcli("batch", yaml, *server_args(smtp_server), "--json", at=moment)
            assert run.returncode == 0, run.stderr
            for pair in received(recorder, before):
                assert pair not in sent_at, f"{pair} went twice"
                sent_at[pair] = moment
    hours = {pair: f"{at:%m-%d %H:%M}" for pair, at in sent_at.items()}
    assert hours == {
        ("paris@example.com", "d0"): "03-06 08:00",
        ("paris@example.com", "d1"): "03-07 08:00",
        ("paris@example.com", "d2"): "03-08 08:00",
        ("paris@example.com", "d3"): "03-09 08:00",
        ("ny@example.com", "d0"): "03-06 14:00",  # EST: 09:00 local is 14:00 UTC
        ("ny@example.com", "d1"): "03-07 14:00",
        ("ny@example.com", "d2"): "03-08 13:00",  # EDT from 8 March: 09:00 local is 13:00 UTC
        ("ny@example.com", "d3"): "03-09 13:00",
    }
