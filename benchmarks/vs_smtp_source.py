"""Local throughput: mailcli against Postfix's smtp-source, both into Postfix's smtp-sink.

mailcli sends N personalised text + HTML messages (the sample campaign with a generated list)
over one connection; smtp-source -d sends N messages of at least the same size over one
connection. Whole processes are timed (start-up, list reading, validation, rendering, state on
disk, SMTP), alternating the two, and the medians are compared.

    python benchmarks/vs_smtp_source.py [--messages 5000] [--runs 3]

Needs smtp-sink and smtp-source (Debian package postfix).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common import mailcli, make_campaign, run_process


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_sink(port: int) -> subprocess.Popen[bytes]:
    command = ["smtp-sink", f"127.0.0.1:{port}", "256"]
    if os.geteuid() == 0:
        command[1:1] = ["-u", "nobody"]
    sink = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return sink
        except OSError:
            time.sleep(0.05)
    raise SystemExit("smtp-sink did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if not (shutil.which("smtp-sink") and shutil.which("smtp-source")):
        raise SystemExit("needs smtp-sink and smtp-source: apt-get install postfix")
    port = free_port()
    sink = start_sink(port)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            campaign = make_campaign(Path(tmp) / "c", args.messages)
            raw = run_process(mailcli("preview", str(campaign), "--format", "raw")).stdout
            size = len(raw.encode("utf-8"))
            ours: list[float] = []
            theirs: list[float] = []
            for _ in range(args.runs):
                shutil.rmtree(campaign.parent / ".mailcli", ignore_errors=True)
                run = run_process(
                    mailcli(
                        "batch",
                        str(campaign),
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                        "--security",
                        "none",
                        "--json",
                    )
                )
                summary = json.loads(run.stdout)
                assert summary["sent"] == args.messages and summary["connections"] == 1, summary
                ours.append(run.seconds)
                source = run_process(
                    [
                        "smtp-source",
                        "-d",
                        "-s",
                        "1",
                        "-m",
                        str(args.messages),
                        "-l",
                        str(size),
                        f"127.0.0.1:{port}",
                    ]
                )
                assert source.returncode == 0
                theirs.append(source.seconds)
    finally:
        sink.terminate()
        sink.wait(10)
    mine, base = statistics.median(ours), statistics.median(theirs)
    print(
        f"{args.messages} messages over one connection into smtp-sink, {size} bytes each "
        f"(smtp-source: -l {size} plus its own headers)"
    )
    print(
        f"  mailcli batch:    {args.messages / mine:7.0f} messages/s "
        f"(median {mine:.2f} s of {', '.join(f'{s:.2f}' for s in ours)})"
    )
    print(
        f"  smtp-source -d:   {args.messages / base:7.0f} messages/s "
        f"(median {base:.2f} s of {', '.join(f'{s:.2f}' for s in theirs)})"
    )
    print(f"  mailcli / smtp-source: {base / mine:.2f}x")


if __name__ == "__main__":
    main()
