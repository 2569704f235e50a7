"""DKIM keys and signatures: keygen, the keyring, bad keys, and the body hash computed once.

Every signature is checked with dkimpy's own verifier, against the public key the test holds.
"""

from __future__ import annotations

import base64
import re
import stat
from pathlib import Path

import dkim
import pytest
from conftest import Recorder, make_campaign, many_rows, server_args
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from test_deliverability import PNG, make_key, rich_campaign
from typer.testing import CliRunner

from mailcli.addresses import parse_mailbox
from mailcli.campaign import DkimConfig
from mailcli.cli import app
from mailcli.dkimsign import DkimSigner, generate_key, load_signer
from mailcli.errors import ConfigError
from mailcli.message import MessageBuilder
from mailcli.render import Rendered
from mailcli.sandbox import SmtpServer

runner = CliRunner()
SENDER = parse_mailbox("Acme News <news@acme.example>")
KEYRING_LINE = "dkim: {domain: acme.example, selector: s1, key_keyring: true}\n"
FILE_LINE = "dkim: {domain: acme.example, selector: s1, key: "
GARBAGE = b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"


def dns_answer(record: bytes):  # type: ignore[no-untyped-def]
    return lambda name, timeout=5: record


def record_of(output: str) -> bytes:
    found = re.search(r"^(v=DKIM1; k=rsa; p=[A-Za-z0-9+/=]+)$", output, re.M)
    assert found, output
    return found.group(1).encode()


def bh_of(message: bytes) -> bytes:
    found = re.search(rb"bh=([A-Za-z0-9+/=]+)", message)
    assert found
    return found.group(1)


def test_keygen_writes_a_private_key_only_its_owner_reads_and_prints_its_record(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    key = tmp_path / "c" / "dkim.pem"
    (tmp_path / "c").mkdir()
    made = runner.invoke(app, ["dkim", "keygen", "acme.example", "s1", "--out", str(key)])
    assert made.exit_code == 0, made.output
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert "s1._domainkey.acme.example" in made.stdout
    assert f"dkim: {{domain: acme.example, selector: s1, key: {key}}}" in made.stdout
    record = record_of(made.stdout)
    # The zone-file form splits the record into strings of at most 255 characters.
    zone = re.search(r"IN TXT \( (.*) \)", made.stdout)
    assert zone is not None
    strings = re.findall(r'"([^"]*)"', zone.group(1))
    assert all(len(s) <= 255 for s in strings) and "".join(strings).encode() == record

    campaign = rich_campaign(tmp_path / "c", f"{FILE_LINE}{key}}}\n")
    sent = runner.invoke(app, ["batch", str(campaign), *server_args(smtp_server)])
    assert sent.exit_code == 0, sent.output
    assert len(recorder.messages) == 3
    assert all(dkim.verify(m.data, dnsfunc=dns_answer(record)) for m in recorder.messages)

    again = runner.invoke(app, ["dkim", "keygen", "acme.example", "s1", "--out", str(key)])
    assert again.exit_code == 2 and "not overwriting" in again.stderr


def test_a_key_kept_in_the_keyring_signs(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder, test_keyring: Path
) -> None:
    key_path, record = make_key(tmp_path)
    stored = runner.invoke(app, ["dkim", "store", "acme.example", "s1"], input=key_path.read_text())
    assert stored.exit_code == 0, stored.output
    assert record_of(stored.stdout) == record
    assert "key_keyring: true" in stored.stdout
    campaign = rich_campaign(tmp_path / "c", KEYRING_LINE)
    sent = runner.invoke(app, ["batch", str(campaign), *server_args(smtp_server)])
    assert sent.exit_code == 0, sent.output
    assert all(dkim.verify(m.data, dnsfunc=dns_answer(record)) for m in recorder.messages)
    # The key never shows in the campaign file or in any output.
    assert "PRIVATE KEY" not in sent.output + stored.output + campaign.read_text()

    deleted = runner.invoke(app, ["dkim", "delete", "acme.example", "s1"])
    assert deleted.exit_code == 0
    gone = runner.invoke(app, ["batch", str(campaign), "--dry-run"])
    assert gone.exit_code == 78
    assert "nothing is stored under 'dkim:s1._domainkey.acme.example'" in gone.stderr
    assert "mailcli dkim store acme.example s1" in gone.stderr
    twice = runner.invoke(app, ["dkim", "delete", "acme.example", "s1"])
    assert twice.exit_code == 2


def test_keygen_into_the_keyring(tmp_path: Path, test_keyring: Path) -> None:
    made = runner.invoke(app, ["dkim", "keygen", "acme.example", "s2", "--keyring"])
    assert made.exit_code == 0, made.output
    assert "key_keyring: true" in made.stdout
    campaign = rich_campaign(tmp_path / "c", KEYRING_LINE.replace("s1", "s2"))
    preview = runner.invoke(app, ["preview", str(campaign), "--format", "raw"])
    assert preview.exit_code == 0, preview.output
    assert dkim.verify(preview.stdout.encode(), dnsfunc=dns_answer(record_of(made.stdout)))


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (
            b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
            "cannot be read",
        ),
        ("ec", "is not an RSA key"),
        ("encrypted", "is encrypted"),
        (b"just text\n", "is not a PEM private key"),
    ],
)
def test_a_bad_key_stops_the_run_before_any_row(
    tmp_path: Path, content: object, problem: str
) -> None:
    key = tmp_path / "c" / "dkim.pem"
    files = make_campaign(
        tmp_path / "c",
        many_rows(3),
        extra=f"{FILE_LINE}dkim.pem}}\n",
    )
    if content == "ec":
        pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    elif content == "encrypted":
        pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    else:
        assert isinstance(content, bytes)
        pem = content
    key.write_bytes(pem)
    result = runner.invoke(app, ["batch", str(files.yaml), "--dry-run"])
    assert result.exit_code == 78, result.output
    assert problem in result.stderr and str(key) in result.stderr
    assert "Traceback" not in result.output


def test_a_body_that_is_the_same_for_everyone_is_hashed_once_and_still_verifies(
    tmp_path: Path,
) -> None:
    key_path, record = make_key(tmp_path)
    config = DkimConfig(domain="acme.example", selector="s1", key=key_path)
    builder = MessageBuilder(SENDER, signer=load_signer(config))
    same = Rendered(subject="News", text="The same for all\n", html="<p>The same for all</p>\n")
    messages = [
        builder.build(same, [parse_mailbox(f"User {i} <u{i}@example.org>")]).data for i in range(5)
    ]
    assert len({bh_of(m) for m in messages}) == 1  # one body, one body hash
    assert all(dkim.verify(m, dnsfunc=dns_answer(record)) for m in messages)

    personal = [
        builder.build(
            Rendered(subject="News", text=f"Hi {i}\n", html=f"<p>Hi {i}</p>\n"),
            [parse_mailbox(f"u{i}@example.org")],
        ).data
        for i in range(5)
    ]
    assert len({bh_of(m) for m in personal}) == 5
    assert all(dkim.verify(m, dnsfunc=dns_answer(record)) for m in personal)


def test_signature_tags_and_the_headers_it_covers(tmp_path: Path) -> None:
    key_path, record = make_key(tmp_path)
    signer = DkimSigner(key_path.read_bytes(), domain="acme.example", selector="s1", where="t")
    assert signer.public_key_record.encode() == record
    message = (
        b"From: news@acme.example\r\nTo: ann@example.org\r\nSubject: Hi\r\n"
        b"X-Other: not signed\r\n\r\nBody\r\n"
    )
    signed = signer.sign(message, [b"From", b"To", b"Subject", b"Date"], now=1_700_000_000)
    assert signed.endswith(message)
    header = signed[: len(signed) - len(message)].decode()
    tags = dict(
        part.strip().split("=", 1)
        for part in re.sub(r"\r\n[ \t]+", " ", header.split(":", 1)[1]).split(";")
    )
    assert tags["a"] == "rsa-sha256" and tags["c"] == "relaxed/relaxed"
    assert (tags["d"], tags["s"], tags["t"]) == ("acme.example", "s1", "1700000000")
    # Only the headers present are listed (Date is not in this message).
    assert [h.strip() for h in tags["h"].split(":")] == ["from", "to", "subject"]
    assert all(len(line) <= 78 for line in header.split("\r\n"))
    assert dkim.verify(signed, dnsfunc=dns_answer(record))
    assert not dkim.verify(signed.replace(b"Body", b"Bodx"), dnsfunc=dns_answer(record))


# A 512-bit key (made with `openssl genrsa 512`): too short for any receiver.
SHORT_KEY = """\
-----BEGIN PRIVATE KEY-----
MIIBUgIBADANBgkqhkiG9w0BAQEFAASCATwwggE4AgEAAkEAvOzzKGxtkU5czYPY
aBZqGi17foOZluExKyE4vhfYPDsMrMYGHMg+Mv/zePymj4pA9dF0VJJMP/i96aoB
umkZbwIDAQABAj8e/sDl4OQY8sJG9VqLuSGvKccY+n44QrnOWaT1ivPu7XhtF2WZ
o4kH9GfH6QRCCpgYUgIheInbZ4VQ0/JNO2ECIQD5Mt0yAAdfbJ8ldi1ggiXHY9U6
TiCosHTeSIYjinrjFwIhAMIU9hkKQAt0J0mG+yyla3i9LFvY20YiJiRiD/vfmtNp
AiAMwdDXDW9TMEFZbppWFXOPqImy6Wr8l8Pz2SycxysRUwIga6f27uLZrcDLfiSq
tRQ5Lis5LOV4lEmjALGIjj11g2kCIApYe8xJJHqj+HOreEF2IQabpz1epvdTtdd2
4CmSJVNn
-----END PRIVATE KEY-----
"""


def test_generated_keys_are_pkcs8_pem_and_short_keys_are_refused() -> None:
    pem = generate_key(1024)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert DkimSigner(pem, domain="a.example", selector="s", where="x").public_key_record
    with pytest.raises(ConfigError, match="has 512 bits; receivers reject keys under 1024"):
        DkimSigner(SHORT_KEY.encode(), domain="a.example", selector="s", where="x")


def test_a_campaign_with_a_bad_dkim_domain_is_a_config_error(tmp_path: Path) -> None:
    files = make_campaign(
        tmp_path / "c",
        many_rows(1),
        extra=KEYRING_LINE.replace("acme.example", "'acme example'"),
    )
    result = runner.invoke(app, ["batch", str(files.yaml), "--dry-run"])
    assert result.exit_code == 78
    assert "dkim.domain 'acme example' must be an ASCII DNS name" in result.stderr
    assert f"{files.yaml}:" in result.stderr


def test_the_record_is_base64_of_the_public_key(tmp_path: Path) -> None:
    key_path, _ = make_key(tmp_path)
    signer = DkimSigner(key_path.read_bytes(), domain="acme.example", selector="s1", where="t")
    der = base64.b64decode(signer.public_key_record.split("p=", 1)[1])
    loaded = serialization.load_der_public_key(der)
    assert isinstance(loaded, rsa.RSAPublicKey) and loaded.key_size == 2048


def test_send_signs_with_the_profiles_key_and_carries_list_headers(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mailcli send` through a profile with `dkim:`: signed, with one-click unsubscribe, List-Id,
    a custom header and an inline image in multipart/related, as a campaign would."""
    key_path, record = make_key(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(
        "profiles:\n  default:\n    from: news@acme.example\n"
        f"    dkim: {{domain: acme.example, selector: s1, key: {key_path.name}}}\n"
    )
    monkeypatch.setenv("MAILCLI_CONFIG", str(config))
    html = tmp_path / "body.html"
    html.write_text('<p>Hi</p><img src="cid:logo">\n')
    logo = tmp_path / "logo.png"
    logo.write_bytes(PNG)
    result = runner.invoke(
        app,
        [
            "send", "--to", "ann@example.org", "--subject", "News", "--text", "Hi\n",
            "--html-file", str(html), "--inline-image", f"logo={logo}",
            "--unsubscribe", "https://acme.example/u/ann", "--list-id", "News <news.acme.example>",
            "--header", "Feedback-ID: spring:news:acme", *server_args(smtp_server),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (received,) = recorder.messages
    assert dkim.verify(received.data, dnsfunc=dns_answer(record))
    message = received.message
    assert message["List-Unsubscribe"] == "<https://acme.example/u/ann>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["List-Id"] == "News <news.acme.example>"
    assert message["Feedback-ID"] == "spring:news:acme"
    signed = re.sub(rb"\r\n[ \t]+", b" ", received.data.split(b"\r\n\r\n")[0])
    covered = re.search(rb"h=([^;]+)", signed)
    assert covered is not None
    for name in (b"list-unsubscribe", b"list-unsubscribe-post", b"list-id", b"feedback-id"):
        assert name in covered.group(1)
    related = next(p for p in message.walk() if p.get_content_type() == "multipart/related")
    image = next(p for p in related.walk() if p.get_content_type() == "image/png")
    assert image["Content-ID"] == "<logo>" and image.get_payload(decode=True) == PNG


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--header", "From: x@y.example"], "mailcli sets this header itself"),
        (["--header", "no colon"], "--header takes 'Name: value'"),
        (["--unsubscribe", "http://plain.example/u"], "https:// URL or a mailto:"),
        (["--inline-image", "logo"], "--inline-image takes CID=FILE"),
        (["--inline-image", "logo=missing.png"], "inline image not found"),
    ],
)
def test_send_refuses_bad_deliverability_options(args: list[str], problem: str) -> None:
    base = ["send", "--to", "a@example.org", "--from", "b@example.org", "--subject", "S"]
    result = runner.invoke(app, [*base, "--text", "x", *args, "--dry-run"])
    assert result.exit_code in (2, 66), result.output
    assert problem in result.stderr
    assert "Traceback" not in result.output
