"""The throw-away Dovecot of tests/imapserver.py: IMAPS only, a certificate from the test CA, one
user whose password is really checked, and messages stored and listed over IMAP."""

from __future__ import annotations

import imaplib
import socket
import ssl
import subprocess

import pytest
from imapserver import PASSWORD, USER, ImapServer

pytestmark = pytest.mark.dovecot

RAW = (
    b"From: Mailer-Daemon <mailer-daemon@example.com>\r\n"
    b"To: bounces@example.com\r\n"
    b"Subject: Undelivered Mail Returned to Sender\r\n"
    b"\r\n"
    b"550 5.1.1 <ann@example.com>: no such user\r\n"
)


def test_login_with_the_right_password(imap_server: ImapServer) -> None:
    """A client that trusts the CA only through SSL_CERT_FILE (the default context, as code under
    test builds it) verifies the certificate for 127.0.0.1 and logs in with PLAIN."""
    with imaplib.IMAP4_SSL(
        imap_server.host, imap_server.port, ssl_context=ssl.create_default_context(), timeout=10
    ) as client:
        typ, _ = client.login(USER, PASSWORD)
        assert typ == "OK"
        assert client.state == "AUTH"


def test_login_method_login_works(imap_server: ImapServer) -> None:
    """AUTHENTICATE LOGIN is offered besides PLAIN (and LOGIN, the IMAP command)."""
    client = imaplib.IMAP4_SSL(imap_server.host, imap_server.port, timeout=10)
    try:
        assert "AUTH=LOGIN" in client.capabilities
        answers = iter([USER.encode(), PASSWORD.encode()])
        typ, _ = client.authenticate("LOGIN", lambda challenge: next(answers))
        assert typ == "OK"
    finally:
        client.logout()


def test_wrong_password_is_refused(imap_server: ImapServer) -> None:
    """The passdb checks the password: a wrong one (or the wrong user) gets NO, not a session."""
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        imap_server.connect(password="wrong")
    client = imaplib.IMAP4_SSL(imap_server.host, imap_server.port, timeout=10)
    try:
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            client.login("someone-else", PASSWORD)
    finally:
        client.shutdown()


def test_append_then_messages(imap_server: ImapServer) -> None:
    """What append stores, messages returns byte for byte, per folder; a fresh server starts
    with an empty INBOX."""
    assert imap_server.messages() == []
    imap_server.append(RAW)
    imap_server.create("Bounces")
    imap_server.append(RAW.replace(b"ann@", b"bob@"), folder="Bounces")
    assert imap_server.messages() == [RAW]
    assert imap_server.messages("Bounces") == [RAW.replace(b"ann@", b"bob@")]


def test_deleted_messages_are_not_listed(imap_server: ImapServer) -> None:
    """messages() leaves out what a client flagged \\Deleted (before any EXPUNGE)."""
    imap_server.append(RAW)
    imap_server.append(RAW.replace(b"ann@", b"bob@"))
    client = imap_server.connect()
    try:
        client.select("INBOX")
        client.store("1", "+FLAGS", "\\Deleted")
    finally:
        client.logout()
    assert imap_server.messages() == [RAW.replace(b"ann@", b"bob@")]


def test_plain_connection_gets_no_greeting(imap_server: ImapServer) -> None:
    """The port speaks implicit TLS only: a plain client gets no "* OK" greeting, and a plain
    LOGIN is answered with a TLS alert, never an IMAP reply."""
    with socket.create_connection((imap_server.host, imap_server.port), timeout=10) as sock:
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(100)
        sock.settimeout(10)
        sock.sendall(f"a1 LOGIN {USER} {PASSWORD}\r\n".encode())
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    assert b"OK" not in reply
    assert reply[:1] in (b"", b"\x15")  # nothing, or a TLS alert record


def test_stop_leaves_no_process(imap_server: ImapServer) -> None:
    """stop() ends every Dovecot process of the server (its session), frees the port and removes
    the folder."""
    assert imap_server.process is not None and imap_server.folder is not None
    session, folder = imap_server.process.pid, imap_server.folder
    imap_server.append(RAW)
    imap_server.stop()
    assert not folder.exists()
    # A zombie (state Z) is already dead, only waiting for init to reap it.
    ps = subprocess.run(["ps", "-o", "stat=,args=", "-s", str(session)], capture_output=True)
    alive = [line for line in ps.stdout.decode().splitlines() if not line.startswith("Z")]
    assert alive == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((imap_server.host, imap_server.port), timeout=10)
