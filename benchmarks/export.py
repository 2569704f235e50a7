"""`mailcli status --export`: wall time and peak memory, against two baselines, at several sizes.

For each size N a campaign (the shipped sample with N generated rows) gets a SQLite state of N
recipients written through the store's own methods, as runs would: 90% sent (with a Message-ID),
5% refused, 3% deferred, 2% left unknown; then the last 1% of the list is made new (never met by
a run), so the export also reads the list. Each figure is a whole process (start-up included):

- `mailcli status --export out.csv` and `--export out.jsonl`;
- the `sqlite3` command-line shell writing the same columns with `.mode csv` (a streaming C
  baseline, without the list pass);
- Python reading every row into a list first (`fetchall()`), then writing the CSV: the memory
  an export that does not stream needs.

Peak memory is the process's own peak RSS, as GNU time reports it (`/usr/bin/time -f %M`; without
it, `common.run_process`, whose figure never reads below this script's own peak: Linux counts a
child's peak from its parent's size when it was started). A streaming export's stays flat as N
grows. "state only" exports every status but `pending`, which skips the pass over
the list: the same work as the sqlite3 baseline.

    python benchmarks/export.py [--sizes 10000 100000] [--runs 3]

`--write-cost N` measures instead what the send log costs a run: the state's writes per message
(groups of 32 marked in flight, their outcomes committed with the next group, addresses in a
random order as real lists have them) with the log, and with the log's rows sent to a TEMP
view of the same name whose trigger drops them: the difference is what writing the log costs
(the microsecond or two of Python that builds its rows is in both). `--runs` pairs, each run
back to back; the cost is the median of the pairs' differences.

    python benchmarks/export.py --write-cost 100000 [--runs 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import mailcli, make_campaign, run_process

GROUP = 1000
COLUMNS = (
    "email, row, status, code, reply, message_id, first_at, "
    "CASE WHEN attempts > 0 THEN updated END, attempts, run"
)
NAIVE = f"""
import csv, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
rows = db.execute("SELECT {COLUMNS} FROM recipients ORDER BY row, email").fetchall()
with open(sys.argv[2], "w", newline="", encoding="utf-8") as out:
    writer = csv.writer(out)
    writer.writerow(["email", "row", "status", "code", "reply", "message_id", "first_attempt",
                     "last_attempt", "tries", "run"])
    writer.writerows(rows)
"""


def build_state(campaign: Path, size: int) -> Path:
    """A state of `size` recipients, written group by group as a run writes it."""
    from mailcli.addresses import address_key
    from mailcli.campaign import load_campaign
    from mailcli.state import Outcome, SqliteState

    loaded = load_campaign(campaign, check_files=False)
    emails = [f"user{i:07d}@example.com" for i in range(size)]
    with SqliteState.open(loaded.state_path, loaded.name) as state:
        state.start_run()
        for start in range(0, size, GROUP):
            group = emails[start : start + GROUP]
            state.begin_flight((e, start + i + 1, None) for i, e in enumerate(group))
            for i, email in enumerate(group, start):
                kind = i % 100
                key = address_key(email)
                if kind < 90:
                    mid = f"<{i}.bench@acme.example>"
                    state.record(Outcome(key, "sent", 250, f"2.0.0 Ok: queued as {i:X}", mid))
                elif kind < 95:
                    state.record(Outcome(key, "failed", 550, "5.1.1 <x>: user unknown"))
                elif kind < 98:
                    state.record(Outcome(key, "deferred", 451, "4.7.1 greylisted", None, 1.0))
            state.flush()
        # The last 1% of the list was never met by a run: the export reads the list for them.
        state.db.execute("DELETE FROM recipients WHERE row > ?", (size - size // 100,))
        state.finish_run({"exit_code": 75})
    return loaded.state_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--build", nargs=2, metavar=("CAMPAIGN", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--write-cost", type=int, metavar="N")
    args = parser.parse_args()
    if args.build:
        print(build_state(Path(args.build[0]), int(args.build[1])))
        return
    if args.write_cost:
        with_log, without = [], []
        for _ in range(args.runs):  # alternated, so both see the same machine
            with_log.append(write_cost(args.write_cost, log=True))
            without.append(write_cost(args.write_cost, log=False))
        mine, base = statistics.median(with_log), statistics.median(without)
        print(f"state writes per message, {args.write_cost:,} recipients in random order:")
        print(
            f"  with the send log:    {mine:6.1f} us (of {', '.join(f'{x:.1f}' for x in with_log)})"
        )
        print(
            f"  without (dropped):    {base:6.1f} us (of {', '.join(f'{x:.1f}' for x in without)})"
        )
        # Each pair ran back to back: its difference is the least disturbed by the machine.
        extra = statistics.median(a - b for a, b in zip(with_log, without, strict=True))
        print(
            f"  the log costs {extra:+.1f} us a message ({extra / base:+.0%}; median of the pairs)"
        )
        return
    sqlite3_cli = shutil.which("sqlite3")
    results: list[tuple[int, str, float, float, int]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            campaign = make_campaign(Path(tmp) / f"c{size}", size)
            built = run_process([sys.executable, __file__, "--build", str(campaign), str(size)])
            assert built.returncode == 0
            state = Path(built.stdout.strip())
            out = Path(tmp) / f"out{size}"
            # name: (command, the file it writes, whether that file has a header line)
            commands: dict[str, tuple[list[str], Path, bool]] = {
                "mailcli --export .csv": (
                    mailcli("status", str(campaign), "--export", f"{out}.csv"),
                    Path(f"{out}.csv"),
                    True,
                ),
                "mailcli --export .jsonl": (
                    mailcli("status", str(campaign), "--export", f"{out}.jsonl"),
                    Path(f"{out}.jsonl"),
                    False,
                ),
                "mailcli, state only": (
                    mailcli(
                        "status",
                        str(campaign),
                        "--export",
                        f"{out}.state.csv",
                        "--status",
                        "sent,failed,deferred,unknown",
                    ),
                    Path(f"{out}.state.csv"),
                    True,
                ),
                "python fetchall() + csv": (
                    [sys.executable, "-c", NAIVE, str(state), f"{out}.naive.csv"],
                    Path(f"{out}.naive.csv"),
                    True,
                ),
            }
            if sqlite3_cli:
                commands["sqlite3 .mode csv"] = (
                    [
                        sqlite3_cli,
                        "-readonly",
                        str(state),
                        ".headers on",
                        ".mode csv",
                        f".output {out}.sqlite3.csv",
                        f"SELECT {COLUMNS} FROM recipients ORDER BY row, email;",
                    ],
                    Path(f"{out}.sqlite3.csv"),
                    True,
                )
            for name, (command, written, header) in commands.items():
                seconds, peaks = [], []
                for _ in range(args.runs):
                    wall, peak = measure(command)
                    seconds.append(wall)
                    peaks.append(peak)
                rows = count_lines(written) - header
                results.append((size, name, statistics.median(seconds), max(peaks), rows))
    print(
        f"{'recipients':>10}  {'export':<26}{'rows':>9}{'median s':>10}{'rows/s':>10}"
        f"{'peak RSS MB':>13}"
    )
    for size, name, secs, rss, rows in results:
        print(f"{size:>10,}  {name:<26}{rows:>9,}{secs:>10.2f}{rows / secs:>10,.0f}{rss:>13.1f}")
    first, last = args.sizes[0], args.sizes[-1]
    print(f"peak RSS at {last:,} recipients / at {first:,}:")
    for name in dict.fromkeys(r[1] for r in results):
        peaks = [r[3] for r in results if r[1] == name]
        print(f"  {name:<26}{peaks[-1] / peaks[0]:.2f}x")


def write_cost(size: int, *, log: bool) -> float:
    """Microseconds of state writes per message, as a run makes them (see the docstring)."""
    import random

    from mailcli.addresses import address_key
    from mailcli.state import Outcome, SqliteState

    emails = [f"{random.Random(i).getrandbits(64):016x}@example.com" for i in range(size)]
    with tempfile.TemporaryDirectory() as tmp:
        state = SqliteState.open(Path(tmp) / "state.sqlite", "bench")
        if not log:  # the same inserts, into a view that drops them (temp names come first)
            state.db.executescript(
                "CREATE TEMP VIEW attempts AS SELECT NULL AS key, NULL AS run, NULL AS at,"
                " NULL AS status, NULL AS code, NULL AS reply, NULL AS message_id WHERE 0;"
                "CREATE TEMP TRIGGER attempts_dropped INSTEAD OF INSERT ON attempts"
                " BEGIN SELECT 1; END;"
            )
        state.start_run()
        started = time.perf_counter()
        for first in range(0, size, 32):
            group = emails[first : first + 32]
            state.begin_flight((e, first + i + 1, None) for i, e in enumerate(group))
            for i, email in enumerate(group, first):
                mid = f"<{i}.bench@acme.example>"
                state.record(Outcome(address_key(email), "sent", 250, "2.0.0 Ok: queued", mid))
        state.flush()
        seconds = time.perf_counter() - started
        state.close()
    return seconds / size * 1e6


def measure(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of a command run to completion."""
    gnu_time = Path("/usr/bin/time")
    if not gnu_time.exists():
        run = run_process(command)
        assert run.returncode == 0, (command, run.returncode)
        return run.seconds, run.peak_rss_mb
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        started = time.perf_counter()
        subprocess.run(
            [str(gnu_time), "-f", "%M", "-o", report.name, *command],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        seconds = time.perf_counter() - started
        return seconds, int(report.read().split()[-1]) / 1024


def count_lines(path: Path) -> int:
    """Lines of a file, read a MB at a time (this process must stay small: see above)."""
    count = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            count += chunk.count(b"\n")
    return count


if __name__ == "__main__":
    main()
