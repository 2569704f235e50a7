"""mailcli.django.EmailBackend with real Django against a real aiosmtpd server: send_mail,
send_mass_mail over one connection, EmailMultiAlternatives with attachments, cc, bcc, reply-to
and extra headers, fail_silently, BadHeaderError, STARTTLS with login, and locmem untouched."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import django
import pytest
from conftest import PASSWORD, USER, Recorder
from django.conf import settings

if not settings.configured:
    settings.configure(
        EMAIL_BACKEND="mailcli.django.EmailBackend",
        EMAIL_HOST="127.0.0.1",
        EMAIL_PORT=25,
        DEFAULT_FROM_EMAIL="Acme <webmaster@acme.example>",
    )
    django.setup()

from django.core import mail
from django.test import override_settings

import mailcli
from mailcli.django import EmailBackend
from mailcli.sandbox import SmtpServer


def at(server: SmtpServer, **more: Any) -> override_settings:
    return override_settings(EMAIL_HOST="127.0.0.1", EMAIL_PORT=server.port, **more)


def test_send_mail_goes_through_the_backend(smtp_server: SmtpServer, recorder: Recorder) -> None:
    with at(smtp_server):
        sent = mail.send_mail("Welcome", "Hello Ann", None, ["Ann <ann@example.com>"])
    assert sent == 1
    (received,) = recorder.messages
    message = received.message
    assert (message["Subject"], message["From"], message["To"]) == (
        "Welcome",
        "Acme <webmaster@acme.example>",
        "Ann <ann@example.com>",
    )
    assert message.get_content().replace("\r\n", "\n") == "Hello Ann\n"
    assert message["Message-ID"].endswith("@acme.example>")


def test_send_mass_mail_sends_50_over_one_pipelined_connection(
    smtp_server: SmtpServer, recorder: Recorder
) -> None:
    recorder.pipelining = True
    datatuple = [
        (f"Digest {i}", f"Body {i}", "news@acme.example", [f"reader{i}@example.com"])
        for i in range(50)
    ]
    with at(smtp_server):
        sent = mail.send_mass_mail(datatuple)
    assert sent == 50
    assert recorder.connections == 1
    got = recorder.recipients()
    assert len(got) == len(set(got)) == 50


def test_email_multi_alternatives_with_attachments_cc_bcc_reply_to_and_headers(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    report = tmp_path / "report.csv"
    report.write_text("a,b\n1,2\n", encoding="utf-8")
    message = mail.EmailMultiAlternatives(
        "Your report",
        "See the attachment.",
        "Reports <reports@acme.example>",
        ["ann@example.com"],
        bcc=["audit@acme.example"],
        cc=["bob@example.org"],
        reply_to=["Help <help@acme.example>"],
        headers={"X-Report": "weekly"},
    )
    message.attach_alternative("<p>See the <b>attachment</b>.</p>", "text/html")
    message.attach("raw.bin", b"\x00\x01\x02", "application/octet-stream")
    message.attach_file(str(report))
    with at(smtp_server):
        assert message.send() == 1
    (received,) = recorder.messages
    assert sorted(received.rcpt_tos) == ["ann@example.com", "audit@acme.example", "bob@example.org"]
    parsed = received.message
    assert (parsed["Cc"], parsed["Reply-To"], parsed["X-Report"]) == (
        "bob@example.org",
        "Help <help@acme.example>",
        "weekly",
    )
    assert "Bcc" not in parsed and b"audit@acme.example" not in received.data
    assert parsed.get_body(("html",)).get_content().strip() == "<p>See the <b>attachment</b>.</p>"
    assert parsed.get_body(("plain",)).get_content().strip() == "See the attachment."
    files = {a.get_filename(): a.get_content() for a in parsed.iter_attachments()}
    assert files["raw.bin"] == b"\x00\x01\x02"
    assert files["report.csv"].replace("\r\n", "\n") == "a,b\n1,2\n"


def test_an_html_only_email_message_gets_a_text_part(
    smtp_server: SmtpServer, recorder: Recorder
) -> None:
    message = mail.EmailMessage("Hi", "<p>Hello <b>there</b></p>", to=["ann@example.com"])
    message.content_subtype = "html"
    with at(smtp_server):
        assert message.send() == 1
    parsed = recorder.messages[0].message
    assert "Hello" in parsed.get_body(("plain",)).get_content()
    assert "<b>there</b>" in parsed.get_body(("html",)).get_content()


def test_a_refused_recipient_is_not_counted_and_not_an_exception(
    smtp_server: SmtpServer, recorder: Recorder
) -> None:
    recorder.rcpt_replies["gone@example.com"] = "550 5.1.1 no such user"
    messages = [
        mail.EmailMessage("a", "x", to=["gone@example.com"]),
        mail.EmailMessage("b", "x", to=["here@example.com"]),
    ]
    with at(smtp_server):
        assert mail.get_connection().send_messages(messages) == 1
    assert recorder.recipients() == ["here@example.com"]


def test_one_backend_connection_serves_several_calls(
    smtp_server: SmtpServer, recorder: Recorder
) -> None:
    with at(smtp_server), mail.get_connection() as connection:
        assert isinstance(connection, EmailBackend)
        for i in range(3):
            mail.send_mail(f"n{i}", "x", None, [f"r{i}@example.com"], connection=connection)
    assert recorder.connections == 1 and len(recorder.messages) == 3


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_fail_silently_applies_to_a_server_that_is_down() -> None:
    with override_settings(EMAIL_PORT=closed_port(), EMAIL_TIMEOUT=2):
        assert mail.send_mail("x", "x", None, ["a@example.com"], fail_silently=True) == 0
        with pytest.raises(mailcli.UnavailableError):
            mail.send_mail("x", "x", None, ["a@example.com"])


def test_a_header_with_a_line_break_is_django_and_mailcli_bad_header_error(
    smtp_server: SmtpServer, recorder: Recorder
) -> None:
    with at(smtp_server), pytest.raises(mail.BadHeaderError) as caught:
        mail.send_mail("Hi\r\nBcc: everyone@example.com", "x", None, ["a@example.com"])
    assert isinstance(caught.value, mailcli.BadHeaderError)
    assert recorder.peers == [] and recorder.messages == []


def test_starttls_and_login_from_the_django_settings(
    starttls_server: SmtpServer, recorder: Recorder
) -> None:
    with override_settings(
        EMAIL_HOST="localhost",
        EMAIL_PORT=starttls_server.port,
        EMAIL_USE_TLS=True,
        EMAIL_HOST_USER=USER,
        EMAIL_HOST_PASSWORD=PASSWORD,
    ):
        assert mail.send_mail("Secure", "x", None, ["a@example.com"]) == 1
    assert recorder.messages[0].tls and recorder.messages[0].authenticated


def test_use_tls_and_use_ssl_together_are_refused() -> None:
    with pytest.raises(ValueError, match="mutually exclusive"):
        EmailBackend(use_tls=True, use_ssl=True)


def test_the_locmem_backend_is_django_s_own_for_tests() -> None:
    with override_settings(EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend"):
        mail.outbox = []
        mail.send_mail("Kept", "x", None, ["a@example.com"])
        assert [m.subject for m in mail.outbox] == ["Kept"]


def test_django_header_overrides_and_reply_to_lists(
    smtp_server: SmtpServer, recorder: Recorder
) -> None:
    message = mail.EmailMessage(
        "Hi",
        "x",
        "bounces@acme.example",
        ["ann@example.com"],
        reply_to=['"Doe, John" <john@example.com>', "other@example.com"],
        headers={"from": "Acme <news@acme.example>", "message-id": "<chosen@acme.example>"},
    )
    with at(smtp_server):
        assert message.send() == 1
    received = recorder.messages[0]
    parsed = received.message
    assert received.mail_from == "bounces@acme.example"  # the envelope stays from_email
    assert parsed["From"] == "Acme <news@acme.example>"
    assert parsed["Message-ID"] == "<chosen@acme.example>"
    assert parsed["Reply-To"] == '"Doe, John" <john@example.com>'


def test_a_message_id_header_with_a_line_break_is_refused(
    smtp_server: SmtpServer, recorder: Recorder
) -> None:
    message = mail.EmailMessage(
        "Hi", "x", to=["a@example.com"], headers={"Message-ID": "<a@b>\r\nBcc: evil@x.example"}
    )
    with at(smtp_server), pytest.raises(mail.BadHeaderError):
        message.send()
    assert recorder.peers == []


def test_an_html_body_with_a_text_alternative(smtp_server: SmtpServer, recorder: Recorder) -> None:
    message = mail.EmailMultiAlternatives("Hi", "<p>Hello</p>", to=["a@example.com"])
    message.content_subtype = "html"
    message.attach_alternative("Hello, in text", "text/plain")
    with at(smtp_server):
        assert message.send() == 1
    parsed = recorder.messages[0].message
    assert parsed.get_body(("plain",)).get_content().strip() == "Hello, in text"
    assert parsed.get_body(("html",)).get_content().strip() == "<p>Hello</p>"


def test_mailcli_api_sends_django_mail_through_an_http_api_provider() -> None:
    """MAILCLI_API (mailcli's own setting): send_mass_mail of 30 goes to Postmark in one batch
    call, the token from MAILCLI_API_TOKEN."""
    from apiservers import PostmarkServer

    server = PostmarkServer().start()
    try:
        api = {"provider": "postmark", "base_url": server.url, "stream": "outbound"}
        with override_settings(MAILCLI_API=api, MAILCLI_API_TOKEN=server.token):
            datatuple = [
                (f"Digest {i}", f"Body {i}", "news@acme.example", [f"reader{i}@example.com"])
                for i in range(30)
            ]
            assert mail.send_mass_mail(datatuple) == 30
    finally:
        server.stop()
    (call,) = server.sends()
    assert len(call.json()) == 30
    assert call.headers["x-postmark-server-token"] == server.token
    assert sorted(server.recipients()) == sorted(f"reader{i}@example.com" for i in range(30))
