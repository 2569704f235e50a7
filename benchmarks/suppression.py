"""What checking the suppression list costs a run.

`batch --dry-run` of the shipped sample campaign over N rows (whole processes, start-up
included), as the baseline with `suppression: false` (no list), and against a list of M
addresses of which every tenth row's address is one. Also `mailcli bounces scan` of a Maildir
of reports (the formats in tests/bounces/, each with its own Message-ID and address).

    python benchmarks/suppression.py [--rows 100000] [--list 200000] [--runs 3] [--reports 5000]
"""

from __future__ import annotations

import argparse
import json
import mailbox
import statistics
import tempfile
from pathlib import Path

from common import ROOT, mailcli, make_campaign, run_process

from mailcli.suppression import Reason, SqliteSuppression


def fill_list(path: Path, rows: int, size: int) -> None:
    """`size` addresses: every tenth row of the campaign's list, then addresses on no list."""
    lst = SqliteSuppression.open(path)
    db = lst._write()
    db.execute("BEGIN")
    on_list = [f"user{i:07d}@example.com" for i in range(0, rows, 10)]
    others = [f"gone{i:07d}@elsewhere.example" for i in range(size - len(on_list))]
    db.executemany(
        "INSERT INTO suppression VALUES (?, ?, ?, '2026-01-01T00:00:00+00:00', NULL, NULL, NULL)"
        " ON CONFLICT DO NOTHING",
        ((a.casefold(), a, Reason.MANUAL.value) for a in on_list + others),
    )
    db.execute("COMMIT")
    lst.close()


def dry_run(campaign: Path, env: dict[str, str], runs: int) -> tuple[float, dict[str, int]]:
    seconds = []
    summary: dict[str, int] = {}
    for _ in range(runs):
        run = run_process(mailcli("batch", str(campaign), "--dry-run", "--json"), env=env)
        assert run.returncode == 0, run.stdout
        summary = json.loads(run.stdout)
        seconds.append(run.seconds)
    return statistics.median(seconds), summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--list", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--reports", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        listed = tmp / "suppression.sqlite"
        fill_list(listed, args.rows, args.list)
        env = {"MAILCLI_SUPPRESSION": str(listed)}
        off = make_campaign(tmp / "off", args.rows, extra="suppression: false\n")
        on = make_campaign(tmp / "on", args.rows)
        base, _ = dry_run(off, env, args.runs)
        mine, summary = dry_run(on, env, args.runs)
        print(
            f"batch --dry-run, {args.rows:,} rows, medians of {args.runs} whole processes:\n"
            f"  no list:                 {base:6.2f} s ({args.rows / base:7.0f} rows/s)\n"
            f"  list of {args.list:,} addresses: {mine:6.2f} s ({args.rows / mine:7.0f} rows/s),"
            f" {summary['suppressed']:,} suppressed, {mine / base - 1:+.1%}"
        )

        box = mailbox.Maildir(tmp / "Maildir", create=True)
        templates = sorted((ROOT / "tests" / "bounces").glob("*.eml"))
        for n in range(args.reports):
            raw = templates[n % len(templates)].read_bytes()
            # A report of its own (its Message-ID first, which is the one read) about
            # addresses of its own.
            raw = f"Message-ID: <report{n}@bench.example>\n".encode() + raw
            raw = raw.replace(b"@example.", f"+{n}@example.".encode())
            box.add(raw)
        box.close()
        scan_env = {"MAILCLI_SUPPRESSION": str(tmp / "bounces.sqlite")}
        run = run_process(mailcli("bounces", "scan", str(tmp / "Maildir"), "--json"), env=scan_env)
        assert run.returncode == 0, run.stdout
        report = json.loads(run.stdout)
        print(
            f"bounces scan of a Maildir of {args.reports:,} messages: {run.seconds:.2f} s "
            f"({args.reports / run.seconds:,.0f} messages/s), {report['reports']:,} reports, "
            f"{len(report['suppressed']):,} addresses suppressed, peak {run.peak_rss_mb:.0f} MB"
        )


if __name__ == "__main__":
    main()
