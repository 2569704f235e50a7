"""Tests of the message builder, reading the bytes back with the stdlib parser."""

from __future__ import annotations

import base64
import email.parser
import email.policy
import re
from collections.abc import Callable
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from mailcli.addresses import Mailbox
from mailcli.campaign import DkimConfig
from mailcli.dkimsign import load_signer
from mailcli.message import BuildError, Built, MessageBuilder
from mailcli.render import Rendered

SENDER = Mailbox("Acme News", "news@acme.example")
ANN = Mailbox("Ann Lee", "ann@example.com")
REQUIRED = ("From", "To", "Subject", "Date", "Message-ID", "MIME-Version")


def rendered(
    subject: str = "Hello", text: str | None = "Hi Ann\n", html: str | None = None, **kwargs: object
) -> Rendered:
    return Rendered(subject=subject, text=text, html=html, **kwargs)  # type: ignore[arg-type]


def build(
    r: Rendered | None = None,
    to: Mailbox = ANN,
    builder: MessageBuilder | None = None,
    **kwargs: object,
) -> Built:
    return (builder or MessageBuilder(SENDER)).build(r or rendered(), [to], **kwargs)  # type: ignore[arg-type]


def parse(data: bytes) -> EmailMessage:
    msg = BytesParser(policy=email.policy.default).parsebytes(data)
    assert isinstance(msg, EmailMessage)
    return msg


def text_of(part: EmailMessage) -> str:
    """A text part's decoded content with line endings normalised to LF."""
    return unix_newlines(part.get_content())


def unix_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def header_block(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[0]


def header_names(data: bytes) -> list[str]:
    """The field names of the top-level header block, in order, lower-cased."""
    return [
        line.split(b":", 1)[0].decode("ascii").lower()
        for line in header_block(data).split(b"\r\n")
        if line[:1] not in (b" ", b"\t")
    ]


def raw_header(data: bytes, name: str) -> str:
    """One top-level header's raw value, unfolded, without decoding anything."""
    unfolded = re.sub(rb"\r\n[ \t]", b" ", header_block(data)).decode("utf-8")
    values = [
        line.split(":", 1)[1].strip()
        for line in unfolded.split("\r\n")
        if line.split(":", 1)[0].lower() == name.lower()
    ]
    assert len(values) == 1, (name, values)
    return values[0]


def assert_transport_safe(data: bytes) -> None:
    """7-bit ASCII and no line over 998 octets: what any SMTP server accepts."""
    assert data.isascii()
    assert max(len(line) for line in data.split(b"\r\n")) <= 998


# --- headers -----------------------------------------------------------------------------------


def test_required_headers_exactly_once() -> None:
    """From, To, Subject, Date, Message-ID and MIME-Version each appear exactly once on top."""
    names = header_names(build(rendered(html="<p>hi</p>")).data)
    for name in REQUIRED:
        assert names.count(name.lower()) == 1, name


def test_required_headers_exactly_once_with_attachments(tmp_path: Path) -> None:
    """Nested parts add no second MIME-Version (or any other required header) to the top."""
    pdf = tmp_path / "a.pdf"
    pdf.write_bytes(b"%PDF")
    data = build(rendered(html="<p>hi</p>", attachments=(pdf,))).data
    names = header_names(data)
    assert [names.count(n.lower()) for n in REQUIRED] == [1] * len(REQUIRED)
    assert data.count(b"MIME-Version:") == 1


def test_header_values_read_back() -> None:
    """From, To, Subject and Date read back as the values given."""
    msg = parse(build(rendered(subject="Spring offers")).data)
    assert msg["From"].addresses[0].addr_spec == "news@acme.example"
    assert msg["From"].addresses[0].display_name == "Acme News"
    assert msg["To"].addresses[0].addr_spec == "ann@example.com"
    assert msg["Subject"] == "Spring offers"
    assert msg["Date"].datetime.tzinfo is not None


def test_message_id_on_sender_domain() -> None:
    """The Message-ID is unique, on the sender's domain, and returned in Built."""
    builder = MessageBuilder(SENDER)
    first, second = build(builder=builder), build(builder=builder)
    assert raw_header(first.data, "Message-ID") == first.message_id
    assert re.fullmatch(r"<[^<>@\s]+@acme\.example>", first.message_id)
    assert first.message_id != second.message_id


def test_message_id_uses_idna_for_international_domain() -> None:
    """A sender on an internationalised domain gets a Message-ID on the IDNA (punycode) form."""
    built = build(builder=MessageBuilder(Mailbox("", "news@bücher.example")))
    assert built.message_id.endswith("@xn--bcher-kva.example>")
    assert built.mail_from == "news@xn--bcher-kva.example"
    assert_transport_safe(built.data)


def test_reply_to_and_list_id() -> None:
    """Reply-To and List-Id are written when configured."""
    builder = MessageBuilder(
        SENDER, reply_to="support@acme.example", list_id="Acme News <news.acme.example>"
    )
    msg = parse(build(builder=builder).data)
    assert msg["Reply-To"].addresses[0].addr_spec == "support@acme.example"
    assert msg["List-Id"] == "Acme News <news.acme.example>"


def test_custom_headers_present() -> None:
    """Custom headers from the campaign appear with their values."""
    r = rendered(headers=(("X-Campaign", "spring"), ("X-Customer", "42")))
    msg = parse(build(r).data)
    assert msg["X-Campaign"] == "spring"
    assert msg["X-Customer"] == "42"


# --- structure ---------------------------------------------------------------------------------


def test_text_only_is_single_text_plain() -> None:
    """A text-only message is one text/plain part."""
    msg = parse(build(rendered(text="Just text\n")).data)
    assert msg.get_content_type() == "text/plain"
    assert text_of(msg) == "Just text\n"


def test_text_and_html_is_multipart_alternative() -> None:
    """Text + HTML is multipart/alternative with the text first and the HTML second."""
    msg = parse(build(rendered(text="Hi\n", html="<p>Hi</p>\n")).data)
    assert msg.get_content_type() == "multipart/alternative"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert [text_of(p) for p in parts] == ["Hi\n", "<p>Hi</p>\n"]


def test_attachments_make_multipart_mixed(tmp_path: Path) -> None:
    """Attachments give multipart/mixed with identical bytes and types guessed from the name."""
    files = {
        "brochure.pdf": b"%PDF-1.4\n" + bytes(range(256)),
        "logo.png": b"\x89PNG\r\n\x1a\n" + bytes(range(255, -1, -1)),
        "data.zqx9": b"\x00\x01\r\n\x02",
    }
    paths = []
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        paths.append(tmp_path / name)
    msg = parse(build(rendered(html="<p>hi</p>", attachments=tuple(paths))).data)
    assert msg.get_content_type() == "multipart/mixed"
    found = {
        a.get_filename(): (a.get_content_type(), a.get_content()) for a in msg.iter_attachments()
    }
    assert found == {
        "brochure.pdf": ("application/pdf", files["brochure.pdf"]),
        "logo.png": ("image/png", files["logo.png"]),
        "data.zqx9": ("application/octet-stream", files["data.zqx9"]),
    }


def test_missing_per_recipient_attachment_is_build_error(tmp_path: Path) -> None:
    """An attachment file that vanished before building raises BuildError."""
    with pytest.raises(BuildError, match=r"gone\.pdf"):
        build(rendered(attachments=(tmp_path / "gone.pdf",)))


def test_inline_image_is_related_inside_alternative(tmp_path: Path) -> None:
    """An inline image makes the HTML part multipart/related, with a Content-ID matching cid:."""
    png = tmp_path / "logo.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\nimage-bytes")
    builder = MessageBuilder(SENDER, inline_images={"logo": png})
    msg = parse(build(rendered(html='<img src="cid:logo">'), builder=builder).data)
    assert msg.get_content_type() == "multipart/alternative"
    text, related = msg.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert related.get_content_type() == "multipart/related"
    html, image = related.iter_parts()
    assert 'src="cid:logo"' in html.get_content()
    assert image.get_content_type() == "image/png"
    assert image["Content-ID"] == "<logo>"
    assert image.get_content() == png.read_bytes()


# --- encoding ----------------------------------------------------------------------------------


def test_non_ascii_subject_and_names_are_rfc2047() -> None:
    """Non-ASCII subject and display names are encoded words in an ASCII header block."""
    subject = "Grüße aus Köln — 50 % Rabatt für Chloé ✓"
    builder = MessageBuilder(Mailbox("Zoë Müller", "news@acme.example"))
    data = build(
        rendered(subject=subject), to=Mailbox("Chloé Dubois", "c@example.net"), builder=builder
    ).data
    assert header_block(data).isascii()
    assert "=?utf-8?" in raw_header(data, "Subject")
    assert "=?utf-8?" in raw_header(data, "From")
    msg = parse(data)
    assert msg["Subject"] == subject
    assert msg["From"].addresses[0].display_name == "Zoë Müller"
    assert msg["To"].addresses[0].display_name == "Chloé Dubois"


def test_display_name_with_comma_and_accent_is_one_address() -> None:
    """A 'Last, First' display name with an accent stays one mailbox and decodes back exactly."""
    data = build(to=Mailbox("O'Brien, Zoë", "zoe@example.com")).data
    assert header_block(data).isascii()
    addresses = parse(data)["To"].addresses
    assert [(a.display_name, a.addr_spec) for a in addresses] == [
        ("O'Brien, Zoë", "zoe@example.com")
    ]


def test_display_name_with_quotes_and_accent_round_trips() -> None:
    """Double quotes in a non-ASCII display name survive encoding."""
    data = build(to=Mailbox('Jürgen "Jay" Schmidt', "j@example.com")).data
    assert parse(data)["To"].addresses[0].display_name == 'Jürgen "Jay" Schmidt'


def test_display_name_with_line_break_is_build_error() -> None:
    """A display name with a line break (a quoted CSV cell) is a BuildError, not a crash."""
    with pytest.raises(BuildError):
        build(to=Mailbox("Ann\r\nBcc: victim@example.org", "ann@example.com"))


def test_subject_with_unicode_line_separator_stays_one_header() -> None:
    """U+2028 in a subject is encoded inside an encoded word: one header line, same text."""
    data = build(rendered(subject="Hello\u2028world")).data
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    assert sum(1 for line in head.split("\r\n") if line.startswith("Subject:")) == 1
    assert parse(data)["Subject"] == "Hello\u2028world"


def test_long_single_line_body_is_transport_safe() -> None:
    """A body of one 5,000-character line is 7-bit with short lines and decodes back exactly."""
    body = "".join(f"word{i} " for i in range(1000))[:5000] + "\n"
    html = f"<p>{body.rstrip()}</p>\n"
    data = build(rendered(text=body, html=html)).data
    assert_transport_safe(data)
    text_part, html_part = parse(data).iter_parts()
    assert (text_of(text_part), text_of(html_part)) == (body, html)


def test_cyrillic_body_is_transport_safe() -> None:
    """A Cyrillic body is sent 7-bit (no 8BITMIME needed) and decodes back exactly."""
    body = "Здравствуйте, Анна!\nВесенние предложения уже здесь.\n" * 40  # noqa: RUF001
    data = build(rendered(text=body)).data
    assert_transport_safe(data)
    assert text_of(parse(data)) == body


def test_long_ascii_line_with_form_feed_is_transport_safe() -> None:
    """An ASCII line over 998 octets stays within limits even when it contains a form feed."""
    body = "a" * 600 + "\f" + "b" * 600 + "\n"
    data = build(rendered(text=body)).data
    assert_transport_safe(data)
    assert text_of(parse(data)) == body


def test_crlf_line_endings_only(tmp_path: Path) -> None:
    """Every line of the message ends in CRLF: no bare LF or bare CR anywhere."""
    (tmp_path / "a.txt").write_bytes(b"one\ntwo\rthree\r\n")
    r = rendered(
        text="a\nb\r\nc\rd\n", html="<p>x</p>\n<p>y</p>", attachments=(tmp_path / "a.txt",)
    )
    data = build(r).data
    assert data.endswith(b"\r\n")
    assert re.search(rb"(?<!\r)\n|\r(?!\n)", data) is None


# --- recipients --------------------------------------------------------------------------------


def test_bcc_only_in_envelope() -> None:
    """Bcc recipients are in rcpt_to but in no header."""
    built = MessageBuilder(SENDER).build(
        rendered(), [ANN], bcc=[Mailbox("Hidden", "hidden@example.org")]
    )
    assert "hidden@example.org" in built.rcpt_to
    assert b"hidden@example.org" not in header_block(built.data)
    assert b"Hidden" not in built.data
    assert "bcc" not in header_names(built.data)


def test_cc_in_header_and_envelope() -> None:
    """Cc recipients get a Cc header and are in rcpt_to."""
    built = MessageBuilder(SENDER).build(rendered(), [ANN], cc=[Mailbox("Bob", "bob@example.org")])
    assert built.rcpt_to == ("ann@example.com", "bob@example.org")
    assert parse(built.data)["Cc"].addresses[0].addr_spec == "bob@example.org"


def test_non_ascii_local_part_needs_smtputf8() -> None:
    """An address with a non-ASCII local part raises BuildError when the server lacks SMTPUTF8."""
    with pytest.raises(BuildError, match="SMTPUTF8"):
        build(to=Mailbox("", "jürgen@example.com"), smtputf8=False)


def test_non_ascii_local_part_builds_with_smtputf8() -> None:
    """With SMTPUTF8 an address with a non-ASCII local part builds with UTF-8 headers."""
    built = build(to=Mailbox("Jürgen", "jürgen@example.com"), smtputf8=True)
    assert built.smtputf8 is True
    assert built.rcpt_to == ("jürgen@example.com",)
    # UTF-8 headers (RFC 6532): the stdlib reads them from text, not bytes.
    msg = email.parser.Parser(policy=email.policy.default).parsestr(built.data.decode("utf-8"))
    address = msg["To"].addresses[0]
    assert (address.display_name, address.addr_spec) == ("Jürgen", "jürgen@example.com")


def test_ascii_addresses_do_not_use_smtputf8() -> None:
    """A message whose addresses are all ASCII does not ask for SMTPUTF8 and is 7-bit."""
    built = build(rendered(subject="Grüße", text="Grüße\n"), smtputf8=True)
    assert built.smtputf8 is False
    assert_transport_safe(built.data)


# --- List-Unsubscribe --------------------------------------------------------------------------


def test_https_unsubscribe_gets_one_click_post() -> None:
    """An https unsubscribe URL gives List-Unsubscribe and List-Unsubscribe-Post (RFC 8058)."""
    data = build(rendered(unsubscribe="https://acme.example/u/abc")).data
    assert raw_header(data, "List-Unsubscribe") == "<https://acme.example/u/abc>"
    assert raw_header(data, "List-Unsubscribe-Post") == "List-Unsubscribe=One-Click"


def test_mailto_unsubscribe_has_no_post_header() -> None:
    """A mailto unsubscribe gives List-Unsubscribe only."""
    data = build(rendered(unsubscribe="mailto:unsub@acme.example")).data
    assert raw_header(data, "List-Unsubscribe") == "<mailto:unsub@acme.example>"
    assert "list-unsubscribe-post" not in header_names(data)


def test_no_unsubscribe_no_list_headers() -> None:
    """Without an unsubscribe URL no List-Unsubscribe header is written."""
    names = header_names(build().data)
    assert "list-unsubscribe" not in names
    assert "list-unsubscribe-post" not in names


def test_long_unsubscribe_url_stays_a_literal_url() -> None:
    """A long unsubscribe URL is written as <URL> (RFC 2369), never as RFC 2047 encoded words."""
    url = "https://lists.acme.example/subscription/" + "0123456789abcdef" * 5 + "/unsubscribe"
    data = build(rendered(unsubscribe=url)).data
    assert raw_header(data, "List-Unsubscribe").replace(" ", "") == f"<{url}>"
    assert_transport_safe(data)


# --- DKIM --------------------------------------------------------------------------------------


@pytest.fixture
def dkim_builder(tmp_path: Path) -> tuple[MessageBuilder, bytes]:
    """A builder that signs with a fresh RSA key in tmp_path, and the key's DNS TXT record."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "dkim-private.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    txt = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
    config = DkimConfig(domain="acme.example", selector="s1", key=pem)
    return MessageBuilder(SENDER, signer=load_signer(config)), txt


def dns_for(txt: bytes) -> Callable[..., bytes | None]:
    """A stand-in for DNS that knows only the test key's TXT record."""

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return txt if name == b"s1._domainkey.acme.example." else None

    return dnsfunc


def test_dkim_signature_verifies(
    dkim_builder: tuple[MessageBuilder, bytes], tmp_path: Path
) -> None:
    """A signed message (non-ASCII subject, HTML, attachment) verifies against the public key."""
    builder, txt = dkim_builder
    (tmp_path / "a.pdf").write_bytes(b"%PDF" * 100)
    r = rendered(
        subject="Grüße",
        html="<p>hi</p>",
        unsubscribe="https://acme.example/u/1",
        attachments=(tmp_path / "a.pdf",),
    )
    data = build(r, builder=builder).data
    assert data.startswith(b"DKIM-Signature:")
    assert dkim.verify(data, dnsfunc=dns_for(txt)) is True


def test_dkim_fails_after_tampering(dkim_builder: tuple[MessageBuilder, bytes]) -> None:
    """Changing the signed subject after signing breaks verification (the check can fail)."""
    builder, txt = dkim_builder
    data = build(rendered(subject="Original"), builder=builder).data
    assert (
        dkim.verify(data.replace(b"Subject: Original", b"Subject: Forged"), dnsfunc=dns_for(txt))
        is False
    )


def test_dkim_signs_the_important_headers(dkim_builder: tuple[MessageBuilder, bytes]) -> None:
    """The h= tag covers from, subject, list-unsubscribe and list-unsubscribe-post."""
    builder, _ = dkim_builder
    data = build(rendered(unsubscribe="https://acme.example/u/1"), builder=builder).data
    signature = raw_header(data, "DKIM-Signature")
    tags = dict(t.strip().split("=", 1) for t in signature.split(";") if t.strip())
    signed = {h.strip().lower() for h in tags["h"].split(":")}
    assert {"from", "subject", "list-unsubscribe", "list-unsubscribe-post"} <= signed


# --- property tests ----------------------------------------------------------------------------

PROPERTY_BUILDER = MessageBuilder(SENDER)
# Unicode text without surrogates or control characters; subjects also without Unicode line and
# paragraph separators (tested above), and trimmed because the parser drops edge whitespace.
SUBJECTS = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=200).map(
    str.strip
)
# Names are words of any Unicode, or words with the characters special in an address header.
NAME_WORDS = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=10),
    st.sampled_from(
        ["Zoë", "Müller,", "O'Brien,", '"Jay"', "(Acme)", "Dr.", "<x>", "a@b", "x;y", "\\", "Anna"]
    ),
)
NAMES = st.lists(NAME_WORDS, max_size=5).map(" ".join)
BODY_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n")
BODY_LINES = st.one_of(
    st.text(BODY_CHARS, max_size=80),
    st.text(BODY_CHARS, min_size=990, max_size=1500),
    st.builds(
        str.__add__,
        st.sampled_from([".", "..", ".\t", "From ", ">From "]),
        st.text(BODY_CHARS, max_size=60),
    ),
)
BODIES = st.tuples(st.lists(BODY_LINES, max_size=8), st.sampled_from(["\n", "\r\n"])).map(
    lambda t: t[1].join(t[0])
)


@settings(max_examples=100, deadline=None)
@given(SUBJECTS)
def test_any_subject_round_trips(subject: str) -> None:
    """Any Unicode subject builds into an ASCII header block and parses back identical."""
    data = build(rendered(subject=subject), builder=PROPERTY_BUILDER).data
    assert header_block(data).isascii()
    assert parse(data)["Subject"] == subject


@settings(max_examples=100, deadline=None)
@given(NAMES)
def test_any_display_name_round_trips(name: str) -> None:
    """Any Unicode display name parses back as one mailbox with the same name and address."""
    data = build(to=Mailbox(name, "ann@example.com"), builder=PROPERTY_BUILDER).data
    assert header_block(data).isascii()
    addresses = parse(data)["To"].addresses
    assert [a.addr_spec for a in addresses] == ["ann@example.com"]
    # Whitespace in a phrase is folding white space, not content (and the stdlib parser adds a
    # space between folded encoded words): compare without it.
    assert "".join(addresses[0].display_name.split()) == "".join(name.split())


@settings(max_examples=100, deadline=None)
@given(BODIES, st.booleans())
def test_any_body_round_trips(body: str, as_html: bool) -> None:
    """Any body ('.', 'From ' and very long lines too) is transport-safe and decodes back."""
    r = rendered(text=None, html=body) if as_html else rendered(text=body)
    data = build(r, builder=PROPERTY_BUILDER).data
    assert_transport_safe(data)
    decoded = text_of(parse(data))
    assert decoded in (unix_newlines(body), unix_newlines(body) + "\n")
