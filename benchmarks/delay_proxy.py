"""A TCP proxy on loopback that delays every byte by half a round trip in each direction.

It stands in for a real network between a client and an SMTP server: with --rtt-ms 20, every
command and reply crosses a 20 ms round trip, as to a provider in the same region. Order is kept
(each direction is one FIFO with the same delay), and a connection closes once what it carried
has been delivered.

    python benchmarks/delay_proxy.py --listen 2526 --upstream 127.0.0.1:2525 --rtt-ms 20
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import socket
import subprocess
import sys
import threading
import time


class DelayProxy:
    """Forwards loopback connections to `upstream`, adding rtt/2 each way; runs in threads.

    Each direction of each connection has a reader and a writer thread: the reader stamps what
    it reads with the time it is due, the writer sleeps until then (`time.sleep`, precise to
    tens of microseconds; an event loop's timers round up to the millisecond, which added about
    2 ms to a 20 ms round trip).
    """

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
        self._listener = socket.create_server(("127.0.0.1", port))
        self.port = self._listener.getsockname()[1]
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> DelayProxy:
        """Listen; the port is known from the constructor on."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting (connections in progress end with their peers)."""
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._thread.join(10)

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        if self.handshake:
            time.sleep(2 * self.delay)
        try:
            upstream = socket.create_connection(self.upstream)
        except OSError:
            client.close()
            return
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ended = threading.Semaphore(0)

        def close_both() -> None:  # once both directions have delivered their end
            ended.acquire()
            ended.acquire()
            client.close()
            upstream.close()

        self._pipe(client, upstream, ended)
        self._pipe(upstream, client, ended)
        threading.Thread(target=close_both, daemon=True).start()

    def _pipe(
        self, source: socket.socket, target: socket.socket, ended: threading.Semaphore
    ) -> None:
        chunks: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()

        def read() -> None:
            while True:
                try:
                    chunk = source.recv(65536)
                except OSError:
                    chunk = b""
                chunks.put((time.perf_counter() + self.delay, chunk))
                if not chunk:
                    return

        def write() -> None:
            while True:
                due, chunk = chunks.get()
                wait = due - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                if not chunk:
                    with contextlib.suppress(OSError):
                        target.shutdown(socket.SHUT_WR)
                    ended.release()
                    return
                try:
                    target.sendall(chunk)
                except OSError:
                    ended.release()
                    return

        threading.Thread(target=read, daemon=True).start()
        threading.Thread(target=write, daemon=True).start()


def spawn_proxy(upstream: int, rtt_ms: float) -> tuple[subprocess.Popen[bytes], int]:
    """The proxy in a process of its own, so that its threads do not compete with the caller's
    (an event loop whose responsiveness is being measured)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    proxy = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--listen",
            str(port),
            "--upstream",
            f"127.0.0.1:{upstream}",
            "--rtt-ms",
            str(rtt_ms),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proxy, port
        except OSError:
            time.sleep(0.05)
    proxy.kill()
    raise RuntimeError("the delay proxy did not start")


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
