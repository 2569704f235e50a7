"""A fast writer of RFC 5322 / MIME messages.

The stdlib `email` package builds about a thousand multipart messages a second; a campaign needs
tens of thousands. This writer emits the bytes directly, with the C-backed codecs of `binascii`
and `base64`, and encodes once what every message shares (static attachments, inline images).
Its output is what the stdlib would produce in substance: CRLF line endings, lines of at most 78
characters where folding allows, RFC 2047 encoded words for non-ASCII header text (or UTF-8
headers under SMTPUTF8), 7-bit-clean bodies. The property tests read every message back with the
stdlib parser.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Sequence
from typing import NamedTuple

CRLF = b"\r\n"
MAX_LINE = 78
# Characters that force a display name into a quoted-string (RFC 5322 "specials" and friends).
_NEEDS_QUOTES = re.compile(r'[()<>\[\]:;@\\,."\t]|=\?')
_WORD_BYTES = 45  # 45 bytes -> 60 base64 chars -> a 72-char encoded word (limit 75)
_WORD_OVERHEAD = len("=?utf-8?b??=")


def _room_bytes(room: int) -> int:
    """How many bytes of text an encoded word of at most `room` characters can hold."""
    return min(_WORD_BYTES, max(room - _WORD_OVERHEAD, 0) // 4 * 3)


def encoded_words(text: str, first: int = _WORD_BYTES) -> list[str]:
    """RFC 2047 'B' encoded words for `text`, each at most 75 characters, never splitting a
    character; adjacent words decode back to `text` exactly (the space between them is
    ignored by decoders). The first word holds at most `first` bytes (at least one
    character), so that it fits the rest of a header's first line."""
    raw = text.encode("utf-8")
    if len(raw) <= first:  # the common case: a name or a short subject fits in one word
        return ["=?utf-8?b?" + base64.b64encode(raw).decode("ascii") + "?="]
    words: list[str] = []
    chunk: list[str] = []
    size = 0
    limit = first
    for char in text:
        n = len(char.encode("utf-8"))
        if size + n > limit and chunk:
            words.append(_b_word("".join(chunk)))
            chunk, size, limit = [], 0, _WORD_BYTES
        chunk.append(char)
        size += n
    if chunk or not words:
        words.append(_b_word("".join(chunk)))
    return words


def _b_word(text: str) -> str:
    return "=?utf-8?b?" + base64.b64encode(text.encode("utf-8")).decode("ascii") + "?="


def _fold_words(name: str, words: Sequence[str], *, fold_first: bool = False) -> str:
    """`Name: w1 w2 ...` folded before a word whenever a line would pass MAX_LINE.

    With `fold_first`, even the first word goes to a continuation line when it does not fit
    beside the name. Only for structured headers (addresses): in an unstructured one the
    stdlib would read that folding space as part of the text.
    """
    start = f"{name}:"
    lines: list[str] = []
    line = start
    for word in words:
        if len(line) + 1 + len(word) > MAX_LINE and (line != start or fold_first):
            lines.append(line)
            line = " " + word
        else:
            line = f"{line} {word}"
    lines.append(line)
    return "\r\n".join(lines)


def unstructured(name: str, value: str, *, utf8: bool = False) -> bytes:
    """An unstructured header (Subject, custom headers), encoded and folded."""
    # Text that looks like an encoded word would be decoded by readers: encode it for real.
    if (value.isascii() or utf8) and "=?" not in value:
        if len(name) + 2 + len(value) <= MAX_LINE:  # the common case: one short line
            return f"{name}: {value}".encode()
        if value.strip(" \t"):
            return _fold_text(name, value).encode()
    # The first word is sized to the room left beside the name, so the first line fits too.
    first = _room_bytes(MAX_LINE - len(name) - 2)
    return _fold_words(name, encoded_words(value, first)).encode("ascii")


# A word with the run of blanks before it: a header folds only before such a run.
_PIECE = re.compile(r"[ \t]*[^ \t]+")


def _fold_text(name: str, value: str) -> str:
    """Fold plain text before its blanks; a word too long for its line becomes encoded words.

    A long unbreakable word (a token, a URL) would otherwise make a line over 78 characters,
    or over the 998 that SMTP allows (the server then refuses the whole message with "500 Line
    too long"); the stdlib encodes such a word the same way.
    """
    start = f"{name}:"
    pieces: list[str] = []
    encoded = False  # the previous piece ended in an encoded word
    for piece in _PIECE.findall(value):
        if not pieces and not piece.startswith((" ", "\t")):
            piece = " " + piece
        # The first piece must stay beside the name: the stdlib reads a fold right after
        # the colon as a leading space of the text.
        room = MAX_LINE - (len(start) if not pieces else 0)
        if len(piece) <= room:
            pieces.append(piece)
            encoded = False
            continue
        word = piece.lstrip(" \t")
        blank = piece[: len(piece) - len(word)]
        if encoded:
            # Decoders drop the blanks between two encoded words: carry them inside the text.
            separator, text = " ", blank + word
        else:
            # Between plain text and an encoded word the blank is kept: one stays outside.
            separator, text = blank[0], blank[1:] + word
        words = encoded_words(text, _room_bytes(room - 1))
        pieces += [separator + words[0], *(" " + w for w in words[1:])]
        encoded = True
    tail = value[len(value.rstrip(" \t")) :]
    if tail:
        pieces[-1] += tail
    lines: list[str] = []
    line = start
    for piece in pieces:
        if len(line) + len(piece) > MAX_LINE and line != start:
            lines.append(line)
            line = piece
        else:
            line += piece
    lines.append(line)
    return "\r\n".join(lines)


def list_id(value: str) -> bytes:
    """The List-Id header (RFC 2919): the description as a phrase, the `<list-id>` literal."""
    found = re.fullmatch(r"\s*(.*?)\s*(<[!-;=?-~]+>)\s*", value)
    if found is None:
        # Not the `description <list-id>` form (`send --list-id` takes any text): plain text.
        return unstructured("List-Id", value)
    description, ident = found.groups()
    words = _phrase(description, MAX_LINE - len("List-Id: ")) if description else []
    return _fold_words("List-Id", [*words, ident]).encode("ascii")


def mailbox(name: str, addr: str, *, utf8: bool = False) -> list[str]:
    """A mailbox as header words: the display name (quoted or encoded) and `<addr>`."""
    if not name:
        return [addr]
    # Room for a continuation line's blank and a trailing comma.
    return [*_phrase(name, MAX_LINE - 2, utf8=utf8), f"<{addr}>"]


def _phrase(text: str, room: int, *, utf8: bool = False) -> list[str]:
    """A display name or list description as header words: plain, quoted or encoded.

    Plain words and a quoted string are kept only if they fit in `room` characters (the
    quoted string whole, each plain word alone); otherwise the text becomes encoded words, the
    first of at most `room` characters, so no line passes the limits.
    """
    if (text.isascii() or utf8) and "=?" not in text:
        if _NEEDS_QUOTES.search(text) or text != text.strip() or "  " in text:
            escaped = text.replace("\\", "\\\\").replace('"', '\\"')
            if len(escaped) + 2 <= room:
                return [f'"{escaped}"']
        else:
            words = text.split(" ")
            if len(text) <= room or max(map(len, words)) <= room:
                return words
    return encoded_words(text, _room_bytes(room))


def address_list(name: str, mailboxes: Sequence[tuple[str, str]], *, utf8: bool = False) -> bytes:
    """From/To/Cc/Reply-To with one or more mailboxes, folded between words."""
    words: list[str] = []
    for index, (display, addr) in enumerate(mailboxes):
        parts = mailbox(display, addr, utf8=utf8)
        if index < len(mailboxes) - 1:
            parts[-1] += ","
        words.extend(parts)
    text = _fold_words(name, words, fold_first=True)
    return text.encode("utf-8" if utf8 else "ascii")


# A line longer than SMTP allows (RFC 5321 4.5.3.1.6: 998 characters before the CRLF).
_LONG_LINE = re.compile(r"[^\n]{999}")


def _unix_lines(text: str) -> str:
    # Only CR and LF end a line on the wire (str.splitlines() would split on \f, \v, ...).
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def _encoding_of(normal: str) -> str:
    if normal.isascii():
        if len(normal) <= 998 or not _LONG_LINE.search(normal):
            return "7bit"
        return "quoted-printable"
    # Sizes measured in C: quoted-printable spends three characters on each non-ASCII byte.
    size = len(normal.encode("utf-8"))
    ascii_chars = len(normal.encode("ascii", "ignore"))
    qp_size = ascii_chars + 3 * (size - ascii_chars)
    return "base64" if qp_size > size * 4 // 3 + size // 10 else "quoted-printable"


def body_encoding(text: str) -> str:
    """A transfer encoding that any server accepts (no 8BITMIME needed, lines within limits).

    Plain ASCII with short lines goes as is; mostly-ASCII text as quoted-printable, which stays
    readable; text that is mostly non-ASCII (Cyrillic, CJK) as base64, which is shorter.
    """
    return _encoding_of(_unix_lines(text))


def encode_body(text: str, cte: str) -> bytes:
    """The encoded body with CRLF line endings and a final CRLF."""
    return _encoded(_unix_lines(text), cte)


def _encoded(normal: str, cte: str) -> bytes:
    if cte == "7bit":
        data = normal.encode("ascii")
    elif cte == "quoted-printable":
        data = binascii.b2a_qp(normal.encode("utf-8"), istext=True, header=False)
    else:
        # Base64 hides the line breaks from the transport, so they must be CRLF already in the
        # encoded text (RFC 2045 6.8); quoted-printable and 7bit breaks are rewritten below.
        data = base64.encodebytes(normal.replace("\n", "\r\n").encode("utf-8"))
    data = data.replace(b"\n", CRLF)
    return data if data.endswith(CRLF) else data + CRLF


def base64_lines(data: bytes) -> bytes:
    """Binary content as base64 in 76-character CRLF lines."""
    return base64.encodebytes(data).replace(b"\n", CRLF)


def param(name: str, value: str) -> str:
    """A Content-Type/Disposition parameter; RFC 2231 for non-ASCII values."""
    if value.isascii() and not any(c in value for c in '"\\\r\n'):
        return f'{name}="{value}"'
    from urllib.parse import quote

    return f"{name}*=utf-8''{quote(value, safe='')}"


class Part(NamedTuple):
    """A MIME entity: its headers (without a trailing CRLF) and its encoded body."""

    headers: bytes
    body: bytes

    def to_bytes(self) -> bytes:
        """Headers, the blank line, the body."""
        return self.headers + CRLF + CRLF + self.body


_TEXT_HEADERS = {
    (subtype, cte): (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\nContent-Transfer-Encoding: {cte}'
    ).encode("ascii")
    for subtype in ("plain", "html")
    for cte in ("7bit", "quoted-printable", "base64")
}


def text_part(text: str, subtype: str) -> Part:
    """A text/plain or text/html part in a transfer encoding any server takes."""
    normal = _unix_lines(text)
    cte = _encoding_of(normal)
    headers = _TEXT_HEADERS.get((subtype, cte))
    if headers is None:
        headers = (
            f'Content-Type: text/{subtype}; charset="utf-8"\r\nContent-Transfer-Encoding: {cte}'
        ).encode("ascii")
    return Part(headers, _encoded(normal, cte))


def file_part(
    data: bytes,
    ctype: str,
    filename: str,
    *,
    disposition: str = "attachment",
    content_id: str | None = None,
) -> Part:
    """An attachment or inline image, base64-encoded.

    The name is trimmed of edge whitespace, which readers (the stdlib's among them) drop.
    """
    filename = filename.strip() or "attachment"
    lines = [
        f"Content-Type: {ctype}; {param('name', filename)}",
        "Content-Transfer-Encoding: base64",
        f"Content-Disposition: {disposition}; {param('filename', filename)}",
    ]
    if content_id is not None:
        lines.append(f"Content-ID: <{content_id}>")
    return Part("\r\n".join(lines).encode("ascii"), base64_lines(data))


class Boundaries:
    """Multipart boundaries: a random prefix per builder and a counter.

    The prefix starts with '=_', which can occur neither in quoted-printable nor in base64 text;
    a 7-bit body is checked, and the part falls back to quoted-printable if it ever contains it.
    """

    def __init__(self) -> None:
        self.prefix = "=_" + os.urandom(12).hex()
        self.count = 0

    def next(self) -> str:
        """A boundary not yet used in this message."""
        self.count += 1
        return f"{self.prefix}_{self.count}"

    def restart(self) -> None:
        """Begin a new message: boundaries need only be unique within one, and repeating them
        keeps a body that is the same for every recipient byte-identical (its DKIM body hash
        is then computed once)."""
        self.count = 0


def multipart(
    subtype: str, parts: Sequence[Part], boundary: str, *, root_type: str | None = None
) -> Part:
    """A multipart entity holding `parts`; `root_type` is multipart/related's `type=`."""
    mark = b"--" + boundary.encode("ascii")
    chunks: list[bytes] = []
    for part in parts:
        # The CRLF before a delimiter belongs to the delimiter (RFC 2046 5.1.1), so a part that
        # ends with a line break needs one more to keep it.
        chunks += [mark, CRLF, part.to_bytes(), CRLF]
    chunks += [mark, b"--", CRLF]
    # RFC 2387 requires type= on multipart/related: the content type of its root (first) part.
    kind = f'multipart/{subtype}; type="{root_type}"' if root_type else f"multipart/{subtype}"
    headers = f'Content-Type: {kind};\r\n boundary="{boundary}"'.encode("ascii")
    return Part(headers, b"".join(chunks))


def safe_for(part: Part, text: str, subtype: str, boundary_prefix: str) -> Part:
    """Re-encode a 7-bit part as quoted-printable if its text contains the boundary prefix."""
    if boundary_prefix in text and b"7bit" in part.headers:
        headers = (
            f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
            "Content-Transfer-Encoding: quoted-printable"
        )
        return Part(headers.encode("ascii"), encode_body(text, "quoted-printable"))
    return part
