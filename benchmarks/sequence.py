"""What a sequence (`steps:`) costs a run, against a one-message campaign of the same rows.

Each run of a sequence reads the whole list and works out, for each row, the step that is due
(`mailcli.sequence_rows.Sequencer`, `mailcli.sequence.decide`): it renders the row's `start:`
and `timezone:`, reads the recipient's step records from the SQLite state (one range read of
the key index per row) and applies the due rule. The sequence has three steps (welcome 0d,
tips 2d, offer 7d with an `if:`), `start: "{{ signed_up_at }}"`, `timezone: "{{ tz }}"` (six
zones) and `window: "09:00-17:00"`; the baseline is a one-message campaign of the same list
whose message has the same shape (a personal subject, a text and an HTML template of the same
size as each step's), so the difference is the sequence's own work. Each figure is a whole
`mailcli batch` process (start-up included), the median of `--runs`, taken round by round (every
command once a round) so that all see the same machine:

- `--dry-run` (baseline, `--jobs 1`: a sequence's dry run renders in one process; the default,
  a worker per core, is printed too) against `--dry-run --at T0` with no state yet (welcome
  due for every row), and `--dry-run --at T0+2d` with a state in which every row has had
  welcome (tips due for every row);
- a real run into Postfix's smtp-sink (baseline, from an empty state each time) against a
  real run at T0+2d from that state (a fresh copy each time): tips to every row. Both run
  under `faketime` (the sequence's clock), so both pay for it alike.

The state is made by a real run of the sequence at T0 into smtp-sink, through the library
(`send_campaign(..., clock=lambda: T0)`, in a process of its own). Peak memory is the process's
own peak RSS, as GNU time reports it (`/usr/bin/time -f %M`; without it, `common.run_process`);
CPU is user + system time of the process and the children it waited for (not smtp-sink's).
The overhead per row is the difference of the medians divided by the rows, of wall time and of
CPU time: on a machine others share, the CPU figure is the steadier one.

    python benchmarks/sequence.py [--rows 20000] [--runs 3]

Needs smtp-sink (Debian package postfix) and faketime (Debian package faketime).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from common import NAMES, mailcli, run_process
from vs_smtp_source import free_port, start_sink

# Monday 2 February 2026, 14:30 UTC: inside 09:00-17:00 in every zone below (New York 09:30,
# Johannesburg 16:30); two days later at 14:45 too, and tips (2d after welcome went out at
# 14:30) is due for everyone.
T0 = datetime(2026, 2, 2, 14, 30, tzinfo=UTC)
T2 = T0 + timedelta(days=2, minutes=15)
ZONES = [
    "Europe/Paris",
    "Europe/London",
    "America/New_York",
    "America/Sao_Paulo",
    "Africa/Johannesburg",
    "UTC",
]
TEXT = (
    "Hello {{ first_name }},\n\n{{ lead }} {{ company }}! Your {{ plan }} plan is ready.\n"
    "Questions go to {{ support_url }}.\n\n-- The {{ company }} team\n"
)
HTML = (
    "<html><body><h1>Hello {{ first_name }},</h1>\n<p>{{ lead }} <b>{{ company }}</b>! "
    'Your <i>{{ plan }}</i> plan is ready.</p>\n<p>Questions go to <a href="{{ support_url }}'
    '">{{ support_url }}</a>.</p>\n<p>The {{ company }} team</p></body></html>\n'
)
# name: (the words that open the message, the subject); "message" is the baseline's.
MESSAGES = {
    "message": ("welcome to", "Welcome to Acme, {{ first_name }}!"),
    "welcome": ("welcome to", "Welcome to Acme, {{ first_name }}!"),
    "tips": ("three tips for", "Three tips for you, {{ first_name }}"),
    "offer": ("an offer from", "{{ first_name }}, 20% off Acme Pro"),
}
COMMON = (
    'from: "Acme Team <team@acme.example>"\nrecipients: recipients.csv\n'
    'vars: {company: Acme, support_url: "https://acme.example/help"}\n'
)


def write_list(path: Path, rows: int) -> None:
    """`rows` recipients who signed up the day before T0, at times and in zones of their own
    (some as a date, some as an instant in UTC)."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["email", "name", "first_name", "plan", "token", "signed_up_at", "tz"])
        for i in range(rows):
            name = NAMES[i % len(NAMES)]
            minute = i * 7 % 1440
            signed_up = f"2026-02-01T{minute // 60:02d}:{minute % 60:02d}"
            if i % 10 == 0:
                signed_up = "2026-02-01"
            elif i % 10 == 1:
                signed_up += ":00Z"
            writer.writerow(
                [
                    f"user{i:07d}@example.com",
                    f"{name} {i}",
                    name.split()[0],
                    ("Pro", "Free", "Team")[i % 3],
                    f"t-{i:08x}",
                    signed_up,
                    ZONES[i % len(ZONES)],
                ]
            )


def make_campaigns(folder: Path, rows: int) -> tuple[Path, Path]:
    """The baseline (one message) and the sequence, in folders of their own, on one list."""
    lst = folder / "recipients.csv"
    folder.mkdir(parents=True)
    write_list(lst, rows)
    made = []
    for kind in ("single", "sequence"):
        where = folder / kind
        where.mkdir()
        shutil.copyfile(lst, where / "recipients.csv")
        for name, (lead, _) in MESSAGES.items():
            for ext, template in (("txt", TEXT), ("html", HTML)):
                text = template.replace("{{ lead }}", lead)
                (where / f"{name}.{ext}.j2").write_text(text, encoding="utf-8")
        if kind == "single":
            yaml = (
                f"name: single\n{COMMON}subject: {json.dumps(MESSAGES['message'][1])}\n"
                "text: message.txt.j2\nhtml: message.html.j2\n"
            )
        else:
            yaml = (
                f"name: sequence\n{COMMON}"
                'start: "{{ signed_up_at }}"\ntimezone: "{{ tz }}"\nwindow: "09:00-17:00"\n'
                "steps:\n"
            )
            for name, after in (("welcome", "0d"), ("tips", "2d"), ("offer", "7d")):
                yaml += (
                    f"  - name: {name}\n    after: {after}\n"
                    f"    subject: {json.dumps(MESSAGES[name][1])}\n"
                    f"    text: {name}.txt.j2\n    html: {name}.html.j2\n"
                )
            yaml += "    if: \"plan == 'Free'\"\n"
        campaign = where / "campaign.yaml"
        campaign.write_text(yaml, encoding="utf-8")
        made.append(campaign)
    return made[0], made[1]


def build_state(campaign: Path, port: int) -> None:
    """The run at T0 into smtp-sink: welcome to every row, recorded as sent at T0."""
    import mailcli as lib

    summary = lib.send_campaign(
        campaign,
        lib.Mailer(host="127.0.0.1", port=port, security="none"),
        clock=lambda: T0,
    )
    assert summary.exit_code == 0 and summary.sent > 0, summary
    print(summary.sent)


@dataclass
class Case:
    """One command, run once a round; what each run took, and what the last one printed."""

    label: str
    command: list[str]
    counted: str  # the summary's count that must be every row: would_send or sent
    baseline: str | None = None  # the label of the case it is compared with
    before: Callable[[], None] | None = None  # called ahead of each run
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    peaks: list[float] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def wall(self) -> float:
        return statistics.median(self.walls)

    @property
    def cpu(self) -> float:
        return statistics.median(self.cpus)


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float, float, str]:
    """Wall seconds, CPU seconds (user + system, with the children it waited for), peak RSS
    (MB) and stdout of a command that must exit 0."""
    gnu_time = Path("/usr/bin/time")
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    if not gnu_time.exists():
        run = run_process(command, env=env)
        assert run.returncode == 0, (command, run.returncode, run.stdout[:500])
        seconds, peak, stdout = run.seconds, run.peak_rss_mb, run.stdout
    else:
        with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
            started = time.perf_counter()
            done = subprocess.run(
                [str(gnu_time), "-f", "%M", "-o", report.name, *command],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                env={**os.environ, **env},
            )
            seconds = time.perf_counter() - started
            assert done.returncode == 0, (command, done.returncode, done.stdout[:500])
            peak, stdout = int(report.read().split()[-1]) / 1024, done.stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - used.ru_utime - used.ru_stime
    return seconds, cpu, peak, stdout


def steps_of(summary: dict[str, Any]) -> str:
    """The per-step counts a sequence's run printed, e.g. `welcome 20,000 would_send`."""
    return ", ".join(
        f"{name} {n:,} {what}"
        for name, by in summary.get("steps", {}).items()
        for what, n in by.items()
        if n and what in ("would_send", "sent", "skipped", "held", "waiting")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--build", nargs=2, metavar=("CAMPAIGN", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        build_state(Path(args.build[0]), int(args.build[1]))
        return
    if not shutil.which("smtp-sink") or not shutil.which("faketime"):
        raise SystemExit("needs smtp-sink and faketime: apt-get install postfix faketime")
    rows = args.rows
    port = free_port()
    sink = start_sink(port)
    try:
        with tempfile.TemporaryDirectory() as folder:
            tmp = Path(folder)
            single, seq = make_campaigns(tmp / "c", rows)
            # The sequence as it is before any run (its dry run at T0 reads no state).
            new = tmp / "c" / "new"
            shutil.copytree(seq.parent, new)
            # An empty list of their own, so that the user's is neither read nor written.
            env = {"MAILCLI_SUPPRESSION": str(tmp / "suppression.sqlite"), "TZ": "UTC"}
            built = run_process([sys.executable, __file__, "--build", str(seq), str(port)], env=env)
            assert built.returncode == 0 and int(built.stdout) == rows, built.stdout
            state = seq.parent / ".mailcli"
            kept = tmp / "state-after-welcome"
            shutil.copytree(state, kept)

            def fresh_single() -> None:
                shutil.rmtree(single.parent / ".mailcli", ignore_errors=True)

            def after_welcome() -> None:
                shutil.rmtree(state, ignore_errors=True)
                shutil.copytree(kept, state)

            dry = ["--dry-run", "--json"]
            send = ["--json", "--host", "127.0.0.1", "--port", str(port), "--security", "none"]
            faked = ["faketime", "-f", f"@{T2:%Y-%m-%d %H:%M:%S}"]
            base_dry, base_real = "dry, one message (--jobs 1)", "real, one message"
            cases = [
                Case(base_dry, mailcli("batch", str(single), *dry, "--jobs", "1"), "would_send"),
                Case(
                    "dry, one message (default jobs)",
                    mailcli("batch", str(single), *dry),
                    "would_send",
                ),
                Case(
                    "dry --at T0, no state",
                    mailcli("batch", str(new / "campaign.yaml"), *dry, "--at", T0.isoformat()),
                    "would_send",
                    base_dry,
                ),
                Case(
                    "dry --at T0+2d, welcome sent",
                    mailcli("batch", str(seq), *dry, "--at", T2.isoformat()),
                    "would_send",
                    base_dry,
                    after_welcome,  # as the last round's real run left it, tips is sent
                ),
                Case(
                    base_real,
                    [*faked, *mailcli("batch", str(single), *send)],
                    "sent",
                    before=fresh_single,
                ),
                Case(
                    "real at T0+2d, welcome sent",
                    [*faked, *mailcli("batch", str(seq), *send)],
                    "sent",
                    base_real,
                    after_welcome,
                ),
            ]
            for _ in range(args.runs):  # round by round, so that all see the same machine
                for case in cases:
                    if case.before is not None:
                        case.before()
                    wall, cpu, peak, stdout = timed(case.command, env)
                    case.walls.append(wall)
                    case.cpus.append(cpu)
                    case.peaks.append(peak)
                    case.summary = json.loads(stdout)
                    assert case.summary[case.counted] == rows, (case.label, case.summary)
    finally:
        sink.terminate()
        sink.wait(10)

    by_label = {case.label: case for case in cases}
    print(
        f"{rows:,} rows, {os.cpu_count()} cores; medians of {args.runs} whole `mailcli batch`"
        f" processes (T0 = {T0:%Y-%m-%dT%H:%MZ}); a sequence's dry run against the one-message"
        " dry run --jobs 1, its real run against the one-message real run"
    )
    print(
        f"  {'run':<32}{'wall s':>8}{'messages/s':>12}{'CPU s':>8}{'peak RSS MB':>13}"
        f"{'wall ratio':>12}{'us/row wall':>13}{'us/row CPU':>12}"
    )
    for case in cases:
        line = (
            f"  {case.label:<32}{case.wall:>8.2f}{rows / case.wall:>12,.0f}{case.cpu:>8.2f}"
            f"{max(case.peaks):>13.1f}"
        )
        if case.baseline is not None:
            base = by_label[case.baseline]
            extra_wall = (case.wall - base.wall) / rows * 1e6
            extra_cpu = (case.cpu - base.cpu) / rows * 1e6
            line += f"{case.wall / base.wall:>11.2f}x{extra_wall:>+13.0f}{extra_cpu:>+12.0f}"
        print(line)
    print("  each run, wall s / CPU s:")
    for case in cases:
        each = ", ".join(f"{w:.2f}/{c:.2f}" for w, c in zip(case.walls, case.cpus, strict=True))
        steps = steps_of(case.summary)
        print(f"    {case.label:<32}{each}" + (f"  [{steps}]" if steps else ""))


if __name__ == "__main__":
    main()
