"""`mailcli.Message`: one email composed in code, with Flask-Mail's argument names.

Plain strings in (Jinja is for campaigns and `mailcli send`); the bytes out come from the same
builder a campaign uses, so a message from code gets the same encoding, folding, Message-ID on the
sender's domain and DKIM signature. Every header value and address is checked for CR and LF
(`BadHeaderError`) before anything is built or sent.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailcli.addresses import AddressError, Mailbox, parse_mailbox
from mailcli.campaign import HEADER_NAME_RE, RESERVED_HEADERS
from mailcli.envelope import Built
from mailcli.errors import BadHeaderError, ConfigError, DataError, open_error
from mailcli.message import BuildError, FilePart, MessageBuilder
from mailcli.render import Rendered, html_to_text
from mailcli.unsubscribe import is_one_click

if TYPE_CHECKING:
    from mailcli.dkimsign import DkimSigner

#: An address: "Ann <ann@example.com>", "ann@example.com", or ("Ann", "ann@example.com").
Address = str | tuple[str, str]
# The dedicated argument for each header that a Message writes itself.
_DEDICATED = {
    "list-unsubscribe": "unsubscribe=",
    "list-unsubscribe-post": "unsubscribe=",
    "list-id": "list_id=",
    "reply-to": "reply_to=",
    "cc": "cc=",
    "bcc": "bcc=",
    "to": "recipients=",
    "from": "sender=",
    "subject": "subject=",
    "date": "date=",
}
# Magic numbers of the image types mail clients show inline.
_IMAGE_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file carried by a message: its name, type, bytes and disposition."""

    filename: str
    content_type: str
    data: bytes
    disposition: str = "attachment"


class Message:
    """One email: recipients, subject, a text and/or HTML body, attachments and headers."""

    def __init__(
        self,
        subject: str = "",
        recipients: Sequence[Address] | None = None,
        body: str | None = None,
        html: str | None = None,
        sender: Address | None = None,
        cc: Sequence[Address] | None = None,
        bcc: Sequence[Address] | None = None,
        attachments: Sequence[Attachment] | None = None,
        reply_to: Address | None = None,
        date: datetime | float | None = None,
        charset: str | None = None,
        extra_headers: Mapping[str, str] | None = None,
        *,
        inline_images: Mapping[str, str | Path | bytes] | None = None,
        unsubscribe: str | Sequence[str] | None = None,
        list_id: str | None = None,
    ) -> None:
        if charset is not None and charset.lower().replace("-", "") != "utf8":
            raise ConfigError(f"charset {charset!r}: mailcli writes every message in UTF-8")
        self.subject = subject
        self.recipients: list[Address] = _address_list(recipients)
        self.body = body
        self.html = html
        self.sender = sender
        self.cc: list[Address] = _address_list(cc)
        self.bcc: list[Address] = _address_list(bcc)
        self.attachments: list[Attachment] = list(attachments or [])
        self.reply_to = reply_to
        self.date = date
        self.extra_headers: dict[str, str] = dict(extra_headers or {})
        self.inline_images: dict[str, str | Path | bytes] = dict(inline_images or {})
        self.unsubscribe = unsubscribe
        self.list_id = list_id
        #: The Message-ID, fixed the first time the message is built (as Flask-Mail's msgId).
        self.message_id: str | None = None

    def add_recipient(self, recipient: Address) -> None:
        """Add a To recipient."""
        self.recipients.append(recipient)

    def attach(
        self,
        filename: str | Path | None = None,
        content_type: str | None = None,
        data: bytes | str | None = None,
        disposition: str | None = None,
    ) -> Attachment:
        """Attach a file: `data` (bytes or text), or the file at `filename` when no data."""
        if data is None:
            if filename is None:
                raise DataError("attach() needs data, or the filename of a file to read")
            path = Path(filename)
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise open_error(path, exc, "attachment") from None
        name = Path(filename).name if filename is not None else "attachment"
        payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        ctype = content_type or _guess_type(name)
        attachment = Attachment(name, ctype, payload, disposition or "attachment")
        self.attachments.append(attachment)
        return attachment

    @property
    def send_to(self) -> set[str]:
        """Every envelope recipient: To, Cc and Bcc addresses."""
        return {box.addr for box in self._boxes(self.recipients + self.cc + self.bcc, "to")}

    def reads_files(self) -> bool:
        """Building reads files from disk (inline images given as paths)."""
        return any(not isinstance(v, bytes) for v in self.inline_images.values())

    def as_bytes(self) -> bytes:
        """The exact RFC 5322 bytes that would be sent (DKIM excepted: the Mailer signs)."""
        return self.build().data

    def as_string(self) -> str:
        """The message as text."""
        return self.as_bytes().decode("utf-8", "replace")

    __bytes__ = as_bytes
    __str__ = as_string

    # -- building ---------------------------------------------------------------------------

    def check(self, default_sender: Address | None = None) -> None:
        """Raise BadHeaderError, DataError or TypeError for what cannot be sent; build nothing.

        Everything a build could refuse is checked here, so that a bad message is refused
        before any connection is made.
        """
        self._types()
        self._headers_safe()
        self._mailbox(self.sender or default_sender, "sender")
        if self.reply_to:
            self._mailbox(self.reply_to, "reply_to")
        for cid, image in self.inline_images.items():
            if "\r" in cid or "\n" in cid or not cid.strip():
                raise BadHeaderError(f"inline image id {cid!r} is empty or has a line break")
            if not isinstance(image, bytes):
                FilePart.load(Path(image))  # a missing file is InputFileError (66), now
        for attachment in self.attachments:
            _split_type(attachment.content_type)
        if not (self.recipients or self.cc or self.bcc):
            raise DataError("the message has no recipients (recipients, cc or bcc)")
        self._boxes(self.recipients + self.cc + self.bcc, "recipient")

    def build(
        self,
        *,
        default_sender: Address | None = None,
        signer: DkimSigner | None = None,
        smtputf8: bool = True,
    ) -> Built:
        """The finished message for a transport; raises BadHeaderError, DataError."""
        self.check(default_sender)
        sender = self._mailbox(self.sender or default_sender, "sender")
        reply_to = str(self._mailbox(self.reply_to, "reply_to")) if self.reply_to else None
        builder = MessageBuilder(
            sender,
            reply_to=reply_to,
            list_id=self.list_id,
            inline_images={cid: _image(cid, v) for cid, v in self.inline_images.items()},
            signer=signer,
        )
        https, mailto = self._unsubscribe_targets()
        body, html = self.body, self.html
        if body is None and html is not None:
            body = html_to_text(html)  # readers that show no HTML get words, not a blank
        rendered = Rendered(
            subject=self.subject,
            text=body if body is not None or html is not None else "",
            html=html,
            headers=tuple(self.extra_headers.items()),
            unsubscribe=https,
            unsubscribe_mailto=mailto,
        )
        files = [
            builder.file_part(
                FilePart(a.filename, *_split_type(a.content_type), a.data), a.disposition
            )
            for a in self.attachments
        ]
        try:
            built = builder.build(
                rendered,
                self._boxes(self.recipients, "recipient"),
                cc=self._boxes(self.cc, "cc"),
                bcc=self._boxes(self.bcc, "bcc"),
                smtputf8=smtputf8,
                now=self._date(),
                files=files,
                message_id=self.message_id,
            )
        except BuildError as exc:
            raise DataError(str(exc)) from None
        self.message_id = built.message_id
        return built._replace(source=self)

    def _types(self) -> None:
        """A clear TypeError naming the field for a value of the wrong type."""
        _expect("subject", self.subject, str)
        for name in ("body", "html", "list_id"):
            _expect(name, getattr(self, name), str, optional=True)
        for name in ("sender", "reply_to"):
            _expect_address(name, getattr(self, name), optional=True)
        for name in ("recipients", "cc", "bcc"):
            for value in getattr(self, name):
                _expect_address(name, value)
        for key, value in self.extra_headers.items():
            _expect("an extra_headers name", key, str)
            _expect(f"extra_headers[{key!r}]", value, str)
        for target in _targets(self.unsubscribe):
            _expect("unsubscribe", target, str)
        if self.date is not None and (
            isinstance(self.date, bool) or not isinstance(self.date, datetime | int | float)
        ):
            raise TypeError(f"Message date must be a datetime or a timestamp, not {self.date!r}")
        for attachment in self.attachments:
            if not isinstance(attachment, Attachment):
                raise TypeError(
                    f"Message attachments must be mailcli.Attachment (or use attach()), "
                    f"not {type(attachment).__name__}"
                )
        for cid, image in self.inline_images.items():
            _expect("an inline_images id", cid, str)
            _expect(f"inline_images[{cid!r}]", image, str | Path | bytes)

    def _headers_safe(self) -> None:
        """CR or LF anywhere a header is made from: BadHeaderError, naming where."""
        values: list[tuple[str, str]] = [("subject", self.subject)]
        if self.message_id is not None:
            if not isinstance(self.message_id, str):
                raise TypeError(f"Message message_id must be str, not {self.message_id!r}")
            values.append(("message_id", self.message_id))
            inner = self.message_id.strip()
            shaped = inner.startswith("<") and inner.endswith(">") and "@" in inner
            if (
                "\r" not in inner
                and "\n" not in inner
                and (not shaped or any(c in inner[1:-1] for c in "<> \t"))
            ):
                raise DataError(f"message_id {self.message_id!r} is not of the form <left@right>")
        if self.list_id is not None:
            values.append(("list_id", self.list_id))
        values += [("unsubscribe", t) for t in _targets(self.unsubscribe)]
        for name, value in self.extra_headers.items():
            if not HEADER_NAME_RE.match(name) or "\r" in name or "\n" in name:
                raise BadHeaderError(f"extra_headers: {name!r} is not a header name")
            if name.lower() in RESERVED_HEADERS:
                use = _DEDICATED.get(name.lower())
                raise DataError(
                    f"extra_headers: mailcli writes {name} itself" + (f"; use {use}" if use else "")
                )
            values.append((f"extra_headers[{name!r}]", value))
        for attachment in self.attachments:
            values.append(("attachment filename", attachment.filename))
            values.append(("attachment content_type", attachment.content_type))
        for where, value in values:
            if "\r" in value or "\n" in value:
                raise BadHeaderError(f"{where} contains a line break (header injection?)")

    def _unsubscribe_targets(self) -> tuple[str | None, str | None]:
        https = mailto = None
        for target in _targets(self.unsubscribe):
            if target.startswith("mailto:"):
                mailto = target
            elif is_one_click(target):  # https, or http on a loopback host (development)
                https = target
            else:
                raise DataError(
                    f"unsubscribe {target!r} is not an https:// URL or a mailto: "
                    "(http:// only on 127.0.0.1 or localhost, for development)"
                )
            if not target.isascii():
                raise DataError("unsubscribe targets must be ASCII (percent-encode them)")
        return https, mailto

    def _date(self) -> datetime | None:
        if self.date is None or isinstance(self.date, datetime):
            return self.date
        return datetime.fromtimestamp(float(self.date), UTC)

    @staticmethod
    def _mailbox(value: Address | None, what: str) -> Mailbox:
        if value is None:
            raise ConfigError(
                "the message has no sender: give sender= or the Mailer's default_sender"
            )
        text = address_text(value)
        if "\r" in text or "\n" in text:
            raise BadHeaderError(
                f"{what} {text!r} contains a line break (header injection?)", recipient=text
            )
        try:
            return parse_mailbox(text)
        except AddressError as exc:
            raise DataError(f"{what} {text!r}: {exc}", recipient=text) from None

    def _boxes(self, values: Iterable[Address], what: str) -> list[Mailbox]:
        return [self._mailbox(v, what) for v in values]

    def __repr__(self) -> str:
        return f"<Message {self.subject!r} to {len(self.send_to)} recipients>"


def _address_list(value: Sequence[Address] | Address | None) -> list[Address]:
    """A list of addresses; one address alone (a str or a (name, addr) pair) is a list of one."""
    if value is None:
        return []
    if isinstance(value, str) or (
        isinstance(value, tuple)
        and len(value) == 2
        and all(isinstance(v, str) for v in value)
        and "@" in value[1]
        and "@" not in value[0]
    ):
        return [value]  # type: ignore[list-item]
    return list(value)


def _expect(what: str, value: object, kind: Any, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, kind):
        wanted = " or ".join(
            t.__name__ for t in (kind.__args__ if hasattr(kind, "__args__") else (kind,))
        )
        raise TypeError(f"Message {what} must be {wanted}, not {type(value).__name__}")


def _expect_address(what: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    pair = isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, str) for v in value)
    if not (isinstance(value, str) or pair):
        raise TypeError(
            f"Message {what} must be an address: 'Name <a@example.com>', 'a@example.com' "
            f"or a (name, address) pair of str, not {value!r}"
        )


def address_text(value: Address) -> str:
    """An address as header text: 'Name <addr>' or 'addr'."""
    if isinstance(value, tuple):
        name, addr = value
        if "\r" in name or "\n" in name:
            return f"{name}{addr}"  # reported as the line break it is
        return str(Mailbox(name, addr)) if name else addr
    return value


def _targets(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _guess_type(name: str) -> str:
    ctype, encoding = mimetypes.guess_type(name, strict=False)
    return ctype if ctype and encoding is None else "application/octet-stream"


def _split_type(content_type: str) -> tuple[str, str]:
    maintype, _, subtype = content_type.partition("/")
    if not maintype or not subtype:
        raise DataError(f"content_type {content_type!r} is not of the form type/subtype")
    return maintype, subtype


def _image(cid: str, value: str | Path | bytes) -> FilePart:
    if "\r" in cid or "\n" in cid or not cid.strip():
        raise BadHeaderError(f"inline image id {cid!r} is empty or contains a line break")
    if isinstance(value, bytes):
        ctype = next((t for magic, t in _IMAGE_MAGIC if value.startswith(magic)), None)
        if ctype is None:
            raise DataError(f"inline image {cid!r}: not a PNG, JPEG or GIF; give a file path")
        return FilePart(f"{cid}.{ctype.rpartition('/')[2]}", *_split_type(ctype), value)
    return FilePart.load(Path(value))  # InputFileError (66) names a missing file


__all__ = ["Address", "Attachment", "Message"]
