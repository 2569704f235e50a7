"""Reading a built message back into an API's fields: what the builder wrote comes back exactly
(subjects, names, bodies and files in any script), so a JSON provider gets what SMTP would."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

import mailcli
from mailcli.mailparts import _read_fast, mailbox_text, read_parts, read_parts_stdlib

# Header text: any printable character but line breaks (which are refused before building).
line = (
    st.text(
        st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="\r\n"),
        min_size=1,
        max_size=120,
    )
    .map(str.strip)
    .filter(bool)
)
body = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r"), max_size=400)


@settings(max_examples=150, deadline=None)
@given(subject=line, name=line, text=body, header=line)
def test_fields_round_trip_through_the_built_bytes(
    subject: str, name: str, text: str, header: str
) -> None:
    message = mailcli.Message(
        subject,
        [(name, "ann@example.com")],
        body=text + "\n",
        html="<p>x</p>",
        sender=("Acme Ñews", "news@acme.example"),
        bcc=["audit@example.com"],
        extra_headers={"X-Note": header},
    )
    message.attach("résumé \u2013 2026.pdf", "application/pdf", b"%PDF")
    built = message.build()
    parts = read_parts(built)
    assert parts.subject == subject
    assert parts.to == ((name, "ann@example.com"),)
    assert parts.sender == ("Acme Ñews", "news@acme.example")
    assert parts.bcc == (("", "audit@example.com"),)
    assert parts.text == text + "\n"
    assert dict(parts.headers)["X-Note"] == header
    (attachment,) = parts.attachments
    assert (attachment.filename, attachment.data) == ("résumé \u2013 2026.pdf", b"%PDF")
    assert not parts.signed


def test_mailbox_text_quotes_what_must_be_quoted() -> None:
    assert mailbox_text(("", "a@example.com")) == "a@example.com"
    assert mailbox_text(("Chloé Dubois", "c@example.com")) == "Chloé Dubois <c@example.com>"
    assert (
        mailbox_text(('Dubois, "Chloé"', "c@example.com"))
        == '"Dubois, \\"Chloé\\"" <c@example.com>'
    )


@settings(max_examples=100, deadline=None)
@given(
    subject=line,
    name=line,
    text=body,
    html=body,
    image=st.binary(max_size=300),
    filename=line,
)
def test_the_fast_reader_agrees_with_the_standard_library(
    subject: str, name: str, text: str, html: str, image: bytes, filename: str
) -> None:
    """Whatever the builder writes, the reader for its own MIME and the stdlib's parser agree."""
    message = mailcli.Message(
        subject,
        [(name, "ann@example.com")],
        body=text,
        html=f"<p>{html}</p><img src='cid:logo'>",
        sender="news@acme.example",
        cc=[(name, "bob@example.com")],
        inline_images={"logo": b"\x89PNG\r\n\x1a\n" + image},
        unsubscribe="https://acme.example/u/1",
        list_id="Acme News <news.acme.example>",
    )
    message.attach(filename, "application/octet-stream", image)
    built = message.build()
    _read_fast(built.data)  # the fast reader takes it (no fallback)
    assert read_parts(built) == read_parts_stdlib(built)


def test_bytes_of_another_shape_are_read_by_the_standard_library() -> None:
    """LF line ends (not what the builder writes) take the fallback, with the same result."""
    from mailcli.envelope import Built

    data = (
        b"From: Ann <ann@example.com>\nTo: bob@example.com\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\n"
        b"Content-Type: text/plain; charset=utf-8\n\nHallo\n"
    )
    parts = read_parts(Built(data, "<x@example.com>", "ann@example.com", ("bob@example.com",)))
    assert (parts.subject, parts.text, parts.sender) == (
        "Grüße",
        "Hallo\n",
        ("Ann", "ann@example.com"),
    )


@settings(max_examples=200, deadline=None)
@given(value=line)
def test_encoded_words_decode_as_the_standard_library_decodes_them(value: str) -> None:
    """The builder's encoded words (a long value folds into several) decode to the same text
    with mailparts' decoder as with email.header."""
    from email.header import decode_header, make_header

    from mailcli import mime
    from mailcli.mailparts import _decoded

    raw = mime.unstructured("Subject", value).decode("ascii").partition(": ")[2]
    assert _decoded(raw) == str(make_header(decode_header(raw.replace("\r\n", "")))) == value
