"""HTTP API sending: mailcli's Postmark transport against one `requests.post` per message.

A 2,000-recipient campaign (the sample campaign's templates, personalised rows) goes through the
local Postmark server of the test suite (tests/apiservers.py, which implements Postmark's
/email and /email/batch) behind a proxy that adds a 20 ms round trip, as to a provider in the
same region: every byte waits half a round trip each way, and a new TCP connection waits a
round trip before its first byte (the SYN and its answer). TLS, which real HTTPS adds to every
new connection (one more round trip with TLS 1.3), is not modelled: both sides speak plain HTTP
here, so the figures favour the naive pattern. In the same run:

- mailcli: `mailcli batch campaign.yaml --json` with `api: {provider: postmark}`: the campaign
  rendered and built as always, sent in /email/batch calls of 500 over one kept-alive
  connection, with the state written as for SMTP (who got what, resumable).
- the naive pattern of the guides: for each row, render the same templates with Jinja2 and
  `requests.post(".../email", json=..., timeout=30).raise_for_status()`: a new connection and a
  request per message, no state.

Both are whole processes, timed from start to exit; both deliver every recipient once (checked).

    python benchmarks/vs_http_naive.py [--messages 2000] [--rtt-ms 20] [--naive-messages N]
                                       [--no-handshake]

`--naive-messages` times the naive script on fewer rows and reports its rate (it is linear in
the row count: one request after another). Needs `requests` (`pip install '.[bench]'`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import textwrap
from pathlib import Path

from common import ROOT, mailcli, make_campaign, run_process
from delay_proxy import DelayProxy

sys.path.insert(0, str(ROOT / "tests"))
from apiservers import PostmarkServer

NAIVE = textwrap.dedent('''\
    """One requests.post per message, as the provider guides show it."""
    import csv, sys
    import jinja2, requests

    url, token, folder = sys.argv[1], sys.argv[2], sys.argv[3]
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(folder))
    text = env.get_template("templates/welcome.txt.j2")
    html = env.get_template("templates/welcome.html.j2")
    sent = 0
    with open(folder + "/recipients.csv", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if sent >= int(sys.argv[4]):
                break
            values = {**row, "company": "Acme", "support_url": "https://acme.example/help"}
            response = requests.post(
                url + "/email",
                headers={"X-Postmark-Server-Token": token, "Accept": "application/json"},
                json={
                    "From": "Acme <hello@acme.example>",
                    "To": row["email"],
                    "Subject": "Welcome to Acme, " + row["first_name"],
                    "TextBody": text.render(values),
                    "HtmlBody": html.render(values),
                    "MessageStream": "outbound",
                },
                timeout=30,
            )
            response.raise_for_status()
            sent += 1
    print(sent)
''')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--naive-messages", type=int, default=None)
    parser.add_argument("--rtt-ms", type=float, default=20.0)
    parser.add_argument(
        "--no-handshake",
        action="store_true",
        help="new connections cost no round trip (an unrealistically cheap naive pattern)",
    )
    args = parser.parse_args()
    naive_count = args.naive_messages or args.messages

    server = PostmarkServer().start()
    port = int(server.url.rsplit(":", 1)[1])
    proxy = DelayProxy(("127.0.0.1", port), args.rtt_ms, handshake=not args.no_handshake).start()
    url = f"http://127.0.0.1:{proxy.port}"
    env = {"POSTMARK_SERVER_TOKEN": server.token}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "campaign"
            campaign = make_campaign(
                folder,
                args.messages,
                extra=f"api: {{provider: postmark, base_url: '{url}'}}\n",
            )
            run = run_process(mailcli("batch", str(campaign), "--json"), env=env)
            summary = json.loads(run.stdout)
            assert run.returncode == 0 and summary["sent"] == args.messages, run.stdout
            got = server.recipients()
            assert len(got) == len(set(got)) == args.messages
            ours = args.messages / run.seconds
            calls = len(server.sends())

            server.taken.clear()
            server.requests.clear()
            script = Path(tmp) / "naive.py"
            script.write_text(NAIVE, encoding="utf-8")
            naive = run_process(
                [sys.executable, str(script), url, server.token, str(folder), str(naive_count)]
            )
            assert naive.returncode == 0 and int(naive.stdout) == naive_count, naive.stdout
            assert len(server.recipients()) == naive_count
            theirs = naive_count / naive.seconds
    finally:
        proxy.stop()
        server.stop()

    handshake = (
        "no round trip for a new connection"
        if args.no_handshake
        else "a round trip per new connection"
    )
    print(f"HTTP API sending, {args.rtt_ms:.0f} ms round trip ({handshake}), local Postmark server")
    print(
        f"  mailcli batch (api: postmark)   {args.messages:>6} messages  {run.seconds:7.2f} s  "
        f"{ours:8.1f} msg/s  ({calls} calls, {summary['connections']} connection, "
        f"peak RSS {run.peak_rss_mb:.0f} MB)"
    )
    print(
        f"  requests.post per message       {naive_count:>6} messages  {naive.seconds:7.2f} s  "
        f"{theirs:8.1f} msg/s  ({naive_count} calls, {proxy.connections - 1} connections)"
    )
    print(f"  mailcli / naive: {ours / theirs:.1f}x")


if __name__ == "__main__":
    main()
