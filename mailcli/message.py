"""Message building: rendered parts in, RFC 5322 / MIME bytes out.

What is the same for every recipient (sender, static attachments, inline images, the DKIM key) is
prepared once in `MessageBuilder`; `build()` does only the per-recipient work.
"""

from __future__ import annotations

import email.policy
import email.utils
import mimetypes
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from email.headerregistry import Address
from email.message import EmailMessage
from pathlib import Path

import dkim

from mailcli.addresses import Mailbox, parse_mailbox
from mailcli.campaign import DkimConfig
from mailcli.errors import ConfigError, InputFileError, open_error
from mailcli.render import Rendered

# CRLF line endings and RFC 2047 encoded words for non-ASCII headers: safe for any server.
# refold_source="none": a header given as raw text (List-Unsubscribe) is never re-encoded, since
# RFC 2369 needs the literal <URL>; every other header is a header object folded by its own rules.
SMTP_POLICY = email.policy.SMTP.clone(refold_source="none")
# With SMTPUTF8 the server takes UTF-8 headers and addresses as they are (RFC 6531).
SMTPUTF8_POLICY = email.policy.SMTPUTF8.clone(refold_source="none")

DKIM_HEADERS = (
    b"From",
    b"To",
    b"Cc",
    b"Reply-To",
    b"Subject",
    b"Date",
    b"Message-ID",
    b"MIME-Version",
    b"Content-Type",
    b"List-Unsubscribe",
    b"List-Unsubscribe-Post",
    b"List-Id",
    b"Feedback-ID",
)


class BuildError(Exception):
    """One message cannot be built (for instance an address that needs SMTPUTF8)."""


@dataclass(frozen=True, slots=True)
class FilePart:
    """An attachment or inline image read into memory with its MIME type."""

    filename: str
    maintype: str
    subtype: str
    data: bytes

    @classmethod
    def load(cls, path: Path) -> FilePart:
        """Read a file and guess its type from the name (application/octet-stream if unknown)."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise open_error(path, exc, "attachment") from None
        ctype, encoding = mimetypes.guess_type(path.name, strict=False)
        if ctype is None or encoding is not None:
            # A .gz or .bz2 is sent as the compressed bytes it is, not as its inner type.
            ctype = "application/octet-stream"
        maintype, _, subtype = ctype.partition("/")
        return cls(path.name, maintype, subtype, data)


@dataclass(frozen=True, slots=True)
class Built:
    """A finished message: its bytes, Message-ID and SMTP envelope."""

    data: bytes
    message_id: str
    mail_from: str
    rcpt_to: tuple[str, ...]
    smtputf8: bool = False


def smtp_address(addr: str) -> str:
    """The envelope form of an address: an internationalised domain becomes IDNA (punycode)."""
    local, _, domain = addr.rpartition("@")
    try:
        domain.encode("ascii")
    except UnicodeEncodeError:
        domain = domain.encode("idna").decode("ascii")
    return f"{local}@{domain}"


def _address_header(mailboxes: Sequence[Mailbox], utf8: bool) -> list[Address] | str:
    """An address header value that survives any display name (commas, quotes, accents)."""
    if not utf8:
        # Address objects let the email package quote and RFC 2047-encode the name correctly;
        # a pre-formatted string would be re-parsed and could split into two mailboxes.
        return [Address(display_name=m.name, addr_spec=smtp_address(m.addr)) for m in mailboxes]
    # Address() refuses a non-ASCII local part, which SMTPUTF8 allows: write it out quoted.
    return ", ".join(
        f'"{email.utils.quote(m.name)}" <{m.addr}>' if m.name else m.addr for m in mailboxes
    )


def body_encoding(text: str) -> str:
    """A transfer encoding that any server accepts (no 8BITMIME needed, lines within limits).

    Plain ASCII with short lines goes as is; mostly-ASCII text as quoted-printable, which stays
    readable; text that is mostly non-ASCII (Cyrillic, CJK) as base64, which is shorter.
    """
    # Only CR and LF end a line on the wire (str.splitlines() would also split on \f, \v, ...).
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if text.isascii() and all(len(line) <= 998 for line in lines):
        return "7bit"
    non_ascii = sum(1 for c in text if ord(c) > 127)
    return "base64" if non_ascii * 3 > len(text) else "quoted-printable"


def needs_smtputf8(addr: str) -> bool:
    """True when the local part is non-ASCII, which only SMTPUTF8 can carry."""
    return not addr.rpartition("@")[0].isascii()


class MessageBuilder:
    """Builds one campaign's messages; prepares the shared pieces once."""

    def __init__(
        self,
        sender: Mailbox,
        *,
        reply_to: str | None = None,
        list_id: str | None = None,
        inline_images: dict[str, Path] | None = None,
        dkim_config: DkimConfig | None = None,
    ) -> None:
        self.sender = sender
        self.reply_to = parse_mailbox(reply_to) if reply_to else None
        self.list_id = list_id
        self.msgid_domain = smtp_address(sender.addr).rpartition("@")[2]
        self._files: dict[Path, FilePart] = {}
        self.inline_images = {cid: FilePart.load(p) for cid, p in (inline_images or {}).items()}
        self.dkim = dkim_config
        self._dkim_key = b""
        if dkim_config is not None:
            try:
                self._dkim_key = dkim_config.key.read_bytes()
            except OSError as exc:
                raise open_error(dkim_config.key, exc, "DKIM private key") from None
            if b"PRIVATE KEY" not in self._dkim_key:
                raise ConfigError("dkim.key is not a PEM private key", path=dkim_config.key)

    def file(self, path: Path, *, static: bool) -> FilePart:
        """Load an attachment; static ones are read once and reused for every message."""
        part = self._files.get(path)
        if part is None:
            try:
                part = FilePart.load(path)
            except InputFileError as exc:
                raise BuildError(str(exc)) from None
            if static:
                self._files[path] = part
        return part

    def preload(self, paths: Sequence[Path]) -> None:
        """Read the static attachments now so that a missing one stops the run before sending."""
        for path in paths:
            self._files[path] = FilePart.load(path)

    def build(
        self,
        rendered: Rendered,
        to: Sequence[Mailbox],
        *,
        cc: Sequence[Mailbox] = (),
        bcc: Sequence[Mailbox] = (),
        smtputf8: bool = True,
        now: datetime | None = None,
    ) -> Built:
        """Assemble the MIME message for one recipient (or one `send`) and return its bytes.

        `smtputf8` says whether the server offers SMTPUTF8 (a dry run assumes it does); it is
        used only for a message whose addresses need it.
        """
        everyone = [*to, *cc, *bcc]
        unicode_locals = [m.addr for m in [self.sender, *everyone] if needs_smtputf8(m.addr)]
        if unicode_locals and not smtputf8:
            raise BuildError(f"address {unicode_locals[0]!r} needs a server with SMTPUTF8")
        # UTF-8 headers only when an address forces it; else RFC 2047, which every server takes.
        utf8 = bool(unicode_locals)
        policy = SMTPUTF8_POLICY if utf8 else SMTP_POLICY
        try:
            msg = EmailMessage(policy=policy)
            msg["From"] = _address_header([self.sender], utf8)
            msg["To"] = _address_header(to, utf8)
            if cc:
                msg["Cc"] = _address_header(cc, utf8)
            if self.reply_to:
                msg["Reply-To"] = _address_header([self.reply_to], utf8)
            msg["Subject"] = rendered.subject
            msg["Date"] = email.utils.format_datetime(
                (now or datetime.now(timezone.utc)).astimezone()
            )
            message_id = email.utils.make_msgid(domain=self.msgid_domain)
            msg["Message-ID"] = message_id
            if self.list_id:
                msg["List-Id"] = self.list_id
            if rendered.unsubscribe:
                msg.set_raw("List-Unsubscribe", f"<{rendered.unsubscribe}>")
                if rendered.unsubscribe.startswith("https://"):
                    # RFC 8058 one-click: only meaningful with an HTTPS URL.
                    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
            for name, value in rendered.headers:
                msg[name] = value
            self._body(msg, rendered)
            for path in rendered.attachments:
                attachment = self.file(path, static=path in self._files)
                msg.add_attachment(
                    attachment.data,
                    maintype=attachment.maintype,
                    subtype=attachment.subtype,
                    filename=attachment.filename,
                )
            for part in msg.walk():
                if part is not msg:
                    del part[
                        "MIME-Version"
                    ]  # the stdlib adds it to sub-parts; it belongs on top only
            data = msg.as_bytes(policy=policy)
        except ValueError as exc:
            # e.g. a header value the email package refuses; it belongs to this message only.
            raise BuildError(f"cannot build the message: {exc}") from None
        if self.dkim is not None:
            data = self._sign(data)
        return Built(
            data=data,
            message_id=message_id,
            mail_from=smtp_address(self.sender.addr),
            rcpt_to=tuple(smtp_address(m.addr) for m in everyone),
            smtputf8=utf8,
        )

    def _body(self, msg: EmailMessage, rendered: Rendered) -> None:
        text, html = rendered.text, rendered.html
        if text is not None:
            msg.set_content(text, subtype="plain", charset="utf-8", cte=body_encoding(text))
            if html is not None:
                msg.add_alternative(html, subtype="html", charset="utf-8", cte=body_encoding(html))
        elif html is not None:
            msg.set_content(html, subtype="html", charset="utf-8", cte=body_encoding(html))
        else:
            msg.set_content("", subtype="plain", charset="utf-8", cte="7bit")
        if html is not None and self.inline_images:
            html_part = msg if text is None else list(msg.iter_parts())[-1]
            assert isinstance(html_part, EmailMessage)
            for cid, image in self.inline_images.items():
                html_part.add_related(
                    image.data,
                    maintype=image.maintype,
                    subtype=image.subtype,
                    cid=f"<{cid}>",
                    filename=image.filename,
                    disposition="inline",
                )

    def _sign(self, data: bytes) -> bytes:
        assert self.dkim is not None
        present = {
            line.split(b":", 1)[0].strip().lower()
            for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
            if line and line[:1] not in b" \t"
        }
        headers = [h for h in DKIM_HEADERS if h.lower() in present]
        try:
            signature = dkim.sign(
                data,
                self.dkim.selector.encode("ascii"),
                self.dkim.domain.encode("ascii"),
                self._dkim_key,
                canonicalize=(b"relaxed", b"relaxed"),
                include_headers=headers,
            )
        except dkim.DKIMException as exc:
            raise ConfigError(f"DKIM signing failed: {exc}", path=self.dkim.key) from None
        return bytes(signature) + data
