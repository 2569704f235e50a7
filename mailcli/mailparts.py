"""A finished message read back into the fields an HTTP API takes.

mailcli builds every message once, as RFC 5322 bytes (`Built`), whatever carries it: the same
builder, encoding, Message-ID and checks for SMTP and for the providers. A provider that takes
JSON (Postmark, SendGrid, Resend) gets those bytes read back here into sender, recipients,
subject, the text and HTML bodies, attachments, inline images (with their Content-ID) and every
other header, decoded; one that takes MIME (Mailgun) gets the bytes as they are.
"""

from __future__ import annotations

import email.policy
from dataclasses import dataclass
from email.message import EmailMessage, MIMEPart
from email.parser import BytesParser
from email.utils import getaddresses

from mailcli.envelope import Built

#: Headers an API takes as fields of its own (or sets itself), never as custom headers.
FIELD_HEADERS = frozenset(
    (
        "from",
        "to",
        "cc",
        "bcc",
        "reply-to",
        "subject",
        "date",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "dkim-signature",
    )
)
_PARSER = BytesParser(policy=email.policy.default)


@dataclass(frozen=True, slots=True)
class FileItem:
    """An attachment, or an inline image when it has a `content_id` (without angle brackets)."""

    filename: str
    content_type: str
    data: bytes
    content_id: str | None = None


Mailbox = tuple[str, str]  # (display name, address)


@dataclass(frozen=True, slots=True)
class Parts:
    """One message as fields: what a JSON API maps, field by field."""

    sender: Mailbox
    to: tuple[Mailbox, ...]
    cc: tuple[Mailbox, ...]
    bcc: tuple[Mailbox, ...]
    reply_to: tuple[Mailbox, ...]
    subject: str
    text: str | None
    html: str | None
    files: tuple[FileItem, ...]
    headers: tuple[tuple[str, str], ...]  # every other header, decoded, in order
    signed: bool  # carries a DKIM-Signature that a JSON API would drop

    @property
    def attachments(self) -> tuple[FileItem, ...]:
        """The files that are not inline images."""
        return tuple(f for f in self.files if f.content_id is None)

    @property
    def inline(self) -> tuple[FileItem, ...]:
        """The inline images (referenced from the HTML as cid:ID)."""
        return tuple(f for f in self.files if f.content_id is not None)


def read_parts(message: Built) -> Parts:
    """Read a finished message back into its fields."""
    parsed = _PARSER.parsebytes(message.data)
    assert isinstance(parsed, EmailMessage)
    to, cc = _boxes(parsed, "To"), _boxes(parsed, "Cc")
    shown = {addr.lower() for _, addr in (*to, *cc)}
    # Bcc is never a header: it is every envelope recipient that no header names.
    bcc = tuple(("", addr) for addr in message.rcpt_to if addr.lower() not in shown)
    senders = _boxes(parsed, "From")
    text_part = parsed.get_body(preferencelist=("plain",))
    html_part = parsed.get_body(preferencelist=("html",))
    if text_part is not None and text_part.get_content_subtype() != "plain":
        text_part = None
    if html_part is not None and html_part.get_content_subtype() != "html":
        html_part = None
    files = tuple(
        _file(part)
        for part in parsed.walk()
        if not part.is_multipart() and part is not text_part and part is not html_part
    )
    return Parts(
        sender=senders[0] if senders else ("", message.mail_from),
        to=to,
        cc=cc,
        bcc=bcc,
        reply_to=_boxes(parsed, "Reply-To"),
        subject=str(parsed["Subject"] or ""),
        text=_text(text_part),
        html=_text(html_part),
        files=files,
        headers=tuple(
            (name, str(value))
            for name, value in parsed.items()
            if name.lower() not in FIELD_HEADERS
        ),
        signed="DKIM-Signature" in parsed,
    )


def _boxes(parsed: EmailMessage, name: str) -> tuple[Mailbox, ...]:
    values = [str(v) for v in parsed.get_all(name) or []]
    return tuple((display, addr) for display, addr in getaddresses(values) if addr)


def _text(part: MIMEPart | None) -> str | None:
    if part is None:
        return None
    content = part.get_content()
    # Line breaks are CRLF on the wire only; the providers write their own.
    return content.replace("\r\n", "\n") if isinstance(content, str) else None


def _file(part: MIMEPart) -> FileItem:
    payload = part.get_payload(decode=True)
    cid = part["Content-ID"]
    content_id = str(cid).strip().strip("<>") if cid is not None else None
    inline = content_id is not None and part.get_content_disposition() != "attachment"
    return FileItem(
        filename=part.get_filename() or content_id or "attachment",
        content_type=part.get_content_type(),
        data=payload if isinstance(payload, bytes) else b"",
        content_id=content_id if inline else None,
    )


def mailbox_text(box: Mailbox) -> str:
    """`Name <addr>` (the name quoted where it must be), or the bare address."""
    name, addr = box
    if not name:
        return addr
    if any(c in name for c in '()<>[]:;@\\,."'):
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name} <{addr}>"
