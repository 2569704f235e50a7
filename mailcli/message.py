"""Message building: rendered parts in, RFC 5322 / MIME bytes out.

What is the same for every recipient (sender, static attachments, inline images, the DKIM key) is
prepared once in `MessageBuilder`; `build()` does only the per-recipient work.
"""

from __future__ import annotations

import email.utils
import mimetypes
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from mailcli import mime
from mailcli.addresses import Mailbox, parse_mailbox
from mailcli.envelope import Built
from mailcli.errors import ConfigError, InputFileError, open_error
from mailcli.render import Rendered
from mailcli.unsubscribe import is_one_click

if TYPE_CHECKING:
    from mailcli.dkimsign import DkimSigner

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
# Signed one time more than they occur (RFC 6376 5.4.2, 8.15): the extra entry signs "no further
# instance", so a replayed message cannot gain a second From or Subject, which many readers
# would show instead of the signed one, or a Reply-To or list header it never had. All the
# signed headers but those that describe the body's form or the sender's feedback loop.
DKIM_OVERSIGN = tuple(
    h for h in DKIM_HEADERS if h not in (b"MIME-Version", b"Content-Type", b"Feedback-ID")
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


def smtp_address(addr: str) -> str:
    """The envelope form of an address: an internationalised domain becomes IDNA (punycode)."""
    local, _, domain = addr.rpartition("@")
    try:
        domain.encode("ascii")
    except UnicodeEncodeError:
        domain = domain.encode("idna").decode("ascii")
    return f"{local}@{domain}"


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
        inline_images: Mapping[str, Path | FilePart] | None = None,
        signer: DkimSigner | None = None,
    ) -> None:
        self.sender = sender
        self.reply_to = parse_mailbox(reply_to) if reply_to else None
        self.list_id = list_id
        self.msgid_domain = smtp_address(sender.addr).rpartition("@")[2]
        if "\r" in sender.name or "\n" in sender.name:
            raise ConfigError("the sender's name contains a line break")
        # Headers that are the same in every message: encoded once, in both header styles.
        self._fixed = self._shared_headers(utf8=False)
        self._fixed_utf8 = self._shared_headers(utf8=True)
        self._list_id = mime.list_id(list_id) if list_id else None
        self._mail_from = smtp_address(sender.addr)
        self._files: dict[Path, FilePart] = {}
        self._parts: dict[Path, mime.Part] = {}
        self._boundaries = mime.Boundaries()
        self._id_prefix = ""
        self._count = 0
        self.reseed()
        self._date_second = -1
        self._date_text = b""
        self.inline_images = {
            cid: p if isinstance(p, FilePart) else FilePart.load(p)
            for cid, p in (inline_images or {}).items()
        }
        self._inline = [
            mime.file_part(
                img.data,
                f"{img.maintype}/{img.subtype}",
                img.filename,
                disposition="inline",
                content_id=cid,
            )
            for cid, img in self.inline_images.items()
        ]
        # A ready signer (see dkimsign.load_signer): the key is read and parsed once, by the
        # caller, so building knows nothing of where keys are kept.
        self._signer = signer

    def reseed(self) -> None:
        """Fresh Message-ID and boundary prefixes, as a forked worker needs to stay unique."""
        self._boundaries = mime.Boundaries()
        self._id_prefix = f"{os.getpid()}.{os.urandom(5).hex()}"
        self._count = 0

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
        """Read and encode the static attachments once; a missing one stops the run now."""
        for path in paths:
            loaded = self._files[path] = FilePart.load(path)
            self._parts[path] = mime.file_part(
                loaded.data, f"{loaded.maintype}/{loaded.subtype}", loaded.filename
            )

    def build(
        self,
        rendered: Rendered,
        to: Sequence[Mailbox],
        *,
        cc: Sequence[Mailbox] = (),
        bcc: Sequence[Mailbox] = (),
        smtputf8: bool = True,
        now: datetime | None = None,
        files: Sequence[mime.Part] = (),
        message_id: str | None = None,
    ) -> Built:
        """Assemble the MIME message for one recipient (or one `send`) and return its bytes.

        `smtputf8` says whether the server offers SMTPUTF8 (a dry run assumes it does); it is
        used only for a message whose addresses need it.
        """
        self._boundaries.restart()
        everyone = [*to, *cc, *bcc]
        texts = "\0".join(
            [
                rendered.subject,
                *(m.name for m in everyone),
                *(value for _, value in rendered.headers),
            ]
        )
        if "\r" in texts or "\n" in texts:
            raise BuildError("a header value contains a line break (header injection?)")
        unicode_locals = [m.addr for m in [self.sender, *everyone] if needs_smtputf8(m.addr)]
        if unicode_locals and not smtputf8:
            raise BuildError(f"address {unicode_locals[0]!r} needs a server with SMTPUTF8")
        # UTF-8 headers only when an address forces it; else RFC 2047, which every server takes.
        utf8 = bool(unicode_locals)
        message_id = message_id or self._message_id()
        fixed = self._fixed_utf8 if utf8 else self._fixed
        headers = [
            fixed[0],
            mime.address_list("To", [self._pair(m, utf8) for m in to], utf8=utf8),
        ]
        if cc:
            headers.append(mime.address_list("Cc", [self._pair(m, utf8) for m in cc], utf8=utf8))
        headers += fixed[1:]
        headers += [
            mime.unstructured("Subject", rendered.subject, utf8=utf8),
            b"Date: " + self._date(now),
            b"Message-ID: " + message_id.encode("ascii"),
        ]
        if self._list_id is not None:
            headers.append(self._list_id)
        targets = [t for t in (rendered.unsubscribe_mailto, rendered.unsubscribe) if t]
        if targets:
            # Literal <URL>s, never encoded (RFC 2369); render checked they are ASCII.
            value = ",\r\n ".join(f"<{t}>" for t in targets)
            headers.append(f"List-Unsubscribe: {value}".encode("ascii"))
            if any(is_one_click(t) for t in targets):
                # RFC 8058 one-click: only meaningful with an HTTPS URL (or http on a loopback
                # host, which mailcli's own endpoint accepts for development and tests).
                headers.append(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click")
        for name, value in rendered.headers:
            headers.append(mime.unstructured(name, value, utf8=utf8))
        headers.append(b"MIME-Version: 1.0")
        body = self._body(rendered)
        if rendered.attachments or files:
            # Parts given ready (the library's Message.attach) come after the templated ones.
            parts = [self.attachment(path) for path in rendered.attachments]
            body = mime.multipart("mixed", [body, *parts, *files], self._boundaries.next())
        data = b"\r\n".join(headers) + b"\r\n" + body.to_bytes()
        if self._signer is not None:
            data = self._signer.sign(data, DKIM_HEADERS, oversign=DKIM_OVERSIGN)
        return Built(
            data=data,
            message_id=message_id,
            mail_from=self._mail_from,
            rcpt_to=tuple(smtp_address(m.addr) for m in everyone),
            smtputf8=utf8,
        )

    def _shared_headers(self, *, utf8: bool) -> list[bytes]:
        """From (first) and Reply-To, which every message of the builder carries unchanged."""
        shared = [mime.address_list("From", [self._pair(self.sender, utf8)], utf8=utf8)]
        if self.reply_to:
            shared.append(
                mime.address_list("Reply-To", [self._pair(self.reply_to, utf8)], utf8=utf8)
            )
        return shared

    @staticmethod
    def _pair(mailbox: Mailbox, utf8: bool) -> tuple[str, str]:
        return mailbox.name, mailbox.addr if utf8 else smtp_address(mailbox.addr)

    def _message_id(self) -> str:
        self._count += 1
        return (
            f"<{time.time_ns() // 1_000_000}.{self._id_prefix}.{self._count}@{self.msgid_domain}>"
        )

    def _date(self, now: datetime | None) -> bytes:
        if now is not None:
            return email.utils.format_datetime(now.astimezone()).encode("ascii")
        second = int(time.time())
        if second != self._date_second:
            # Formatting a date costs more than building the rest of the headers: once a second.
            self._date_second = second
            local = datetime.fromtimestamp(second, UTC).astimezone()
            self._date_text = email.utils.format_datetime(local).encode("ascii")
        return self._date_text

    def _body(self, rendered: Rendered) -> mime.Part:
        text, html = rendered.text, rendered.html
        prefix = self._boundaries.prefix
        html_part: mime.Part | None = None
        if html is not None:
            html_part = mime.safe_for(mime.text_part(html, "html"), html, "html", prefix)
            if self._inline:
                html_part = mime.multipart(
                    "related",
                    [html_part, *self._inline],
                    self._boundaries.next(),
                    root_type="text/html",
                )
        if text is None:
            if html_part is not None:
                return html_part
            text = ""
        text_part = mime.safe_for(mime.text_part(text, "plain"), text, "plain", prefix)
        if html_part is None:
            return text_part
        return mime.multipart("alternative", [text_part, html_part], self._boundaries.next())

    @staticmethod
    def file_part(file: FilePart, disposition: str = "attachment") -> mime.Part:
        """The encoded part for a file given as data (for `build(files=...)`)."""
        return mime.file_part(
            file.data, f"{file.maintype}/{file.subtype}", file.filename, disposition=disposition
        )

    def attachment(self, path: Path) -> mime.Part:
        """The encoded part for a file; a static attachment is encoded once per campaign."""
        part = self._parts.get(path)
        if part is None:
            loaded = self.file(path, static=False)
            part = mime.file_part(
                loaded.data, f"{loaded.maintype}/{loaded.subtype}", loaded.filename
            )
        return part
