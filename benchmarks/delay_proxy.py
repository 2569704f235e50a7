"""A TCP proxy on loopback that delays every byte by half a round trip in each direction.

It stands in for a real network between a client and an SMTP server: with --rtt-ms 20, every
command and reply crosses a 20 ms round trip, as to a provider in the same region. Order is kept
(each direction is one FIFO with the same delay), and a connection closes once what it carried
has been delivered.

    python benchmarks/delay_proxy.py --listen 2526 --upstream 127.0.0.1:2525 --rtt-ms 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading


class DelayProxy:
    """Forwards loopback connections to `upstream`, adding rtt/2 each way; runs in a thread."""

    def __init__(
        self, upstream: tuple[str, int], rtt_ms: float, port: int = 0, *, handshake: bool = False
    ) -> None:
        self.upstream = upstream
        self.delay = rtt_ms / 2000
        # handshake=True: a new connection costs a round trip before its first byte moves, as
        # TCP's SYN and SYN-ACK do on a real network (the local accept is instant).
        self.handshake = handshake
        self.port = port
        self.connections = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> DelayProxy:
        """Listen and return once the port is known."""
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        """Stop forwarding."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        server = loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            loop.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.handshake:
            await asyncio.sleep(2 * self.delay)
        up_r, up_w = await asyncio.open_connection(*self.upstream)
        await asyncio.gather(self._pump(client_r, up_w), self._pump(up_r, client_w))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, chunk = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not chunk:
                    with contextlib.suppress(OSError):
                        writer.close()
                    return
                writer.write(chunk)

        sender = asyncio.ensure_future(deliver())
        try:
            while chunk := await reader.read(65536):
                queue.put_nowait((loop.time() + self.delay, chunk))
        except OSError:
            pass
        queue.put_nowait((loop.time() + self.delay, b""))
        await sender


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=int, default=2526)
    parser.add_argument("--upstream", default="127.0.0.1:2525")
    parser.add_argument("--rtt-ms", type=float, default=20)
    args = parser.parse_args()
    host, _, port = args.upstream.rpartition(":")
    proxy = DelayProxy((host, int(port)), args.rtt_ms, args.listen).start()
    print(f"forwarding 127.0.0.1:{proxy.port} -> {args.upstream} with {args.rtt_ms} ms RTT")
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()


if __name__ == "__main__":
    main()
