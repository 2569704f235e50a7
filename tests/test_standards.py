"""Standards conformance of the messages mailcli writes, each read back from the bytes.

RFC 2919 (List-Id), RFC 2045 6.8 (line breaks inside base64 text), RFC 2387 (multipart/related
type=), RFC 5322 2.1.1 / RFC 5321 4.5.3.1.6 (header line lengths), RFC 2047 (encoded words),
RFC 6376 5.4.2 (DKIM over-signing), and the deliverability warnings of `mailcli.checks`.
Messages are built from campaigns written to tmp_path (or by the builder itself for the
property tests) and parsed with the stdlib's `email.policy.default`.
"""

from __future__ import annotations

import base64
import binascii
import email.policy
import re
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import dkim
import pytest
from conftest import make_campaign
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailcli import mime
from mailcli.addresses import Mailbox
from mailcli.campaign import Campaign, load_campaign
from mailcli.checks import campaign_warnings
from mailcli.dkimsign import DkimSigner, generate_key
from mailcli.message import MessageBuilder
from mailcli.pipeline import Pipeline, Ready
from mailcli.render import Rendered

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
SENDER = Mailbox("Acme News", "news@acme.example")
ANN = Mailbox("Ann Lee", "ann@example.com")
# A local part that needs SMTPUTF8: the message is then written with UTF-8 headers.
UNICODE_ANN = Mailbox("Ann", "änn@example.com")
BARE_LF = re.compile(rb"(?<!\r)\n")


def parse(data: bytes) -> EmailMessage:
    message = BytesParser(policy=email.policy.default).parsebytes(data)
    assert isinstance(message, EmailMessage)
    return message


def header_lines(data: bytes) -> list[bytes]:
    """The physical lines of the top-level header block."""
    return data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def field(data: bytes, name: bytes) -> list[bytes]:
    """The physical lines (first and continuations) of one top-level header field."""
    lines = header_lines(data)
    start = next(i for i, line in enumerate(lines) if line.lower().startswith(name.lower() + b":"))
    end = start + 1
    while end < len(lines) and lines[end][:1] in (b" ", b"\t"):
        end += 1
    return lines[start:end]


def first_message(
    folder: Path,
    extra: str = "",
    *,
    subject: str = "Hello {{ first_name }}",
    text: str | None = None,
    html: str | None = None,
) -> bytes:
    """The first message of a campaign written to `folder`, built as a dry run builds it."""
    files = make_campaign(folder, extra=extra, subject=subject, text=text, html=html)
    pipeline = Pipeline(load_campaign(files.yaml))
    ready = next(item for item in pipeline.items() if isinstance(item, Ready))
    return pipeline.build(ready).data


def walk_leaves(message: EmailMessage) -> list[EmailMessage]:
    return [p for p in message.walk() if not p.is_multipart()]


# --- 1. List-Id (RFC 2919) --------------------------------------------------------------------


def test_list_id_with_a_non_ascii_description_keeps_the_list_id_literal(tmp_path: Path) -> None:
    """Only the description is RFC 2047-encoded; `<news.acme.example>` stays as written."""
    data = first_message(
        tmp_path / "c", 'list_id: "Acme Nachrichten für Kunden <news.acme.example>"\n'
    )
    lines = field(data, b"List-Id")
    assert lines[-1].endswith(b" <news.acme.example>")
    raw = b" ".join(line.strip() for line in lines)[len(b"List-Id:") :].strip()
    description = raw[: -len(b" <news.acme.example>")]
    assert re.fullmatch(rb"(=\?utf-8\?b\?[A-Za-z0-9+/=]+\?=\s*)+", description), raw
    assert all(len(line) <= 78 for line in lines)
    assert parse(data)["List-Id"] == "Acme Nachrichten für Kunden <news.acme.example>"


def test_a_long_non_ascii_list_description_folds_with_the_list_id_last(tmp_path: Path) -> None:
    """A description of several encoded words folds within 78 characters, the first of them
    beside the field name (where the stdlib reads it back exactly)."""
    description = "Nouvelles d'Acme pour les clients fidèles, chaque mois, rédigées à Genève"
    data = first_message(tmp_path / "c", f'list_id: "{description} <news.acme.example>"\n')
    lines = field(data, b"List-Id")
    assert len(lines) > 1 and lines[0].startswith(b"List-Id: =?utf-8?b?")
    assert all(len(line) <= 78 for line in lines)
    assert b"<news.acme.example>" in lines[-1]
    assert parse(data)["List-Id"] == f"{description} <news.acme.example>"


def test_ascii_list_ids_are_written_as_before_or_quoted_when_they_need_it() -> None:
    """A plain description is left alone; one with specials becomes a quoted-string phrase."""
    assert (
        mime.list_id("Acme News <news.acme.example>") == b"List-Id: Acme News <news.acme.example>"
    )
    assert mime.list_id("<news.acme.example>") == b"List-Id: <news.acme.example>"
    assert mime.list_id("Acme, Inc. <news.acme.example>") == (
        b'List-Id: "Acme, Inc." <news.acme.example>'
    )


# --- 2. Line breaks in text parts (RFC 2045 6.8) ---------------------------------------------

CYRILLIC = "Здравствуйте, Анна!\nЭто наше письмо.\n\nС уважением,\nКоманда\n"  # noqa: RUF001


def test_base64_text_parts_have_crlf_line_breaks_inside_the_encoding(tmp_path: Path) -> None:
    """Mostly non-ASCII text goes as base64; decoded, every line break in it is CRLF."""
    data = first_message(
        tmp_path / "c", text=CYRILLIC, html="<p>Здравствуйте, Анна!</p>\n<p>Это</p>\n"
    )
    parts = walk_leaves(parse(data))
    assert [p["Content-Transfer-Encoding"] for p in parts] == ["base64", "base64"]
    for part in parts:
        decoded = base64.b64decode(part.get_payload())  # type: ignore[arg-type]
        assert b"\r\n" in decoded and not BARE_LF.search(decoded), decoded
    text = parts[0].get_content()
    assert text == CYRILLIC.replace("\n", "\r\n")


def test_quoted_printable_and_7bit_parts_keep_crlf(tmp_path: Path) -> None:
    """Mostly-ASCII text (quoted-printable) and plain ASCII (7bit): CRLF on the wire and in
    the decoded text."""
    data = first_message(
        tmp_path / "c", text="Grüße, Ann!\nSee you.\n", html="<p>Hello Ann</p>\n<p>Bye</p>\n"
    )
    assert not BARE_LF.search(data)
    text, html = walk_leaves(parse(data))
    assert text["Content-Transfer-Encoding"] == "quoted-printable"
    assert html["Content-Transfer-Encoding"] == "7bit"
    decoded = binascii.a2b_qp(text.get_payload().encode("ascii"))  # type: ignore[union-attr]
    assert decoded == "Grüße, Ann!\r\nSee you.\r\n".encode()
    assert html.get_payload().encode("ascii") == b"<p>Hello Ann</p>\r\n<p>Bye</p>\r\n"  # type: ignore[union-attr]


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=400))
def test_any_text_decodes_with_crlf_line_breaks_in_every_encoding(text: str) -> None:
    """Whichever transfer encoding is chosen, the decoded bytes are the text with CRLF breaks."""
    part = mime.text_part(text, "plain")
    cte = parse(part.to_bytes())["Content-Transfer-Encoding"]
    decoded = {
        "7bit": lambda b: b,
        "quoted-printable": binascii.a2b_qp,
        "base64": base64.b64decode,
    }[cte](part.body)
    assert not BARE_LF.search(decoded)
    expected = text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n").encode()
    # 7bit and quoted-printable bodies end with a line break even when the text does not.
    assert decoded in (expected, expected + b"\r\n")


# --- 3. multipart/related type= (RFC 2387) ---------------------------------------------------


def test_multipart_related_names_the_type_of_its_root_part(tmp_path: Path) -> None:
    """With an inline image, multipart/related carries type="text/html", its first part's type."""
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "logo.png").write_bytes(PNG)
    data = first_message(
        folder, "inline_images: {logo: logo.png}\n", html='<p><img src="cid:logo"> Hi</p>\n'
    )
    assert re.search(rb'Content-Type: multipart/related; type="text/html";\r\n boundary="', data)
    related = next(p for p in parse(data).walk() if p.get_content_type() == "multipart/related")
    assert related.get_param("type") == "text/html"
    root = next(related.iter_parts())
    assert root.get_content_type() == related.get_param("type")


# --- 4 and 5. Header line lengths and the first encoded word ---------------------------------

LONG_WORD = "x" * 1000
LONG_UNICODE_WORD = "ü" * 700


@pytest.mark.parametrize(
    "subject",
    [
        LONG_WORD,
        f"Hello {LONG_WORD} bye",
        LONG_UNICODE_WORD,
        f"Grüße {LONG_UNICODE_WORD} und {LONG_WORD}",
    ],
    ids=["ascii-word", "ascii-in-text", "unicode-word", "mixed"],
)
def test_a_subject_with_a_thousand_character_word_folds_within_the_limits(
    tmp_path: Path, subject: str
) -> None:
    """A word of ~1,000 characters no longer makes a line SMTP refuses ("500 Line too long"):
    it becomes encoded words on folded lines of at most 78 characters, read back exactly."""
    data = first_message(tmp_path / "c", subject=subject)
    lines = header_lines(data)
    assert max(map(len, lines)) <= 78
    assert parse(data)["Subject"] == subject


@pytest.mark.parametrize("value", [LONG_WORD, f"id={LONG_UNICODE_WORD}", f"a {LONG_WORD} b"])
def test_a_custom_header_with_a_thousand_character_word_folds_within_the_limits(
    tmp_path: Path, value: str
) -> None:
    """The same for a custom header from `headers:`."""
    data = first_message(tmp_path / "c", f'headers: {{X-Campaign-Token: "{value}"}}\n')
    lines = field(data, b"X-Campaign-Token")
    assert len(lines) > 1 and max(map(len, lines)) <= 78
    assert parse(data)["X-Campaign-Token"] == value


def test_a_long_word_under_smtputf8_is_folded_too() -> None:
    """With UTF-8 headers (an address that needs SMTPUTF8) a long word is still encoded and
    folded: no line passes 998 octets, none 78 characters."""
    subject = f"Привет {'ж' * 600} пока"
    built = MessageBuilder(SENDER).build(
        Rendered(subject=subject, text="x\n", html=None), [UNICODE_ANN]
    )
    assert built.smtputf8
    lines = field(built.data, b"Subject")
    assert max(map(len, lines)) <= 998
    assert max(len(line.decode("utf-8")) for line in lines) <= 78
    assert parse(built.data)["Subject"] == subject


def test_the_first_encoded_word_fits_on_the_subject_line(tmp_path: Path) -> None:
    """A non-ASCII subject of 43 to 45 bytes used to be one 72-character word beside
    `Subject: ` (81 characters); the first word is now sized to the room on that line."""
    subject = "Ihre Bestellung ist unterwegs, Jürgen!"  # 39 characters, 40 bytes
    for text in (subject + "!!!", subject + "!!!!!", "Grüße " * 20):
        data = first_message(tmp_path / str(len(text)), subject=text)
        lines = field(data, b"Subject")
        assert lines[0].startswith(b"Subject: =?utf-8?b?")
        assert all(len(line) <= 78 for line in lines), lines
        assert parse(data)["Subject"] == text


def test_the_first_word_of_a_long_header_name_fits_too() -> None:
    """With a long field name the first encoded word is shorter still."""
    name = "X-A-Rather-Long-Custom-Header-Name"
    value = "Ωmega " * 12
    data = (
        MessageBuilder(SENDER)
        .build(
            Rendered(subject="s", text="x\n", html=None, headers=((name, value.strip()),)), [ANN]
        )
        .data
    )
    lines = field(data, name.encode())
    assert lines[0].startswith(name.encode() + b": =?utf-8?b?")
    assert all(len(line) <= 78 for line in lines)
    assert parse(data)[name] == value.strip()


def test_address_headers_keep_the_first_line_within_78_characters() -> None:
    """A Reply-To whose encoded name does not fit beside the field name starts on the next line
    (addresses are structured: readers skip that folding space); the name reads back."""
    name = "Ünïcödé Support Team of Acme, Europe"  # 40 bytes: one 68-character word
    data = (
        MessageBuilder(SENDER, reply_to=f'"{name}" <help@acme.example>')
        .build(Rendered(subject="s", text="x\n", html=None), [ANN])
        .data
    )
    assert all(len(line) <= 78 for line in header_lines(data))
    reply_to = parse(data)["Reply-To"]
    assert (reply_to.addresses[0].display_name, reply_to.addresses[0].addr_spec) == (
        name,
        "help@acme.example",
    )


def test_a_recipient_name_with_a_huge_word_is_encoded() -> None:
    """A name from the list with a word of 1,000 characters is encoded, not written whole."""
    name = "Ann " + "L" * 1000
    data = (
        MessageBuilder(SENDER)
        .build(Rendered(subject="s", text="x\n", html=None), [Mailbox(name, "ann@example.com")])
        .data
    )
    assert all(len(line) <= 78 for line in header_lines(data))
    to = b"".join(field(data, b"To")).decode("ascii")  # unfolded: CRLF removed
    phrase = to[len("To: ") : -len(" <ann@example.com>")]
    # An RFC 2047 decoder (the stdlib's address parser puts a space between adjacent encoded
    # words of a phrase, which RFC 2047 6.2 says to drop).
    assert str(make_header(decode_header(phrase))) == name
    assert parse(data)["To"].addresses[0].addr_spec == "ann@example.com"


# Words that hold no blank, separated by runs of blanks: long, short, ASCII or not.
WORD = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")),
    min_size=1,
    max_size=12,
)
LONG = st.builds(
    lambda char, n: char * n,
    st.sampled_from(["x", "é", "字", "=", "?", "\U0001f600"]),
    st.integers(min_value=60, max_value=1100),
)
HEADER_TEXT = st.builds(
    lambda words, blanks: "".join(w + b for w, b in zip(words, blanks, strict=False)).strip(" \t"),
    st.lists(st.one_of(WORD, WORD, LONG), min_size=1, max_size=8),
    st.lists(st.sampled_from([" ", "  ", "\t", " \t "]), min_size=8, max_size=8),
).filter(bool)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(
    value=HEADER_TEXT,
    name=st.sampled_from(["Subject", "X-Campaign", "X-A-Rather-Long-Custom-Header-Name"]),
    utf8=st.booleans(),
)
def test_any_header_text_folds_within_the_limits_and_decodes_exactly(
    value: str, name: str, utf8: bool
) -> None:
    """Subject or custom header, ASCII or not, plain or SMTPUTF8 headers, with words up to
    1,100 characters: every header line is at most 998 octets and 78 characters, and the
    stdlib reads the value back exactly."""
    headers = () if name == "Subject" else ((name, value),)
    subject = value if name == "Subject" else "s"
    built = MessageBuilder(SENDER).build(
        Rendered(subject=subject, text="x\n", html=None, headers=headers),
        [UNICODE_ANN if utf8 else ANN],
    )
    lines = header_lines(built.data)
    assert max(map(len, lines)) <= 998
    assert max(len(line.decode("utf-8")) for line in lines) <= 78
    assert parse(built.data)[name] == value


# --- 6. DKIM over-signing (RFC 6376 5.4.2, 8.15) -----------------------------------------------


@pytest.fixture(scope="module")
def dkim_key() -> tuple[bytes, bytes]:
    """A 2048-bit key: the private PEM and the DNS TXT record of its public half."""
    pem = generate_key(2048)
    record = DkimSigner(pem, domain="acme.example", selector="s1", where="test").public_key_record
    return pem, record.encode()


def signed_campaign_message(tmp_path: Path, pem: bytes) -> bytes:
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "dkim.pem").write_bytes(pem)
    return first_message(
        folder,
        "dkim: {domain: example.com, selector: s1, key: dkim.pem}\n"
        'unsubscribe: "https://example.com/u/{{ email }}"\n'
        'list_id: "Test News <news.example.com>"\n',
    )


def verifies(message: bytes, record: bytes) -> bool:
    return bool(dkim.verify(message, dnsfunc=lambda name, timeout=5: record))


def signed_headers(message: bytes) -> list[str]:
    unfolded = re.sub(rb"\r\n[ \t]+", b" ", message.split(b"\r\n\r\n", 1)[0]).decode()
    found = re.search(r"\bh=([^;]+);", unfolded)
    assert found
    return [h.strip() for h in found.group(1).split(":")]


def test_dkim_over_signs_so_a_second_from_or_subject_breaks_the_signature(
    tmp_path: Path, dkim_key: tuple[bytes, bytes]
) -> None:
    """h= lists From, To, Subject, Date, Message-ID and the list headers once more than they
    occur; adding another From or Subject on top then fails verification."""
    pem, record = dkim_key
    message = signed_campaign_message(tmp_path, pem)
    assert verifies(message, record)
    h = signed_headers(message)
    for name in (
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "list-unsubscribe",
        "list-unsubscribe-post",
        "list-id",
    ):
        assert h.count(name) == 2, (name, h)
    # Absent from this message, signed as absent: none can be added either.
    assert h.count("reply-to") == 1 and h.count("cc") == 1
    assert h.count("mime-version") == 1 and h.count("content-type") == 1

    assert not verifies(b"From: Acme Security <security@example.com>\r\n" + message, record)
    assert not verifies(b"Subject: Your account is locked\r\n" + message, record)
    assert not verifies(b"Reply-To: attacker@evil.example\r\n" + message, record)
    # What the signature does not cover may still be added (as relays add Received).
    assert verifies(b"Received: from relay.example by mx.example\r\n" + message, record)


def test_the_signer_lists_each_instance_and_one_more(dkim_key: tuple[bytes, bytes]) -> None:
    """Two To fields are both signed, plus one entry for "no third"; without `oversign` the
    list is as before, and a second Subject then goes unnoticed (the defect this fixes; a
    second From dkimpy's verifier catches by itself, other verifiers do not)."""
    pem, record = dkim_key
    signer = DkimSigner(pem, domain="acme.example", selector="s1", where="test")
    message = (
        b"From: news@acme.example\r\nTo: a@example.org\r\nTo: b@example.org\r\n"
        b"Subject: Hi\r\n\r\nBody\r\n"
    )
    signed = signer.sign(message, [b"From", b"To", b"Subject"], oversign=[b"To", b"Subject"])
    assert signed_headers(signed) == ["from", "to", "to", "to", "subject", "subject"]
    assert verifies(signed, record)
    assert not verifies(b"To: c@example.org\r\n" + signed, record)
    plain = signer.sign(message, [b"From", b"To", b"Subject"])
    assert signed_headers(plain) == ["from", "to", "to", "subject"]
    assert verifies(b"Subject: Urgent\r\n" + plain, record)
    assert not verifies(b"Subject: Urgent\r\n" + signed, record)


# --- 7. Deliverability warnings ---------------------------------------------------------------


def campaign(tmp_path: Path, extra: str) -> Campaign:
    folder = tmp_path / "c"
    folder.mkdir(parents=True)
    (folder / "dkim.pem").write_bytes(b"not read by the checks")
    return load_campaign(make_campaign(folder, extra=extra).yaml)


DKIM = "dkim: {{domain: {}, selector: s1, key: dkim.pem}}\n"
HTTPS = 'unsubscribe: "https://example.com/u/{{ email }}"\n'


@pytest.mark.parametrize(
    ("domain", "sender"),
    [
        ("example.com", None),  # the From domain itself (sender@example.com)
        ("EXAMPLE.com.", None),  # DNS names compare without case or the final dot
        ("example.com", "News <news@news.example.com>"),  # a subdomain of the signing domain
        ("mail.example.com", None),  # signing in a subdomain: same organizational domain
    ],
)
def test_no_warning_when_dkim_aligns_and_unsubscribe_has_https(
    tmp_path: Path, domain: str, sender: str | None
) -> None:
    """An aligned signing domain and an https unsubscribe URL: nothing to say."""
    assert campaign_warnings(campaign(tmp_path, DKIM.format(domain) + HTTPS), sender) == []


def test_warning_when_the_dkim_domain_does_not_align_with_from(tmp_path: Path) -> None:
    """A signature for the ESP's domain, not the sender's: DMARC fails. `sender` (a profile's
    From) is the one checked when given."""
    c = campaign(tmp_path, DKIM.format("esp-mail.example") + HTTPS)
    [warning] = campaign_warnings(c)
    assert "dkim.domain esp-mail.example" in warning and "example.com" in warning
    assert "DMARC" in warning and "\n" not in warning
    assert campaign_warnings(c, "News <news@esp-mail.example>") == []
    # A look-alike suffix is not a subdomain.
    [lookalike] = campaign_warnings(c, "news@notesp-mail.example")
    assert "notesp-mail.example" in lookalike


def test_warning_when_unsubscribe_has_only_a_mailto(tmp_path: Path) -> None:
    """Gmail's and Yahoo's one-click rule (RFC 8058) needs an https URL; with it, no warning."""
    only_mailto = campaign(tmp_path / "a", 'unsubscribe: "mailto:leave@example.com"\n')
    [warning] = campaign_warnings(only_mailto)
    assert "mailto" in warning and "https" in warning and "\n" not in warning
    both = campaign(
        tmp_path / "b",
        'unsubscribe: {url: "https://example.com/u/{{ email }}", mailto: "mailto:l@example.com"}\n',
    )
    assert campaign_warnings(both) == []
    assert campaign_warnings(campaign(tmp_path / "c", HTTPS)) == []
    assert campaign_warnings(campaign(tmp_path / "d", "")) == []


def test_both_warnings_at_once(tmp_path: Path) -> None:
    """Each problem is its own line."""
    c = campaign(tmp_path, DKIM.format("other.example") + 'unsubscribe: "mailto:l@example.com"\n')
    warnings = campaign_warnings(c)
    assert len(warnings) == 2 and all("\n" not in w for w in warnings)


# -- the same, end to end: what a real server receives --------------------------------------


def test_what_the_server_receives_is_standards_exact_and_dry_run_agrees_with_send(
    tmp_path: Path,
) -> None:
    """One campaign with every case above (a 1,000-character word in the subject and in a
    custom header, a non-ASCII List-Id, an inline image, base64 text, DKIM) goes through
    `batch --dry-run` (no problem reported) and then a real `batch` into aiosmtpd, which refuses
    lines over its limit with `500 Line too long`. Every received message is read back."""
    from conftest import Recorder, server_args
    from test_deliverability import PNG, make_key
    from typer.testing import CliRunner

    from mailcli.cli import app
    from mailcli.sandbox import SmtpServer

    word = "w" * 1000
    files = make_campaign(
        tmp_path,
        subject=f"{word} {{{{ first_name }}}}",
        text="こんにちは {{ first_name }} さん\n二行目です\n",
        html='<p>Hi {{ first_name }} <img src="cid:logo"></p>\n',
        extra=f"headers: {{X-Token: '{'t' * 1000}'}}\n"
        "list_id: 'Actualités Acmé <news.acme.example>'\n"
        "inline_images: {logo: logo.png}\n"
        "dkim: {domain: example.com, selector: s1, key: dkim.pem}\n",
    )
    (files.folder / "logo.png").write_bytes(PNG)
    _, record = make_key(files.folder)
    dry = CliRunner().invoke(app, ["batch", str(files.yaml), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    recorder = Recorder()
    with SmtpServer(recorder) as server:
        sent = CliRunner().invoke(app, ["batch", str(files.yaml), *server_args(server)])
    assert sent.exit_code == 0, sent.output
    assert len(recorder.messages) == 3
    for received in recorder.messages:
        data = received.data
        assert max(len(line) for line in data.split(b"\r\n")) <= 998
        head = data.split(b"\r\n\r\n", 1)[0]
        assert max(len(line) for line in head.split(b"\r\n")) <= 78
        parsed = received.message
        assert str(parsed["Subject"]).startswith(word + " ")
        assert str(parsed["X-Token"]) == "t" * 1000
        assert head.count(b"<news.acme.example>") == 1
        assert str(parsed["List-Id"]) == "Actualités Acmé <news.acme.example>"
        related = next(p for p in parsed.walk() if p.get_content_type() == "multipart/related")
        assert related.get_param("type") == "text/html"
        text = parsed.get_body(("plain",))
        assert text is not None and text["Content-Transfer-Encoding"] == "base64"
        decoded = base64.b64decode(text.get_payload())
        assert b"\n" in decoded and decoded.count(b"\n") == decoded.count(b"\r\n")
        assert dkim.verify(data, dnsfunc=lambda name, timeout=5: record)
        assert not dkim.verify(
            b"From: evil@attacker.example\r\n" + data, dnsfunc=lambda n, timeout=5: record
        )
