"""The Flask application of examples/flask/ (written for Flask-Mail) and its tests, run twice:
with `flask_mail` as written, and with the import changed to `mailcli.flask` and nothing else.
Then what mailcli.flask adds: pipelined send_many, MAIL_MAX_EMAILS, inline images, TLS."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import PASSWORD, USER, Recorder, relay_profile

from mailcli.sandbox import SmtpServer

APP = Path(__file__).resolve().parents[1] / "examples" / "flask" / "app.py"
FLASK_MAIL_IMPORT = "from flask_mail import BadHeaderError, Mail, Message"


def load_app(variant: str) -> ModuleType:
    """The example app as written (flask_mail), or with only its import changed (mailcli)."""
    source = APP.read_text(encoding="utf-8")
    assert source.count(FLASK_MAIL_IMPORT) == 1
    if variant == "mailcli":
        source = source.replace(
            FLASK_MAIL_IMPORT, FLASK_MAIL_IMPORT.replace("flask_mail", "mailcli.flask")
        )
    module = ModuleType(f"flask_example_{variant}")
    module.__file__ = str(APP)
    sys.modules[module.__name__] = module
    exec(compile(source, str(APP), "exec"), module.__dict__)
    return module


@pytest.fixture(params=["flask_mail", "mailcli"])
def example(request: pytest.FixtureRequest) -> ModuleType:
    return load_app(request.param)


# -- the application's own tests: identical for both ---------------------------------------


def test_welcome_is_recorded_under_testing(example: ModuleType) -> None:
    app = example.create_app({"TESTING": True, "MAIL_PORT": 1})  # nothing listens: no send
    with app.test_client() as client, example.mail.record_messages() as outbox:
        assert client.post("/welcome", data={"email": "ann@example.com"}).json == {"sent": 1}
    (msg,) = outbox
    assert msg.subject == "Welcome to Acme"
    assert msg.recipients == ["ann@example.com"]
    assert msg.sender == "Acme Shop <shop@acme.example>"
    assert msg.body == "Thanks for signing up."
    assert msg.html == "<p>Thanks for <b>signing up</b>.</p>"
    assert [(a.filename, a.content_type, a.data) for a in msg.attachments] == [
        ("terms.txt", "text/plain", "The terms.\n")
    ]


def test_the_digest_records_100_messages(example: ModuleType) -> None:
    app = example.create_app({"TESTING": True, "MAIL_PORT": 1})
    with app.test_client() as client, example.mail.record_messages() as outbox:
        assert client.post("/digest", data={"count": "100"}).json == {"sent": 100}
    assert [m.recipients[0] for m in outbox] == [f"reader{n}@example.com" for n in range(100)]


def test_a_line_break_in_the_subject_is_bad_header_error(example: ModuleType) -> None:
    app = example.create_app({"TESTING": True, "MAIL_PORT": 1})
    with app.test_client() as client, example.mail.record_messages() as outbox:
        answer = client.post("/contact", data={"subject": "Hi\nBcc: all@example.com", "text": "x"})
    assert answer.status_code == 400 and outbox == []
    with app.app_context():
        assert example.Message("Hi\r\nX: y", ["a@example.com"]).has_bad_headers()
        assert not example.Message("Hi", ["a@example.com"]).has_bad_headers()


def test_against_a_real_server_the_digest_uses_one_connection(
    example: ModuleType, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    app = example.create_app({"MAIL_SERVER": "127.0.0.1", "MAIL_PORT": smtp_server.port})
    with app.test_client() as client:
        assert client.post("/welcome", data={"email": "ann@example.com"}).json == {"sent": 1}
        assert client.post("/digest", data={"count": "100"}).json == {"sent": 100}
    assert recorder.connections == 2  # one for the welcome, one for the 100
    got = recorder.recipients()
    assert len(got) == len(set(got)) == 101
    welcome = recorder.messages[0].message
    assert welcome["Subject"] == "Welcome to Acme"
    assert [a.get_filename() for a in welcome.iter_attachments()] == ["terms.txt"]


# -- what mailcli.flask adds ---------------------------------------------------------------


def mailcli_app(**config: Any) -> Any:
    from flask import Flask

    from mailcli.flask import Mail

    app = Flask("mailcli_flask_test")
    app.config.update({"MAIL_DEFAULT_SENDER": "Acme <news@acme.example>", **config})
    return app, Mail(app)


def test_send_many_is_pipelined_over_one_connection(
    smtp_server: SmtpServer, recorder: Recorder
) -> None:
    from mailcli.flask import Message

    recorder.pipelining = True
    app, mail = mailcli_app(MAIL_SERVER="127.0.0.1", MAIL_PORT=smtp_server.port)
    with app.app_context(), mail.connect() as conn:
        deliveries = conn.send_many(
            [Message(f"n{i}", [f"r{i}@example.com"], "x") for i in range(50)]
        )
    assert all(d is not None and d.ok for d in deliveries)
    assert recorder.connections == 1 and len(recorder.messages) == 50


def test_mail_max_emails_reconnects_after_that_many(
    smtp_server: SmtpServer, recorder: Recorder
) -> None:
    from mailcli.flask import Message

    app, mail = mailcli_app(MAIL_SERVER="127.0.0.1", MAIL_PORT=smtp_server.port, MAIL_MAX_EMAILS=10)
    with app.app_context(), mail.connect() as conn:
        for i in range(25):
            conn.send(Message(f"n{i}", [f"r{i}@example.com"], "x"))
    assert recorder.connections == 3 and len(recorder.messages) == 25


def test_inline_images_and_message_ids_on_the_senders_domain(
    smtp_server: SmtpServer, recorder: Recorder
) -> None:
    from mailcli.flask import Message

    png = b"\x89PNG\r\n\x1a\n" + b"0" * 16
    app, mail = mailcli_app(MAIL_SERVER="127.0.0.1", MAIL_PORT=smtp_server.port)
    with app.app_context():
        msg = Message("Logo", ["a@example.com"], html='<img src="cid:logo">')
        msg.attach("logo.png", "image/png", png, "inline", headers={"Content-ID": "<logo>"})
        delivery = mail.send(msg)
    assert delivery is not None and delivery.ok and msg.msgId == delivery.message_id
    parsed = recorder.messages[0].message
    related = next(p for p in parsed.walk() if p.get_content_type() == "multipart/related")
    image = next(p for p in related.walk() if p.get_content_type() == "image/png")
    assert image["Content-ID"] == "<logo>" and image.get_content() == png
    assert parsed["Message-ID"].endswith("@acme.example>")


def test_starttls_login_and_timeout_from_the_config(
    starttls_server: SmtpServer, recorder: Recorder
) -> None:

    app, mail = mailcli_app(
        MAIL_SERVER="localhost",
        MAIL_PORT=starttls_server.port,
        MAIL_USE_TLS=True,
        MAIL_USERNAME=USER,
        MAIL_PASSWORD=PASSWORD,
        MAIL_TIMEOUT=5,
    )
    with app.app_context():
        mail.send_message("Secure", ["a@example.com"], "x")
    assert recorder.messages[0].tls and recorder.messages[0].authenticated
    assert mail.state.mailer.settings.timeout == 5.0


def test_while_suppressed_no_connection_is_opened(recorder: Recorder) -> None:
    from mailcli.flask import Message

    app, mail = mailcli_app(TESTING=True, MAIL_PORT=1)
    with app.app_context(), mail.record_messages() as outbox, mail.connect() as conn:
        assert conn.send(Message("x", ["a@example.com"], "x")) is None
    assert len(outbox) == 1 and mail.suppress


def test_mail_use_tls_and_ssl_together_is_a_config_error() -> None:
    import mailcli

    with pytest.raises(mailcli.ConfigError, match="not both"):
        mailcli_app(MAIL_USE_TLS=True, MAIL_USE_SSL=True)


def test_mail_profile_takes_the_clis_profile(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailcli.flask import Message

    relay_profile(tmp_path, smtp_server, monkeypatch)
    app, mail = mailcli_app(MAIL_PROFILE="relay", MAIL_DEFAULT_SENDER=None)
    with app.app_context():
        mail.send(Message("Via the profile", ["a@example.com"], "x"))
    assert recorder.messages[0].message["From"] == "Relay <relay@acme.example>"


def test_email_dispatched_fires_for_each_message_taken(
    smtp_server: SmtpServer, recorder: Recorder
) -> None:
    from mailcli.flask import Message, email_dispatched

    recorder.rcpt_replies["gone@example.com"] = "550 5.1.1 no such user"
    app, mail = mailcli_app(MAIL_SERVER="127.0.0.1", MAIL_PORT=smtp_server.port)
    seen: list[tuple[Any, str]] = []

    def on_dispatch(sender: Any, message: Message, **extra: Any) -> None:
        seen.append((sender, message.subject))

    with email_dispatched.connected_to(on_dispatch), app.app_context(), mail.connect() as conn:
        taken = conn.send(Message("taken", ["a@example.com"], "x"))
        refused = conn.send(Message("refused", ["gone@example.com"], "x"))
    assert taken is not None and taken.ok
    assert refused is not None and refused.status.value == "failed"
    assert seen == [(app, "taken")]


def test_flask_mail_style_headers_and_msgid_are_honoured(
    smtp_server: SmtpServer, recorder: Recorder
) -> None:
    from mailcli.flask import Message

    app, mail = mailcli_app(MAIL_SERVER="127.0.0.1", MAIL_PORT=smtp_server.port)
    with app.app_context():
        msg = Message(
            "News",
            ["a@example.com"],
            "x",
            extra_headers={
                "List-Unsubscribe": "<https://acme.example/u/1>, <mailto:u@acme.example>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
                "X-Campaign": "spring",
            },
        )
        msg.msgId = "<chosen@acme.example>"
        mail.send(msg)
    parsed = recorder.messages[0].message
    assert parsed["Message-ID"] == "<chosen@acme.example>"
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "https://acme.example/u/1" in parsed["List-Unsubscribe"]
    assert parsed["X-Campaign"] == "spring"


def test_under_testing_a_missing_profile_does_not_matter(monkeypatch: pytest.MonkeyPatch) -> None:
    from mailcli.flask import Message

    monkeypatch.setenv("MAILCLI_CONFIG", "/nonexistent/config.yaml")
    app, mail = mailcli_app(TESTING=True, MAIL_PROFILE="production")
    with app.app_context(), mail.record_messages() as outbox:
        assert mail.send(Message("x", ["a@example.com"], "x")) is None
    assert len(outbox) == 1
