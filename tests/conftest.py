"""Shared fixtures: a real aiosmtpd server with a recording, fault-injecting handler, and campaigns
written to tmp_path."""

from __future__ import annotations

import asyncio
import csv
import email.policy
import glob
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
import trustme
from imapserver import ImapServer, find_dovecot
from pgserver import PgCluster, find_bindir

from mailcli.sandbox import SmtpServer

USER, PASSWORD = "mailer@example.com", "correct horse battery staple"


@dataclass
class Received:
    """One message as the server got it."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    peer: Any
    mail_options: list[str] = field(default_factory=list)
    authenticated: bool = False
    tls: bool = False
    received_at: float = 0.0

    @property
    def message(self) -> EmailMessage:
        parsed = BytesParser(policy=email.policy.default).parsebytes(self.data)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class Recorder:
    """An aiosmtpd handler that records everything and injects faults on the server side.

    - rcpt_replies: address -> reply for RCPT TO (e.g. "550 5.1.1 no such user")
    - data_reply: a function of the envelope returning a reply for the end of DATA, or None for 250
    - hangup_after_data: a function of the envelope; when True the server closes the connection
      after reading the whole message, without replying (the "unknown" case)
    """

    messages: list[Received] = field(default_factory=list)
    peers: list[Any] = field(default_factory=list)
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    data_reply: Callable[[Any], str | None] | None = None
    hangup_after_data: Callable[[Any], bool] | None = None
    temp_fail_once: set[str] = field(default_factory=set)
    hangup_every: int | None = None
    mail_reply: Callable[[int], str | None] | None = None
    on_data: Callable[[Any], None] | None = None
    # Seconds to sit on a message (after reading it all) before replying, chosen per envelope.
    stall_data: Callable[[Any], float] | None = None
    pipelining: bool = False  # advertise PIPELINING (aiosmtpd reads pipelined commands in order)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _hung_at: set[int] = field(default_factory=set)

    @property
    def connections(self) -> int:
        return len(set(self.peers))

    def recipients(self) -> list[str]:
        return [r for m in self.messages for r in m.rcpt_tos]

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        with self.lock:
            self.peers.append(session.peer)
        session.host_name = hostname
        if self.pipelining:
            return [*responses[:-1], "250-PIPELINING", responses[-1]]
        return responses

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]
    ) -> str:
        """Faults before a message: hang up every N messages, or a chosen reply (e.g. 421)."""
        accepted = len(self.messages)
        every = self.hangup_every
        if every and accepted and accepted % every == 0 and accepted not in self._hung_at:
            self._hung_at.add(accepted)
            server.transport.close()
            return "421 4.3.2 hanging up"
        if self.mail_reply is not None:
            reply = self.mail_reply(accepted)
            if reply is not None:
                return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        reply = self.rcpt_replies.get(address)
        if reply is not None:
            return reply
        if address in self.temp_fail_once:
            self.temp_fail_once.discard(address)
            return "451 4.7.1 greylisted, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.on_data is not None:
            self.on_data(envelope)
        if self.stall_data is not None and (stall := self.stall_data(envelope)) > 0:
            await asyncio.sleep(stall)
            return "451 4.3.0 too late: the client gave up"
        if self.hangup_after_data is not None and self.hangup_after_data(envelope):
            server.transport.close()
            await asyncio.sleep(0)
            return "421 closing"
        if self.data_reply is not None:
            reply = self.data_reply(envelope)
            if reply is not None:
                return reply
        with self.lock:
            self.messages.append(
                Received(
                    envelope.mail_from,
                    list(envelope.rcpt_tos),
                    envelope.original_content,
                    session.peer,
                    list(envelope.mail_options),
                    bool(session.authenticated),
                    server.transport.get_extra_info("sslcontext") is not None,
                    time.monotonic(),
                )
            )
        return "250 2.0.0 queued"


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def smtp_server(recorder: Recorder) -> Iterator[SmtpServer]:
    """A real aiosmtpd server on a free loopback port, recording into `recorder`."""
    with SmtpServer(recorder, hostname="test.server") as server:
        yield server


ROWS = [
    {"email": "ann@example.com", "name": "Ann Lee", "first_name": "Ann"},
    {"email": "bob@example.org", "name": "Bob Müller", "first_name": "Bob"},
    {"email": "chloe@example.net", "name": "Chloé Dubois", "first_name": "Chloé"},
]


@dataclass
class CampaignFiles:
    folder: Path
    yaml: Path
    csv: Path

    def write_rows(self, rows: list[dict[str, str]], *, bom: bool = False) -> None:
        write_csv(self.csv, rows, bom=bom)


def write_csv(
    path: Path, rows: list[dict[str, str]], *, bom: bool = False, columns: list[str] | None = None
) -> None:
    columns = columns or list(rows[0].keys())
    with open(path, "w", encoding="utf-8-sig" if bom else "utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def make_campaign(
    folder: Path,
    rows: list[dict[str, str]] | None = None,
    *,
    extra: str = "",
    text: str | None = None,
    html: str | None = None,
    subject: str = "Hello {{ first_name }}",
    bom: bool = False,
) -> CampaignFiles:
    """Write a campaign (YAML, CSV, text + HTML templates) into a folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "body.txt.j2").write_text(
        text if text is not None else "Hi {{ first_name }},\nthis is {{ company }}.\n",
        encoding="utf-8",
    )
    (folder / "body.html.j2").write_text(
        html if html is not None else "<p>Hi {{ first_name }}, this is {{ company }}.</p>\n",
        encoding="utf-8",
    )
    files = CampaignFiles(folder, folder / "campaign.yaml", folder / "list.csv")
    files.write_rows(rows if rows is not None else ROWS, bom=bom)
    files.yaml.write_text(
        textwrap.dedent(f"""\
        name: test-campaign
        from: "Test Sender <sender@example.com>"
        subject: "{subject}"
        text: body.txt.j2
        html: body.html.j2
        recipients: list.csv
        vars: {{company: Acme}}
        """)
        + textwrap.dedent(extra),
        encoding="utf-8",
    )
    return files


@pytest.fixture
def campaign_files(tmp_path: Path) -> CampaignFiles:
    return make_campaign(tmp_path / "camp")


def connect_to(server: SmtpServer) -> Any:
    """A plain-SMTP transport to a test server (10 s timeout)."""
    from mailcli.transport import SmtpSettings, SmtpTransport

    return SmtpTransport(
        SmtpSettings(host=server.host, port=server.port, security="none", timeout=10)
    )


def no_sleep(seconds: float) -> None:
    """Reconnect backoff without waiting: what is sent is under test, not the clock."""


def server_args(server: SmtpServer) -> list[str]:
    """The SMTP options that point a command at a test server (plain SMTP on loopback)."""
    return ["--host", "127.0.0.1", "--port", str(server.port), "--security", "none"]


def spawn_batch(campaign: Path, server: SmtpServer, *extra: str) -> subprocess.Popen[str]:
    """A real `mailcli batch ... --json` process against a test server."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mailcli",
            "batch",
            str(campaign),
            *server_args(server),
            "--json",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )


# The keys the contract promises in `batch --json` (and `batch --dry-run --json`).
BATCH_JSON_KEYS = frozenset(
    {
        "campaign",
        "total",
        "sent",
        "failed",
        "deferred",
        "unknown",
        "skipped",
        "invalid",
        "elapsed_s",
        "rate_per_s",
        "connections",
        "exit_code",
    }
)


def busiest_second(times: list[float]) -> int:
    """The most messages received in any one-second window."""
    return max(sum(1 for t in times if start <= t < start + 1.0) for start in times)


def many_rows(n: int) -> list[dict[str, str]]:
    return [
        {"email": f"user{i:05d}@example.com", "name": f"User {i}", "first_name": f"U{i}"}
        for i in range(1, n + 1)
    ]


# --- TLS, AUTH and keyring ------------------------------------------------------------------


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """A test certificate authority; clients trust it through SSL_CERT_FILE."""
    return trustme.CA()


@pytest.fixture
def trust_ca(ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make the test CA the trust store of this process (and of subprocesses) via SSL_CERT_FILE."""
    pem = tmp_path / "test-ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    monkeypatch.setenv("SSL_CERT_FILE", str(pem))
    return pem


def server_tls_context(ca: trustme.CA) -> Any:
    """A server context with a certificate for 127.0.0.1 and localhost issued by `ca`."""
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


def check_password(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> Any:
    """aiosmtpd authenticator: accepts USER / PASSWORD only."""
    from aiosmtpd.smtp import AuthResult, LoginPassword

    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login.decode() == USER
        and auth_data.password.decode() == PASSWORD
    )
    # handled=False: aiosmtpd then sends the 535 itself (handled=True means "already replied").
    return AuthResult(success=ok, handled=False)


def start_server(
    recorder: Recorder, ca: trustme.CA | None, security: str, **options: Any
) -> SmtpServer:
    """A real aiosmtpd server: STARTTLS, implicit TLS or plain; AUTH with check_password."""
    options.setdefault("authenticator", check_password)
    if security == "starttls":
        assert ca is not None
        return SmtpServer(recorder, tls_context=server_tls_context(ca), **options).start()
    if security == "tls":
        assert ca is not None
        # aiosmtpd only counts STARTTLS as TLS for auth_require_tls; implicit TLS is TLS anyway.
        options.setdefault("auth_require_tls", False)
        return SmtpServer(recorder, ssl_context=server_tls_context(ca), **options).start()
    options.setdefault("auth_require_tls", False)
    return SmtpServer(recorder, **options).start()


@pytest.fixture
def starttls_server(recorder: Recorder, ca: trustme.CA, trust_ca: Path) -> Iterator[SmtpServer]:
    """STARTTLS (certificate from the trusted test CA) and AUTH PLAIN/LOGIN after TLS."""
    server = start_server(recorder, ca, "starttls")
    yield server
    server.stop()


@pytest.fixture
def tls_server(recorder: Recorder, ca: trustme.CA, trust_ca: Path) -> Iterator[SmtpServer]:
    """Implicit TLS (port-465 style) with AUTH."""
    server = start_server(recorder, ca, "tls")
    yield server
    server.stop()


@pytest.fixture
def test_keyring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A real keyring backend (keyrings.alt's file keyring) kept in tmp_path.

    In this process it is installed with keyring.set_keyring; subprocesses find it through
    PYTHON_KEYRING_BACKEND and XDG_DATA_HOME.
    """
    import keyring
    from keyrings.alt.file import PlaintextKeyring

    data = tmp_path / "data"
    monkeypatch.setenv("XDG_DATA_HOME", str(data))
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyrings.alt.file.PlaintextKeyring")
    backend = PlaintextKeyring()
    assert str(data) in backend.file_path
    previous = keyring.get_keyring()
    keyring.set_keyring(backend)
    yield Path(backend.file_path)
    keyring.set_keyring(previous)


@pytest.fixture
def no_keyring(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A machine with no keyring backend at all (a headless server)."""
    import keyring
    from keyring.backends import fail

    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    previous = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    yield
    keyring.set_keyring(previous)


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's config file or MAILCLI_* variables."""
    for name in (
        "MAILCLI_PASSWORD",
        "MAILCLI_HOST",
        "MAILCLI_PORT",
        "MAILCLI_SECURITY",
        "MAILCLI_USERNAME",
        "MAILCLI_PROFILE",
        "MAILCLI_FROM",
        "POSTMARK_SERVER_TOKEN",
        "RESEND_API_KEY",
        "SENDGRID_API_KEY",
        "MAILGUN_API_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MAILCLI_CONFIG", str(tmp_path / "no-config.yaml"))
    # The default suppression list and the user data folder are the test's own.
    monkeypatch.setenv("MAILCLI_SUPPRESSION", str(tmp_path / "suppression.sqlite"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("MAILCLI_UNSUBSCRIBE_SECRET", raising=False)


def relay_profile(tmp_path: Path, server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config file with the profile `relay` (plain SMTP to `server`, from Relay
    <relay@acme.example>), in force through MAILCLI_CONFIG."""
    config = tmp_path / "config.yaml"
    config.write_text(
        "profiles:\n"
        f"  relay: {{host: 127.0.0.1, port: {server.port}, security: none,"
        ' from: "Relay <relay@acme.example>"}\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("MAILCLI_CONFIG", str(config))
    return config


# --- PostgreSQL ---------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def isolated_libpq_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's libpq variables (PGPASSWORD, PGHOST, PGUSER...) or ~/.pgpass."""
    for name in list(os.environ):
        if name.startswith("PG"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-pgpass"))


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A throw-away PostgreSQL server on a free loopback port for the whole session."""
    bindir = find_bindir()
    if bindir is None:
        if os.environ.get("MAILCLI_REQUIRE_POSTGRES") or os.environ.get("CI"):
            pytest.fail("PostgreSQL is required here (MAILCLI_REQUIRE_POSTGRES or CI) but missing")
        pytest.skip("needs PostgreSQL's initdb and pg_ctl (Debian package postgresql)")
    with PgCluster(bindir) as cluster:
        yield cluster


@pytest.fixture
def pg_url(
    pg_cluster: PgCluster, isolated_libpq_environment: None, monkeypatch: pytest.MonkeyPatch
) -> str:
    """A fresh database and a role owning it, per test: postgresql://role@127.0.0.1:port/db
    (no password in it); the role's password is in PGPASSWORD, as libpq reads it."""
    url = pg_cluster.create_database(f"test_{uuid.uuid4().hex[:12]}")
    monkeypatch.setenv("PGPASSWORD", pg_cluster.password)
    return url


@pytest.fixture
def imap_server(ca: trustme.CA, trust_ca: Path) -> Iterator[ImapServer]:
    """A throw-away Dovecot on a free loopback port, IMAPS only, with the user `bounces` /
    `s3cret-imap`; its certificate comes from `ca`, which SSL_CERT_FILE makes trusted."""
    binary = find_dovecot()
    if binary is None:
        if os.environ.get("MAILCLI_REQUIRE_DOVECOT") or os.environ.get("CI"):
            pytest.fail("Dovecot is required here (MAILCLI_REQUIRE_DOVECOT or CI) but missing")
        pytest.skip("needs Dovecot's dovecot binary (Debian package dovecot-imapd)")
    with ImapServer(ca, binary) as server:
        yield server


# --- faketime -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def faketime() -> str:
    """libfaketime (Debian package faketime), which moves the clock of the sequence tests' real
    mailcli processes to a chosen moment: the library to preload. (Not the `faketime` wrapper:
    it keeps a named semaphore per process, which a kill -9 leaves behind, and a later wrapper
    given the same pid then fails.)"""
    found = [
        *sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1")),
        *glob.glob("/usr/lib/faketime/libfaketime.so.1"),
        *glob.glob("/usr/local/lib/faketime/libfaketime.so.1"),
    ]
    if not found or shutil.which("faketime") is None:
        if os.environ.get("MAILCLI_REQUIRE_FAKETIME"):
            pytest.fail("faketime is required here (MAILCLI_REQUIRE_FAKETIME) but not installed")
        pytest.skip("needs libfaketime (Debian package faketime)")
    return found[0]
