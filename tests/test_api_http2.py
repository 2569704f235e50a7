"""HTTP/2, where the endpoint offers it: a real HTTP/2 server (the `h2` protocol library, over
TLS with ALPN, certificate from a test CA) playing Postmark's /email/batch. What is checked:
the calls go over HTTP/2 on one connection, and a protocol error the server makes after it took
a batch leaves that batch `unknown`, never sent again (HTTP/2 writes frames while it waits for
the answer, so a "write" error can come after the whole request went out)."""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
import trustme
from conftest import server_tls_context

import mailcli
from mailcli.apiconf import ApiConfig
from mailcli.delivery import DeliveryStatus

SENDER = "Acme <news@acme.example>"


class H2Postmark:
    """A minimal HTTP/2 server for POST /email/batch: takes each batch, answers 200 with an
    ErrorCode 0 per message, or, with `break_after_taking`, sends a SETTINGS frame no peer may
    send (ENABLE_PUSH=5) instead of the answer."""

    def __init__(self, context: ssl.SSLContext) -> None:
        context.set_alpn_protocols(["h2"])
        self.context = context
        self.taken: list[str] = []
        self.connections = 0
        self.break_after_taking = False
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        try:
            conn = self.context.wrap_socket(sock, server_side=True)
        except (ssl.SSLError, OSError):
            return
        h2c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        h2c.initiate_connection()
        conn.sendall(h2c.data_to_send())
        bodies: dict[int, bytes] = {}
        try:
            while data := conn.recv(65535):
                for event in h2c.receive_data(data):
                    if isinstance(event, h2.events.DataReceived):
                        bodies[event.stream_id] = bodies.get(event.stream_id, b"") + event.data
                        h2c.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded):
                        self._answer(conn, h2c, event.stream_id, bodies.pop(event.stream_id))
                conn.sendall(h2c.data_to_send())
        except (OSError, h2.exceptions.ProtocolError):
            return

    def _answer(self, conn: Any, h2c: Any, stream: int, body: bytes) -> None:
        batch = json.loads(body)
        self.taken.extend(m["To"] for m in batch)  # the provider has them now
        if self.break_after_taking:
            conn.sendall(h2c.data_to_send())
            conn.sendall(bytes([0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 5]))
            return
        answer = json.dumps(
            [{"ErrorCode": 0, "Message": "OK", "MessageID": f"id-{n}"} for n in range(len(batch))]
        ).encode()
        h2c.send_headers(
            stream,
            [
                (":status", "200"),
                ("content-type", "application/json"),
                ("content-length", str(len(answer))),
            ],
        )
        h2c.send_data(stream, answer, end_stream=True)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def h2_server(ca: trustme.CA, trust_ca: Path) -> Iterator[H2Postmark]:
    server = H2Postmark(server_tls_context(ca))
    yield server
    server.close()


def messages(n: int, tag: str = "u") -> list[mailcli.Message]:
    return [
        mailcli.Message("Hi", [f"{tag}{i}@example.com"], body="x", sender=SENDER) for i in range(n)
    ]


def test_batches_go_over_http2_on_one_connection(h2_server: H2Postmark) -> None:
    mailer = mailcli.Mailer(
        api=ApiConfig("postmark", base_url=f"https://localhost:{h2_server.port}", batch_size=5),
        token="server-token",
    )
    with mailer.connect() as conn:
        deliveries = conn.send_many(messages(12))
    assert all(d.ok for d in deliveries)
    assert sorted(h2_server.taken) == sorted(f"u{i}@example.com" for i in range(12))
    assert h2_server.connections == 1


def test_a_protocol_error_after_the_batch_was_taken_leaves_it_unknown(
    h2_server: H2Postmark,
) -> None:
    """The server takes the batch, then breaks the HTTP/2 connection: `unknown`, and the
    reconnect policy does not send it again."""
    h2_server.break_after_taking = True
    mailer = mailcli.Mailer(
        api=ApiConfig("postmark", base_url=f"https://localhost:{h2_server.port}"), token="t"
    )
    with mailer.connect() as conn:
        conn.sleep = lambda seconds: None
        deliveries = conn.send_many(messages(3))
    assert [d.status for d in deliveries] == [DeliveryStatus.UNKNOWN] * 3
    assert len(h2_server.taken) == 3  # once each, never resent
