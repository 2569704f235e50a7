"""asyncio: send_async through a shared pool, connect_async + send_many, over real aiosmtpd
servers (and a 20 ms round-trip link), without ever blocking the event loop."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import PASSWORD, USER, Recorder

import mailcli
from mailcli.sandbox import SmtpServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from delay_proxy import spawn_proxy

SENDER = "Acme <news@acme.example>"


def message(n: int, **kwargs: Any) -> mailcli.Message:
    return mailcli.Message(
        f"Note {n}", [f"r{n}@example.com"], f"Hello {n}.", sender=SENDER, **kwargs
    )


class Heartbeat:
    """A task that sleeps 10 ms in a loop and keeps the longest gap it saw between wake-ups:
    anything that blocks the event loop shows up here."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _beat(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            self.longest = max(self.longest, now - last)
            last = now

    def __enter__(self) -> Heartbeat:
        self._task = asyncio.get_running_loop().create_task(self._beat())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


def test_200_concurrent_send_async_over_a_20ms_link_share_a_few_connections(
    smtp_server: SmtpServer, recorder: Recorder
) -> None:
    recorder.pipelining = True
    proxy, port = spawn_proxy(smtp_server.port, rtt_ms=20)  # its work is not this event loop's
    mailer = mailcli.Mailer("127.0.0.1", port, "none", timeout=10, max_connections=4)

    async def main() -> tuple[list[mailcli.Delivery], float, float]:
        with Heartbeat() as heartbeat:
            started = time.perf_counter()
            deliveries = await asyncio.gather(*(mailer.send_async(message(n)) for n in range(200)))
            elapsed = time.perf_counter() - started
            await mailer.aclose()
        return deliveries, heartbeat.longest, elapsed

    try:
        deliveries, longest, elapsed = asyncio.run(main())
    finally:
        proxy.kill()
        proxy.wait(10)
    assert [d.status for d in deliveries] == [mailcli.DeliveryStatus.SENT] * 200
    got = recorder.recipients()
    assert len(got) == len(set(got)) == 200
    assert 1 <= recorder.connections <= 4
    assert longest < 0.1, f"the event loop was blocked for {longest * 1000:.0f} ms"
    # About one round trip a message over 4 pipelined connections, not four round trips each.
    assert elapsed < 200 * 0.02


def test_connect_async_send_many_100_uses_one_connection(
    smtp_server: SmtpServer, recorder: Recorder
) -> None:
    recorder.pipelining = True
    mailer = mailcli.Mailer("127.0.0.1", smtp_server.port, "none", timeout=10)

    async def main() -> tuple[list[mailcli.Delivery], int]:
        async with mailer.connect_async() as conn:
            deliveries = await conn.send_many([message(n) for n in range(100)])
            one = await conn.send(message(100))
            return [*deliveries, one], conn.connections

    deliveries, connections = asyncio.run(main())
    assert all(d.ok for d in deliveries) and len(deliveries) == 101
    assert connections == 1 and recorder.connections == 1
    ids = {m.message["Message-ID"] for m in recorder.messages}
    assert ids == {d.message_id for d in deliveries}


@pytest.mark.parametrize("pipelining", [False, True], ids=["lock-step", "pipelining"])
def test_refusals_are_data_and_a_lost_reply_is_unknown(
    smtp_server: SmtpServer, recorder: Recorder, pipelining: bool
) -> None:
    recorder.pipelining = pipelining
    recorder.rcpt_replies["r1@example.com"] = "550 5.1.1 no such user"
    recorder.rcpt_replies["r2@example.com"] = "451 4.7.1 greylisted"
    recorder.hangup_after_data = lambda env: "r3@example.com" in env.rcpt_tos
    mailer = mailcli.Mailer("127.0.0.1", smtp_server.port, "none", timeout=10)

    async def main() -> list[mailcli.Delivery]:
        async with mailer.connect_async() as conn:
            return await conn.send_many([message(n) for n in range(5)])

    deliveries = asyncio.run(main())
    assert [d.status.value for d in deliveries] == ["sent", "failed", "deferred", "unknown", "sent"]
    assert deliveries[1].refused["r1@example.com"].code == 550
    # r4 went over a new connection: r3's hang-up ended the first; r3 was not sent again.
    assert sorted(recorder.recipients()) == ["r0@example.com", "r4@example.com"]


def test_a_dropped_connection_is_reopened_and_nobody_gets_two(
    smtp_server: SmtpServer, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mailcli.sender

    monkeypatch.setattr(mailcli.sender, "RECONNECT_DELAYS", (0.0, 0.0, 0.0))
    monkeypatch.setattr("mailcli.aio.RECONNECT_DELAYS", (0.0, 0.0, 0.0))
    recorder.hangup_every = 4
    mailer = mailcli.Mailer("127.0.0.1", smtp_server.port, "none", timeout=10)

    async def main() -> list[mailcli.Delivery]:
        async with mailer.connect_async() as conn:
            return await conn.send_many([message(n) for n in range(10)])

    deliveries = asyncio.run(main())
    assert all(d.ok for d in deliveries)
    assert sorted(recorder.recipients()) == sorted(f"r{n}@example.com" for n in range(10))


def test_starttls_and_login_without_blocking(
    starttls_server: SmtpServer, recorder: Recorder
) -> None:
    asked: list[int] = []

    def password() -> str:
        time.sleep(0.3)  # a slow keyring or password_command: in a thread, not on the loop
        asked.append(1)
        return PASSWORD

    mailer = mailcli.Mailer("localhost", starttls_server.port, "starttls", USER, password)

    async def main() -> tuple[mailcli.Delivery, float]:
        with Heartbeat() as heartbeat:
            delivery = await mailer.send_async(message(1))
            await mailer.aclose()
        return delivery, heartbeat.longest

    delivery, longest = asyncio.run(main())
    assert delivery.ok and asked == [1]
    assert recorder.messages[0].tls and recorder.messages[0].authenticated
    assert longest < 0.1


def test_a_wrong_password_is_auth_error(starttls_server: SmtpServer) -> None:
    mailer = mailcli.Mailer("localhost", starttls_server.port, "starttls", USER, "wrong")
    with pytest.raises(mailcli.AuthError) as caught:
        asyncio.run(mailer.send_async(message(1)))
    assert caught.value.exit_code == 77 and "wrong" not in str(caught.value)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_server_that_is_down_is_unavailable_error() -> None:
    mailer = mailcli.Mailer("127.0.0.1", closed_port(), "none", timeout=2)

    async def main() -> None:
        await mailer.send_async(message(1))

    with pytest.raises(mailcli.UnavailableError, match="cannot connect"):
        asyncio.run(main())
    with pytest.raises(mailcli.UnavailableError):
        asyncio.run(mailer.connect_async().__aenter__())


def test_a_bad_header_is_refused_before_any_connection(
    smtp_server: SmtpServer, recorder: Recorder
) -> None:
    mailer = mailcli.Mailer("127.0.0.1", smtp_server.port, "none")
    bad = mailcli.Message("Hi\r\nBcc: all@example.com", ["a@example.com"], "x", sender=SENDER)
    with pytest.raises(mailcli.BadHeaderError):
        asyncio.run(mailer.send_async(bad))
    assert recorder.peers == []


def test_record_messages_applies_to_send_async() -> None:
    mailer = mailcli.Mailer("127.0.0.1", closed_port(), "none")

    async def main() -> list[mailcli.Delivery]:
        first = await mailer.send_async(message(1))
        async with mailer.connect_async() as conn:
            rest = await conn.send_many([message(2), message(3)])
        return [first, *rest]

    with mailcli.record_messages() as outbox:
        deliveries = asyncio.run(main())
    assert all(d.ok for d in deliveries)
    assert [m.subject for m in outbox] == ["Note 1", "Note 2", "Note 3"]


def test_the_password_never_reaches_the_debug_log(
    starttls_server: SmtpServer, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    import base64
    import logging

    mailer = mailcli.Mailer("localhost", starttls_server.port, "starttls", USER, PASSWORD)
    with caplog.at_level(logging.DEBUG, logger="mailcli.smtp"):
        asyncio.run(mailer.send_async(message(1)))
        asyncio.run(mailer.aclose())
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "C: <redacted>" in logged and "C: <message data," in logged
    plain = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
    assert PASSWORD not in logged and plain not in logged
    assert base64.b64encode(PASSWORD.encode()).decode() not in logged


def test_a_send_cancelled_mid_transaction_does_not_confuse_the_next(
    smtp_server: SmtpServer, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A timeout around conn.send drops that connection: the next send goes over a new one
    and gets its own replies, not the late ones of the cancelled transaction."""
    monkeypatch.setattr("mailcli.aio.RECONNECT_DELAYS", (0.0, 0.0, 0.0))
    recorder.stall_data = lambda env: 1.0 if "r0@example.com" in env.rcpt_tos else 0.0
    mailer = mailcli.Mailer("127.0.0.1", smtp_server.port, "none", timeout=10)

    async def main() -> mailcli.Delivery:
        async with mailer.connect_async() as conn:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(conn.send(message(0)), 0.3)
            return await conn.send(message(1))

    second = asyncio.run(main())
    assert second.ok and second.recipients == ("r1@example.com",)
    assert [m.rcpt_tos for m in recorder.messages] == [["r1@example.com"]]


def test_aclose_while_sends_wait_cancels_them_rather_than_hanging(
    smtp_server: SmtpServer, recorder: Recorder
) -> None:
    recorder.stall_data = lambda env: 2.0
    mailer = mailcli.Mailer("127.0.0.1", smtp_server.port, "none", timeout=10, max_connections=1)

    async def main() -> list[Any]:
        tasks = [asyncio.create_task(mailer.send_async(message(n))) for n in range(10)]
        await asyncio.sleep(0.3)
        await mailer.aclose()
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)

    outcomes = asyncio.run(main())
    assert len(outcomes) == 10
    assert all(isinstance(o, asyncio.CancelledError) for o in outcomes)


def test_an_address_that_needs_smtputf8_fails_alone_without_it(recorder: Recorder) -> None:
    async def main(port: int) -> list[mailcli.Delivery]:
        mailer = mailcli.Mailer("127.0.0.1", port, "none", timeout=10, default_sender=SENDER)
        async with mailer.connect_async() as conn:
            return await conn.send_many(
                [
                    mailcli.Message("a", ["ann@example.com"], "x"),
                    mailcli.Message("b", ["jörg@example.com"], "x"),
                ]
            )

    with SmtpServer(recorder, enable_SMTPUTF8=False) as server:
        plain, utf8 = asyncio.run(main(server.port))
    assert plain.ok and utf8.status is mailcli.DeliveryStatus.FAILED and "SMTPUTF8" in utf8.reply
    assert recorder.recipients() == ["ann@example.com"]
