"""Over a 20 ms round trip: mailcli against mailmerge, both into Postfix's smtp-sink.

A delay proxy (benchmarks/delay_proxy.py) adds 10 ms each way between the client and
smtp-sink. mailcli sends the sample campaign (text + HTML) over one pipelined connection;
mailmerge sends the same list with a Markdown template (text + HTML too), opening a connection
for each message as it does. Whole processes are timed; the figure per round trip says how much
of each round trip carries a message.

    python benchmarks/vs_mailmerge.py [--messages 400] [--mailmerge-messages 100] [--rtt-ms 20]

Needs smtp-sink (Debian package postfix) and mailmerge (`pip install mailmerge`).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
from pathlib import Path

from common import mailcli, make_campaign, run_process
from delay_proxy import DelayProxy
from vs_smtp_source import free_port, start_sink

MAILMERGE_TEMPLATE = """\
TO: {{email}}
SUBJECT: Welcome to Acme, {{first_name}}!
FROM: Acme Team <team@acme.example>
REPLY-TO: support@acme.example
CONTENT-TYPE: text/markdown

Hello {{first_name}},

welcome to **Acme**! Your *{{plan}}* plan is ready.

Questions go to <https://acme.example/help>.
"""


def mailmerge_run(folder: Path, rows: int, port: int) -> float:
    """Send `rows` messages with mailmerge through the proxy; return the wall time."""
    folder.mkdir()
    with open(folder / "db.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["email", "first_name", "plan"])
        writer.writerows([f"user{i:07d}@example.com", "Ann", "Pro"] for i in range(rows))
    (folder / "template.txt").write_text(MAILMERGE_TEMPLATE, encoding="utf-8")
    (folder / "server.conf").write_text(
        f"[smtp_server]\nhost = 127.0.0.1\nport = {port}\nsecurity = Never\n", encoding="utf-8"
    )
    mailmerge = shutil.which("mailmerge") or str(Path(sys.executable).parent / "mailmerge")
    run = run_process(
        [
            mailmerge,
            "--no-dry-run",
            "--no-limit",
            "--output-format",
            "raw",
            "--template",
            str(folder / "template.txt"),
            "--database",
            str(folder / "db.csv"),
            "--config",
            str(folder / "server.conf"),
        ]
    )
    assert run.returncode == 0, "mailmerge failed"
    return run.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--mailmerge-messages", type=int, default=100)
    parser.add_argument("--rtt-ms", type=float, default=20)
    args = parser.parse_args()
    if not shutil.which("smtp-sink"):
        raise SystemExit("needs smtp-sink: apt-get install postfix")
    sink_port = free_port()
    sink = start_sink(sink_port)
    proxy = DelayProxy(("127.0.0.1", sink_port), args.rtt_ms).start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            campaign = make_campaign(Path(tmp) / "c", args.messages)
            run = run_process(
                mailcli(
                    "batch",
                    str(campaign),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(proxy.port),
                    "--security",
                    "none",
                    "--json",
                )
            )
            summary = json.loads(run.stdout)
            assert summary["sent"] == args.messages, summary
            ours = args.messages / run.seconds
            connections = proxy.connections
            theirs_seconds = mailmerge_run(Path(tmp) / "mm", args.mailmerge_messages, proxy.port)
            theirs = args.mailmerge_messages / theirs_seconds
    finally:
        proxy.stop()
        sink.terminate()
        sink.wait(10)
    rtt = args.rtt_ms / 1000
    print(f"through a {args.rtt_ms:g} ms round trip into smtp-sink:")
    print(
        f"  mailcli:   {ours:6.1f} messages/s = {ours * rtt:.2f} messages per round trip "
        f"({args.messages} messages, {connections} connection, {run.seconds:.1f} s)"
    )
    print(
        f"  mailmerge: {theirs:6.1f} messages/s = {theirs * rtt:.2f} messages per round trip "
        f"({args.mailmerge_messages} messages, one connection each, {theirs_seconds:.1f} s)"
    )
    print(f"  mailcli / mailmerge: {ours / theirs:.1f}x")


if __name__ == "__main__":
    main()
