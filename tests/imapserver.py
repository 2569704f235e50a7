"""A throw-away Dovecot IMAP server for the tests: Debian's `dovecot-imapd`, a temporary folder
holding its whole configuration and state (nothing of /etc/dovecot is read), implicit TLS on a
free loopback port with a certificate from the test CA, and one user with a Maildir."""

from __future__ import annotations

import contextlib
import grp
import imaplib
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import trustme

USER, PASSWORD = "bounces", "s3cret-imap"


def find_dovecot() -> Path | None:
    """The dovecot master binary (Debian puts it in /usr/sbin, often not on a user's PATH)."""
    if Path("/usr/sbin/dovecot").is_file():
        return Path("/usr/sbin/dovecot")
    found = shutil.which("dovecot")
    return Path(found) if found else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ImapServer:
    """Dovecot on 127.0.0.1:`port` (IMAPS only), from `start()` until `stop()`.

    The single user `USER` / `PASSWORD` logs in with PLAIN or LOGIN; its mail is a Maildir in the
    temporary folder. Clients must trust `ca` (the `trust_ca` fixture does, via SSL_CERT_FILE).
    """

    host = "127.0.0.1"
    user, password = USER, PASSWORD

    def __init__(self, ca: trustme.CA, binary: Path | None = None) -> None:
        self.ca = ca
        self.binary = binary or find_dovecot() or Path("dovecot")
        self.port = 0
        self.folder: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 15) -> ImapServer:
        """Write the configuration, start `dovecot -F` and wait until a TLS login succeeds."""
        # Not pytest's tmp_path: Dovecot's unix sockets live in base_dir (paths under ~107 bytes),
        # and the folder must be reachable by Dovecot's unprivileged users, see _write_config.
        self.folder = Path(tempfile.mkdtemp(prefix="mailcli-imap-"))
        log = self.folder / "log"
        try:
            self.port = free_port()
            config = self._write_config(self.folder)
            with open(log, "ab") as output:
                # A session of its own, so that stop() can signal every Dovecot process at once.
                self.process = subprocess.Popen(
                    [str(self.binary), "-F", "-c", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self._wait_ready(timeout)
        except BaseException as error:
            if log.exists():
                error.add_note(log.read_text(encoding="utf-8", errors="replace"))
            self.stop()
            raise
        return self

    def _write_config(self, folder: Path) -> Path:
        """dovecot.conf, the certificate, the users file and the mail folder, under `folder`."""
        if os.geteuid() == 0:
            # Dovecot refuses mail processes running as root (and any uid below first_valid_uid,
            # 500 by default), so the mail belongs to `nobody`. Its login and auth processes drop
            # to the packaged users dovenull and dovecot, which must reach the users file.
            mail_user = pwd.getpwnam("nobody")
            login_user, internal_user, internal_group = "dovenull", "dovecot", "dovecot"
            folder.chmod(0o711)
            chroot = ""
        else:
            # Unprivileged ("rootless") Dovecot: every process is this user, and nothing chroots.
            mail_user = pwd.getpwuid(os.geteuid())
            login_user = internal_user = mail_user.pw_name
            internal_group = grp.getgrgid(os.getegid()).gr_name
            chroot = "\n  chroot ="
        mail = folder / "mail"
        mail.mkdir()
        os.chown(mail, mail_user.pw_uid, mail_user.pw_gid)

        certificate = self.ca.issue_cert("127.0.0.1", "localhost")
        cert, key = folder / "cert.pem", folder / "key.pem"
        certificate.private_key_pem.write_to_path(str(key))
        key.chmod(0o600)  # read by Dovecot's config process, which stays root
        certificate.cert_chain_pems[0].write_to_path(str(cert))
        for pem in certificate.cert_chain_pems[1:]:
            pem.write_to_path(str(cert), append=True)
        users = folder / "users"
        users.write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n", encoding="utf-8")
        users.chmod(0o644)

        config = folder / "dovecot.conf"
        config.write_text(
            f"""\
base_dir = {folder}/run
state_dir = {folder}/state
instance_name = mailcli-test-{self.port}
log_path = {folder}/log
protocols = imap
listen = 127.0.0.1
default_login_user = {login_user}
default_internal_user = {internal_user}
default_internal_group = {internal_group}
first_valid_uid = {mail_user.pw_uid}
first_valid_gid = {mail_user.pw_gid}
ssl = required
ssl_cert = <{cert}
ssl_key = <{key}
auth_mechanisms = plain login
# Tests try wrong passwords on purpose: no 2 s delay per failure (replies still come within
# 0.5 s, Dovecot's check interval), and no growing penalty per client IP (the anvil listener).
auth_failure_delay = 0
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {users}
}}
userdb {{
  driver = static
  args = uid={mail_user.pw_uid} gid={mail_user.pw_gid} home={mail}/%u
}}
mail_location = maildir:~/Maildir
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = {self.port}
    ssl = yes
  }}{chroot}
}}
service anvil {{{chroot}
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
""",
            encoding="utf-8",
        )
        return config

    def _wait_ready(self, timeout: float) -> None:
        """Poll until a TLS IMAP login works: the port, the certificate and auth are all up."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"dovecot exited with {self.process.returncode}")
            try:
                self.connect().logout()
                return
            except (OSError, imaplib.IMAP4.error) as error:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"dovecot not ready after {timeout} s: {error}") from error
                time.sleep(0.02)

    def stop(self) -> None:
        """Kill Dovecot and all its processes at once, then remove the folder."""
        if self.process is not None:
            # Immediate, like pg_ctl's: the mail is thrown away, so nothing needs a clean
            # shutdown, and Dovecot's own (SIGTERM to the master) always sleeps a second before
            # it exits. SIGKILL, to the whole session in one call: with SIGTERM to each, the
            # master restarts the children that die first and then waits up to 5 s for them.
            pid = self.process.pid
            _kill_group(pid)
            self.process.wait()
            # The children, orphans now, die at once but are reaped by init whenever it likes
            # (1.5 s here): wait for them to be dead, not reaped.
            deadline = time.monotonic() + 5
            while _live_members(pid) and time.monotonic() < deadline:
                time.sleep(0.005)
            self.process = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def __enter__(self) -> ImapServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- client helpers ----------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts the test CA (whatever SSL_CERT_FILE says)."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    def connect(self, password: str | None = None) -> imaplib.IMAP4_SSL:
        """A logged-in IMAPS client (raises imaplib.IMAP4.error on a wrong password)."""
        client = imaplib.IMAP4_SSL(self.host, self.port, ssl_context=self.ssl_context(), timeout=10)
        try:
            client.login(self.user, self.password if password is None else password)
        except BaseException:
            client.shutdown()
            raise
        return client

    def create(self, folder: str) -> None:
        """Create a mailbox (e.g. "Bounces")."""
        client = self.connect()
        try:
            _check(client.create(_quote(folder)))
        finally:
            client.logout()

    def append(self, raw: bytes, folder: str = "INBOX") -> None:
        """Store a message in `folder`, as a mail delivery would (imaplib turns every line ending
        into CRLF, as IMAP requires, so only CRLF messages come back byte for byte)."""
        client = self.connect()
        try:
            _check(client.append(_quote(folder), None, None, raw))
        finally:
            client.logout()

    def messages(self, folder: str = "INBOX") -> list[bytes]:
        """The raw messages in `folder` not flagged \\Deleted, in sequence order."""
        client = self.connect()
        try:
            _check(client.select(_quote(folder), readonly=True))
            typ, data = client.search(None, "UNDELETED")
            _check((typ, data))
            found: list[bytes] = []
            for number in data[0].split():
                typ, parts = client.fetch(number.decode(), "(BODY.PEEK[])")
                _check((typ, parts))
                found += [part[1] for part in parts if isinstance(part, tuple)]
            return found
        finally:
            client.logout()


def _quote(folder: str) -> str:
    """A mailbox name as an IMAP quoted string (imaplib sends names as they are)."""
    return '"' + re.sub(r'(["\\])', r"\\\1", folder) + '"'


def _check(response: tuple[str, object]) -> None:
    typ, data = response
    if typ != "OK":
        raise imaplib.IMAP4.error(f"{typ} {data!r}")


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _live_members(pgid: int) -> list[int]:
    """The processes of a process group that have not exited (zombies are left out, unlike with
    killpg(pgid, 0)), read from /proc: Linux only, elsewhere an empty list."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
            state, _, pgrp = stat.read_text().rpartition(")")[2].split()[:3]
        except (OSError, ValueError):
            continue  # gone meanwhile
        if pgrp == str(pgid) and state != "Z":
            live.append(int(stat.parent.name))
    return live
