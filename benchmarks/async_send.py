"""asyncio sending: mailcli's `send_async` against aiosmtplib's `send`, on the same link.

Both send N messages as N concurrent calls (what an async web application does when N requests
each send a mail), through a 20 ms round-trip proxy into Postfix's smtp-sink, in the same run.
aiosmtplib's `send` opens a connection per call; mailcli's calls share a pool of
`max_connections` (4) pipelined connections. Also printed: the longest gap a 10 ms heartbeat
task saw (how long the event loop was blocked).

    python benchmarks/async_send.py [--messages 400] [--rtt-ms 20] [--runs 3]

Needs smtp-sink (Debian package postfix) and aiosmtplib (`pip install '.[bench]'`).
"""

from __future__ import annotations

import argparse
import asyncio
import email.message
import statistics
import time
from collections.abc import Awaitable, Callable

from delay_proxy import spawn_proxy
from vs_smtp_source import free_port, start_sink

import mailcli


async def timed(send: Callable[[int], Awaitable[object]], count: int) -> tuple[float, float]:
    """Wall time of `count` concurrent sends, and the longest heartbeat gap meanwhile."""
    longest = 0.0

    async def heartbeat() -> None:
        nonlocal longest
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            longest, last = max(longest, now - last), now

    beat = asyncio.create_task(heartbeat())
    started = time.perf_counter()
    await asyncio.gather(*(send(n) for n in range(count)))
    elapsed = time.perf_counter() - started
    beat.cancel()
    return elapsed, longest


def mailcli_run(port: int, count: int, connections: int) -> tuple[float, float]:
    mailer = mailcli.Mailer("127.0.0.1", port, "none", timeout=30, max_connections=connections)

    async def main() -> tuple[float, float]:
        async def send(n: int) -> object:
            msg = mailcli.Message(
                f"Order #{n}", [f"user{n}@example.com"], f"Thank you, {n}.", sender=SENDER
            )
            delivery = await mailer.send_async(msg)
            assert delivery.ok, delivery
            return delivery

        result = await timed(send, count)
        await mailer.aclose()
        return result

    return asyncio.run(main())


def aiosmtplib_run(port: int, count: int) -> tuple[float, float]:
    import aiosmtplib

    async def main() -> tuple[float, float]:
        async def send(n: int) -> object:
            msg = email.message.EmailMessage()
            msg["From"], msg["To"], msg["Subject"] = SENDER, f"user{n}@example.com", f"Order #{n}"
            msg.set_content(f"Thank you, {n}.")
            return await aiosmtplib.send(msg, hostname="127.0.0.1", port=port, timeout=30)

        return await timed(send, count)

    return asyncio.run(main())


SENDER = "Acme Shop <shop@acme.example>"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--rtt-ms", type=float, default=20.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-connections", type=int, default=4, help="mailcli's pool size")
    args = parser.parse_args()
    sink_port = free_port()
    sink = start_sink(sink_port)
    proxy, port = spawn_proxy(sink_port, args.rtt_ms)
    try:
        ours: list[tuple[float, float]] = []
        theirs: list[tuple[float, float]] = []
        for _ in range(args.runs):
            ours.append(mailcli_run(port, args.messages, args.max_connections))
            theirs.append(aiosmtplib_run(port, args.messages))
    finally:
        proxy.terminate()
        proxy.wait(10)
        sink.terminate()
        sink.wait(10)
    mine = statistics.median(t for t, _ in ours)
    base = statistics.median(t for t, _ in theirs)
    print(
        f"{args.messages} concurrent sends through a {args.rtt_ms:.0f} ms round trip into "
        f"smtp-sink (medians of {args.runs})"
    )
    print(
        f"  mailcli send_async ({args.max_connections} connections): "
        f"{args.messages / mine:7.1f} messages/s, "
        f"longest event-loop gap {max(g for _, g in ours) * 1000:.0f} ms"
    )
    print(
        f"  aiosmtplib send (a connection per call): {args.messages / base:7.1f} messages/s, "
        f"longest event-loop gap {max(g for _, g in theirs) * 1000:.0f} ms"
    )
    print(f"  mailcli / aiosmtplib: {base / mine:.2f}x")


if __name__ == "__main__":
    main()
