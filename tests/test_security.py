"""Production SMTP end to end: STARTTLS and implicit TLS with a test CA, AUTH, secrets from every
source, test-connection, one-off sends, SMTPUTF8 - all against real aiosmtpd servers."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trustme
from conftest import PASSWORD, USER, Recorder, make_campaign, many_rows, start_server
from typer.testing import CliRunner

from mailcli.cli import app
from mailcli.sandbox import SmtpServer
from mailcli.transport import is_loopback

runner = CliRunner()
SECRET_FORMS = (
    PASSWORD,
    base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode(),
    base64.b64encode(PASSWORD.encode()).decode(),
)


def run(*args: str | Path, env: dict[str, str] | None = None, input: str | None = None) -> Any:
    result = runner.invoke(app, [str(a) for a in args], env=env, input=input)
    assert "Traceback" not in result.output, result.output
    for secret in SECRET_FORMS:  # whatever happens, no output ever shows the password
        assert secret not in result.output
    return result


def smtp(server: SmtpServer, security: str = "starttls", username: str | None = USER) -> list[str]:
    args = ["--host", "127.0.0.1", "--port", str(server.port), "--security", security]
    return args + (["--username", username] if username else [])


WITH_PASSWORD = {"MAILCLI_PASSWORD": PASSWORD}


# --- test-connection -----------------------------------------------------------------------


def test_test_connection_reports_tls_capabilities_auth_and_timings(
    starttls_server: SmtpServer,
) -> None:
    """STARTTLS + AUTH: ok, TLS version and cipher, a verified certificate, EHLO before and after
    TLS, the login result and the time of every phase."""
    result = run("test-connection", *smtp(starttls_server), "--json", env=WITH_PASSWORD)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["error"] is None
    assert report["banner"].startswith("220 ")
    assert "STARTTLS" in report["capabilities_before_tls"]
    assert "AUTH LOGIN PLAIN" in report["capabilities"]
    assert report["tls"]["version"] in ("TLSv1.2", "TLSv1.3") and report["tls"]["cipher"]
    cert = report["tls"]["certificate"]
    assert cert["verified"] is True and "localhost" in cert["names"]
    assert cert["issuer"].startswith("OU=Testing CA")
    assert report["auth"] == {
        "mechanisms": ["LOGIN", "PLAIN"],
        "username": USER,
        "ok": True,
        "mechanism": "PLAIN",
        "error": None,
    }
    assert set(report["timings_ms"]) == {"connect", "ehlo", "starttls", "ehlo_tls", "auth", "quit"}


def test_test_connection_human_report(starttls_server: SmtpServer) -> None:
    """Without --json: one line a phase, the certificate verdict and the login result."""
    result = run("test-connection", *smtp(starttls_server), env=WITH_PASSWORD)
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines if line[:1] != " "] == [
        "Server",
        "Banner",
        "EHLO",
        "STARTTLS",
        "Certificate",
        "EHLO",
        "AUTH",
        "Result",
    ]
    assert (
        "verified" in result.stdout and "login as mailer@example.com: OK (PLAIN)" in result.stdout
    )
    assert lines[-1].startswith("Result      OK")


def test_wrong_password_exits_77(starttls_server: SmtpServer) -> None:
    """A refused login is exit 77, with the server's reply, tried once with one mechanism."""
    result = run(
        "test-connection",
        *smtp(starttls_server),
        "--json",
        "--debug",
        env={"MAILCLI_PASSWORD": "wrong"},
    )
    assert result.exit_code == 77
    report = json.loads(result.stdout)
    assert report["auth"]["ok"] is False and "535" in report["auth"]["error"]
    assert result.stderr.count("C: AUTH ") == 1  # no second try with another mechanism


def test_closed_port_exits_69() -> None:
    """Nothing listening: exit 69 and a JSON report that says so."""
    server = SmtpServer(Recorder()).start()
    port = server.port
    server.stop()
    result = run("test-connection", "--host", "127.0.0.1", "--port", str(port), "--json")
    assert result.exit_code == 69
    report = json.loads(result.stdout)
    assert report["ok"] is False and "Connection refused" in report["error"]


def test_untrusted_certificate_exits_69_naming_the_problem(
    recorder: Recorder, trust_ca: Path
) -> None:
    """A certificate from a CA the client does not trust: exit 69, the reason, the certificate."""
    server = start_server(recorder, trustme.CA(), "starttls")
    try:
        result = run("test-connection", *smtp(server, username=None), "--json")
    finally:
        server.stop()
    assert result.exit_code == 69
    report = json.loads(result.stdout)
    assert "not trusted: unable to get local issuer certificate" in report["error"]
    cert = report["tls"]["certificate"]
    assert cert["verified"] is False
    assert cert["problem"] == "unable to get local issuer certificate"


def test_untrusted_certificate_stops_a_batch_before_any_login(
    recorder: Recorder, trust_ca: Path, tmp_path: Path
) -> None:
    """batch against an untrusted server: exit 69, the password is never sent."""
    server = start_server(recorder, trustme.CA(), "starttls")
    try:
        files = make_campaign(tmp_path)
        result = run("batch", files.yaml, *smtp(server), env=WITH_PASSWORD)
    finally:
        server.stop()
    assert result.exit_code == 69
    assert "TLS certificate of 127.0.0.1" in result.stderr
    assert recorder.messages == []


def test_insecure_skip_verify_connects_and_warns(recorder: Recorder, trust_ca: Path) -> None:
    """--insecure-skip-verify connects to an untrusted server, and says loudly that it did."""
    server = start_server(recorder, trustme.CA(), "starttls")
    try:
        result = run(
            "test-connection", *smtp(server), "--insecure-skip-verify", "--json", env=WITH_PASSWORD
        )
    finally:
        server.stop()
    assert result.exit_code == 0
    assert "WARNING: TLS certificate verification is OFF" in result.stderr
    assert json.loads(result.stdout)["tls"]["certificate"]["verified"] is False


def test_implicit_tls_works_the_same_way(tls_server: SmtpServer) -> None:
    """Port-465 style TLS: ok with the right password, 77 with a wrong one."""
    good = run("test-connection", *smtp(tls_server, "tls"), "--json", env=WITH_PASSWORD)
    assert good.exit_code == 0, good.stderr
    report = json.loads(good.stdout)
    assert report["tls"]["certificate"]["verified"] is True
    assert report["capabilities_before_tls"] == []
    bad = run("test-connection", *smtp(tls_server, "tls"), env={"MAILCLI_PASSWORD": "nope"})
    assert bad.exit_code == 77


def test_starttls_demanded_but_not_offered_exits_69(smtp_server: SmtpServer) -> None:
    """security starttls against a server without STARTTLS: exit 69, nothing sent in the clear."""
    result = run("test-connection", *smtp(smtp_server, username=None))
    assert result.exit_code == 69
    assert "does not offer STARTTLS" in result.stderr


# --- batch and send with AUTH ---------------------------------------------------------------


def test_batch_logs_in_once_over_tls_with_mailcli_password(
    starttls_server: SmtpServer, recorder: Recorder, tmp_path: Path
) -> None:
    """MAILCLI_PASSWORD: every message arrives authenticated, over TLS, on one connection."""
    files = make_campaign(tmp_path, many_rows(20))
    result = run("batch", files.yaml, *smtp(starttls_server), "--json", env=WITH_PASSWORD)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["connections"] == 1
    assert len(recorder.messages) == 20
    assert all(m.authenticated and m.tls for m in recorder.messages)


def test_debug_transcript_hides_the_password_and_the_message(
    starttls_server: SmtpServer, tmp_path: Path
) -> None:
    """--debug shows the dialogue; AUTH data and message content are left out."""
    files = make_campaign(tmp_path)
    result = run("batch", files.yaml, *smtp(starttls_server), "--debug", env=WITH_PASSWORD)
    assert result.exit_code == 0
    assert "smtp: C: STARTTLS" in result.stderr
    assert "smtp: C: AUTH PLAIN <redacted>" in result.stderr
    assert "smtp: S: 235 2.7.0 Authentication successful" in result.stderr
    assert result.stderr.count("smtp: C: <message data, ") == 3
    assert "Hi Ann" not in result.stderr


def test_send_envelope_has_every_recipient_and_bcc_stays_hidden(
    starttls_server: SmtpServer, recorder: Recorder, tmp_path: Path
) -> None:
    """send: two To, a Cc, a Bcc, a non-ASCII subject, a --var body and a binary attachment."""
    blob = os.urandom(50_000)
    (tmp_path / "report.pdf").write_bytes(blob)
    result = run(
        "send",
        "--to",
        "Ann <ann@example.com>",
        "--to",
        "bob@example.org",
        "--cc",
        "carol@example.net",
        "--bcc",
        "dave@example.com",
        "--from",
        "Zoë <zoe@example.com>",
        "--subject",
        "Grüße, {{ who }} ✓",
        "--text",
        "Hallo {{ who }}!",
        "--var",
        "who=Welt",
        "--attach",
        tmp_path / "report.pdf",
        *smtp(starttls_server),
        "--json",
        env=WITH_PASSWORD,
    )
    assert result.exit_code == 0, result.stderr
    [received] = recorder.messages
    assert sorted(received.rcpt_tos) == [
        "ann@example.com",
        "bob@example.org",
        "carol@example.net",
        "dave@example.com",
    ]
    message = received.message
    assert message["Bcc"] is None and b"dave@" not in received.data
    assert message["Subject"] == "Grüße, Welt ✓"
    assert message.get_body(("plain",)).get_content().strip() == "Hallo Welt!"
    [part] = message.iter_attachments()
    assert part.get_filename() == "report.pdf" and part.get_content_type() == "application/pdf"
    assert part.get_payload(decode=True) == blob
    assert json.loads(result.stdout)["refused"] == {}


def test_smtputf8_used_only_when_an_address_needs_it(
    smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """A non-ASCII local part goes with SMTPUTF8; an ASCII message carries no such parameter;
    an internationalised domain travels as IDNA."""
    for to in ("jürgen@example.com", "info@bücher.example", "plain@example.com"):
        result = run(
            "send",
            "--to",
            to,
            "--from",
            "me@example.com",
            "--subject",
            "Hi",
            "--text",
            "Hi",
            *smtp(smtp_server, "none", username=None),
        )
        assert result.exit_code == 0, result.stderr
    utf8, idn, plain = recorder.messages
    assert "SMTPUTF8" in utf8.mail_options and utf8.rcpt_tos == ["jürgen@example.com"]
    assert "BODY=8BITMIME" in utf8.mail_options
    assert idn.rcpt_tos == ["info@xn--bcher-kva.example"] and "SMTPUTF8" not in idn.mail_options
    assert not any(o.startswith(("SMTPUTF8", "BODY=")) for o in plain.mail_options)


def test_smtputf8_address_against_a_server_without_it(recorder: Recorder) -> None:
    """A server without SMTPUTF8 cannot take a non-ASCII local part: exit 65, a clear reason."""
    server = start_server(recorder, None, "none", enable_SMTPUTF8=False)
    try:
        result = run(
            "send",
            "--to",
            "jürgen@example.com",
            "--from",
            "me@example.com",
            "--subject",
            "Hi",
            "--text",
            "Hi",
            *smtp(server, "none", username=None),
        )
    finally:
        server.stop()
    assert result.exit_code == 65
    assert "needs a server with SMTPUTF8" in result.stderr
    assert recorder.messages == []


def test_plain_auth_on_loopback_is_allowed(recorder: Recorder) -> None:
    """Without TLS, logging in is allowed to a server on this machine (the peer is loopback)."""
    server = start_server(recorder, None, "none")
    try:
        result = run("test-connection", *smtp(server, "none"), "--json", env=WITH_PASSWORD)
    finally:
        server.stop()
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["auth"]["ok"] is True


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.5", False),
        ("192.168.1.1", False),
        ("2001:db8::1", False),
        ("localhost", False),
        ("", False),
        (None, False),
    ],
)
def test_only_loopback_peers_count_as_this_machine(address: str | None, loopback: bool) -> None:
    """The plaintext-AUTH exception is decided on the peer's IP, never on a host name."""
    assert is_loopback(address) is loopback


# --- secrets: keyring, missing sources ------------------------------------------------------


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MAILCLI_PASSWORD"}
    return {**env, **extra}


def test_password_set_then_batch_logs_in_from_the_keyring(
    starttls_server: SmtpServer, recorder: Recorder, test_keyring: Path, tmp_path: Path
) -> None:
    """`mailcli password set` (stdin) stores it; a batch with no env var then logs in with it."""
    mailcli = [sys.executable, "-m", "mailcli"]
    stored = subprocess.run(
        [*mailcli, "password", "set", "--host", "127.0.0.1", "--username", USER],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=60,
    )
    assert stored.returncode == 0, stored.stderr
    assert PASSWORD not in stored.stdout + stored.stderr
    assert test_keyring.exists()
    files = make_campaign(tmp_path)
    sent = subprocess.run(
        [*mailcli, "batch", str(files.yaml), *smtp(starttls_server), "--json"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)["sent"] == 3
    assert all(m.authenticated for m in recorder.messages)
    assert PASSWORD not in sent.stdout + sent.stderr


def test_no_password_source_and_no_terminal_fails_fast(
    starttls_server: SmtpServer, recorder: Recorder, tmp_path: Path
) -> None:
    """No env var, no keyring, no password_command, stdin not a terminal: exit 78 at once,
    naming MAILCLI_PASSWORD and saying that there is no keyring."""
    files = make_campaign(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "mailcli", "batch", str(files.yaml), *smtp(starttls_server)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        env=subprocess_env(PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring"),
    )
    assert result.returncode == 78
    assert "no password for mailer@example.com@127.0.0.1" in result.stderr
    assert "MAILCLI_PASSWORD" in result.stderr
    assert "no system keyring is available" in result.stderr
    assert recorder.messages == []


def test_password_command_from_a_profile(
    starttls_server: SmtpServer,
    recorder: Recorder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_keyring: None,
) -> None:
    """A profile's password_command supplies the password; the profile gives host and user."""
    script = tmp_path / "secret.sh"
    script.write_text(f"#!/bin/sh\necho '{PASSWORD}'\n")
    script.chmod(0o700)
    config = tmp_path / "config.yaml"
    config.write_text(
        "profiles:\n  work:\n    host: 127.0.0.1\n"
        f"    port: {starttls_server.port}\n    username: {USER}\n"
        f"    from: Work <work@example.com>\n    password_command: {script}\n"
    )
    monkeypatch.setenv("MAILCLI_CONFIG", str(config))
    files = make_campaign(tmp_path / "c")
    result = run("batch", files.yaml, "--profile", "work", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["sent"] == 3
    assert all(m.authenticated for m in recorder.messages)


def test_xoauth2_with_a_token(
    recorder: Recorder,
    ca: trustme.CA,
    trust_ca: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`auth: xoauth2` sends the token as an OAuth 2.0 bearer (SASL XOAUTH2)."""
    from aiosmtpd.smtp import AuthResult

    seen: list[bytes] = []

    class OAuthRecorder(Recorder):
        async def auth_XOAUTH2(self, server: Any, args: list[str]) -> AuthResult:
            seen.append(base64.b64decode(args[1]))
            return AuthResult(
                success=seen[-1] == f"user={USER}\1auth=Bearer tok-123\1\1".encode(), handled=False
            )

    oauth = OAuthRecorder()
    server = start_server(oauth, ca, "starttls")
    config = tmp_path / "config.yaml"
    config.write_text(f"profiles:\n  default:\n    auth: xoauth2\n    username: {USER}\n")
    monkeypatch.setenv("MAILCLI_CONFIG", str(config))
    try:
        result = run(
            "test-connection", *smtp(server), "--json", env={"MAILCLI_PASSWORD": "tok-123"}
        )
    finally:
        server.stop()
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["auth"]["mechanism"] == "XOAUTH2"
    assert len(seen) == 1


def test_test_connection_takes_a_campaigns_settings(
    starttls_server: SmtpServer, tmp_path: Path
) -> None:
    """test-connection CAMPAIGN.yaml uses the campaign's smtp: host, port and username."""
    files = make_campaign(
        tmp_path,
        extra=f"smtp: {{host: 127.0.0.1, port: {starttls_server.port}, username: {USER}}}\n",
    )
    result = run("test-connection", files.yaml, "--json", env=WITH_PASSWORD)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["port"], report["auth"]["ok"]) == (starttls_server.port, True)


def test_silent_server_times_out_with_exit_69() -> None:
    """A server that accepts but never sends a banner: exit 69 after --timeout, not a hang."""
    import socket
    import time

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        started = time.monotonic()
        result = run(
            "test-connection",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--timeout",
            "1",
            "--json",
        )
        elapsed = time.monotonic() - started
    assert result.exit_code == 69
    assert "timed out" in json.loads(result.stdout)["error"]
    assert elapsed < 30  # bounded by --timeout, far from the 30 s default


def test_missing_password_fails_before_any_connection(recorder: Recorder, no_keyring: None) -> None:
    """send with a username but no password anywhere: exit 78, and the server sees nothing."""
    server = start_server(recorder, None, "none")
    try:
        result = run(
            "send",
            "--to",
            "a@example.com",
            "--from",
            "me@example.com",
            "--subject",
            "S",
            "--text",
            "T",
            *smtp(server, "none"),
        )
    finally:
        server.stop()
    assert result.exit_code == 78
    assert "MAILCLI_PASSWORD" in result.stderr
    assert recorder.peers == []
