"""The recipient list: a streaming CSV reader that validates each row as it goes.

The list is never loaded whole: rows are read, checked and handed on one at a time, so a list of a
million rows costs no more memory than one of ten.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from mailcli.addresses import AddressError, Mailbox, address_key, normalize_address
from mailcli.campaign import RecipientsSource
from mailcli.errors import DataError, open_error

# csv's default limit (128 KiB) rejects a long HTML snippet in a cell; 16 MiB still bounds garbage.
csv.field_size_limit(16 * 1024 * 1024)


class Recipient(NamedTuple):
    """One valid row: its 1-based data row number, mailbox and every column's value."""

    row: int
    line: int
    mailbox: Mailbox
    fields: Mapping[str, str]

    @property
    def email(self) -> str:
        """The normalised address."""
        return self.mailbox.addr

    @property
    def key(self) -> str:
        """The identity that keeps one address from being sent twice."""
        return self.mailbox.key


@dataclass(frozen=True, slots=True)
class RowProblem:
    """A row that cannot be sent, and why."""

    row: int
    line: int
    problem: str
    email: str | None = field(default=None)

    def __str__(self) -> str:
        return f"row {self.row}: {self.problem}"


class RecipientReader:
    """Iterate over a CSV recipient list, yielding a `Recipient` or a `RowProblem` per data row."""

    def __init__(self, source: RecipientsSource) -> None:
        self.source = source
        self.columns: tuple[str, ...] = ()

    def __iter__(self) -> Iterator[Recipient | RowProblem]:
        src = self.source
        encoding = _python_encoding(src.encoding)
        try:
            handle = open(src.path, "rb")  # noqa: SIM115
        except OSError as exc:
            raise open_error(src.path, exc, "recipient list") from None
        with handle:
            # Decoded in C, a chunk at a time; only a decode error goes back for its line.
            lines = io.TextIOWrapper(handle, encoding=encoding, newline="")
            reader = csv.reader(lines, delimiter=src.delimiter, strict=False)
            try:
                yield from self._rows(reader)
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"cannot decode the file as {src.encoding} "
                    f"(byte 0x{exc.object[exc.start]:02x} on this line)",
                    path=src.path,
                    line=_undecodable_line(src.path, encoding),
                    hint="set the file's real encoding, e.g. `recipients: {path: ..., "
                    "encoding: cp1252}`",
                ) from None
            except csv.Error as exc:
                raise DataError(
                    f"line {reader.line_num}: unreadable CSV: {exc}", path=src.path
                ) from None

    def _rows(self, reader: Iterator[list[str]]) -> Iterator[Recipient | RowProblem]:
        src = self.source
        header = next(reader, None)
        while header is not None and not any(cell.strip() for cell in header):
            header = next(reader, None)
        if header is None:
            raise DataError("the recipient list is empty: no header row", path=src.path)
        columns = tuple(cell.strip() for cell in header)
        self.columns = columns
        named = [c for c in columns if c]
        dupes = sorted({c for c in named if named.count(c) > 1})
        if dupes:
            raise DataError(f"the header names column {dupes[0]!r} twice", path=src.path, line=1)
        email_col = _find_column(columns, src.email_column)
        if email_col is None:
            raise _no_email_column(src, columns)
        if src.name_column is not None:
            name_col = _find_column(columns, src.name_column)
            if name_col is None:
                raise DataError(
                    f"no {src.name_column!r} column (recipients.name_column)", path=src.path, line=1
                )
        else:
            name_col = _find_column(columns, "name")

        width = len(columns)
        keep = [i for i, c in enumerate(columns) if c]
        number = 0
        line_num = getattr(reader, "line_num", 0)
        for values in reader:
            start = line_num + 1
            line_num = getattr(reader, "line_num", start)
            if not values or (len(values) == 1 and not values[0].strip()):
                continue  # blank line
            number += 1
            if len(values) != width:
                if len(values) < width:
                    yield RowProblem(
                        number,
                        start,
                        f"has {len(values)} fields, the header has {width} (short row)",
                    )
                    continue
                if any(v.strip() for v in values[width:]):
                    yield RowProblem(
                        number,
                        start,
                        f"has {len(values)} fields, the header has "
                        f"{width} (long row; an unquoted delimiter?)",
                    )
                    continue
            raw_email = values[email_col].strip()
            if not raw_email:
                yield RowProblem(number, start, f"no address in column {columns[email_col]!r}")
                continue
            try:
                addr = normalize_address(raw_email)
            except AddressError as exc:
                yield RowProblem(number, start, str(exc), email=raw_email)
                continue
            fields = {columns[i]: values[i] for i in keep}
            name = values[name_col].strip() if name_col is not None else ""
            if "\r" in name or "\n" in name or "\0" in name:
                what = "a NUL character" if "\0" in name else "a line break"
                yield RowProblem(
                    number,
                    start,
                    f"the name in column {columns[name_col or 0]!r} contains "
                    f"{what} (it would go into the To header)",
                    raw_email,
                )
                continue
            yield Recipient(number, start, Mailbox(name, addr), fields)


def _python_encoding(encoding: str) -> str:
    """The codec to read a list with: 'utf-8-sig' reads UTF-8 with and without Excel's BOM."""
    return "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding


# What a list exported by a spreadsheet is separated by, when not by the configured delimiter:
# Excel in European locales writes ';' (the comma is their decimal separator).
OTHER_DELIMITERS = (";", "\t", "|", ",")
_DELIMITER_NAMES = {"\t": "tab", ",": "comma"}
# Column names (letters and digits only, folded) that hold addresses in common exports.
_EMAIL_NAMES = frozenset({"mail", "mailaddress", "mailadresse", "courriel", "correo", "epost"})


def _no_email_column(src: RecipientsSource, columns: tuple[str, ...]) -> DataError:
    """The error for a header without the address column, with the setting that would fix it.

    Only this failure path reads the header again: a list whose header looks split on another
    delimiter (a ';'-separated Excel export read on ',') gets that delimiter suggested.
    """
    named = [c for c in columns if c]
    settings = [f"path: {src.path.name}"]
    found = _other_delimiter(src, columns)
    if found is not None:
        delimiter, other = found
        settings.append(f"delimiter: {_yaml_text(delimiter)}")
        label = _DELIMITER_NAMES.get(delimiter, repr(delimiter))
        message = (
            f"no {src.email_column!r} column; the header looks {label}-separated "
            f"({', '.join(c for c in other if c)})"
        )
        # Split right, the header may hold the configured column after all ('Email' for 'email').
        guess = None if _find_column(other, src.email_column) is not None else _email_like(other)
    else:
        message = f"no {src.email_column!r} column; the header has: {', '.join(named) or '(none)'}"
        guess = _email_like(columns)
    if guess is not None:
        settings.append(f"email_column: {_yaml_text(guess)}")
    if len(settings) > 1:
        hint = f"set `recipients: {{{', '.join(settings)}}}`"
    else:
        hint = "name the address column with `recipients: {path: ..., email_column: ...}`"
    return DataError(message, path=src.path, line=1, hint=hint)


def _other_delimiter(
    src: RecipientsSource, columns: tuple[str, ...]
) -> tuple[str, tuple[str, ...]] | None:
    """Another delimiter that splits the header into more columns, or into one with the address
    column, and the header as it splits it; None if none does."""
    best: tuple[tuple[bool, bool, int], str, tuple[str, ...]] | None = None
    for delimiter in OTHER_DELIMITERS:
        if delimiter == src.delimiter:
            continue
        other = _header_split_on(src, delimiter)
        if other is None or sum(1 for c in other if c) < 2:
            continue
        has_email = _find_column(other, src.email_column) is not None
        if not (has_email or len(other) > len(columns)):
            continue
        rank = (has_email, _email_like(other) is not None, len(other))
        if best is None or rank > best[0]:
            best = (rank, delimiter, other)
    return None if best is None else (best[1], best[2])


def _header_split_on(src: RecipientsSource, delimiter: str) -> tuple[str, ...] | None:
    """The first non-blank row of the list as `delimiter` splits it (None if unreadable)."""
    try:
        with open(src.path, encoding=_python_encoding(src.encoding), newline="") as handle:
            for cells in csv.reader(handle, delimiter=delimiter, strict=False):
                if any(cell.strip() for cell in cells):
                    return tuple(cell.strip() for cell in cells)
    except (OSError, UnicodeDecodeError, csv.Error):
        pass
    return None


def _email_like(columns: tuple[str, ...]) -> str | None:
    """The first column whose name says it holds addresses ('E-mail Address', 'Mail', ...)."""
    for column in columns:
        folded = re.sub(r"[\W_]+", "", column.casefold())
        if "email" in folded or folded in _EMAIL_NAMES:
            return column
    return None


def _yaml_text(value: str) -> str:
    """A YAML double-quoted scalar (JSON's string syntax is a subset of it)."""
    return json.dumps(value, ensure_ascii=False)


def _undecodable_line(path: Path, encoding: str) -> int | None:
    """The physical line holding the first byte `encoding` cannot decode (None if unknown)."""
    # Splitting bytes on b"\n" is only safe where "\n" is the byte 0x0a (not UTF-16/32).
    if codecs.lookup(encoding).name.startswith(("utf-16", "utf-32")):
        return None
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    number = 0
    try:
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):  # noqa: B007 (used after the loop)
                decoder.decode(raw)
            decoder.decode(b"", final=True)  # a character cut short by the end of the file
    except UnicodeDecodeError:
        return number
    except OSError:
        return None
    return None


def _find_column(columns: tuple[str, ...], wanted: str) -> int | None:
    """Index of a column by name: exact first, then ignoring case."""
    if wanted in columns:
        return columns.index(wanted)
    folded = [c.casefold() for c in columns]
    return folded.index(wanted.casefold()) if wanted.casefold() in folded else None


class SeenAddresses:
    """The addresses met so far in one pass, exactly (no hashing), in bounded memory.

    The first MEMORY_LIMIT addresses are kept in a dict (about a microsecond a row); beyond that
    they go to SQLite's private temporary database, which keeps a small page cache and spills the
    rest to a file deleted on close. So a list of any length costs at most a few MB.
    """

    MEMORY_LIMIT = 50_000

    def __init__(self) -> None:
        self._memory: dict[str, int] = {}
        self._db: sqlite3.Connection | None = None

    def add(self, addr: str, row: int) -> int | None:
        """Record an address met on `row`; return the earlier row if it was met before."""
        key = address_key(addr)
        first = self._memory.get(key)
        if first is not None:
            return first
        if len(self._memory) < self.MEMORY_LIMIT:
            self._memory[key] = row
            return None
        db = self._db or self._open()
        if db.execute("INSERT OR IGNORE INTO seen VALUES (?, ?)", (key, row)).rowcount:
            return None
        found = db.execute("SELECT row FROM seen WHERE key = ?", (key,)).fetchone()
        return int(found[0])

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect("", isolation_level=None)
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        db.execute("CREATE TABLE seen (key TEXT PRIMARY KEY, row INTEGER) WITHOUT ROWID")
        db.execute("BEGIN")
        self._db = db
        return db

    def close(self) -> None:
        """Forget everything; drop the temporary database."""
        self._memory.clear()
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> SeenAddresses:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
