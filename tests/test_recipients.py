"""The recipient list: encodings, delimiters, headers, per-row problems, and streaming reads."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
import yaml
from conftest import ROWS, many_rows, write_csv
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailcli.addresses import Mailbox
from mailcli.campaign import RecipientsSource
from mailcli.errors import DataError, ExitCode, InputFileError
from mailcli.recipients import Recipient, RecipientReader, RowProblem, SeenAddresses


def read(path: Path, **options: str) -> list[Recipient | RowProblem]:
    """Every item the reader yields for `path`."""
    return list(RecipientReader(RecipientsSource(path=path, **options)))  # type: ignore[arg-type]


def recipients(path: Path, **options: str) -> list[Recipient]:
    """The items for `path`, asserting that every one is a valid Recipient."""
    items = read(path, **options)
    assert all(isinstance(item, Recipient) for item in items), items
    return [item for item in items if isinstance(item, Recipient)]


def write(tmp_path: Path, content: str | bytes) -> Path:
    """Write a CSV file as exact bytes (str is written as UTF-8)."""
    path = tmp_path / "list.csv"
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def problems(items: list[Recipient | RowProblem]) -> list[tuple[int, int]]:
    """(row, line) of every RowProblem."""
    return [(p.row, p.line) for p in items if isinstance(p, RowProblem)]


# --- encodings -----------------------------------------------------------------------------


def test_utf8_rows_read_back(tmp_path: Path) -> None:
    """A UTF-8 file yields one Recipient per row with every column and non-ASCII names intact."""
    path = tmp_path / "list.csv"
    write_csv(path, ROWS)
    items = recipients(path)
    assert [dict(r.fields) for r in items] == ROWS
    assert [(r.row, r.line) for r in items] == [(1, 2), (2, 3), (3, 4)]


def test_excel_bom_is_not_part_of_the_first_column(tmp_path: Path) -> None:
    """A UTF-8 BOM (as Excel writes it) is dropped, so the first column is still `email`."""
    path = tmp_path / "list.csv"
    write_csv(path, ROWS, bom=True)
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    reader = RecipientReader(RecipientsSource(path=path))
    first = next(iter(reader))
    assert reader.columns == ("email", "name", "first_name")
    assert isinstance(first, Recipient) and first.email == "ann@example.com"
    assert list(first.fields) == ["email", "name", "first_name"]


@pytest.mark.parametrize(
    ("encoding", "name"), [("cp1252", "Zoé \u2013 Müller"), ("latin-1", "Zoé Müller")]
)
def test_legacy_encoding_via_option(tmp_path: Path, encoding: str, name: str) -> None:
    """A cp1252 or Latin-1 file reads correctly when `encoding` says so."""
    path = write(tmp_path, f"email,name\nzoe@example.com,{name}\n".encode(encoding))
    [item] = read(path, encoding=encoding)
    assert isinstance(item, Recipient)
    assert item.mailbox == Mailbox(name, "zoe@example.com")


def test_wrong_encoding_is_a_data_error_with_a_hint(tmp_path: Path) -> None:
    """cp1252 bytes read as UTF-8 are exit 65 naming the file, the encoding and a fix."""
    path = write(tmp_path, "email,name\nzoe@example.com,Zoé\n".encode("cp1252"))
    with pytest.raises(DataError, match=r"cannot decode the file as utf-8.*0xe9") as info:
        read(path)
    assert (info.value.exit_code, info.value.path) == (ExitCode.DATAERR, str(path))
    assert info.value.hint is not None and "encoding: cp1252" in info.value.hint


def test_wrong_encoding_names_the_line_of_the_bad_byte(tmp_path: Path) -> None:
    """The decode error points at the line holding the undecodable byte (line 3 here)."""
    path = write(tmp_path, b"email,name\na@example.com,Ann\nz@example.com,Zo\xe9\n")
    with pytest.raises(DataError) as info:
        read(path)
    assert info.value.line == 3
    assert str(info.value).startswith(f"{path}:3: ")


def test_missing_file_is_an_input_error(tmp_path: Path) -> None:
    """A recipient list that does not exist is exit 66 naming the path."""
    path = tmp_path / "nobody.csv"
    with pytest.raises(InputFileError, match="recipient list not found") as info:
        read(path)
    assert (info.value.exit_code, info.value.path) == (66, str(path))


# --- delimiters and headers ----------------------------------------------------------------


@pytest.mark.parametrize("delimiter", [";", "\t"])
def test_delimiter_option(tmp_path: Path, delimiter: str) -> None:
    """Semicolon (European Excel) and tab separated files split on the configured delimiter."""
    d = delimiter
    path = write(tmp_path, f"email{d}name{d}note\nann@example.com{d}Ann Lee{d}a, b\n")
    [item] = read(path, delimiter=delimiter)
    assert isinstance(item, Recipient)
    assert dict(item.fields) == {"email": "ann@example.com", "name": "Ann Lee", "note": "a, b"}


def test_header_names_are_trimmed(tmp_path: Path) -> None:
    """Spaces around header names are removed, so ` first name ` becomes `first name`."""
    path = write(tmp_path, " email , first name ,  city\nann@example.com,Ann,Oslo\n")
    [item] = recipients(path)
    assert dict(item.fields) == {"email": "ann@example.com", "first name": "Ann", "city": "Oslo"}


@pytest.mark.parametrize("header", ["EMAIL", "Email", " eMail "])
def test_email_column_matches_ignoring_case(tmp_path: Path, header: str) -> None:
    """The default `email` column is found whatever its case."""
    path = write(tmp_path, f"{header},name\nann@example.com,Ann\n")
    [item] = read(path)
    assert isinstance(item, Recipient) and item.email == "ann@example.com"


def test_email_column_is_configurable(tmp_path: Path) -> None:
    """`email_column` picks the address column, matched ignoring case; `email` is then ignored."""
    path = write(tmp_path, "Email,Mail Address\nold@example.com,new@example.com\n")
    [item] = read(path, email_column="mail address")
    assert isinstance(item, Recipient) and item.email == "new@example.com"


def test_missing_email_column_names_the_columns_found(tmp_path: Path) -> None:
    """No email column is exit 65 at line 1, listing the header's columns and a hint."""
    path = write(tmp_path, "mail,full name\nann@example.com,Ann\n")
    with pytest.raises(
        DataError, match="no 'email' column; the header has: mail, full name"
    ) as info:
        read(path)
    assert (info.value.exit_code, info.value.path, info.value.line) == (65, str(path), 1)
    assert info.value.hint is not None and "email_column" in info.value.hint


def test_missing_configured_email_column(tmp_path: Path) -> None:
    """A configured email column that is absent is named in the error."""
    path = write(tmp_path, "email,name\nann@example.com,Ann\n")
    with pytest.raises(DataError, match="no 'Mail' column; the header has: email, name"):
        read(path, email_column="Mail")


# --- a list separated by another delimiter ---------------------------------------------------

EXCEL_EU = "E-mail Address;First Name;Last Name\nann@example.com;Ann;Lee\n"


def wrong_delimiter_error(path: Path, **options: str) -> DataError:
    with pytest.raises(DataError) as info:
        read(path, **options)
    assert (info.value.exit_code, info.value.path, info.value.line) == (65, str(path), 1)
    return info.value


def suggested_source(path: Path, hint: str) -> RecipientsSource:
    """The `recipients:` setting a hint suggests, read as the campaign file would read it."""
    found = re.search(r"`recipients: (\{.*\})`", hint)
    assert found, hint
    setting = yaml.safe_load(found.group(1))
    assert setting["path"] == path.name
    del setting["path"]
    return RecipientsSource(path=path, **setting)


def test_semicolon_export_suggests_the_delimiter_and_the_address_column(tmp_path: Path) -> None:
    """European Excel's ';'-separated export read on ',' names the delimiter and the column that
    looks like the address column, in settings that then read the file."""
    path = tmp_path / "subscribers.csv"
    path.write_text(EXCEL_EU, encoding="utf-8")
    error = wrong_delimiter_error(path)
    assert error.message == (
        "no 'email' column; the header looks ';'-separated (E-mail Address, First Name, Last Name)"
    )
    assert error.hint == (
        'set `recipients: {path: subscribers.csv, delimiter: ";", email_column: "E-mail Address"}`'
    )
    [item] = list(RecipientReader(suggested_source(path, error.hint)))
    assert isinstance(item, Recipient) and item.email == "ann@example.com"
    assert item.fields["Last Name"] == "Lee"


def test_semicolon_export_with_an_email_column_suggests_only_the_delimiter(tmp_path: Path) -> None:
    """When the other delimiter finds the `email` column (in any case), only it is suggested."""
    path = write(tmp_path, "Email;Name\nann@example.com;Ann\n")
    error = wrong_delimiter_error(path)
    assert error.message == "no 'email' column; the header looks ';'-separated (Email, Name)"
    assert error.hint == 'set `recipients: {path: list.csv, delimiter: ";"}`'


@pytest.mark.parametrize(
    ("content", "configured", "label", "written"),
    [
        ("email\tname\nann@example.com\tAnn\n", ",", "tab", '"\\t"'),
        ("email|name\nann@example.com|Ann\n", ",", "'|'", '"|"'),
        ("email,name\nann@example.com,Ann\n", ";", "comma", '","'),
    ],
    ids=["tab", "pipe", "comma"],
)
def test_other_delimiters_are_recognised(
    tmp_path: Path, content: str, configured: str, label: str, written: str
) -> None:
    """Tab, '|' and (when another delimiter is configured) ',' are recognised too, and the
    suggested setting, as YAML, reads the file."""
    path = write(tmp_path, content)
    error = wrong_delimiter_error(path, delimiter=configured)
    assert error.message == f"no 'email' column; the header looks {label}-separated (email, name)"
    assert error.hint == f"set `recipients: {{path: list.csv, delimiter: {written}}}`"
    assert error.hint is not None
    [item] = list(RecipientReader(suggested_source(path, error.hint)))
    assert isinstance(item, Recipient) and dict(item.fields) == {
        "email": "ann@example.com",
        "name": "Ann",
    }


def test_a_comma_inside_a_semicolon_header_still_finds_the_delimiter(tmp_path: Path) -> None:
    """Read on ',' the header below has two columns, on ';' three: ';' is suggested."""
    path = write(tmp_path, "E-mail;Name, first;City\nann@example.com;Ann;Oslo\n")
    error = wrong_delimiter_error(path)
    assert "looks ';'-separated (E-mail, Name, first, City)" in error.message
    assert error.hint is not None and 'email_column: "E-mail"' in error.hint


def test_no_delimiter_suggested_when_no_other_splits_the_header(tmp_path: Path) -> None:
    """A header that no other delimiter splits keeps the usual message; an address-like column
    is still suggested as `email_column`."""
    path = write(tmp_path, "E-mail Address,First Name\nann@example.com,Ann\n")
    error = wrong_delimiter_error(path)
    assert error.message == "no 'email' column; the header has: E-mail Address, First Name"
    assert error.hint == 'set `recipients: {path: list.csv, email_column: "E-mail Address"}`'


def test_a_header_that_other_delimiters_split_worse_is_not_misread(tmp_path: Path) -> None:
    """Three columns on ',' and two on ';' (a ';' inside a name): no delimiter is suggested."""
    path = write(tmp_path, "mail,full;name,city\nann@example.com,Ann,Oslo\n")
    error = wrong_delimiter_error(path)
    assert error.message == "no 'email' column; the header has: mail, full;name, city"
    assert error.hint == 'set `recipients: {path: list.csv, email_column: "mail"}`'


def test_empty_file_is_a_data_error(tmp_path: Path) -> None:
    """A file with no header row is exit 65 saying so."""
    with pytest.raises(DataError, match="no header row"):
        read(write(tmp_path, "\n\n"))


def test_duplicate_column_is_a_data_error(tmp_path: Path) -> None:
    """A header naming a column twice (after trimming) is exit 65 naming the column."""
    with pytest.raises(DataError, match="column 'name' twice"):
        read(write(tmp_path, "email,name, name\na@example.com,A,B\n"))


# --- row problems --------------------------------------------------------------------------


def test_short_and_long_rows_are_row_problems(tmp_path: Path) -> None:
    """Rows with too few or too many fields become RowProblems with their row and line."""
    path = write(
        tmp_path,
        "email,name\na@example.com,A\nb@example.com\nc@example.com,C,extra\nd@example.com,D\n",
    )
    items = read(path)
    assert problems(items) == [(2, 3), (3, 4)]
    assert "short row" in str(items[1]) and str(items[1]).startswith("row 2: has 1 fields")
    assert "long row" in str(items[2]) and str(items[2]).startswith("row 3: has 3 fields")
    assert isinstance(items[3], Recipient) and items[3].row == 4


def test_trailing_empty_fields_are_not_a_long_row(tmp_path: Path) -> None:
    """Empty extra fields (trailing commas, as spreadsheets write them) are accepted."""
    [item] = read(write(tmp_path, "email,name\na@example.com,A,,\n"))
    assert isinstance(item, Recipient) and dict(item.fields) == {
        "email": "a@example.com",
        "name": "A",
    }


def test_line_numbers_count_multiline_quoted_fields(tmp_path: Path) -> None:
    """After a quoted field spanning two lines, the next row's line number is still exact."""
    path = write(
        tmp_path, 'email,note\na@example.com,"two\nlines"\nb@example.com\nc@example.com,x\n'
    )
    items = read(path)
    assert isinstance(items[0], Recipient) and items[0].fields["note"] == "two\nlines"
    assert problems(items) == [(2, 4)]
    assert (items[2].row, items[2].line) == (3, 5)


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    """Blank lines yield nothing and do not count as rows, but do count as lines."""
    path = write(tmp_path, "\nemail\n\na@example.com\n\n  \nb@example.com\n\n")
    items = recipients(path)
    assert [(r.row, r.line, r.email) for r in items] == [
        (1, 4, "a@example.com"),
        (2, 7, "b@example.com"),
    ]


@pytest.mark.parametrize(
    "address", ["not-an-address", "ann@", "a b@example.com", "ann@example..com"]
)
def test_invalid_address_is_a_row_problem_naming_it(tmp_path: Path, address: str) -> None:
    """An invalid address is a RowProblem whose text and `email` name the address."""
    [item] = read(write(tmp_path, f"email,name\n{address},X\n"))
    assert isinstance(item, RowProblem)
    assert (item.row, item.line, item.email) == (1, 2, address)
    assert str(item).startswith(f"row 1: invalid address {address!r}")


@pytest.mark.parametrize("value", ["", "   "])
def test_empty_address_is_a_row_problem(tmp_path: Path, value: str) -> None:
    """An empty address cell is a RowProblem naming the email column."""
    [item] = read(write(tmp_path, f"Email,name\n{value},X\n"))
    assert isinstance(item, RowProblem)
    assert str(item) == "row 1: no address in column 'Email'"


def test_address_is_trimmed_and_domain_lowercased(tmp_path: Path) -> None:
    """Spaces around the address go, the domain is lower-cased, the local part is kept."""
    [item] = read(write(tmp_path, "email\n  Ann.Lee@EXAMPLE.COM \n"))
    assert isinstance(item, Recipient)
    assert item.email == "Ann.Lee@example.com"
    assert item.fields["email"] == "  Ann.Lee@EXAMPLE.COM "


# --- names ---------------------------------------------------------------------------------


def test_name_column_found_automatically(tmp_path: Path) -> None:
    """A column called `name` (any case) becomes the display name, trimmed."""
    [item] = read(write(tmp_path, "email,Name\nann@example.com, Ann Lee \n"))
    assert isinstance(item, Recipient) and item.mailbox == Mailbox("Ann Lee", "ann@example.com")
    assert str(item.mailbox) == "Ann Lee <ann@example.com>"


def test_configured_name_column(tmp_path: Path) -> None:
    """`name_column` picks the display name, even when a `name` column exists."""
    path = tmp_path / "list.csv"
    write_csv(path, ROWS)
    items = recipients(path, name_column="first_name")
    assert [r.mailbox.name for r in items] == ["Ann", "Bob", "Chloé"]


def test_no_name_column_gives_empty_name(tmp_path: Path) -> None:
    """Without a name column the mailbox has no display name."""
    [item] = read(write(tmp_path, "email,city\nann@example.com,Oslo\n"))
    assert isinstance(item, Recipient) and item.mailbox == Mailbox("", "ann@example.com")


def test_missing_configured_name_column_is_a_data_error(tmp_path: Path) -> None:
    """A configured name column absent from the header is exit 65 naming it."""
    with pytest.raises(DataError, match=r"no 'Full Name' column \(recipients.name_column\)"):
        read(write(tmp_path, "email,name\nann@example.com,Ann\n"), name_column="Full Name")


# --- duplicates ----------------------------------------------------------------------------


def test_seen_addresses_reports_first_row_ignoring_case() -> None:
    """A second spelling of one address returns the row where it was first met."""
    with SeenAddresses() as seen:
        assert seen.add("Ann@Example.com", 1) is None
        assert seen.add("bob@example.com", 2) is None
        assert seen.add("ann@example.com", 5) == 1
        assert seen.add("ANN@EXAMPLE.COM", 9) == 1
        assert seen.add("bob@example.com", 7) == 2


def test_seen_addresses_holds_many_distinct_addresses() -> None:
    """Thousands of distinct addresses are all new; repeating them finds each first row."""
    with SeenAddresses() as seen:
        rows = many_rows(5000)
        assert all(seen.add(r["email"], i) is None for i, r in enumerate(rows, 1))
        assert seen.add(rows[4321]["email"].upper(), 9999) == 4322


# --- streaming -----------------------------------------------------------------------------


def test_reader_streams_rows_before_reading_the_end(tmp_path: Path) -> None:
    """Early rows are yielded before a broken last line is even decoded: the file is not slurped."""
    path = tmp_path / "list.csv"
    write_csv(path, many_rows(20_000))
    with open(path, "ab") as handle:
        handle.write(b"broken\xff@example.com,X,Y\n")
    rows = iter(RecipientReader(RecipientsSource(path=path)))
    first, second = next(rows), next(rows)
    assert isinstance(first, Recipient) and first.email == "user00001@example.com"
    assert isinstance(second, Recipient) and second.row == 2
    with pytest.raises(DataError, match="cannot decode"):
        for _ in rows:
            pass


# --- property ------------------------------------------------------------------------------

cells = st.text(
    alphabet=st.one_of(
        st.characters(blacklist_categories=("Cs",)), st.sampled_from(",;\"\r\n\t '")
    ),
    max_size=30,
)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(st.tuples(cells, cells), min_size=1, max_size=8),
    delimiter=st.sampled_from([",", ";", "\t"]),
)
def test_csv_writer_output_reads_back_identically(
    tmp_path: Path, rows: list[tuple[str, str]], delimiter: str
) -> None:
    """Any text (commas, quotes, newlines, Unicode) written by csv.writer reads back unchanged."""
    path = tmp_path / "list.csv"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(["note", "email", "other"])
        writer.writerows(
            (note, f"user{i}@example.com", other) for i, (note, other) in enumerate(rows, 1)
        )
    items = recipients(path, delimiter=delimiter)
    assert [dict(r.fields) for r in items] == [
        {"note": note, "email": f"user{i}@example.com", "other": other}
        for i, (note, other) in enumerate(rows, 1)
    ]
    assert [r.row for r in items] == list(range(1, len(rows) + 1))


def test_seen_addresses_stay_exact_past_the_memory_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond the in-memory part, duplicates are still found, with the row first seen."""
    monkeypatch.setattr(SeenAddresses, "MEMORY_LIMIT", 3)
    with SeenAddresses() as seen:
        assert [seen.add(f"u{i}@example.com", i) for i in range(1, 7)] == [None] * 6
        assert seen.add("U2@Example.com", 10) == 2  # from memory
        assert seen.add("u5@EXAMPLE.com", 11) == 5  # from the spill database
        assert seen.add("u7@example.com", 12) is None
