"""A finished message read back into the fields an HTTP API takes.

mailcli builds every message once, as RFC 5322 bytes (`Built`), whatever carries it: the same
builder, encoding, Message-ID and checks for SMTP and for the providers. A provider that takes
JSON (Postmark, SendGrid, Resend) gets those bytes read back here into sender, recipients,
subject, the text and HTML bodies, attachments, inline images (with their Content-ID) and every
other header, decoded; one that takes MIME (Mailgun) gets the bytes as they are.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from email.utils import getaddresses
from typing import NamedTuple
from urllib.parse import unquote

from mailcli.addresses import format_mailbox
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
_PARSER = BytesParser(policy=compat32)
_FOLD = re.compile(r"\r?\n(?=[ \t])")
# One mailbox: an atom-ish or quoted display name and <addr>, or a bare addr-spec.
_ONE_MAILBOX = re.compile(
    r'\s*(?:(?:([^"<>,;:@()\\\[\]]*?)|"((?:[^"\\]|\\.)*)")\s*<([^<>\s",;()]+@[^<>\s",;()]+)>'
    r'|([^<>\s",;:()]+@[^<>\s",;:()]+))\s*$'
)
_WORD = re.compile(r"=\?([^?*]+)(?:\*[^?]*)?\?([bBqQ])\?([^?]*)\?=")
_PARAM = re.compile(r';\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)')


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


class _Unexpected(Exception):
    """Bytes that are not the shape mailcli's builder writes: read with the stdlib instead."""


class _Leaf(NamedTuple):
    """A non-multipart entity: its headers (unfolded, still encoded) and its decoded body."""

    headers: dict[str, str]  # lower-case names
    kind: str
    params: dict[str, str]
    data: bytes


def read_parts(message: Built) -> Parts:
    """Read a finished message back into its fields.

    mailcli's builder writes a narrow, regular MIME (CRLF lines, quoted boundaries, base64 or
    quoted-printable bodies); a reader for that shape is about ten times faster than the
    standard library's parser, which is the fallback for anything else (the two agree: a test).
    """
    try:
        head, leaves = _read_fast(message.data)
    except (_Unexpected, ValueError, binascii.Error, LookupError):
        return read_parts_stdlib(message)
    text = html = None
    files = []
    for leaf in leaves:
        attached = leaf.headers.get("content-disposition", "").lower().startswith("attachment") or (
            "content-id" in leaf.headers
        )
        if leaf.kind == "text/plain" and text is None and not attached:
            text = _charset_text(leaf.data, leaf.params.get("charset"))
        elif leaf.kind == "text/html" and html is None and not attached:
            html = _charset_text(leaf.data, leaf.params.get("charset"))
        else:
            files.append(_fast_file(leaf))
    return _assemble(message, head, text, html, files)


def _assemble(
    message: Built,
    head: list[tuple[str, str]],
    text: str | None,
    html: str | None,
    files: list[FileItem],
) -> Parts:
    """Parts from the top-level headers (unfolded, encoded) and the bodies."""

    def boxes(name: str) -> tuple[Mailbox, ...]:
        values = [v for n, v in head if n.lower() == name]
        if len(values) == 1 and (one := _ONE_MAILBOX.match(values[0])):
            # The builder's usual `Name <addr>` (or a bare address), without the full parser.
            display = one.group(1) or ""
            if one.group(2) is not None:
                display = re.sub(r"\\(.)", r"\1", one.group(2))
            return ((_decoded(display.strip()), one.group(3) or one.group(4)),)
        return tuple((_decoded(d), a) for d, a in getaddresses(values) if a)

    to, cc = boxes("to"), boxes("cc")
    shown = {addr.lower() for _, addr in (*to, *cc)}
    # Bcc is never a header: it is every envelope recipient that no header names.
    bcc = tuple(("", addr) for addr in message.rcpt_to if addr.lower() not in shown)
    senders = boxes("from")
    subjects = [v for n, v in head if n.lower() == "subject"]
    return Parts(
        sender=senders[0] if senders else ("", message.mail_from),
        to=to,
        cc=cc,
        bcc=bcc,
        reply_to=boxes("reply-to"),
        subject=_decoded(subjects[0]) if subjects else "",
        text=text,
        html=html,
        files=tuple(files),
        headers=tuple((n, _decoded(v)) for n, v in head if n.lower() not in FIELD_HEADERS),
        signed=any(n.lower() == "dkim-signature" for n, _ in head),
    )


def _read_fast(data: bytes) -> tuple[list[tuple[str, str]], list[_Leaf]]:
    head, body = _split(data)
    leaves: list[_Leaf] = []
    _walk(head, body, leaves)
    return head, leaves


def _split(data: bytes) -> tuple[list[tuple[str, str]], bytes]:
    block, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise _Unexpected("no blank line after the headers")
    headers = []
    for line in _FOLD.sub("", block.decode("ascii", "surrogateescape")).split("\r\n"):
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise _Unexpected(f"not a header line: {line[:40]!r}")
        headers.append((name, value[1:] if value.startswith(" ") else value))
    return headers, body


def _walk(headers: list[tuple[str, str]], body: bytes, leaves: list[_Leaf]) -> None:
    named = {n.lower(): v for n, v in headers}
    kind, params = _content_type(named.get("content-type", "text/plain"))
    if kind.startswith("multipart/"):
        boundary = params.get("boundary")
        if not boundary:
            raise _Unexpected("a multipart without a boundary")
        chunks = (b"\r\n" + body).split(b"\r\n--" + boundary.encode("ascii"))
        if len(chunks) < 3 or not chunks[-1].startswith(b"--"):
            raise _Unexpected("a multipart that does not close")
        for chunk in chunks[1:-1]:
            _, newline, entity = chunk.partition(b"\r\n")  # the rest of the boundary line
            if not newline:
                raise _Unexpected("an empty part")
            _walk(*_split(entity), leaves)
        return
    encoding = named.get("content-transfer-encoding", "7bit").strip().lower()
    if encoding == "base64":
        data = binascii.a2b_base64(body)
    elif encoding == "quoted-printable":
        data = binascii.a2b_qp(body)
    elif encoding in ("7bit", "8bit", "binary"):
        data = body
    else:
        raise _Unexpected(f"transfer encoding {encoding}")
    leaves.append(_Leaf(named, kind, params, data))


def _content_type(value: str) -> tuple[str, dict[str, str]]:
    kind, _, rest = value.partition(";")
    return kind.strip().lower(), _params(";" + rest)


def _params(text: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for match in _PARAM.finditer(text):
        key, raw = match.group(1).lower(), match.group(2)
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        if key.endswith("*"):  # RFC 2231: charset'language'percent-encoded
            charset, _, rest = raw.partition("'")
            raw = unquote(rest.partition("'")[2], encoding=charset or "utf-8", errors="strict")
            key = key[:-1]
        params[key] = raw
    return params


def _charset_text(data: bytes, charset: str | None) -> str:
    # Line breaks are CRLF on the wire only; the providers write their own.
    return data.decode(charset or "utf-8").replace("\r\n", "\n")


def _fast_file(leaf: _Leaf) -> FileItem:
    disposition = leaf.headers.get("content-disposition", "")
    filename = _params(";" + disposition.partition(";")[2]).get("filename") or leaf.params.get(
        "name"
    )
    cid = leaf.headers.get("content-id")
    content_id = cid.strip().strip("<>") if cid is not None else None
    inline = content_id is not None and not disposition.lower().startswith("attachment")
    return FileItem(
        filename=filename or content_id or "attachment",  # RFC 2231, never an encoded word
        content_type=leaf.kind,
        data=leaf.data,
        content_id=content_id if inline else None,
    )


def read_parts_stdlib(message: Built) -> Parts:
    """The same as `read_parts`, with the standard library's parser (any MIME at all)."""
    parsed = _PARSER.parsebytes(message.data)
    text_part = html_part = None
    files = []
    for part in parsed.walk():
        if part.is_multipart():
            continue
        kind = part.get_content_type()
        attached = part.get_content_disposition() == "attachment" or "Content-ID" in part
        if kind == "text/plain" and text_part is None and not attached:
            text_part = part
        elif kind == "text/html" and html_part is None and not attached:
            html_part = part
        else:
            files.append(_file(part))
    head = [(name, _FOLD.sub("", str(value))) for name, value in parsed.items()]
    return _assemble(message, head, _text(text_part), _text(html_part), files)


def _decoded(value: object) -> str:
    """A header value unfolded, its RFC 2047 encoded words decoded (UTF-8 kept as it is)."""
    text = _FOLD.sub("", str(value))
    if any("\udc80" <= c <= "\udcff" for c in text):  # raw UTF-8 (RFC 6532)
        return text.encode("ascii", "surrogateescape").decode("utf-8", "replace")
    if "=?" not in text:
        return text
    try:
        return _words(text)
    except (ValueError, LookupError, binascii.Error):
        pass
    try:
        return str(make_header(decode_header(text)))
    except (ValueError, LookupError, HeaderParseError):
        return text  # not decodable: as written


def _words(text: str) -> str:
    """Decode encoded words (a tenth of the cost of `email.header`): adjacent words are joined
    (the white space between them is not part of the text) and decoded together, so a
    character split across two words comes back whole."""
    out: list[str] = []
    run: list[bytes] = []
    charset = ""
    position = 0
    for match in _WORD.finditer(text):
        between = text[position : match.start()]
        word_charset, kind, data = match.group(1).lower(), match.group(2), match.group(3)
        if run and (between.strip() or word_charset != charset):
            out.append(b"".join(run).decode(charset))
            run = []
        if not run:
            out.append(between)
        if kind in "bB":
            run.append(binascii.a2b_base64(data + "=" * (-len(data) % 4)))
        else:
            run.append(binascii.a2b_qp(data.encode("ascii"), header=True))
        charset = word_charset
        position = match.end()
    if run:
        out.append(b"".join(run).decode(charset))
    out.append(text[position:])
    return "".join(out)


def _text(part: Message | None) -> str | None:
    if part is None:
        return None
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return None
    text = payload.decode(part.get_content_charset() or "utf-8", "replace")
    # Line breaks are CRLF on the wire only; the providers write their own.
    return text.replace("\r\n", "\n")


def _file(part: Message) -> FileItem:
    payload = part.get_payload(decode=True)
    cid = part.get("Content-ID")
    content_id = str(cid).strip().strip("<>") if cid is not None else None
    inline = content_id is not None and part.get_content_disposition() != "attachment"
    filename = part.get_filename()
    return FileItem(
        filename=filename or content_id or "attachment",
        content_type=part.get_content_type(),
        data=payload if isinstance(payload, bytes) else b"",
        content_id=content_id if inline else None,
    )


def mailbox_text(box: Mailbox) -> str:
    """`Name <addr>` (the name quoted where it must be), or the bare address."""
    return format_mailbox(*box)
