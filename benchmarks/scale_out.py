"""Scaling out: several connections in one process, and several processes on one PostgreSQL state.

(a) 1, 2 and 4 connections (`--connections N`) through a proxy that adds a 20 ms round trip,
    into Postfix's smtp-sink: messages a second, the speed-up over one connection, and messages
    per round trip (against the nominal 20 ms and against the round trip measured through the
    proxy in the same run, which adds its own timer slack).
(b) 1 process against 3 processes with separate copies of the campaign sharing one PostgreSQL
    state (a throw-away cluster, as the tests start it), through the same proxy.
(c) Locally, N connections against Postfix's smtp-source with `-s N` (N = 1, 2, 4), both into
    smtp-sink, alternating, medians.

Whole processes are timed (start-up, reading, checking and rendering the list, state, SMTP).

    python benchmarks/scale_out.py [--messages 1000] [--local-messages 5000] [--runs 3]

Needs smtp-sink and smtp-source (Debian package postfix), and PostgreSQL's server binaries
(Debian package postgresql) with `pip install 'mailcli[postgres]'` for (b).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, mailcli, make_campaign, run_process
from delay_proxy import DelayProxy
from vs_smtp_source import free_port, start_sink

sys.path.insert(0, str(ROOT / "tests"))
from pgserver import PgCluster, find_bindir  # the tests' throw-away cluster


def batch(campaign: Path, port: int, connections: int) -> list[str]:
    return mailcli(
        "batch",
        str(campaign),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--security",
        "none",
        "--json",
        "--connections",
        str(connections),
    )


def measured_rtt(port: int, rounds: int = 100) -> float:
    """Seconds per NOOP round trip through the proxy."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.ehlo()
        started = time.perf_counter()
        for _ in range(rounds):
            smtp.noop()
        return (time.perf_counter() - started) / rounds


def part_a(tmp: Path, proxy_port: int, messages: int, rtt: float, real_rtt: float) -> None:
    print(f"(a) {messages} messages through a {rtt * 1000:g} ms round trip into smtp-sink")
    print(f"    measured round trip through the proxy: {real_rtt * 1000:.1f} ms")
    base = 0.0
    for n in (1, 2, 4):
        campaign = make_campaign(tmp / f"a{n}", messages)
        run = run_process(batch(campaign, proxy_port, n))
        summary = json.loads(run.stdout)
        assert summary["sent"] == messages and summary["connections"] == n, summary
        rate = messages / run.seconds
        base = base or rate
        per_conn = rate / n
        print(
            f"    {n} connection{'s' if n > 1 else ' '}: {rate:7.1f} messages/s "
            f"({run.seconds:5.1f} s), {rate / base:4.2f}x one connection, "
            f"{per_conn * rtt:.2f} per round trip per connection "
            f"({per_conn * real_rtt:.2f} per measured round trip)"
        )


def part_b(tmp: Path, proxy_port: int, messages: int) -> None:
    bindir = find_bindir()
    if bindir is None:
        print("(b) skipped: PostgreSQL's server binaries are not installed")
        return
    with PgCluster(bindir) as cluster:
        env = {"PGPASSWORD": cluster.password}
        results = []
        for processes in (1, 3):
            url = cluster.create_database(f"bench{processes}")
            first = make_campaign(tmp / f"b{processes}-0", messages, extra=f'state: "{url}"\n')
            campaigns = [first]
            for i in range(1, processes):
                folder = tmp / f"b{processes}-{i}"
                shutil.copytree(first.parent, folder)
                campaigns.append(folder / first.name)
            started = time.perf_counter()
            procs = [
                subprocess.Popen(
                    batch(c, proxy_port, 1),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                    env={**os.environ, **env},
                )
                for c in campaigns
            ]
            sent = [json.loads(p.communicate()[0])["sent"] for p in procs]
            seconds = time.perf_counter() - started
            assert sum(sent) == messages, sent
            results.append((processes, seconds, sent))
    base = messages / results[0][1]
    print(f"(b) {messages} messages on one PostgreSQL state, one connection per process")
    for processes, seconds, sent in results:
        rate = messages / seconds
        print(
            f"    {processes} process{'es' if processes > 1 else '  '}: {rate:7.1f} messages/s "
            f"({seconds:5.1f} s, sent {' + '.join(map(str, sent))}), {rate / base:4.2f}x"
        )


def part_c(tmp: Path, messages: int, runs: int) -> None:
    if not shutil.which("smtp-source"):
        print("(c) skipped: smtp-source is not installed")
        return
    port = free_port()
    sink = start_sink(port)
    try:
        campaign = make_campaign(tmp / "c", messages)
        raw = run_process(mailcli("preview", str(campaign), "--format", "raw")).stdout
        size = len(raw.encode("utf-8"))
        print(
            f"(c) {messages} messages locally into smtp-sink, {size} bytes each, "
            f"against smtp-source -s N -l {size}, medians of {runs}"
        )
        for n in (1, 2, 4):
            ours: list[float] = []
            theirs: list[float] = []
            for _ in range(runs):
                shutil.rmtree(campaign.parent / ".mailcli", ignore_errors=True)
                run = run_process(batch(campaign, port, n))
                assert json.loads(run.stdout)["sent"] == messages
                ours.append(run.seconds)
                source = run_process(
                    [
                        "smtp-source",
                        "-d",
                        "-s",
                        str(n),
                        "-m",
                        str(messages),
                        "-l",
                        str(size),
                        f"127.0.0.1:{port}",
                    ]
                )
                assert source.returncode == 0
                theirs.append(source.seconds)
            mine, base = statistics.median(ours), statistics.median(theirs)
            print(
                f"    N={n}: mailcli {messages / mine:6.0f} messages/s, smtp-source "
                f"{messages / base:6.0f} messages/s: {base / mine:.2f}x"
            )
    finally:
        sink.terminate()
        sink.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--local-messages", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rtt-ms", type=float, default=20)
    parser.add_argument("--only", choices=("a", "b", "c"))
    args = parser.parse_args()
    if not shutil.which("smtp-sink"):
        raise SystemExit("needs smtp-sink: apt-get install postfix")
    rtt = args.rtt_ms / 1000
    sink_port = free_port()
    sink = start_sink(sink_port)
    proxy = DelayProxy(("127.0.0.1", sink_port), args.rtt_ms).start()
    try:
        with tempfile.TemporaryDirectory() as folder:
            tmp = Path(folder)
            if args.only in (None, "a"):
                part_a(tmp, proxy.port, args.messages, rtt, measured_rtt(proxy.port))
            if args.only in (None, "b"):
                part_b(tmp, proxy.port, args.messages)
            if args.only in (None, "c"):
                part_c(tmp, args.local_messages, args.runs)
    finally:
        proxy.stop()
        sink.terminate()
        sink.wait(10)


if __name__ == "__main__":
    main()
