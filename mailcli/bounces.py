"""Bounces and complaints: read a mailbox, tell what each message says, suppress who must go.

`classify` reads one message:

- An RFC 5965 feedback report (`multipart/report; report-type=feedback-report`) is a complaint
  about the address in its `Original-Rcpt-To` (else the `To` of the returned original).
- An RFC 3464 delivery status notification (a `message/delivery-status` part, which Postfix,
  Exim, Microsoft 365, Gmail and most MTAs write) gives each recipient's `Action` and `Status`:
  a permanent failure of the address (5.x.x, see `_kind`) is a hard bounce; a delay or a
  temporary failure (4.x.x), a policy block (5.7.x) or a full mailbox (5.2.2) is a soft bounce.
- A bounce in an older, non-standard format (Exim's `X-Failed-Recipients` text, qmail, ...)
  is read by flufl.bounce, but only when the message comes from a mailer daemon: ordinary
  replies and auto-replies (out of office) are never taken for bounces.

Each result is tied to the message that bounced by its original Message-ID (found in the
returned headers), and, through the states of the campaigns given, to the campaign and the
recipient it was sent to. `scan` reads a Maildir, an mbox, or an IMAP folder over TLS, suppresses
hard bounces and complaints, counts soft bounces (suppressing at `soft_limit`), and remembers
the reports it has read so that a second scan of the same mailbox counts nothing twice.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import hashlib
import imaplib
import logging
import mailbox
import re
import ssl
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlsplit

from mailcli.addresses import AddressError, normalize_address
from mailcli.errors import (
    AuthError,
    ConfigError,
    DataError,
    InputFileError,
    TempFailError,
    UnavailableError,
    UsageError,
)
from mailcli.suppression import SOFT_LIMIT, Reason, SuppressionList, key_of

if TYPE_CHECKING:
    from mailcli.campaign import Campaign

log = logging.getLogger(__name__)

Kind = Literal["hard", "soft", "complaint"]
DAEMONS = ("mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon", "microsoftexchange")
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_MESSAGE_ID = re.compile(r"(?im)^message-id:[ \t]*(?:\r?\n[ \t]+)?(<[^>\s]+>)")
# Feedback types that are complaints (RFC 5965 section 7.3); `not-spam` is the opposite.
COMPLAINTS = frozenset({"abuse", "fraud", "virus", "other"})


@dataclass(frozen=True, slots=True)
class Finding:
    """What a report says about one recipient."""

    kind: Kind
    email: str
    status: str | None = None  # the enhanced status code (RFC 3463), e.g. 5.1.1
    detail: str = ""  # the server's diagnostic, or the feedback type
    message_id: str | None = None  # the Message-ID of the message that bounced
    campaign: str | None = None  # known once tied through a campaign's state


def classify(msg: Message) -> list[Finding]:
    """What one message reports: nothing for a reply, an auto-reply or anything else."""
    original = _original_message_id(msg)
    feedback = _part(msg, "message/feedback-report")
    if feedback is not None:
        return _complaint(msg, feedback, original)
    status = _part(msg, "message/delivery-status")
    if status is not None:
        return _dsn(status, original)
    if _from_daemon(msg):
        return _legacy(msg, original)
    return []


def _part(msg: Message, content_type: str) -> Message | None:
    for part in msg.walk():
        if part.get_content_type() == content_type:
            return part
    return None


def _blocks(part: Message) -> list[Message]:
    """The header blocks of a message/delivery-status or message/feedback-report part."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    if isinstance(payload, str):  # kept as text by some writers: blocks split by blank lines
        text = payload.replace("\r\n", "\n")
        return [
            email.message_from_string(b.strip() + "\n") for b in text.split("\n\n") if b.strip()
        ]
    return []


def _field(block: Message, name: str) -> str:
    value = block.get(name)
    return " ".join(str(value).split()) if value is not None else ""


def _address_of(value: str) -> str | None:
    """The address of a DSN/ARF address field: `rfc822; user@example.com` or `<user@...>`."""
    if ";" in value:
        kind, _, value = value.partition(";")
        if kind.strip().lower() not in ("rfc822", ""):
            return None
    value = value.strip().strip("<>").strip()
    if not value:
        return None
    try:
        return normalize_address(value)
    except AddressError:
        return None


def _kind(status: str) -> Kind:
    """A DSN status as a hard or soft bounce (RFC 3463 codes)."""
    klass, subject, detail = (int(x) for x in status.split("."))
    if klass != 5:
        return "soft"  # 4.x.x: tried again later, or gave up on a temporary failure
    if subject == 1 and detail in (7, 8):
        return "soft"  # our sender address was refused: not the recipient's fault
    if (subject, detail) in ((2, 2), (2, 3)) or subject in (3, 4, 5, 6, 7):
        # A full mailbox, a message too big, the receiving system, routing, the protocol, the
        # content, a policy or spam block: not the address's fault; counted, suppressed only
        # if it keeps happening.
        return "soft"
    return "hard"  # 5.1.x (no such address, bad domain), 5.2.1 (disabled), 5.0.0, ...


def _dsn(part: Message, original: str | None) -> list[Finding]:
    findings = []
    for block in _blocks(part)[1:]:  # the first block is about the message, the rest per rcpt
        action = _field(block, "Action").lower()
        if action in ("delivered", "relayed", "expanded"):
            continue
        address = _address_of(_field(block, "Original-Recipient")) or _address_of(
            _field(block, "Final-Recipient")
        )
        if address is None:
            continue
        diagnostic = _field(block, "Diagnostic-Code") or _field(block, "X-Exim-Diagnostic")
        status = _refined(_field(block, "Status"), diagnostic)
        if status is None:
            continue
        kind = "soft" if action == "delayed" else _kind(status)
        text = diagnostic.partition(";")[2].strip() if ";" in diagnostic else diagnostic
        findings.append(Finding(kind, address, status, text[:500], original))
    return findings


def _refined(status: str, diagnostic: str) -> str | None:
    """The DSN's Status, made precise from the diagnostic when it only says 5.0.0 / 4.0.0."""
    found = _STATUS.search(status)
    if found is None:
        return None
    code = found.group(0)
    if code.endswith(".0.0"):
        better = _STATUS.search(diagnostic)
        if better is not None and better.group(1) == code[0]:
            return better.group(0)
    return code


def _complaint(msg: Message, part: Message, original: str | None) -> list[Finding]:
    blocks = _blocks(part)
    report = blocks[0] if blocks else part
    kind = _field(report, "Feedback-Type").lower() or "abuse"
    if kind not in COMPLAINTS:
        return []
    address = _address_of(_field(report, "Original-Rcpt-To"))
    if address is None:
        returned = _returned(msg)
        if returned is not None:
            address = _address_of(str(returned.get("To", "")).rpartition("<")[2])
    return [] if address is None else [Finding("complaint", address, None, kind, original)]


def _from_daemon(msg: Message) -> bool:
    """Sent by a mail system, not a person: the only messages read in older bounce formats."""
    if msg.get("X-Failed-Recipients"):
        return True
    sender = str(msg.get("From", "")).lower().rpartition("<")[2]
    if sender.split("@")[0].strip().startswith(DAEMONS):
        return True
    if str(msg.get("Auto-Submitted", "")).lower().startswith("auto-replied") or msg.get(
        "X-Autoreply"
    ):
        return False  # an out-of-office reply (which RFC 3834 also sends from <>)
    return str(msg.get("Return-Path", "")).strip() == "<>"  # the null sender of a bounce


def _legacy(msg: Message, original: str | None) -> list[Finding]:
    from flufl.bounce import all_failures

    temporary, permanent = all_failures(msg)
    findings = []
    for raw, kind in [(a, "hard") for a in permanent] + [(a, "soft") for a in temporary]:
        address = _address_of(raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw)
        if address is not None:
            findings.append(Finding(kind, address, None, "", original))  # type: ignore[arg-type]
    return findings


def _returned(msg: Message) -> Message | None:
    """The original message (or its headers) a report carries."""
    for part in msg.walk():
        kind = part.get_content_type()
        if kind == "message/rfc822":
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0]
        elif kind in ("text/rfc822-headers", "message/rfc822-headers"):
            text = part.get_payload(decode=True) or b""
            if isinstance(text, bytes):
                return email.message_from_bytes(text, policy=email.policy.compat32)
    return None


def _original_message_id(msg: Message) -> str | None:
    """The Message-ID of the message a report is about (not the report's own)."""
    returned = _returned(msg)
    if returned is not None and returned.get("Message-ID"):
        return " ".join(str(returned["Message-ID"]).split())
    # A copy quoted as text (Exim's classic bounce): the first Message-ID that is not the
    # report's own.
    own = " ".join(str(msg.get("Message-ID", "")).split())
    for part in msg.walk():
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        for found in _MESSAGE_ID.finditer(payload.decode("utf-8", "replace")):
            if found.group(1) != own:
                return found.group(1)
    return None


# -- reading a source -------------------------------------------------------------------------


@dataclass
class Item:
    """One message of a source: an id for the report (to remember it was read), its bytes."""

    key: str
    data: bytes


class Source:
    """Where reports are read from: a Maildir, an mbox or an IMAP folder."""

    name: str

    def items(self) -> Iterator[Item]:
        raise NotImplementedError

    def processed(self, item: Item) -> None:
        """Called for each message that was a report (to delete or move it, where asked)."""

    def close(self) -> None:
        """Let the source go (IMAP: expunge what was deleted, log out)."""


class LocalMailbox(Source):
    """A Maildir folder or an mbox file, read without changing it."""

    def __init__(self, path: Path) -> None:
        self.name = str(path)
        if path.is_dir():
            if not (path / "cur").is_dir() and not (path / "new").is_dir():
                raise InputFileError("not a Maildir (no cur/ or new/ folder in it)", path=path)
            self.box: mailbox.Mailbox[Any] = mailbox.Maildir(path, factory=None, create=False)
        elif path.is_file():
            try:
                with open(path, "rb") as handle:
                    start = handle.read(5)
            except OSError as exc:
                raise InputFileError(f"cannot read: {exc.strerror}", path=path) from None
            if start and start != b"From ":
                raise DataError(f"{path}: not an mbox (it does not start with 'From ')")
            self.box = mailbox.mbox(path, create=False)
        else:
            raise InputFileError("no such Maildir or mbox", path=path)

    def items(self) -> Iterator[Item]:
        try:
            for key in self.box.iterkeys():
                yield Item(str(key), self.box.get_bytes(key))
        except OSError as exc:
            raise InputFileError(f"cannot read: {exc.strerror}", path=self.name) from None

    def close(self) -> None:
        self.box.close()


class ImapFolder(Source):
    """A folder on an IMAP server over TLS (implicit TLS, port 993 by default)."""

    def __init__(
        self,
        url: str,
        password: Callable[[str, str], str],
        *,
        delete: bool = False,
        move: str | None = None,
        timeout: float = 30.0,
        context: ssl.SSLContext | None = None,
    ) -> None:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises for a port that is not a number
        except ValueError as exc:
            raise UsageError(f"not a usable IMAP URL: {exc}") from None
        if parts.scheme != "imaps":
            raise UsageError("an IMAP source is imaps://user@host[:port]/FOLDER (TLS only)")
        if parts.password is not None:
            raise UsageError(
                "leave the password out of the URL: it comes from MAILCLI_IMAP_PASSWORD, "
                "MAILCLI_PASSWORD, the keyring or a prompt"
            )
        if not parts.hostname or not parts.username:
            raise UsageError("an IMAP source needs a user and a host: imaps://user@host/INBOX")
        self.host, self.user = parts.hostname, unquote(parts.username)
        self.folder = unquote(parts.path.lstrip("/")) or "INBOX"
        self.name = f"imaps://{parts.username}@{parts.netloc.rpartition('@')[2]}/{self.folder}"
        self.delete, self.move = delete, move
        port = parts.port or 993
        self.expunge: list[str] = []
        from mailcli.transport import tls_context

        try:
            self.imap = imaplib.IMAP4_SSL(
                self.host, port, ssl_context=context or tls_context(), timeout=timeout
            )
        except ssl.SSLCertVerificationError as exc:
            raise UnavailableError(
                f"IMAP {self.host}:{port}: the certificate is not trusted: {exc.verify_message}",
                hint="give the CA with SSL_CERT_FILE",
            ) from None
        except (OSError, imaplib.IMAP4.error) as exc:
            raise UnavailableError(f"cannot reach IMAP {self.host}:{port}: {exc}") from None
        try:
            self.imap.login(self.user, password(self.user, self.host))
        except imaplib.IMAP4.error as exc:
            self.imap.shutdown()
            raise AuthError(
                f"IMAP login as {self.user} on {self.host} refused: {_text(exc)}"
            ) from None
        if (delete or move) and "UIDPLUS" not in self._capabilities():
            self.imap.logout()
            raise UsageError(
                f"{self.host} does not offer UIDPLUS: --delete or --move would also expunge "
                "messages mailcli did not read; scan without them"
            )
        self._select()

    def _capabilities(self) -> set[str]:
        """What the server offers once logged in (more than before the login)."""
        with self._guard():
            kind, data = self.imap.capability()
        text = _text(data) if kind == "OK" else ""
        return {word.upper() for word in text.split()}

    def _select(self) -> None:
        kind, data = self.imap.select(_quoted(self.folder), readonly=not (self.delete or self.move))
        if kind != "OK":
            self.imap.logout()
            raise InputFileError(f"no folder {self.folder!r} on the IMAP server: {_text(data)}")

    def items(self) -> Iterator[Item]:
        with self._guard():
            kind, data = self.imap.uid("SEARCH", "ALL")
            if kind != "OK" or not data or not isinstance(data[0], bytes):
                raise TempFailError(f"IMAP {self.host}: SEARCH refused: {_text(data)}")
            uids = data[0].decode("ascii").split()
        for uid in uids:
            with self._guard():
                kind, parts = self.imap.uid("FETCH", uid, "(BODY.PEEK[])")
            body = next((p[1] for p in parts or [] if isinstance(p, tuple) and len(p) == 2), None)
            if kind != "OK" or not isinstance(body, bytes):
                raise TempFailError(
                    f"IMAP {self.host}: message UID {uid} could not be fetched: {_text(parts)}"
                )
            yield Item(uid, body)

    def processed(self, item: Item) -> None:
        if not (self.move or self.delete):
            return
        with self._guard():
            if self.move:
                kind, data = self.imap.uid("COPY", item.key, _quoted(self.move))
                if kind != "OK":
                    raise InputFileError(f"cannot move to IMAP folder {self.move!r}: {_text(data)}")
            self.imap.uid("STORE", item.key, "+FLAGS.SILENT", "(\\Deleted)")
        self.expunge.append(item.key)

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """A connection lost or a command refused mid-scan: exit 75 (what was applied is
        kept, and the next scan reads the rest without counting anything twice)."""
        try:
            yield
        except (OSError, imaplib.IMAP4.error) as exc:
            raise TempFailError(
                f"IMAP {self.host}: {_text(exc.args[0] if exc.args else exc)}",
                hint="scan again: reports already applied are not counted twice",
            ) from None

    def close(self) -> None:
        try:
            if self.expunge:
                # Only the messages this scan handled (UIDPLUS), never others marked deleted.
                self.imap.uid("EXPUNGE", ",".join(self.expunge))
            self.imap.logout()
        except (OSError, imaplib.IMAP4.error):
            pass  # the server went away: nothing left to tidy


def _quoted(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _text(value: object) -> str:
    if isinstance(value, list):
        value = b" ".join(v for v in value if isinstance(v, bytes))
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


# -- a scan -----------------------------------------------------------------------------------


@dataclass
class ScanReport:
    """What one scan found and did (the `--json` object)."""

    source: str
    messages: int = 0
    reports: int = 0  # bounces and complaints among them
    ignored: int = 0  # replies, auto-replies and anything else
    already_read: int = 0  # reports read by an earlier scan
    hard: int = 0
    soft: int = 0
    complaints: int = 0
    suppressed: list[str] = field(default_factory=list)  # newly suppressed addresses
    findings: list[Finding] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "messages": self.messages,
            "reports": self.reports,
            "ignored": self.ignored,
            "already_read": self.already_read,
            "hard_bounces": self.hard,
            "soft_bounces": self.soft,
            "complaints": self.complaints,
            "suppressed": self.suppressed,
            "findings": [
                {
                    "kind": f.kind,
                    "email": f.email,
                    "status": f.status,
                    "detail": f.detail,
                    "message_id": f.message_id,
                    "campaign": f.campaign,
                }
                for f in self.findings
            ],
        }


Tie = Callable[[Collection[str]], dict[str, tuple[str, str]]]


def scan(
    source: Source,
    suppression: SuppressionList,
    *,
    tie: Tie | None = None,
    soft_limit: int = SOFT_LIMIT,
) -> ScanReport:
    """Read every message of `source`; suppress hard bounces and complaints, count soft ones.

    `tie(message_ids)` maps the Message-IDs of bounced messages to (campaign, recipient) from
    the campaigns' states; a tied finding is about the recipient the message was sent to.
    """
    if soft_limit < 1:
        raise ConfigError(f"the soft bounce limit must be at least 1, not {soft_limit}")
    report = ScanReport(source.name)
    for item in source.items():
        report.messages += 1
        msg = email.message_from_bytes(item.data, policy=email.policy.compat32)
        findings = classify(msg)
        if not findings:
            report.ignored += 1
            continue
        report.reports += 1
        own = str(msg.get("Message-ID", "")).strip()
        report_id = own or "sha256:" + hashlib.sha256(item.data).hexdigest()
        if suppression.was_read(report_id):
            report.already_read += 1
            source.processed(item)
            continue
        ties = tie([f.message_id for f in findings if f.message_id]) if tie else {}
        for finding in findings:
            tied = ties.get(finding.message_id or "")
            if tied is not None:
                campaign, address = tied
                finding = Finding(
                    finding.kind,
                    address,
                    finding.status,
                    finding.detail,
                    finding.message_id,
                    campaign,
                )
            _apply(finding, suppression, report, soft_limit)
        # Marked read only once applied: a scan stopped halfway reads this report again.
        suppression.mark_read(report_id)
        source.processed(item)
    return report


def _apply(
    finding: Finding, suppression: SuppressionList, report: ScanReport, soft_limit: int
) -> None:
    report.findings.append(finding)
    detail = " ".join(x for x in (finding.status, finding.detail) if x) or None
    source = {"campaign": finding.campaign, "message_id": finding.message_id, "detail": detail}
    if finding.kind == "soft":
        report.soft += 1
        if finding.message_id is not None:
            # Delay warnings repeat for one message: each message counts once an address.
            once = f"soft:{key_of(finding.email)}:{finding.message_id}"
            if suppression.was_read(once):
                return
            suppression.mark_read(once)
        before = suppression.get(finding.email) is not None
        suppression.soft_bounce(finding.email, limit=soft_limit, **source)
        if not before and suppression.get(finding.email) is not None:
            report.suppressed.append(finding.email)
        return
    if finding.kind == "hard":
        report.hard += 1
        reason = Reason.HARD_BOUNCE
    else:
        report.complaints += 1
        reason = Reason.COMPLAINT
    if suppression.add(finding.email, reason, **source):
        report.suppressed.append(finding.email)


def imap_password(user: str, host: str) -> str:
    """The IMAP password: MAILCLI_IMAP_PASSWORD, else as the SMTP password is resolved
    (MAILCLI_PASSWORD, the keyring entry USER@HOST, a prompt on a terminal)."""
    import os

    from mailcli.secrets import resolve_password
    from mailcli.transport import SmtpSettings

    value = os.environ.get("MAILCLI_IMAP_PASSWORD")
    if value:
        return value
    settings = SmtpSettings(host=host, port=993, security="tls", username=user)
    return resolve_password(settings, None)


def campaign_tie(loaded: list[Campaign]) -> Tie | None:
    """Message-ID -> (campaign, recipient), asked of each campaign's state."""
    if not loaded:
        return None

    def tie(message_ids: Collection[str]) -> dict[str, tuple[str, str]]:
        from mailcli.pgstate import PgState
        from mailcli.state import open_state

        found: dict[str, tuple[str, str]] = {}
        wanted = [m for m in message_ids if m]
        for campaign in loaded:
            if not wanted:
                break
            if campaign.state_url is not None:
                try:
                    store: Any = PgState.open(campaign.state_url, campaign.name, create=False)
                except InputFileError:
                    continue
            elif campaign.state_path.exists():
                store = open_state(campaign.state_path, campaign.name, create=False)
            else:
                continue
            with store:
                for message_id, email in store.by_message_id(wanted).items():
                    found[message_id] = (campaign.name, email)
            wanted = [m for m in wanted if m not in found]
        return found

    return tie
