"""Deliverability end to end: DKIM, one-click unsubscribe, List-Id, attachments, inline images
and inlined CSS, read back from what a real aiosmtpd server received."""

from __future__ import annotations

import base64
import json
import textwrap
from pathlib import Path

import dkim
import pytest
from conftest import Recorder, server_args, write_csv
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from typer.testing import CliRunner

from mailcli.cli import app
from mailcli.sandbox import SmtpServer

runner = CliRunner()
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
ROWS = [
    {"email": "ann@example.org", "name": "Ann Lee", "first_name": "Ann", "token": "t-ann"},
    {"email": "bob@example.org", "name": "Bob Martin", "first_name": "Bob", "token": "t-bob"},
    {"email": "zoe@example.org", "name": "Zoë Ñúñez", "first_name": "Zoë", "token": "t-zoe"},
]


def make_key(tmp_path: Path) -> tuple[Path, bytes]:
    """An RSA key: the private PEM file, and the DNS TXT record of its public half."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path = tmp_path / "dkim.pem"
    path.write_bytes(pem)
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return path, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


def rich_campaign(folder: Path, dkim_line: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "invoices").mkdir()
    for row in ROWS:
        (folder / "invoices" / f"{row['token']}.txt").write_text(
            f"Invoice for {row['email']}\n", encoding="utf-8"
        )
    (folder / "terms.txt").write_text("Terms and conditions\n", encoding="utf-8")
    (folder / "logo.png").write_bytes(PNG)
    (folder / "body.txt.j2").write_text("Hi {{ first_name }}\n", encoding="utf-8")
    (folder / "body.html.j2").write_text(
        textwrap.dedent("""\
        <html><head><style>p { color: #c00; }</style></head>
        <body><img src="cid:logo" alt="Acme"><p>Hi {{ first_name }}</p></body></html>
        """),
        encoding="utf-8",
    )
    write_csv(folder / "list.csv", ROWS)
    campaign = folder / "campaign.yaml"
    campaign.write_text(
        textwrap.dedent("""\
        name: rich
        from: "Acme News <news@acme.example>"
        subject: "Hello {{ first_name }}"
        text: body.txt.j2
        html: body.html.j2
        recipients: list.csv
        attachments: [terms.txt, "invoices/{{ token }}.txt"]
        inline_images: {logo: logo.png}
        inline_css: true
        unsubscribe: "https://acme.example/u/{{ token }}"
        list_id: "Acme News <news.acme.example>"
        headers: {Feedback-ID: "spring:news:acme"}
        """)
        + dkim_line,
        encoding="utf-8",
    )
    return campaign


@pytest.fixture
def sent(tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder) -> tuple[Recorder, bytes]:
    key_path, record = make_key(tmp_path)
    campaign = rich_campaign(
        tmp_path / "c", f"dkim: {{domain: acme.example, selector: s1, key: {key_path}}}\n"
    )
    result = runner.invoke(app, ["batch", str(campaign), *server_args(smtp_server), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["sent"] == 3
    return recorder, record


def test_every_message_verifies_with_dkim_over_the_unsubscribe_headers(
    sent: tuple[Recorder, bytes],
) -> None:
    """Each received message verifies with dkimpy against the public key, and the signature
    covers From, Subject, List-Unsubscribe and List-Unsubscribe-Post."""
    recorder, record = sent

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"s1._domainkey.acme.example."
        return record

    assert len(recorder.messages) == 3
    for received in recorder.messages:
        assert dkim.verify(received.data, dnsfunc=dns)
        signed = received.message["DKIM-Signature"].replace(" ", "").replace("\n", "")
        tags = dict(t.split("=", 1) for t in signed.split(";") if "=" in t)
        covered = tags["h"].lower().split(":")
        assert {
            "from",
            "to",
            "subject",
            "date",
            "message-id",
            "list-unsubscribe",
            "list-unsubscribe-post",
            "list-id",
            "feedback-id",
        } <= set(covered)
        assert tags["c"] == "relaxed/relaxed" and tags["d"] == "acme.example"


def test_a_changed_message_fails_dkim(sent: tuple[Recorder, bytes]) -> None:
    """The check above can fail: one changed byte in the body breaks the signature."""
    recorder, record = sent
    tampered = recorder.messages[0].data.replace(b"Hi Ann", b"Hi Eve")
    assert not dkim.verify(tampered, dnsfunc=lambda name, timeout=5: record)


def test_each_message_has_its_own_unsubscribe_list_id_and_message_id(
    sent: tuple[Recorder, bytes],
) -> None:
    """Own one-click URL, the List-Id, Feedback-ID, a Message-ID on the sender's domain."""
    recorder, _ = sent
    by_rcpt = {m.rcpt_tos[0]: m.message for m in recorder.messages}
    for row in ROWS:
        message = by_rcpt[row["email"]]
        assert message["List-Unsubscribe"] == f"<https://acme.example/u/{row['token']}>"
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert message["List-Id"] == "Acme News <news.acme.example>"
        assert message["Feedback-ID"] == "spring:news:acme"
        assert message["Message-ID"].endswith("@acme.example>")
    assert len({m["Message-ID"] for m in by_rcpt.values()}) == 3


def test_static_and_per_recipient_attachments(sent: tuple[Recorder, bytes]) -> None:
    """Every message carries the static terms and its own invoice, with the right content."""
    recorder, _ = sent
    for received in recorder.messages:
        files = {p.get_filename(): p.get_content() for p in received.message.iter_attachments()}
        email = received.rcpt_tos[0]
        token = next(r["token"] for r in ROWS if r["email"] == email)
        assert files == {
            "terms.txt": "Terms and conditions\n",
            f"{token}.txt": f"Invoice for {email}\n",
        }


def test_inline_image_in_related_with_matching_content_id_and_inlined_css(
    sent: tuple[Recorder, bytes],
) -> None:
    """multipart/related inside multipart/alternative: the image's Content-ID is the cid the
    HTML uses, and the <style> rule is applied as a style attribute."""
    recorder, _ = sent
    message = recorder.messages[0].message
    assert message.get_content_type() == "multipart/mixed"
    alternative = next(message.iter_parts())
    assert alternative.get_content_type() == "multipart/alternative"
    text, related = alternative.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert related.get_content_type() == "multipart/related"
    html_part, image = related.iter_parts()
    html = html_part.get_content()
    assert 'src="cid:logo"' in html
    assert image["Content-ID"] == "<logo>" and image.get_content_type() == "image/png"
    assert image.get_payload(decode=True) == PNG
    assert 'style="color: #c00;"' in html and "<style>" not in html


def test_dkim_key_from_an_environment_variable(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dkim.key_env takes the PEM from a variable (as CI secrets come); messages verify."""
    key_path, record = make_key(tmp_path)
    monkeypatch.setenv("ACME_DKIM_KEY", key_path.read_text())
    campaign = rich_campaign(
        tmp_path / "c", "dkim: {domain: acme.example, selector: s1, key_env: ACME_DKIM_KEY}\n"
    )
    result = runner.invoke(app, ["batch", str(campaign), *server_args(smtp_server)])
    assert result.exit_code == 0, result.output
    assert all(
        dkim.verify(m.data, dnsfunc=lambda name, timeout=5: record) for m in recorder.messages
    )
    monkeypatch.delenv("ACME_DKIM_KEY")
    again = runner.invoke(app, ["batch", str(campaign), "--dry-run"])
    assert again.exit_code == 78
    assert "ACME_DKIM_KEY is not set" in again.stderr


def test_html_only_message_gets_a_generated_text_part(tmp_path: Path) -> None:
    """A campaign with only HTML sends multipart/alternative with a readable text part."""
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "b.html").write_text(
        '<h1>Hello {{ first_name }}</h1><p>See <a href="https://'
        'acme.example/x">the offer</a>.</p><ul><li>one</li></ul>',
        encoding="utf-8",
    )
    write_csv(folder / "list.csv", ROWS[:1])
    (folder / "c.yaml").write_text(
        "name: h\nfrom: a@acme.example\nsubject: S\nhtml: b.html\nrecipients: list.csv\n",
        encoding="utf-8",
    )
    result = runner.invoke(app, ["preview", str(folder / "c.yaml"), "--json"])
    assert result.exit_code == 0, result.output
    text = json.loads(result.stdout)["text"].replace("\r\n", "\n")
    assert "Hello Ann" in text and "the offer" in text and "https://acme.example/x" in text
    assert "<" not in text


def test_preview_html_out_shows_images_as_they_will_arrive(tmp_path: Path) -> None:
    """preview --out writes the inline image beside the page and the page points at it."""
    key_path, _ = make_key(tmp_path)
    campaign = rich_campaign(
        tmp_path / "c", f"dkim: {{domain: acme.example, selector: s1, key: {key_path}}}\n"
    )
    out = tmp_path / "preview"
    result = runner.invoke(app, ["preview", str(campaign), "--row", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = out / "000001-ann@example.org.html"
    image = out / "000001-ann@example.org-logo.png"
    assert image.read_bytes() == PNG
    html = page.read_text(encoding="utf-8")
    assert 'src="000001-ann@example.org-logo.png"' in html and "cid:" not in html
    assert 'style="color: #c00;"' in html


def test_unsubscribe_with_both_a_mailto_and_an_https_url(tmp_path: Path) -> None:
    """`unsubscribe: {url, mailto}` lists both (mailto first) and keeps one-click POST."""
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "b.txt").write_text("Hi\n", encoding="utf-8")
    write_csv(folder / "list.csv", ROWS[:1])
    (folder / "c.yaml").write_text(
        "name: u\nfrom: a@acme.example\nsubject: S\ntext: b.txt\nrecipients: list.csv\n"
        "unsubscribe: {url: 'https://acme.example/u/{{ token }}', "
        "mailto: 'mailto:unsub@acme.example?subject={{ token }}'}\n",
        encoding="utf-8",
    )
    result = runner.invoke(app, ["preview", str(folder / "c.yaml"), "--json"])
    assert result.exit_code == 0, result.output
    headers = json.loads(result.stdout)["headers"]
    assert headers["List-Unsubscribe"] == (
        "<mailto:unsub@acme.example?subject=t-ann>, <https://acme.example/u/t-ann>"
    )
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
