"""DKIM keys and signatures: keygen, the keyring, bad keys, the body hash computed once, and
Ed25519 (RFC 8463) alone or beside RSA.

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
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519
from dkim import dknewkey
from test_deliverability import PNG, make_key, rich_campaign
from typer.testing import CliRunner

import mailcli
from mailcli.addresses import parse_mailbox
from mailcli.campaign import DkimConfig, load_campaign
from mailcli.cli import app
from mailcli.dkimsign import DkimSigner, generate_ed25519_key, generate_key, load_signer
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
    found = re.search(r"^(v=DKIM1; k=(?:rsa|ed25519); p=[A-Za-z0-9+/=]+)$", output, re.M)
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
        ("ec", "is neither an RSA nor an Ed25519 key"),
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


# --- Ed25519 (RFC 8463), alone and beside RSA -----------------------------------------------


def ed25519_key(path: Path) -> bytes:
    """A new Ed25519 key written to `path` as PKCS#8 PEM; the TXT record of its public half."""
    key = ed25519.Ed25519PrivateKey.generate()
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return b"v=DKIM1; k=ed25519; p=" + base64.b64encode(raw)


def dns_of(records: dict[str, bytes]):  # type: ignore[no-untyped-def]
    """A dkimpy `dnsfunc` answering SELECTOR._domainkey.DOMAIN from `records`."""
    return lambda name, timeout=5: records.get(name.decode().rstrip("."))


def signatures(message: bytes, records: dict[str, bytes]) -> list[tuple[str, str, bool]]:
    """(a=, s=, verified) of each DKIM-Signature from the top, by dkimpy's verifier (which
    `dkim.verify()` runs on the first one only)."""
    headers, _ = dkim.rfc822_parse(message)
    found = []
    values = [value for name, value in headers if name.lower() == b"dkim-signature"]
    for index, value in enumerate(values):
        tags = dkim.util.parse_tag_value(value)
        try:
            verified = bool(dkim.DKIM(message).verify(idx=index, dnsfunc=dns_of(records)))
        except dkim.DKIMException:
            verified = False
        found.append((tags[b"a"].decode(), tags[b"s"].decode(), verified))
    return found


def altered_body(message: bytes) -> bytes:
    head, body = message.split(b"\r\n\r\n", 1)
    assert b"Hi " in body
    return head + b"\r\n\r\n" + body.replace(b"Hi ", b"Hy ", 1)


def test_a_campaign_signed_with_rsa_and_ed25519_carries_both_signatures_and_both_verify(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """`dkim:` as a list of an Ed25519 and an RSA key: every message sent carries both
    signatures, the RSA one on top (whatever the order in the file) for verifiers that read
    only the first; dkimpy verifies both, and an altered body fails both."""
    rsa_path, rsa_record = make_key(tmp_path)
    ed_record = ed25519_key(tmp_path / "ed25519.pem")
    records = {"s1._domainkey.acme.example": rsa_record, "e1._domainkey.acme.example": ed_record}
    campaign = rich_campaign(
        tmp_path / "c",
        "dkim:\n"
        f"  - {{domain: acme.example, selector: e1, key: {tmp_path / 'ed25519.pem'}}}\n"
        f"  - {{domain: acme.example, selector: s1, key: {rsa_path}}}\n",
    )
    loaded = load_campaign(campaign)
    assert [k.selector for k in loaded.dkim_keys] == ["e1", "s1"]
    sent = runner.invoke(app, ["batch", str(campaign), *server_args(smtp_server)])
    assert sent.exit_code == 0, sent.output
    assert len(recorder.messages) == 3
    for received in recorder.messages:
        assert signatures(received.data, records) == [
            ("rsa-sha256", "s1", True),
            ("ed25519-sha256", "e1", True),
        ]
        assert dkim.verify(received.data, dnsfunc=dns_of(records))  # the first: RSA
        # One body hash serves both (both are relaxed and SHA-256).
        assert len(set(re.findall(rb"bh=([A-Za-z0-9+/=]+)", received.data))) == 1
        assert signatures(altered_body(received.data), records) == [
            ("rsa-sha256", "s1", False),
            ("ed25519-sha256", "e1", False),
        ]


def test_ed25519_alone_in_dknewkeys_format_signs_what_a_library_mailer_sends(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """A key made by dkimpy's own `dknewkey --ktype ed25519` (the base64 of the 32-byte seed on
    one line) signs a library Mailer's message with ed25519-sha256 alone; dkimpy verifies it
    against the record dknewkey wrote."""
    key_file, dns_file = tmp_path / "e1.key", tmp_path / "e1.dns"
    private = dknewkey.GenEd25519Keys(str(key_file), verbose=False)
    dknewkey.ExtractEd25519PublicKey(str(dns_file), private, verbose=False)
    assert b"PRIVATE KEY" not in key_file.read_bytes()
    records = {"e1._domainkey.acme.example": dns_file.read_bytes()}
    mailer = mailcli.Mailer(
        "127.0.0.1",
        smtp_server.port,
        "none",
        timeout=10,
        default_sender="Acme <news@acme.example>",
        dkim=DkimConfig("acme.example", "e1", key=key_file),
    )
    delivery = mailer.send(mailcli.Message("Hi", ["ann@example.org"], body="Hi Ann\n"))
    assert delivery.status is mailcli.DeliveryStatus.SENT
    (received,) = recorder.messages
    assert signatures(received.data, records) == [("ed25519-sha256", "e1", True)]
    assert signatures(altered_body(received.data), records) == [("ed25519-sha256", "e1", False)]


def test_send_through_a_profile_with_two_keys_signs_twice(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A profile's `dkim:` list signs what `mailcli send` sends: RSA and Ed25519, both verified."""
    rsa_path, rsa_record = make_key(tmp_path)
    ed_record = ed25519_key(tmp_path / "ed25519.pem")
    config = tmp_path / "config.yaml"
    config.write_text(
        "profiles:\n  default:\n    from: news@acme.example\n    dkim:\n"
        f"      - {{domain: acme.example, selector: s1, key: {rsa_path.name}}}\n"
        "      - {domain: acme.example, selector: e1, key: ed25519.pem}\n"
    )
    monkeypatch.setenv("MAILCLI_CONFIG", str(config))
    args = ["send", "--to", "ann@example.org", "--subject", "News", "--text", "Hi Ann\n"]
    result = runner.invoke(app, [*args, *server_args(smtp_server)])
    assert result.exit_code == 0, result.output
    (received,) = recorder.messages
    records = {"s1._domainkey.acme.example": rsa_record, "e1._domainkey.acme.example": ed_record}
    assert signatures(received.data, records) == [
        ("rsa-sha256", "s1", True),
        ("ed25519-sha256", "e1", True),
    ]


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_each_signature_is_byte_for_byte_the_one_dkimpy_makes(kind: str) -> None:
    """RSA (PKCS#1 v1.5) and Ed25519 signatures are deterministic: for the same message, time
    and headers, mailcli's DKIM-Signature field is exactly dkimpy's `dkim.sign()` output, tag
    list, folding and b= included."""
    message = b"From: news@acme.example\r\nTo: ann@example.org\r\nSubject: Hi\r\n\r\nBody\r\n"
    if kind == "rsa":
        pem = theirs_key = generate_key(1024)
    else:
        pem = generate_ed25519_key()
        loaded = serialization.load_pem_private_key(pem, password=None)
        assert isinstance(loaded, ed25519.Ed25519PrivateKey)
        raw = loaded.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        theirs_key = base64.b64encode(raw)  # dkimpy takes the seed, as dknewkey writes it
    theirs = dkim.sign(
        message,
        b"s1",
        b"acme.example",
        theirs_key,
        canonicalize=(b"relaxed", b"relaxed"),
        signature_algorithm=f"{kind}-sha256".encode(),
        include_headers=[b"From", b"To", b"Subject"],
    )
    when = re.search(rb"t=(\d+);", theirs)
    assert when is not None
    signer = DkimSigner(pem, domain="acme.example", selector="s1", where="test")
    ours = signer.sign(message, [b"From", b"To", b"Subject"], now=int(when.group(1)))
    assert ours == theirs + message


def test_keygen_ed25519_makes_a_key_that_signs_and_a_record_that_verifies(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """`dkim keygen --type ed25519`: a PKCS#8 PEM key (mode 0600), the record with the raw
    32-byte public key (RFC 8463 4.2), a hint to keep an RSA key beside it; a campaign signed
    with the key verifies against the record printed."""
    (tmp_path / "c").mkdir()
    key = tmp_path / "c" / "ed25519.pem"
    args = ["dkim", "keygen", "acme.example", "e1", "--type", "ed25519", "--out", str(key)]
    made = runner.invoke(app, args)
    assert made.exit_code == 0, made.output
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    loaded = serialization.load_pem_private_key(key.read_bytes(), password=None)
    assert isinstance(loaded, ed25519.Ed25519PrivateKey)
    assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    record = record_of(made.stdout)
    public = loaded.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert record == b"v=DKIM1; k=ed25519; p=" + base64.b64encode(public)
    assert "sign with an RSA key too" in made.stdout
    assert f"  - {{domain: acme.example, selector: e1, key: {key}}}" in made.stdout

    campaign = rich_campaign(
        tmp_path / "c", f"dkim: {{domain: acme.example, selector: e1, key: {key}}}\n"
    )
    sent = runner.invoke(app, ["batch", str(campaign), *server_args(smtp_server)])
    assert sent.exit_code == 0, sent.output
    records = {"e1._domainkey.acme.example": record}
    for received in recorder.messages:
        assert signatures(received.data, records) == [("ed25519-sha256", "e1", True)]

    bits = runner.invoke(app, [*args[:-2], "--bits", "2048", "--keyring"])
    assert bits.exit_code == 2 and "--bits is for RSA keys" in bits.stderr
    unknown = runner.invoke(app, [*args[:-3], "dsa", "--keyring"])
    assert unknown.exit_code == 2 and "--type must be rsa or ed25519" in unknown.stderr


def test_ed25519_keys_in_the_keyring_from_keygen_and_from_store(
    tmp_path: Path, test_keyring: Path
) -> None:
    """`keygen --type ed25519 --keyring` and `store` (of a PEM key, and of the line dknewkey
    writes) keep an Ed25519 key in the keyring; `store` prints the same record dknewkey made,
    and a preview signed from the keyring verifies."""
    made = runner.invoke(
        app, ["dkim", "keygen", "acme.example", "e2", "--type", "ed25519", "--keyring"]
    )
    assert made.exit_code == 0, made.output
    campaign = rich_campaign(tmp_path / "c", KEYRING_LINE.replace("s1", "e2"))
    preview = runner.invoke(app, ["preview", str(campaign), "--format", "raw"])
    assert preview.exit_code == 0, preview.output
    records = {"e2._domainkey.acme.example": record_of(made.stdout)}
    assert signatures(preview.stdout.encode(), records) == [("ed25519-sha256", "e2", True)]

    private = dknewkey.GenEd25519Keys(str(tmp_path / "e3.key"), verbose=False)
    dknewkey.ExtractEd25519PublicKey(str(tmp_path / "e3.dns"), private, verbose=False)
    stored = runner.invoke(
        app, ["dkim", "store", "acme.example", "e3"], input=(tmp_path / "e3.key").read_text()
    )
    assert stored.exit_code == 0, stored.output
    assert record_of(stored.stdout) == (tmp_path / "e3.dns").read_bytes()

    record = ed25519_key(tmp_path / "e4.pem")
    stored = runner.invoke(
        app, ["dkim", "store", "acme.example", "e4"], input=(tmp_path / "e4.pem").read_text()
    )
    assert stored.exit_code == 0, stored.output
    assert record_of(stored.stdout) == record
    assert "PRIVATE KEY" not in stored.output


def _truncated_ed25519_pem() -> bytes:
    der = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    body = base64.encodebytes(der[:-5])
    return b"-----BEGIN PRIVATE KEY-----\n" + body + b"-----END PRIVATE KEY-----\n"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        # dknewkey's format, one byte short of a seed
        (base64.b64encode(bytes(31)), "is not a PEM private key (nor the base64 Ed25519 key"),
        ("truncated", "cannot be read"),
        ("x25519", "is neither an RSA nor an Ed25519 key"),
    ],
)
def test_a_bad_ed25519_key_file_is_one_line_exit_78_naming_the_file(
    tmp_path: Path, content: object, problem: str
) -> None:
    key = tmp_path / "c" / "ed25519.key"
    files = make_campaign(
        tmp_path / "c",
        many_rows(3),
        extra="dkim:\n  - {domain: example.com, selector: e1, key: ed25519.key}\n",  # aligned
    )
    if content == "truncated":
        data = _truncated_ed25519_pem()
    elif content == "x25519":
        data = x25519.X25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    else:
        assert isinstance(content, bytes)
        data = content
    key.write_bytes(data)
    result = runner.invoke(app, ["batch", str(files.yaml), "--dry-run"])
    assert result.exit_code == 78, result.output
    assert problem in result.stderr and str(key) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize(
    ("dkim_yaml", "line", "problem"),
    [
        ("dkim: []\n", 1, "'dkim': must be a mapping (domain, selector and a key) or a list"),
        ("dkim:\n  - acme.example\n", 2, "'dkim': every entry must be a mapping"),
        (
            "dkim:\n  - {domain: acme.example, selector: s1, key_env: A}\n"
            "  - {domain: ACME.example, selector: s1, key_env: B}\n",
            3,
            "'dkim': selector 's1' of ACME.example is given twice",
        ),
        (
            "dkim:\n  - {domain: acme.example, selector: s1, key_env: A}\n"
            "  - {domain: acme.example, selector: e1, key_env: B, algorithm: ed25519}\n",
            3,
            "unknown key 'dkim.algorithm'",
        ),
        (
            "dkim:\n  - {domain: acme.example, selector: s1, key_env: A}\n"
            "  - {domain: acme.example, selector: e1}\n",
            3,
            "'dkim' needs exactly one of 'key'",
        ),
    ],
)
def test_a_bad_dkim_list_names_the_file_and_the_line_of_the_entry(
    tmp_path: Path, dkim_yaml: str, line: int, problem: str
) -> None:
    files = make_campaign(tmp_path / "c", many_rows(1))
    text = files.yaml.read_text()
    files.yaml.write_text(dkim_yaml + text)  # on top, so the line numbers are the snippet's
    result = runner.invoke(app, ["batch", str(files.yaml), "--dry-run"])
    assert result.exit_code == 78, result.output
    assert f"{files.yaml}:{line}:" in result.stderr and problem in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2  # the error, and maybe a hint


def test_one_dkim_mapping_is_one_key_as_before(tmp_path: Path) -> None:
    """A single mapping loads as one key, which `Campaign.dkim` gives too; no `dkim:` is none."""
    files = make_campaign(
        tmp_path / "c",
        many_rows(1),
        extra="dkim: {domain: acme.example, selector: s1, key_env: A}\n",
    )
    one = load_campaign(files.yaml)
    assert one.dkim_keys == (DkimConfig("acme.example", "s1", key_env="A"),)
    assert one.dkim == one.dkim_keys[0]
    none = load_campaign(make_campaign(tmp_path / "d", many_rows(1)).yaml)
    assert (none.dkim_keys, none.dkim) == ((), None)
