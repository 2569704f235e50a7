"""Hostile and broken peers, leaked secrets, and fuzzed input: clean errors, never a hang.

The servers here are real sockets: aiosmtpd with faults injected (a stall after the data), and
small raw servers for what aiosmtpd cannot be made to do (speak HTTP, send garbage, hang up at
once, say nothing). Every run is bounded by `--timeout` and checked against a wall clock.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Recorder, make_campaign, many_rows, server_args
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_security import SECRET_FORMS, WITH_PASSWORD, run, smtp
from typer.testing import CliRunner

from mailcli.cli import app
from mailcli.sandbox import SmtpServer

runner = CliRunner()
CONTRACT_CODES = {0, 1, 2, 65, 66, 69, 73, 75, 77, 78}


@contextlib.contextmanager
def raw_server(behave: Callable[[socket.socket], None]) -> Iterator[int]:
    """A TCP server on a free loopback port; each connection is handed to `behave`."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=_handle, args=(conn,), daemon=True).start()

    def _handle(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            behave(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        listener.close()


def speaks_http(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


def sends_garbage(conn: socket.socket) -> None:
    conn.sendall(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03 binary junk without a line end")
    time.sleep(10)  # and then nothing more


def hangs_up(conn: socket.socket) -> None:
    conn.close()


def says_nothing(conn: socket.socket) -> None:
    time.sleep(10)


@pytest.mark.parametrize(
    ("behave", "message"),
    [
        (speaks_http, r"is not an SMTP server: its greeting is not an SMTP reply"),
        (sends_garbage, r"timed out"),
        (hangs_up, r"closed the connection|disconnected|Connection unexpectedly closed"),
        (says_nothing, r"timed out"),
    ],
    ids=["speaks HTTP", "sends garbage", "hangs up at once", "never sends a banner"],
)
@pytest.mark.parametrize("command", ["batch", "test-connection"])
def test_a_server_that_is_not_smtp_is_exit_69_within_the_timeout(
    tmp_path: Path, behave: Callable[[socket.socket], None], message: str, command: str
) -> None:
    import re

    files = make_campaign(tmp_path / "c", many_rows(3))
    with raw_server(behave) as port:
        args = ["--host", "127.0.0.1", "--port", str(port), "--security", "none"]
        started = time.monotonic()
        if command == "batch":
            result = run("batch", files.yaml, *args, "--timeout", "1")
        else:
            result = run("test-connection", *args, "--timeout", "1")
        elapsed = time.monotonic() - started
    assert result.exit_code == 69, result.output
    assert re.search(message, result.stderr), result.stderr
    assert f"127.0.0.1:{port}" in result.stderr
    assert elapsed < 10, elapsed  # about the 1 s timeout (and its retries), never a hang
    if command == "batch":
        status = runner.invoke(app, ["status", str(files.yaml), "--json"])
        assert json.loads(status.stdout)["sent"] == 0  # nothing recorded as sent


@pytest.mark.parametrize("pipelining", [False, True], ids=["lock-step", "pipelining"])
def test_a_server_that_stalls_after_the_data_leaves_that_row_unknown_and_goes_on(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder, pipelining: bool
) -> None:
    """The reply to one message never comes: the row is `unknown` (the server may have it),
    never sent again, and the rest of the list still goes out; all within the timeout."""
    recorder.pipelining = pipelining
    stalled = "user00002@example.com"
    recorder.stall_data = lambda env: 30.0 if stalled in env.rcpt_tos else 0.0
    files = make_campaign(tmp_path / "c", many_rows(4))
    started = time.monotonic()
    result = run("batch", files.yaml, *server_args(smtp_server), "--timeout", "1", "--json")
    elapsed = time.monotonic() - started
    summary = json.loads(result.stdout)
    assert result.exit_code == 75
    assert (summary["sent"], summary["unknown"]) == (3, 1)
    assert stalled not in recorder.recipients()
    assert sorted(recorder.recipients()) == [
        "user00001@example.com",
        "user00003@example.com",
        "user00004@example.com",
    ]
    assert elapsed < 15, elapsed
    again = run("batch", files.yaml, *server_args(smtp_server), "--json")
    assert json.loads(again.stdout)["sent"] == 0  # an unknown row is not sent again by itself
    assert stalled not in recorder.recipients()


def test_the_password_is_in_no_log_file(starttls_server: SmtpServer, tmp_path: Path) -> None:
    """--debug --log-file records the whole dialogue, with AUTH data and message content out."""
    files = make_campaign(tmp_path / "c")
    log = tmp_path / "run.log"
    result = run(
        "batch", files.yaml, *smtp(starttls_server), "--debug", "--log-file", log,
        env=WITH_PASSWORD,
    )  # fmt: skip
    assert result.exit_code == 0
    logged = log.read_text()
    assert "smtp: C: AUTH PLAIN <redacted>" in logged
    assert "smtp: C: <message data, " in logged and "Hi Ann" not in logged
    for secret in SECRET_FORMS:
        assert secret not in logged


def test_there_is_no_password_option() -> None:
    """A password on the command line would show in `ps` and the shell history."""
    for command in ("batch", "send", "test-connection"):
        result = runner.invoke(app, [command, "--password", "x"])
        assert result.exit_code == 2
        assert "No such option: --password" in result.output


# --- fuzzing: any bytes as a campaign file or a recipient list ------------------------------

yaml_bytes = st.one_of(
    st.binary(max_size=400),
    st.text(max_size=400).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.lists(
        st.sampled_from(
            [
                b"name: x\n",
                b"from: a@example.com\n",
                b'subject: "{{ first_name }}"\n',
                b"text: body.txt.j2\n",
                b"recipients: list.csv\n",
                b"rate: 5/s\n",
                b"retry: {attempts: 2}\n",
                b"vars: {a: &x 1, b: *x}\n",
                b"headers: {X-A: '{{ name }}'}\n",
                b"attachments: ['../{{ name }}']\n",
                b"\t- :\n",
                b"\xff\xfe",
                b"smtp: {port: 99999}\n",
            ]
        ),
        max_size=10,
    ).map(b"".join),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=yaml_bytes)
def test_fuzzed_campaign_files_end_cleanly(tmp_path: Path, data: bytes) -> None:
    """Any bytes as campaign.yaml: a contract exit code and a message, never a traceback."""
    files = make_campaign(tmp_path / "fuzz") if not (tmp_path / "fuzz").exists() else None
    folder = tmp_path / "fuzz"
    (folder / "campaign.yaml").write_bytes(data)
    result = runner.invoke(app, ["batch", str(folder / "campaign.yaml"), "--dry-run"])
    assert result.exit_code in CONTRACT_CODES, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    if result.exit_code != 0:
        assert result.stderr.strip(), "an error without a message"
    del files


csv_bytes = st.one_of(
    st.binary(max_size=600),
    st.lists(
        st.lists(
            st.one_of(
                st.text(max_size=12),
                st.sampled_from(["a@example.com", "B@Example.org", '"', "\r\n", "\x00", ",,"]),
            ),
            min_size=1,
            max_size=5,
        ),
        max_size=8,
    ).map(
        lambda rows: (
            "email,name,first_name\n" + "\n".join(",".join(cells) for cells in rows)
        ).encode("utf-8", "surrogatepass")
    ),
)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=csv_bytes)
def test_fuzzed_recipient_lists_end_cleanly(tmp_path: Path, data: bytes) -> None:
    """Any bytes as the CSV: exit 0 or 65 (or 66 for an unreadable file) with a message that
    names the file or the row; never a traceback."""
    folder = tmp_path / "fuzz"
    files = make_campaign(folder) if not folder.exists() else None
    (folder / "list.csv").write_bytes(data)
    result = runner.invoke(app, ["batch", str(folder / "campaign.yaml"), "--dry-run", "--json"])
    assert result.exit_code in (0, 65), result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    summary = json.loads(result.stdout)
    if result.exit_code == 65:
        named = str(folder / "list.csv") in result.stderr or "row " in result.stderr
        assert named, result.stderr
    else:
        assert summary["invalid"] == 0
    del files


def test_the_state_folder_is_private(tmp_path: Path) -> None:
    """The progress database names every recipient: the folder mailcli makes for it is 0700."""
    import stat

    files = make_campaign(tmp_path / "c", many_rows(2))
    result = runner.invoke(app, ["batch", str(files.yaml), "--sandbox", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    state = tmp_path / "out" / ".mailcli"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
