"""Shared pieces of the benchmarks: a campaign built from the shipped sample, with a generated
list of personalised rows (a third of the names non-ASCII), and a way to time a whole process."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "campaigns" / "welcome"
NAMES = [
    "Ann Lee",
    "Bob Martin",
    "Chloé Dubois",
    "Dmitri Ivanov",
    "Emma O'Brien",
    "Jürgen Groß",
    "Li Wei",
    "María José",
    "Noah Smith",
]


def make_campaign(folder: Path, rows: int, *, extra: str = "") -> Path:
    """Copy the sample campaign into `folder` with a list of `rows` personalised recipients."""
    shutil.copytree(SAMPLE, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".mailcli"))
    with open(folder / "recipients.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["email", "name", "first_name", "plan", "token"])
        for i in range(rows):
            name = NAMES[i % len(NAMES)]
            writer.writerow(
                [
                    f"user{i:07d}@example.com",
                    f"{name} {i}",
                    name.split()[0],
                    ("Pro", "Free", "Team")[i % 3],
                    f"t-{i:08x}",
                ]
            )
    campaign = folder / "campaign.yaml"
    text = campaign.read_text(encoding="utf-8").replace('rate: "50/s"\n', "")
    campaign.write_text(text + extra, encoding="utf-8")
    return campaign


def make_plain_campaign(folder: Path, rows: int) -> Path:
    """The sample campaign reduced to one text and one HTML template and a personal subject:
    no inheritance, no attachment, no extra headers."""
    campaign = make_campaign(folder, rows)
    (folder / "plain.txt.j2").write_text(
        "Hello {{ first_name }},\n\nwelcome to {{ company }}! Your {{ plan }} plan is ready.\n"
        "Questions go to {{ support_url }}.\n\n-- The {{ company }} team\n",
        encoding="utf-8",
    )
    (folder / "plain.html.j2").write_text(
        "<html><body><h1>Hello {{ first_name }},</h1>\n<p>welcome to <b>{{ company }}</b>! "
        'Your <i>{{ plan }}</i> plan is ready.</p>\n<p>Questions go to <a href="{{ support_url }}'
        '">{{ support_url }}</a>.</p>\n<p>The {{ company }} team</p></body></html>\n',
        encoding="utf-8",
    )
    campaign.write_text(
        'name: plain\nfrom: "Acme Team <team@acme.example>"\n'
        'subject: "Welcome to Acme, {{ first_name }}!"\ntext: plain.txt.j2\n'
        "html: plain.html.j2\nrecipients: recipients.csv\n"
        'vars: {company: Acme, support_url: "https://acme.example/help"}\n',
        encoding="utf-8",
    )
    return campaign


@dataclass(frozen=True)
class ProcessRun:
    """A finished child process: its wall time, peak memory and output.

    `peak_rss_mb` is the child's own peak RSS (wait4). `tree_rss_mb` is the peak of the summed
    RSS of the child and every process it started (worker processes), sampled from /proc every
    20 ms; it counts pages that forked workers share with their parent once per process, so it
    overstates what the machine really spends.
    """

    seconds: float
    peak_rss_mb: float
    tree_rss_mb: float
    stdout: str
    returncode: int


def _tree_rss_kb(pid: int) -> int:
    """Summed VmRSS of `pid` and its descendants (0 once it has gone)."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def run_process(args: list[str], *, env: dict[str, str] | None = None) -> ProcessRun:
    """Run a command to completion; wall time, and its peak memory (own, and with workers)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout is not None
    done = threading.Event()
    tree_kb = [0]

    def sample() -> None:
        while not done.wait(0.02):
            tree_kb[0] = max(tree_kb[0], _tree_rss_kb(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    rss_kb = usage.ru_maxrss  # kilobytes on Linux
    return ProcessRun(
        seconds, rss_kb / 1024, max(tree_kb[0], rss_kb) / 1024, stdout, proc.returncode
    )


def mailcli(*args: str) -> list[str]:
    """The command line of the installed mailcli, in this interpreter."""
    return [sys.executable, "-m", "mailcli", *args]
