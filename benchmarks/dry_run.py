"""`batch --dry-run` throughput and peak memory at 20,000 and 200,000 rows.

Each figure is a whole `mailcli` process (start-up included), for two campaigns: "sample" is the
shipped one (text + HTML with template inheritance, an attachment, List-Id, a personal
unsubscribe URL); "plain" is a personalised text + HTML message and nothing else. Each is run
with the default worker count (one per core for a big list) and with `--jobs 1`. Memory is the
peak of the summed RSS of mailcli and its workers. The baseline, from the same run, is the same
messages built with the standard library's `email.message.EmailMessage`, which is how most
Python mail tools build them.

    python benchmarks/dry_run.py [--rows 20000 200000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import mailcli, make_campaign, make_plain_campaign, run_process

from mailcli.campaign import load_campaign
from mailcli.pipeline import Pipeline, Ready


def stdlib_rate(campaign: Path, count: int) -> float:
    """Messages per second when the same rendered messages are built with EmailMessage."""
    from email.message import EmailMessage
    from email.policy import SMTP

    pipeline = Pipeline(load_campaign(campaign))
    ready = [
        item
        for item, _ in zip(pipeline.items(), range(count), strict=False)
        if isinstance(item, Ready)
    ]
    attachment = (campaign.parent / "files" / "getting-started.txt").read_bytes()
    started = time.perf_counter()
    for item in ready:
        r, box = item.rendered, item.recipient.mailbox
        msg = EmailMessage(policy=SMTP)
        msg["From"] = "Acme Team <team@acme.example>"
        msg["To"] = f"{box.name} <{box.addr}>"
        msg["Subject"] = r.subject
        msg.set_content(r.text or "")
        msg.add_alternative(r.html or "", subtype="html")
        msg.add_attachment(
            attachment, maintype="text", subtype="plain", filename="getting-started.txt"
        )
        msg.as_bytes()
    return len(ready) / (time.perf_counter() - started)


def measure(campaign: Path, rows: int, repeat: int, *flags: str) -> tuple[float, float]:
    """Median messages/s over `repeat` whole-process runs, and the peak tree RSS in MB."""
    runs = [
        run_process(mailcli("batch", str(campaign), "--dry-run", "--json", *flags))
        for _ in range(repeat)
    ]
    for run in runs:
        summary = json.loads(run.stdout)
        assert run.returncode == 0 and summary["would_send"] == rows, run.stdout[:300]
    seconds = statistics.median(r.seconds for r in runs)
    return rows / seconds, max(r.tree_rss_mb for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    peaks: dict[int, float] = {}
    print(f"{os.cpu_count()} cores; each figure is the median of {args.repeat} whole processes")
    with tempfile.TemporaryDirectory() as tmp:
        for rows in args.rows:
            for label, make in (("sample", make_campaign), ("plain", make_plain_campaign)):
                campaign = make(Path(tmp) / f"{label}{rows}", rows)
                for jobs in ("auto", "1"):
                    flags = () if jobs == "auto" else ("--jobs", jobs)
                    rate, peak = measure(campaign, rows, args.repeat, *flags)
                    if label == "sample" and jobs == "auto":
                        peaks[rows] = peak
                    print(
                        f"dry-run {rows:>7} rows, {label:>6} campaign, jobs {jobs:>4}: "
                        f"{rate:>7.0f} messages/s, peak RSS {peak:6.1f} MB "
                        "(all processes summed)"
                    )
        baseline = stdlib_rate(make_campaign(Path(tmp) / "base", 5_000), 5_000)
        print(
            f"baseline: email.message.EmailMessage builds {baseline:.0f} messages/s "
            "(the same messages, build step alone, one process)"
        )
    if len(peaks) >= 2:
        small, large = min(peaks), max(peaks)
        print(f"peak RSS at {large} rows / at {small} rows: {peaks[large] / peaks[small]:.2f}x")


if __name__ == "__main__":
    main()
