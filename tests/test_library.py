"""The public API (`import mailcli`) against real aiosmtpd servers: Message, Mailer, connect(),
send_many, Delivery, record_messages, send_campaign, and header injection on every send path."""

from __future__ import annotations

import ast
import email.policy
import itertools
import json
import logging
import socket
import subprocess
import sys
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    PASSWORD,
    USER,
    Recorder,
    make_campaign,
    many_rows,
    relay_profile,
)

import mailcli
from mailcli.envelope import Built
from mailcli.sandbox import SmtpServer
from mailcli.transport import SmtpSettings, SmtpTransport

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SENDER = "Acme <news@acme.example>"


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mailer_for(server: SmtpServer, **options: Any) -> mailcli.Mailer:
    return mailcli.Mailer("127.0.0.1", server.port, "none", timeout=10, **options)


def parse(data: bytes) -> Any:
    return BytesParser(policy=email.policy.default).parsebytes(data)


def count_mail_commands(recorder: Recorder) -> list[int]:
    """Every MAIL FROM the server sees (the Recorder's hook lets it go on as usual)."""
    seen: list[int] = []
    recorder.mail_reply = lambda n: seen.append(n)  # type: ignore[func-returns-value]
    return seen


# -- must-show 1: one message, then 200 over one pipelined connection -------------------------


def test_the_example_script_uses_only_the_public_api() -> None:
    """examples/library/transactional.py imports mailcli alone and uses only names in
    mailcli.__all__."""
    tree = ast.parse((EXAMPLES / "library" / "transactional.py").read_text(encoding="utf-8"))
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert "mailcli" in imported
    assert not [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("mailcli")
    ]
    used = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "mailcli"
    }
    assert used and used <= set(mailcli.__all__), used - set(mailcli.__all__)


def test_the_example_script_sends_one_then_200_over_one_pipelined_connection(
    smtp_server: SmtpServer, recorder: Recorder
) -> None:
    recorder.pipelining = True
    recorder.rcpt_replies["reader7@example.com"] = "550 5.1.1 no such user"
    run = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "library" / "transactional.py"),
            "--port",
            str(smtp_server.port),
            "--count",
            "200",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1, run.stderr  # one recipient was refused
    out = json.loads(run.stdout)
    assert out["single"]["status"] == "sent"
    assert out["connections"] == 1
    # One connection for the single message, exactly one for the 200.
    assert recorder.connections == 2
    bulk = out["bulk"]
    assert len(bulk) == 200
    refused = [d for d in bulk if d["status"] != "sent"]
    assert refused == [
        {
            "to": [],
            "status": "failed",
            "message_id": refused[0]["message_id"],
            "code": 550,
            "refused": {"reader7@example.com": "550 5.1.1 no such user"},
        }
    ]
    sent = [d for d in bulk if d["status"] == "sent"]
    assert len(sent) == 199 and all(d["code"] == 250 and d["message_id"] for d in sent)
    got = recorder.recipients()
    assert len(got) == len(set(got)) == 200  # Ann plus 199 readers, each once
    ids = {parse(m.data)["Message-ID"] for m in recorder.messages}
    assert {d["message_id"] for d in sent} | {out["single"]["message_id"]} == ids


def test_send_many_is_pipelined_when_offered(
    smtp_server: SmtpServer, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    """The dialogue shows each message's MAIL and RCPT written back to back, and the next
    message's commands right behind the previous one's data."""
    recorder.pipelining = True
    messages = [
        mailcli.Message(f"n{i}", [f"r{i}@example.com"], "hi", sender=SENDER) for i in range(5)
    ]
    with (
        caplog.at_level(logging.DEBUG, logger="mailcli.smtp"),
        mailer_for(smtp_server).connect() as conn,
    ):
        deliveries = conn.send_many(messages)
    lines = [r.getMessage() for r in caplog.records if r.name == "mailcli.smtp"]
    pairs = list(itertools.pairwise(lines))
    assert sum(a.startswith("C: MAIL FROM:") and b.startswith("C: RCPT TO:") for a, b in pairs) == 5
    assert (
        sum(a.startswith("C: <message data") and b.startswith("C: MAIL FROM:") for a, b in pairs)
        == 4
    )
    assert [d.status for d in deliveries] == [mailcli.DeliveryStatus.SENT] * 5
    assert recorder.connections == 1


def test_a_delivery_carries_the_reply_and_every_refusal(
    smtp_server: SmtpServer, recorder: Recorder
) -> None:
    recorder.rcpt_replies["gone@example.com"] = "550 5.1.1 no such user"
    recorder.rcpt_replies["busy@example.com"] = "452 4.2.2 mailbox full"
    msg = mailcli.Message(
        "Team news",
        ["ann@example.com", "gone@example.com"],
        "hello",
        sender=("Acme", "news@acme.example"),
        cc=["busy@example.com"],
        bcc=["boss@example.com"],
    )
    delivery = mailer_for(smtp_server).send(msg)
    assert delivery.status is mailcli.DeliveryStatus.SENT and delivery.ok
    assert delivery.recipients == ("ann@example.com", "boss@example.com")
    assert {a: (r.code, r.reply) for a, r in delivery.refused.items()} == {
        "gone@example.com": (550, "5.1.1 no such user"),
        "busy@example.com": (452, "4.2.2 mailbox full"),
    }
    assert delivery.refused["busy@example.com"].temporary
    assert delivery.code == 250 and delivery.message_id == msg.message_id
    (received,) = recorder.messages
    assert received.rcpt_tos == ["ann@example.com", "boss@example.com"]
    assert "Bcc" not in parse(received.data) and "boss" not in received.data.decode()


def test_a_wholly_refused_message_is_failed_or_deferred_not_an_exception(
    smtp_server: SmtpServer, recorder: Recorder
) -> None:
    recorder.rcpt_replies["gone@example.com"] = "550 5.1.1 no such user"
    recorder.rcpt_replies["later@example.com"] = "451 4.7.1 greylisted"
    mailer = mailer_for(smtp_server, default_sender=SENDER)
    with mailer.connect() as conn:
        gone, later, fine = conn.send_many(
            [
                mailcli.Message("a", ["gone@example.com"], "x"),
                mailcli.Message("b", ["later@example.com"], "x"),
                mailcli.Message("c", ["fine@example.com"], "x"),
            ]
        )
    assert (gone.status, gone.code, gone.recipients) == (mailcli.DeliveryStatus.FAILED, 550, ())
    assert (later.status, later.code) == (mailcli.DeliveryStatus.DEFERRED, 451)
    assert fine.status is mailcli.DeliveryStatus.SENT
    assert recorder.recipients() == ["fine@example.com"]


def test_a_dropped_connection_is_reopened_and_nobody_gets_two(
    smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """The server hangs up before every 4th message: what was not handed over is sent again on
    a new connection, by the same reconnect policy as `mailcli batch`."""
    recorder.hangup_every = 4
    messages = [mailcli.Message("n", [f"r{i}@example.com"], "x", sender=SENDER) for i in range(10)]
    with mailer_for(smtp_server).connect() as conn:
        conn.sleep = lambda s: None
        deliveries = conn.send_many(messages)
        assert conn.connections == 3
    assert [d.status for d in deliveries] == [mailcli.DeliveryStatus.SENT] * 10
    assert sorted(recorder.recipients()) == sorted(f"r{i}@example.com" for i in range(10))


def test_a_lost_reply_after_the_data_is_unknown_and_not_resent(
    smtp_server: SmtpServer, recorder: Recorder
) -> None:
    recorder.hangup_after_data = lambda env: "r1@example.com" in env.rcpt_tos
    messages = [mailcli.Message("n", [f"r{i}@example.com"], "x", sender=SENDER) for i in range(3)]
    with mailer_for(smtp_server).connect() as conn:
        conn.sleep = lambda s: None
        deliveries = conn.send_many(messages)
    assert [d.status.value for d in deliveries] == ["sent", "unknown", "sent"]
    assert "connection lost before the reply" in deliveries[1].reply
    assert sorted(recorder.recipients()) == ["r0@example.com", "r2@example.com"]


def test_a_server_that_is_down_raises_unavailable_error() -> None:
    mailer = mailcli.Mailer("127.0.0.1", closed_port(), "none", timeout=2, default_sender=SENDER)
    with pytest.raises(mailcli.UnavailableError) as caught:
        mailer.send(mailcli.Message("x", ["a@example.com"], "x"))
    assert caught.value.exit_code == 69
    assert "cannot connect to 127.0.0.1:" in str(caught.value)


def test_starttls_and_login_with_a_password_callable(
    starttls_server: SmtpServer, recorder: Recorder
) -> None:
    asked: list[int] = []

    def password() -> str:
        asked.append(1)
        return PASSWORD

    mailer = mailcli.Mailer(
        "localhost", starttls_server.port, "starttls", USER, password, default_sender=SENDER
    )
    with mailer.connect() as conn:
        conn.send_many([mailcli.Message("x", [f"r{i}@example.com"], "x") for i in range(3)])
    assert len(recorder.messages) == 3
    assert all(m.tls and m.authenticated for m in recorder.messages)
    assert asked == [1]


def test_a_wrong_password_is_auth_error(starttls_server: SmtpServer) -> None:
    mailer = mailcli.Mailer("localhost", starttls_server.port, "starttls", USER, "wrong")
    with pytest.raises(mailcli.AuthError) as caught:
        mailer.send(mailcli.Message("x", ["a@example.com"], "x", sender=SENDER))
    assert caught.value.exit_code == 77
    assert "wrong" not in str(caught.value)


def test_the_password_comes_from_mailcli_password_when_none_is_given(
    starttls_server: SmtpServer, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILCLI_PASSWORD", PASSWORD)
    mailer = mailcli.Mailer("localhost", starttls_server.port, "starttls", USER)
    mailer.send(mailcli.Message("x", ["a@example.com"], "x", sender=SENDER))
    assert recorder.messages[0].authenticated


def test_no_password_source_is_a_config_error_not_a_prompt(
    starttls_server: SmtpServer, no_keyring: None
) -> None:
    mailer = mailcli.Mailer("localhost", starttls_server.port, "starttls", USER)
    with pytest.raises(mailcli.ConfigError, match="MAILCLI_PASSWORD"):
        mailer.check_password()


def test_from_profile_and_from_env(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay_profile(tmp_path, smtp_server, monkeypatch)
    mailer = mailcli.Mailer.from_profile("relay")
    assert mailer.default_sender == "Relay <relay@acme.example>"
    assert mailer.send(mailcli.Message("p", ["a@example.com"], "x")).ok
    monkeypatch.setenv("MAILCLI_HOST", "127.0.0.1")
    monkeypatch.setenv("MAILCLI_PORT", str(smtp_server.port))
    monkeypatch.setenv("MAILCLI_SECURITY", "none")
    monkeypatch.setenv("MAILCLI_FROM", "Env <env@acme.example>")
    from_env = mailcli.Mailer.from_env()
    assert from_env.default_sender == "Env <env@acme.example>"
    assert from_env.send(mailcli.Message("e", ["b@example.com"], "x")).ok
    senders = [parse(m.data)["From"] for m in recorder.messages]
    assert senders == ["Relay <relay@acme.example>", "Env <env@acme.example>"]
    with pytest.raises(mailcli.ConfigError, match="profile 'nope' not found"):
        mailcli.Mailer.from_profile("nope")


# -- the message itself -------------------------------------------------------------------------


def test_message_bytes_parse_back_with_every_part() -> None:
    msg = mailcli.Message(
        "Grüße, Ann",
        ["Ann Lee <ann@example.com>"],
        html='<p>Hello <img src="cid:logo"></p>',
        sender=SENDER,
        reply_to="help@acme.example",
        extra_headers={"X-Campaign": "spring"},
        inline_images={"logo": b"\x89PNG\r\n\x1a\n" + b"0" * 20},
        unsubscribe=["https://acme.example/u/1", "mailto:u@acme.example"],
        list_id="Acme News <news.acme.example>",
    )
    msg.add_recipient(("Bob", "bob@example.org"))
    msg.attach("notes.txt", data="some notes\n")
    msg.attach("data.bin", "application/octet-stream", b"\x00\x01\x02")
    parsed = parse(msg.as_bytes())
    assert parsed["Subject"] == "Grüße, Ann"
    assert parsed["To"] == "Ann Lee <ann@example.com>, Bob <bob@example.org>"
    assert parsed["Reply-To"] == "help@acme.example"
    assert parsed["X-Campaign"] == "spring"
    assert parsed["List-Id"] == "Acme News <news.acme.example>"
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert parsed["Message-ID"] == msg.message_id and msg.message_id.endswith("@acme.example>")
    types = [p.get_content_type() for p in parsed.walk()]
    assert types[:4] == [
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
        "multipart/related",
    ]
    # html only: a text part is derived so that text-only readers get words
    assert "Hello" in parsed.get_body(("plain",)).get_content()
    names = [(a.get_filename(), a.get_content()) for a in parsed.iter_attachments()]
    assert names == [("notes.txt", "some notes\n"), ("data.bin", b"\x00\x01\x02")]
    assert msg.send_to == {"ann@example.com", "bob@example.org"}
    assert (
        msg.as_bytes().count(b"Message-ID:") == 1
        and parse(msg.as_bytes())["Message-ID"] == msg.message_id
    )


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"recipients": []}, "no recipients"),
        ({"recipients": ["not an address"]}, "recipient 'not an address'"),
        ({"sender": None}, "no sender"),
        ({"extra_headers": {"Subject": "x"}}, "use subject="),
        ({"extra_headers": {"Bad Name": "x"}}, "not a header name"),
        ({"unsubscribe": "http://insecure.example/u"}, "not an https:// URL"),
        ({"charset": "latin-1"}, "UTF-8"),
    ],
)
def test_bad_messages_raise_clear_errors(kwargs: dict[str, Any], problem: str) -> None:
    options: dict[str, Any] = {"recipients": ["a@example.com"], "sender": SENDER, **kwargs}
    with pytest.raises(mailcli.MailcliError, match=problem) as caught:
        mailcli.Message("s", body="b", **options).as_bytes()
    assert caught.value.exit_code in (65, 78)


# -- must-show 3: header injection on every path ------------------------------------------------

INJECTIONS = [
    pytest.param({"subject": "Hi\r\nBcc: victim@example.com"}, id="subject"),
    pytest.param({"recipients": ["a@example.com\r\nRCPT TO:<victim@example.com>"]}, id="to"),
    pytest.param({"cc": ["Ann\n <a@example.com>"]}, id="cc"),
    pytest.param({"bcc": ["b@example.com\nDATA"]}, id="bcc"),
    pytest.param({"sender": ("Acme\r\nX-Evil: 1", "news@acme.example")}, id="sender-name"),
    pytest.param({"reply_to": "r@example.com\r\nX: y"}, id="reply-to"),
    pytest.param({"extra_headers": {"X-Campaign": "a\r\nBcc: victim@example.com"}}, id="header"),
    pytest.param({"list_id": "List <l.example>\r\nX: y"}, id="list-id"),
    pytest.param({"unsubscribe": "https://a.example/u\r\nX: y"}, id="unsubscribe"),
]


def injected(**kwargs: Any) -> mailcli.Message:
    options: dict[str, Any] = {"recipients": ["a@example.com"], "sender": SENDER, **kwargs}
    subject = options.pop("subject", "Hello")
    return mailcli.Message(subject, body="text", **options)


@pytest.mark.parametrize("kwargs", INJECTIONS)
def test_bad_header_on_mailer_send_opens_no_connection(
    kwargs: dict[str, Any], smtp_server: SmtpServer, recorder: Recorder
) -> None:
    with pytest.raises(mailcli.BadHeaderError) as caught:
        mailer_for(smtp_server).send(injected(**kwargs))
    assert caught.value.exit_code == 65 and "line break" in str(caught.value)
    assert recorder.peers == [] and recorder.messages == []


@pytest.mark.parametrize("kwargs", INJECTIONS)
def test_bad_header_on_connection_send_and_send_many_sends_no_command(
    kwargs: dict[str, Any], smtp_server: SmtpServer, recorder: Recorder
) -> None:
    mails = count_mail_commands(recorder)
    good = mailcli.Message("fine", ["ok@example.com"], "x", sender=SENDER)
    with mailer_for(smtp_server).connect() as conn:
        with pytest.raises(mailcli.BadHeaderError):
            conn.send(injected(**kwargs))
        with pytest.raises(mailcli.BadHeaderError):
            conn.send_many([good, injected(**kwargs), good])
    assert mails == [] and recorder.messages == []


def test_a_line_break_in_an_inline_image_id_is_refused_before_connecting() -> None:
    """Checked before any connection: a closed port would say UnavailableError otherwise."""
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 8
    mailer = mailcli.Mailer("127.0.0.1", closed_port(), "none", default_sender=SENDER)
    bad = mailcli.Message("x", ["a@example.com"], html="<p>x</p>", inline_images={"lo\r\ngo": png})
    with pytest.raises(mailcli.BadHeaderError):
        mailer.send(bad)
    typed = mailcli.Message("x", ["a@example.com"], "x")
    typed.attach("a.bin", "no-slash", b"x")
    with pytest.raises(mailcli.DataError, match="type/subtype"):
        mailer.send(typed)


@pytest.mark.parametrize("kwargs", INJECTIONS)
def test_bad_header_on_as_bytes_and_in_the_outbox(kwargs: dict[str, Any]) -> None:
    with pytest.raises(mailcli.BadHeaderError):
        injected(**kwargs).as_bytes()
    with mailcli.record_messages() as outbox, pytest.raises(mailcli.BadHeaderError):
        mailcli.Mailer(default_sender=SENDER).send(injected(**kwargs))
    assert outbox == []


@pytest.mark.parametrize("pipelining", [False, True], ids=["lock-step", "pipelining"])
def test_the_transport_refuses_a_line_break_in_an_envelope_before_writing(
    smtp_server: SmtpServer, recorder: Recorder, pipelining: bool
) -> None:
    """The last guard, for any path that hands the SMTP transport a finished message: nothing
    of the group is written when one envelope address holds a line break."""
    recorder.pipelining = pipelining
    mails = count_mail_commands(recorder)
    good = Built(b"Subject: x\r\n\r\nx\r\n", "<1@a.example>", "a@a.example", ("b@example.com",))
    bad = good._replace(rcpt_to=("b@example.com>\r\nRCPT TO:<victim@example.com",))
    transport = SmtpTransport(
        SmtpSettings(host="127.0.0.1", port=smtp_server.port, security="none", timeout=10)
    )
    transport.open()
    try:
        with pytest.raises(mailcli.BadHeaderError):
            transport.send([good, bad])
    finally:
        transport.close()
    assert mails == [] and recorder.messages == []


def test_a_campaign_row_with_a_line_break_in_a_header_is_invalid_and_nothing_is_sent(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    rows = [*many_rows(2), {"email": "c@example.com", "name": "C", "first_name": "x\r\nBcc: v@e.x"}]
    files = make_campaign(tmp_path, rows, extra="headers: {X-Name: '{{ first_name }}'}\n")
    summary = mailcli.send_campaign(files.yaml, mailer_for(smtp_server))
    assert summary.exit_code == 65 and summary.invalid == 1
    assert "line break" in summary.problems[0].problem
    assert recorder.peers == []


# -- must-show 2: recording -----------------------------------------------------------------------


def test_record_messages_sends_nothing_even_to_a_closed_port() -> None:
    mailer = mailcli.Mailer("127.0.0.1", closed_port(), "none", default_sender=SENDER)
    with mailcli.record_messages() as outbox:
        one = mailer.send(mailcli.Message("one", ["a@example.com"], "first", html="<p>first</p>"))
        with mailer.connect() as conn:
            many = conn.send_many(
                [
                    mailcli.Message(f"n{i}", [f"r{i}@example.com"], "x", bcc=["log@acme.example"])
                    for i in range(3)
                ]
            )
    assert one.ok and all(d.ok for d in many)
    assert [m.subject for m in outbox] == ["one", "n0", "n1", "n2"]
    first = outbox[0]
    assert (first.recipients, first.sender, first.body, first.html) == (
        ["a@example.com"],
        SENDER,
        "first",
        "<p>first</p>",
    )
    assert first.message is not None and first.message.subject == "one"
    assert first.parsed.get_body(("plain",)).get_content().replace("\r\n", "\n") == "first\n"
    assert outbox[1].bcc == ["log@acme.example"] and outbox[1].envelope_to == [
        "r0@example.com",
        "log@acme.example",
    ]
    assert outbox[0].as_bytes().startswith(b"From: ")
    assert outbox[0].message_id == one.message_id
    # Outside the block the Mailer is real again: the closed port refuses.
    with pytest.raises(mailcli.UnavailableError):
        mailer.send(mailcli.Message("two", ["a@example.com"], "x"))


def test_outbox_true_and_mailcli_suppress_send(monkeypatch: pytest.MonkeyPatch) -> None:
    quiet = mailcli.Mailer("127.0.0.1", closed_port(), outbox=True, default_sender=SENDER)
    quiet.send(mailcli.Message("kept", ["a@example.com"], "x"))
    assert quiet.outbox is not None and [m.subject for m in quiet.outbox] == ["kept"]
    monkeypatch.setenv("MAILCLI_SUPPRESS_SEND", "1")
    suppressed = mailcli.Mailer("127.0.0.1", closed_port(), default_sender=SENDER)
    assert suppressed.send(mailcli.Message("held", ["a@example.com"], "x")).ok
    assert suppressed.outbox is not None and len(suppressed.outbox) == 1


def _comparable(summary: mailcli.Summary) -> dict[str, Any]:
    data = summary.to_json()
    for key in ("elapsed_s", "rate_per_s", "transport"):
        data.pop(key)
    return data


def test_a_campaign_on_the_outbox_gives_the_same_summary_as_over_smtp(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    rows = [*many_rows(40), {"email": "bad", "name": "X", "first_name": "X"}, many_rows(1)[0]]
    real = make_campaign(tmp_path / "real", rows)
    trial = make_campaign(tmp_path / "trial", rows)
    over_smtp = mailcli.send_campaign(real.yaml, mailer_for(smtp_server), skip_invalid=True)
    with mailcli.record_messages() as outbox:
        on_outbox = mailcli.send_campaign(trial.yaml, skip_invalid=True)
    assert _comparable(on_outbox) == _comparable(over_smtp)
    assert (on_outbox.sent, on_outbox.invalid, on_outbox.duplicates) == (40, 1, 1)
    assert (over_smtp.transport, on_outbox.transport) == ("smtp", "outbox")
    assert sorted(m.envelope_to[0] for m in outbox) == sorted(recorder.recipients())
    # Recorded, not sent: the campaign's own progress is untouched, so a later real run (or
    # another test) starts where it was.
    status = mailcli.campaign_status(trial.yaml)
    assert (status.sent, status.pending, status.invalid_rows, status.state_file) == (
        0,
        40,
        1,
        str(trial.folder / ".mailcli" / "test-campaign.sqlite"),
    )
    assert not (trial.folder / ".mailcli" / "test-campaign.sqlite").exists()
    again = mailcli.send_campaign(trial.yaml, mailcli.Mailer(outbox=True), skip_invalid=True)
    assert (again.sent, again.skipped, again.invalid) == (40, 0, 1)


def test_a_recorded_run_starts_from_the_real_progress_and_leaves_it_alone(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    files = make_campaign(tmp_path, many_rows(10))
    real = mailcli.send_campaign(files.yaml, mailer_for(smtp_server), limit=4)
    assert (real.sent, real.pending) == (4, 6)
    with mailcli.record_messages() as outbox:
        trial = mailcli.send_campaign(files.yaml)
    assert (trial.sent, trial.skipped, len(outbox)) == (6, 4, 6)
    assert mailcli.campaign_status(files.yaml).sent == 4  # still what really went out
    rest = mailcli.send_campaign(files.yaml, mailer_for(smtp_server))
    assert (rest.sent, rest.skipped) == (6, 4)
    assert len(recorder.recipients()) == len(set(recorder.recipients())) == 10


def test_mailcli_suppress_send_in_the_cli_warns_and_changes_no_progress(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from mailcli.cli import app

    files = make_campaign(tmp_path, many_rows(3))
    monkeypatch.setenv("MAILCLI_SUPPRESS_SEND", "1")
    args = ["batch", str(files.yaml), "--host", "127.0.0.1", "--port", str(smtp_server.port)]
    held = CliRunner().invoke(app, [*args, "--security", "none", "--json"])
    assert held.exit_code == 0, held.output
    assert "MAILCLI_SUPPRESS_SEND is set" in held.stderr
    assert json.loads(held.stdout)["transport"] == "outbox"
    assert recorder.peers == [] and mailcli.campaign_status(files.yaml).sent == 0
    monkeypatch.delenv("MAILCLI_SUPPRESS_SEND")
    sent = CliRunner().invoke(app, [*args, "--security", "none"])
    assert sent.exit_code == 0 and len(recorder.messages) == 3


def test_record_messages_holds_in_other_threads_too() -> None:
    """A test whose code sends from a worker thread records, never sends."""
    import threading

    mailer = mailcli.Mailer("127.0.0.1", closed_port(), "none", default_sender=SENDER)
    failures: list[BaseException] = []

    def work() -> None:
        try:
            mailer.send(mailcli.Message("from a thread", ["a@example.com"], "x"))
        except BaseException as exc:  # reported below
            failures.append(exc)

    with mailcli.record_messages() as outbox:
        thread = threading.Thread(target=work)
        thread.start()
        thread.join(10)
    assert failures == [] and [m.subject for m in outbox] == ["from a thread"]


def test_nested_record_blocks_each_keep_their_own() -> None:
    mailer = mailcli.Mailer(default_sender=SENDER)
    with mailcli.record_messages() as outer:
        with mailcli.record_messages() as inner:
            mailer.send(mailcli.Message("inner", ["a@example.com"], "x"))
        mailer.send(mailcli.Message("outer", ["a@example.com"], "x"))
    assert [m.subject for m in inner] == ["inner"] and [m.subject for m in outer] == ["outer"]
    with pytest.raises(mailcli.ConfigError, match="no SMTP server"):
        mailer.send(mailcli.Message("after", ["a@example.com"], "x"))


def test_outbox_false_really_sends_inside_record_messages(
    smtp_server: SmtpServer, recorder: Recorder
) -> None:
    real = mailcli.Mailer("127.0.0.1", smtp_server.port, "none", outbox=False)
    with mailcli.record_messages() as outbox:
        assert real.send(mailcli.Message("real", ["a@example.com"], "x", sender=SENDER)).ok
    assert outbox == [] and len(recorder.messages) == 1


def test_send_campaign_with_progress_limit_and_a_sandbox(tmp_path: Path) -> None:
    files = make_campaign(tmp_path / "camp", many_rows(12))
    seen: list[int] = []
    first = mailcli.send_campaign(
        files.yaml, sandbox=tmp_path / "outbox", limit=5, progress=lambda s: seen.append(s.sent)
    )
    assert (first.sent, first.pending, first.exit_code) == (5, 7, 75)
    assert seen[-1] == 5
    rest = mailcli.send_campaign(files.yaml, sandbox=tmp_path / "outbox", rate="1000/s")
    assert (rest.sent, rest.skipped, rest.exit_code) == (7, 5, 0)
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 12
    # The sandbox kept its own progress: the real campaign has sent nobody.
    assert not (files.folder / ".mailcli").exists()


def test_dry_run_and_load_campaign_take_a_path(tmp_path: Path) -> None:
    files = make_campaign(tmp_path / "camp", many_rows(3))
    campaign = mailcli.load_campaign(str(files.yaml))
    assert isinstance(campaign, mailcli.Campaign)
    summary = mailcli.dry_run(files.yaml)
    assert (summary.would_send, summary.exit_code, summary.dry_run) == (3, 0, True)
    with pytest.raises(mailcli.ConfigError, match="rate"):
        mailcli.send_campaign(campaign, mailcli.Mailer(outbox=True), rate="fast")


def test_the_public_names_are_all_exported_and_typed() -> None:
    assert set(mailcli.__all__) >= {
        "Message",
        "Mailer",
        "Connection",
        "Delivery",
        "DeliveryStatus",
        "record_messages",
        "load_campaign",
        "dry_run",
        "send_campaign",
        "campaign_status",
        "Summary",
        "Status",
        "MailcliError",
        "BadHeaderError",
        "ConfigError",
        "UnavailableError",
        "AuthError",
        "DataError",
    }
    for name in mailcli.__all__:
        assert getattr(mailcli, name) is not None
    assert issubclass(mailcli.BadHeaderError, mailcli.DataError)
    assert [s.value for s in mailcli.DeliveryStatus] == [
        "pending",
        "sent",
        "failed",
        "deferred",
        "unknown",
        "suppressed",
        "skipped",
    ]
    assert (Path(mailcli.__file__).parent / "py.typed").exists()


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"sender": Path("a@example.com")}, "sender must be an address"),
        ({"subject": b"bytes"}, "subject must be str, not bytes"),
        ({"body": b"bytes"}, "body must be str, not bytes"),
        ({"extra_headers": {"X-N": 5}}, r"extra_headers\['X-N'\] must be str, not int"),
        ({"sender": (None, "a@example.com")}, "sender must be an address"),
        ({"date": "2024-01-01"}, "date must be a datetime or a timestamp"),
        ({"attachments": [("a.txt", b"x")]}, "must be mailcli.Attachment"),
    ],
)
def test_values_of_the_wrong_type_are_a_clear_type_error(
    kwargs: dict[str, Any], problem: str
) -> None:
    options: dict[str, Any] = {"recipients": ["a@example.com"], "sender": SENDER, **kwargs}
    subject = options.pop("subject", "s")
    with pytest.raises(TypeError, match=problem):
        mailcli.Message(subject, body=options.pop("body", "b"), **options).as_bytes()


def test_one_address_alone_is_a_list_of_one_and_the_arguments_keep_flask_mails_order() -> None:
    msg = mailcli.Message(
        "Hello",
        "ann@example.com",
        "text",
        None,
        "Acme <news@acme.example>",
        ("Bob", "bob@example.org"),
        ["c@example.com", "d@example.com"],
        None,
        "help@acme.example",
        1_700_000_000,
        "utf-8",
        {"X-A": "1"},
    )
    parsed = parse(msg.as_bytes())
    assert (parsed["To"], parsed["Cc"], parsed["Reply-To"], parsed["X-A"]) == (
        "ann@example.com",
        "Bob <bob@example.org>",
        "help@acme.example",
        "1",
    )
    assert msg.send_to == {"ann@example.com", "bob@example.org", "c@example.com", "d@example.com"}
    assert parsed["Date"].datetime.timestamp() == 1_700_000_000


def test_attaching_a_missing_file_is_an_input_file_error(tmp_path: Path) -> None:
    with pytest.raises(mailcli.MailcliError) as caught:
        mailcli.Message("x", ["a@example.com"], "x", SENDER).attach(tmp_path / "nope.pdf")
    assert caught.value.exit_code == 66 and "attachment not found" in str(caught.value)
    with pytest.raises(mailcli.MailcliError) as image:
        mailcli.Message(
            "x",
            ["a@example.com"],
            html="x",
            sender=SENDER,
            inline_images={"i": tmp_path / "no.png"},
        ).as_bytes()
    assert image.value.exit_code == 66


def test_a_mailer_with_a_bad_timeout_or_port_is_a_config_error() -> None:
    with pytest.raises(mailcli.ConfigError, match="timeout"):
        mailcli.Mailer("h", timeout="30")  # type: ignore[arg-type]
    with pytest.raises(mailcli.ConfigError, match="port"):
        mailcli.Mailer("h", "25")  # type: ignore[arg-type]
    with pytest.raises(mailcli.ConfigError, match="security"):
        mailcli.Mailer("h", 25, "ssl")


def test_an_address_that_needs_smtputf8_fails_alone_on_a_server_without_it(
    recorder: Recorder,
) -> None:
    with (
        SmtpServer(recorder, enable_SMTPUTF8=False) as server,
        mailer_for(server, default_sender=SENDER).connect() as conn,
    ):
        plain, utf8 = conn.send_many(
            [
                mailcli.Message("a", ["ann@example.com"], "x"),
                mailcli.Message("b", ["jörg@example.com"], "x"),
            ]
        )
    assert plain.ok and utf8.status is mailcli.DeliveryStatus.FAILED
    assert "SMTPUTF8" in utf8.reply
    assert recorder.recipients() == ["ann@example.com"]
    assert conn.send_many([]) == []


def test_the_sandbox_really_delivers_even_while_recording(tmp_path: Path) -> None:
    files = make_campaign(tmp_path / "camp", many_rows(3))
    with mailcli.record_messages() as outbox:
        summary = mailcli.send_campaign(files.yaml, sandbox=tmp_path / "box")
    assert summary.sent == 3 and summary.transport == "smtp" and outbox == []
    assert len(list((tmp_path / "box").glob("*.eml"))) == 3


def test_a_temporary_mail_from_refusal_stays_deferred_when_pipelining(
    smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """Behind a refused MAIL the server answers 503 to RCPT and DATA; the MAIL reply decides."""
    recorder.pipelining = True
    recorder.mail_reply = lambda n: "451 4.3.2 try again later" if n == 0 else None
    mailer = mailer_for(smtp_server, default_sender=SENDER)
    first = mailer.send(mailcli.Message("a", ["a@example.com"], "x"))
    assert (first.status, first.code) == (mailcli.DeliveryStatus.DEFERRED, 451)
    recorder.mail_reply = lambda n: "550 5.7.1 sender refused"
    with mailer.connect() as conn:
        both = conn.send_many([mailcli.Message(s, ["b@example.com"], "x") for s in "bc"])
    assert [(d.status.value, d.code) for d in both] == [("failed", 550), ("failed", 550)]


def test_a_message_id_with_a_line_break_is_bad_header_error() -> None:
    msg = mailcli.Message("x", ["a@example.com"], "x", sender=SENDER)
    msg.message_id = "<a@b.example>\r\nBcc: evil@example.com"
    with pytest.raises(mailcli.BadHeaderError):
        msg.as_bytes()
    msg.message_id = "not-an-id"
    with pytest.raises(mailcli.DataError, match="<left@right>"):
        msg.as_bytes()
    msg.message_id = "<given@acme.example>"
    assert parse(msg.as_bytes())["Message-ID"] == "<given@acme.example>"
