"""Rate limiting as the receiving server sees it: the busiest window and the achieved rate.

Sends N messages at a given rate to a local aiosmtpd server that timestamps each arrival, and
prints the most messages that arrived in any one-period window (must never exceed the rate) and
the achieved rate against the ideal.

    python benchmarks/rate_limit.py --rate 20/s --messages 200
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path
from typing import Any

from mailcli.batch import send_batch
from mailcli.campaign import load_campaign, parse_rate
from mailcli.sandbox import SmtpServer
from mailcli.transport import SmtpSettings, SmtpTransport


class Stamps:
    """aiosmtpd handler that records the arrival time of every message."""

    def __init__(self) -> None:
        self.times: list[float] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.times.append(time.monotonic())
        return "250 OK"


def write_campaign(folder: Path, count: int, rate: str) -> Path:
    with open(folder / "list.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["email", "name"])
        writer.writerows([f"user{i}@example.com", f"User {i}"] for i in range(count))
    (folder / "body.txt").write_text("Hello {{ name }}\n", encoding="utf-8")
    campaign = folder / "campaign.yaml"
    campaign.write_text(
        f"name: rate-bench\nfrom: bench@example.com\nsubject: Hi {{{{ name }}}}\n"
        f'text: body.txt\nrecipients: list.csv\nrate: "{rate}"\n',
        encoding="utf-8",
    )
    return campaign


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", default="20/s")
    parser.add_argument("--messages", type=int, default=200)
    args = parser.parse_args()
    rate = parse_rate(args.rate)
    stamps = Stamps()
    with tempfile.TemporaryDirectory() as tmp, SmtpServer(stamps) as server:
        campaign = load_campaign(write_campaign(Path(tmp), args.messages, args.rate))
        settings = SmtpSettings(host=server.host, port=server.port, security="none")
        started = time.monotonic()
        summary = send_batch(campaign, SmtpTransport(settings))
        elapsed = time.monotonic() - started
    times = stamps.times
    busiest = max(sum(1 for t in times if s <= t < s + rate.per_s) for s in times)
    span = times[-1] - times[0]
    ideal = (len(times) - 1) * rate.per_s / rate.count
    print(f"rate {rate}: {summary.sent} messages")
    print(
        f"  busiest {rate.per_s:g}-second window at the server: {busiest} "
        f"(limit {rate.count:g}) -> {'OK' if busiest <= rate.count else 'EXCEEDED'}"
    )
    print(
        f"  first to last arrival: {span:.3f} s; ideal {ideal:.3f} s ({span / ideal:.3f} x ideal)"
    )
    print(
        f"  achieved {(len(times) - 1) / span * rate.per_s:.2f} per {rate.per_s:g} s; "
        f"whole run {elapsed:.2f} s"
    )


if __name__ == "__main__":
    main()
