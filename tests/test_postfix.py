"""Interop with an independent SMTP implementation: Postfix's smtp-sink (C)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import make_campaign, many_rows
from typer.testing import CliRunner

from mailcli.cli import app

SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"

pytestmark = pytest.mark.postfix


def _require_sink() -> None:
    if Path(SMTP_SINK).exists():
        return
    if os.environ.get("MAILCLI_REQUIRE_POSTFIX"):
        pytest.fail("smtp-sink is required here (MAILCLI_REQUIRE_POSTFIX) but not installed")
    pytest.skip("Postfix's smtp-sink is not installed (Debian package postfix)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"smtp-sink did not start on port {port}")


def test_thousand_recipients_to_smtp_sink(tmp_path: Path) -> None:
    """A real batch of 1,000 to smtp-sink: all accepted, each recipient exactly once."""
    _require_sink()
    # Started as root, smtp-sink drops to 'nobody', who cannot enter pytest's private tmp_path.
    scratch = tempfile.TemporaryDirectory(prefix="mailcli-sink-")
    dump_dir = Path(scratch.name)
    dump_dir.chmod(0o777)
    port = _free_port()
    command = [SMTP_SINK, "-D", str(dump_dir / "mail"), f"127.0.0.1:{port}", "64"]
    if os.geteuid() == 0:
        command[1:1] = ["-u", "nobody"]
    sink = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for(port)
        files = make_campaign(tmp_path / "camp", many_rows(1000))
        result = CliRunner().invoke(
            app,
            [
                "batch",
                str(files.yaml),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--security",
                "none",
                "--json",
            ],
        )
        assert result.exit_code == 0, result.stderr
        summary = json.loads(result.stdout)
        assert (summary["sent"], summary["connections"]) == (1000, 1)
        dump = (dump_dir / "mail").read_text(encoding="utf-8", errors="replace")
    finally:
        sink.terminate()
        sink.wait(10)
        scratch.cleanup()
    rcpts = Counter(
        line.split(": ", 1)[1].strip("<> ")
        for line in dump.splitlines()
        if line.startswith("X-Rcpt-Args: ")
    )
    assert len(rcpts) == 1000
    assert set(rcpts.values()) == {1}
    assert "user00500@example.com" in rcpts
