"""examples/celery/ against a real Redis server and a real Celery worker: a message sent, a 4xx
retried until it is taken, a lost reply (`unknown`) never retried."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import Recorder

from mailcli.sandbox import SmtpServer

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "celery"
pytestmark = pytest.mark.redis
if not shutil.which("redis-server"):
    if os.environ.get("MAILCLI_REQUIRE_REDIS"):
        raise RuntimeError("redis-server is required (MAILCLI_REQUIRE_REDIS is set)")
    pytest.skip("needs redis-server (Debian package redis-server)", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throw-away redis-server on a free loopback port, no persistence."""
    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            time.sleep(0.05)
    else:
        server.kill()
        raise RuntimeError("redis-server did not start")
    yield f"redis://127.0.0.1:{port}/0"
    server.terminate()
    server.wait(10)


@pytest.fixture(scope="module")
def smtp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SmtpServer, Recorder]]:
    recorder = Recorder()
    with SmtpServer(recorder) as server:
        yield server, recorder


@pytest.fixture(scope="module")
def tasks(redis_url: str, smtp: tuple[SmtpServer, Recorder]) -> Iterator[ModuleType]:
    """A real Celery worker (a separate process) running examples/celery/tasks.py, and the
    tasks module as an application imports it to queue work."""
    server, _ = smtp
    env = {
        **os.environ,
        "CELERY_BROKER_URL": redis_url,
        "MAILCLI_HOST": "127.0.0.1",
        "MAILCLI_PORT": str(server.port),
        "MAILCLI_SECURITY": "none",
        "MAILCLI_FROM": "Acme Shop <shop@acme.example>",
        "MAIL_RETRY_DELAY": "0.2",
    }
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tasks",
            "worker",
            "--pool",
            "solo",
            "--concurrency",
            "1",
            "--loglevel",
            "WARNING",
            "--without-heartbeat",
            "--without-mingle",
            "--without-gossip",
        ],
        cwd=EXAMPLE,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    saved = {k: os.environ.get(k) for k in ("CELERY_BROKER_URL",)}
    os.environ["CELERY_BROKER_URL"] = redis_url
    spec = importlib.util.spec_from_file_location("celery_example_tasks", EXAMPLE / "tasks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        yield module
    finally:
        worker.terminate()
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def result_of(tasks: ModuleType, *args: Any) -> dict[str, Any]:
    outcome: dict[str, Any] = tasks.send_email.delay(*args).get(timeout=60)
    return outcome


def test_a_queued_message_is_sent_by_the_worker(
    tasks: ModuleType, smtp: tuple[SmtpServer, Recorder]
) -> None:
    _, recorder = smtp
    outcome = result_of(tasks, "ann@example.com", "Your receipt", "Thank you.")
    assert (outcome["status"], outcome["code"], outcome["tries"]) == ("sent", 250, 1)
    received = [m for m in recorder.messages if m.rcpt_tos == ["ann@example.com"]]
    assert len(received) == 1
    assert received[0].message["Message-ID"] == outcome["message_id"]
    assert received[0].message["From"] == "Acme Shop <shop@acme.example>"


def test_a_deferred_message_is_retried_until_it_is_taken(
    tasks: ModuleType, smtp: tuple[SmtpServer, Recorder]
) -> None:
    _, recorder = smtp
    recorder.temp_fail_once.add("later@example.com")  # one 451, then accepted
    outcome = result_of(tasks, "later@example.com", "Greylisted", "Hello again.")
    assert (outcome["status"], outcome["tries"]) == ("sent", 2)
    assert [m.rcpt_tos for m in recorder.messages].count(["later@example.com"]) == 1


def test_a_lost_reply_is_unknown_and_never_retried(
    tasks: ModuleType, smtp: tuple[SmtpServer, Recorder]
) -> None:
    _, recorder = smtp
    seen: list[str] = []
    recorder.on_data = lambda envelope: seen.extend(envelope.rcpt_tos)
    recorder.hangup_after_data = lambda envelope: "maybe@example.com" in envelope.rcpt_tos
    try:
        outcome = result_of(tasks, "maybe@example.com", "Lost", "Did it arrive?")
    finally:
        recorder.hangup_after_data = None
        recorder.on_data = None
    assert (outcome["status"], outcome["tries"]) == ("unknown", 1)
    assert seen.count("maybe@example.com") == 1  # the data went over once, and only once
