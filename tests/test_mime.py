"""The fast MIME writer read back by the standard library: attachments, folding, boundaries."""

from __future__ import annotations

import email.policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailcli import mime
from mailcli.addresses import Mailbox
from mailcli.message import MessageBuilder
from mailcli.render import Rendered

SENDER = Mailbox("Sender", "sender@example.com")
filenames = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\\0"),
    min_size=1,
    max_size=40,
).filter(lambda n: n.strip() not in ("", ".", ".."))


def parse(data: bytes) -> EmailMessage:
    message = BytesParser(policy=email.policy.default).parsebytes(data)
    assert isinstance(message, EmailMessage)
    return message


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(name=filenames, payload=st.binary(max_size=3000))
def test_any_attachment_name_and_bytes_round_trip(
    tmp_path: Path, name: str, payload: bytes
) -> None:
    """Any file name (RFC 2231 when not plain ASCII; edge spaces trimmed, as readers do) and
    any bytes come back exactly."""
    path = tmp_path / "a.bin"
    path.write_bytes(payload)
    part = mime.file_part(payload, "application/octet-stream", name)
    message = parse(
        b"MIME-Version: 1.0\r\n"
        + mime.multipart(
            "mixed", [mime.text_part("hi\n", "plain"), part], mime.Boundaries().next()
        ).to_bytes()
    )
    [attachment] = message.iter_attachments()
    assert attachment.get_filename() == name.strip()
    assert attachment.get_payload(decode=True) == payload


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300))
def test_long_unstructured_headers_fold_and_decode(value: str) -> None:
    """Any subject folds into lines of at most 998 octets and decodes back to the same text."""
    value = " ".join(value.replace("\r", " ").replace("\n", " ").split())
    builder = MessageBuilder(SENDER)
    data = builder.build(
        Rendered(subject=value, text="x\n", html=None), [Mailbox("", "to@example.com")]
    ).data
    head = data.split(b"\r\n\r\n", 1)[0]
    assert all(len(line) <= 998 for line in head.split(b"\r\n"))
    assert parse(data)["Subject"] == value


def test_body_that_contains_the_boundary_prefix_is_re_encoded() -> None:
    """A 7-bit body holding the boundary prefix is sent quoted-printable, so parts stay intact."""
    builder = MessageBuilder(SENDER)
    trap = f"--{builder._boundaries.prefix}_1--\n"
    data = builder.build(
        Rendered(subject="s", text=trap, html=f"<p>{trap}</p>"), [Mailbox("", "to@example.com")]
    ).data
    message = parse(data)
    contents = [p.get_content().replace("\r\n", "\n") for p in message.iter_parts()]
    assert contents == [trap, f"<p>{trap}</p>\n"]  # a body ends with a line break, as in stdlib
    assert b"quoted-printable" in data


def test_lines_starting_with_a_dot_survive_the_transport_form() -> None:
    """A body line '.' (the SMTP end of data) is kept; dot-stuffing is the transport's job."""
    builder = MessageBuilder(SENDER)
    data = builder.build(
        Rendered(subject="s", text=".\n..\n.x\n", html=None), [Mailbox("", "to@example.com")]
    ).data
    assert parse(data).get_content().replace("\r\n", "\n") == ".\n..\n.x\n"
