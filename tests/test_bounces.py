"""`mailcli bounces scan`: delivery status notifications and complaints read from a Maildir, an
mbox and an IMAP folder on a real Dovecot, against the messages in tests/bounces/ (written in
the formats Postfix, Exim and Microsoft 365 use; see tests/bounces/README.md).
"""

from __future__ import annotations

import email
import email.policy
import json
import mailbox
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from conftest import SmtpServer, make_campaign, server_args
from imapserver import PASSWORD, USER, ImapServer
from typer.testing import CliRunner

from mailcli.bounces import LocalMailbox, classify, scan
from mailcli.campaign import load_campaign
from mailcli.cli import app
from mailcli.errors import TempFailError
from mailcli.suppression import SqliteSuppression

runner = CliRunner()
FIXTURES = Path(__file__).parent / "bounces"
HARD = {
    "postfix-hard.eml": "gone@example.com",
    "exim-hard.eml": "nobody@example.org",
    "m365-hard.eml": "left@contoso.com",
    "exim-dsn-hard.eml": "nobody2@example.org",
}
SOFT = {"postfix-delayed.eml": "full@example.net", "soft-failed.eml": "full@example.net"}
COMPLAINT = {"complaint-arf.eml": "angry@example.com"}
NEITHER = ("reply.eml", "autoreply.eml")
SUPPRESSED = {*HARD.values(), *COMPLAINT.values()}


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def every_fixture() -> list[str]:
    return [*HARD, *SOFT, *COMPLAINT, *NEITHER]


def cli(*args: str | Path) -> Any:
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def scan_json(*args: str | Path, code: int = 0) -> dict[str, Any]:
    result = cli("bounces", "scan", *args, "--json")
    assert result.exit_code == code, result.output
    obj = json.loads(result.stdout)
    assert isinstance(obj, dict)
    return obj


def suppressed_now() -> dict[str, str]:
    result = cli("suppress", "list", "--json")
    return {e["email"]: e["reason"] for e in json.loads(result.stdout)["entries"]}


def maildir_of(folder: Path, names: list[str]) -> Path:
    box = mailbox.Maildir(folder, create=True)
    for name in names:
        box.add(fixture(name))
    box.close()
    return folder


def mbox_of(path: Path, names: list[str]) -> Path:
    box = mailbox.mbox(path, create=True)
    for name in names:
        box.add(fixture(name))
    box.close()
    return path


@pytest.mark.parametrize("name", every_fixture())
def test_each_format_is_read_for_what_it_is(name: str) -> None:
    msg = email.message_from_bytes(fixture(name), policy=email.policy.compat32)
    found = [(f.kind, f.email) for f in classify(msg)]
    if name in HARD:
        assert found == [("hard", HARD[name])]
    elif name in SOFT:
        assert found == [("soft", SOFT[name])]
    elif name in COMPLAINT:
        assert found == [("complaint", COMPLAINT[name])]
    else:
        assert found == []  # a reply or an auto-reply changes nothing
    for finding in classify(msg):
        assert finding.message_id is not None and finding.message_id.endswith("@acme.example>")


def test_the_dsn_fields_are_kept() -> None:
    msg = email.message_from_bytes(fixture("postfix-hard.eml"), policy=email.policy.compat32)
    (finding,) = classify(msg)
    assert finding.status == "5.1.1"
    assert "User unknown" in finding.detail
    assert finding.message_id == "<20261202063000.1001.aaaa0001@acme.example>"
    m365 = email.message_from_bytes(fixture("m365-hard.eml"), policy=email.policy.compat32)
    assert classify(m365)[0].status == "5.1.10"


@pytest.mark.parametrize("kind", ["maildir", "mbox"])
def test_a_scan_suppresses_exactly_the_hard_bounces_and_complaints(
    tmp_path: Path, kind: str
) -> None:
    names = every_fixture()
    source = (
        maildir_of(tmp_path / "Maildir", names)
        if kind == "maildir"
        else mbox_of(tmp_path / "bounces.mbox", names)
    )
    report = scan_json(source)
    assert report["messages"] == len(names)
    assert (report["hard_bounces"], report["soft_bounces"], report["complaints"]) == (4, 2, 1)
    assert report["ignored"] == 2
    assert set(report["suppressed"]) == SUPPRESSED
    reasons = suppressed_now()
    assert reasons == {
        **dict.fromkeys(HARD.values(), "hard-bounce"),
        "angry@example.com": "complaint",
    }

    # Scanned again: every report was read before; nothing is counted twice.
    again = scan_json(source)
    assert again["already_read"] == 7 and again["suppressed"] == []
    assert again["soft_bounces"] == 0
    # Two soft bounces so far; a limit of 2 is reached by the next one only.
    assert "full@example.net" not in suppressed_now()
    # The local source is left as it was.
    if kind == "maildir":
        assert len(mailbox.Maildir(source, create=False)) == len(names)


def test_soft_bounces_suppress_at_the_limit(tmp_path: Path) -> None:
    source = maildir_of(tmp_path / "Maildir", list(SOFT))
    report = scan_json(source, "--soft-limit", "2")
    assert report["suppressed"] == ["full@example.net"]
    assert suppressed_now() == {"full@example.net": "soft-bounce"}
    # The same reports in another mailbox: read before, by their own Message-IDs.
    human = cli("bounces", "scan", maildir_of(tmp_path / "M2", list(SOFT)))
    assert human.exit_code == 0
    assert "2 messages, 0 hard bounces, 0 soft" in human.stdout
    assert "2 read before; 0 newly suppressed" in human.stdout


def test_the_next_run_of_any_campaign_skips_them(tmp_path: Path, smtp_server: SmtpServer) -> None:
    scan_json(maildir_of(tmp_path / "Maildir", every_fixture()))
    rows = [{"email": a, "name": "X", "first_name": "X"} for a in sorted(SUPPRESSED)]
    rows += [{"email": "ann@example.com", "name": "Ann", "first_name": "Ann"}]
    files = make_campaign(tmp_path / "next", rows)
    result = cli("batch", files.yaml, *server_args(smtp_server), "--json")
    summary = json.loads(result.stdout)
    assert (summary["sent"], summary["suppressed"], summary["exit_code"]) == (1, 5, 0)


def test_a_bounce_is_tied_to_its_campaign_and_recipient_by_message_id(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    rows = [{"email": "gone@example.com", "name": "Gone", "first_name": "G"}]
    files = make_campaign(tmp_path / "camp", rows)
    assert cli("batch", files.yaml, *server_args(smtp_server)).exit_code == 0
    state = load_campaign(files.yaml).state_path
    with sqlite3.connect(state) as db:
        (sent_id,) = db.execute("SELECT message_id FROM recipients").fetchone()
    bounce = fixture("postfix-hard.eml").replace(
        b"<20261202063000.1001.aaaa0001@acme.example>", sent_id.encode()
    )
    box = mailbox.Maildir(tmp_path / "Maildir", create=True)
    box.add(bounce)
    report = scan_json(tmp_path / "Maildir", "--campaign", files.yaml)
    (finding,) = report["findings"]
    assert (finding["campaign"], finding["message_id"]) == ("test-campaign", sent_id)
    listed = json.loads(cli("suppress", "list", "--json").stdout)["entries"]
    assert [(e["email"], e["campaign"], e["message_id"]) for e in listed] == [
        ("gone@example.com", "test-campaign", sent_id)
    ]


def test_bad_sources_are_one_line_errors(tmp_path: Path) -> None:
    missing = cli("bounces", "scan", tmp_path / "nowhere")
    assert missing.exit_code == 66 and "no such Maildir or mbox" in missing.output
    (tmp_path / "plain").mkdir()
    not_maildir = cli("bounces", "scan", tmp_path / "plain")
    assert not_maildir.exit_code == 66 and "not a Maildir" in not_maildir.output
    local_delete = cli("bounces", "scan", tmp_path / "plain", "--delete")
    assert local_delete.exit_code == 2
    plain_imap = cli("bounces", "scan", "imap://u@127.0.0.1/INBOX")
    assert plain_imap.exit_code == 2 and "TLS only" in plain_imap.output
    with_password = cli("bounces", "scan", "imaps://u:secret@127.0.0.1/INBOX")
    assert with_password.exit_code == 2 and "secret" not in with_password.output


# -- IMAP on a real Dovecot ------------------------------------------------------------------


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def imap_url(server: ImapServer, folder: str = "INBOX") -> str:
    return f"imaps://{USER}@{server.host}:{server.port}/{folder}"


@pytest.mark.dovecot
def test_an_imap_folder_on_dovecot_is_scanned_the_same(
    imap_server: ImapServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in every_fixture():
        imap_server.append(crlf(fixture(name)))
    monkeypatch.setenv("MAILCLI_IMAP_PASSWORD", PASSWORD)
    report = scan_json(imap_url(imap_server))
    assert set(report["suppressed"]) == SUPPRESSED
    assert (report["hard_bounces"], report["soft_bounces"], report["complaints"]) == (4, 2, 1)
    assert len(imap_server.messages()) == len(every_fixture())  # never deleted by default

    # --move: the reports go to another folder, replies and auto-replies stay.
    imap_server.create("Processed")
    moved = scan_json(imap_url(imap_server), "--move", "Processed")
    assert moved["already_read"] == 7
    assert len(imap_server.messages("Processed")) == 7
    assert len(imap_server.messages()) == 2


@pytest.mark.dovecot
def test_imap_delete_and_the_errors(
    imap_server: ImapServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    imap_server.append(crlf(fixture("complaint-arf.eml")))
    imap_server.append(crlf(fixture("reply.eml")))
    monkeypatch.setenv("MAILCLI_IMAP_PASSWORD", "wrong")
    refused = cli("bounces", "scan", imap_url(imap_server))
    assert refused.exit_code == 77 and "wrong" not in refused.output
    monkeypatch.setenv("MAILCLI_IMAP_PASSWORD", PASSWORD)
    missing = cli("bounces", "scan", imap_url(imap_server, "Nope"))
    assert missing.exit_code == 66 and "Nope" in missing.output
    report = scan_json(imap_url(imap_server), "--delete")
    assert report["suppressed"] == ["angry@example.com"]
    assert len(imap_server.messages()) == 1  # the reply is left alone

    monkeypatch.delenv("SSL_CERT_FILE")  # the test CA is no longer trusted
    untrusted = cli("bounces", "scan", imap_url(imap_server))
    assert untrusted.exit_code == 69 and "certificate" in untrusted.output


def test_a_report_is_marked_read_only_once_applied(tmp_path: Path) -> None:
    """A scan that fails halfway (the list cannot be written) reads the report again next
    time, so the address is suppressed after all."""

    class Failing(SqliteSuppression):
        def add(self, *args: Any, **kwargs: Any) -> bool:
            raise TempFailError("suppression list: database is locked")

    source = maildir_of(tmp_path / "Maildir", ["postfix-hard.eml"])
    failing = Failing.open(tmp_path / "s.sqlite")
    with pytest.raises(TempFailError):
        scan(LocalMailbox(source), failing)
    failing.close()
    lst = SqliteSuppression.open(tmp_path / "s.sqlite")
    report = scan(LocalMailbox(source), lst)
    assert (report.already_read, report.suppressed) == (0, ["gone@example.com"])
    lst.close()


def test_repeated_delay_warnings_about_one_message_count_once(tmp_path: Path) -> None:
    """Postfix warns again every few hours while it keeps a message: one soft bounce, however
    many warnings (each warning is a report of its own, with its own Message-ID)."""
    warning = fixture("postfix-delayed.eml")
    own = email.message_from_bytes(warning)["Message-ID"].encode()
    box = mailbox.Maildir(tmp_path / "Maildir", create=True)
    for n in range(3):
        box.add(warning.replace(own, f"<warning{n}@mail.acme.example>".encode()))
    report = scan_json(tmp_path / "Maildir", "--soft-limit", "2")
    assert (report["reports"], report["already_read"], report["suppressed"]) == (3, 0, [])
    listed = json.loads(cli("suppress", "list", "--json").stdout)
    assert listed["count"] == 0


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        ("5.1.1", "hard"),
        ("5.1.10", "hard"),
        ("5.2.1", "hard"),
        ("5.0.0", "hard"),
        ("5.2.2", "soft"),  # mailbox full
        ("5.2.3", "soft"),  # message too big: ours
        ("5.5.2", "soft"),  # a protocol error: ours
        ("5.7.1", "soft"),  # policy or spam block
        ("5.1.8", "soft"),  # our sender address refused
        ("4.4.7", "soft"),
    ],
)
def test_only_a_bad_address_is_a_hard_bounce(status: str, kind: str) -> None:
    text = fixture("postfix-hard.eml").replace(b"Status: 5.1.1", f"Status: {status}".encode())
    text = text.replace(b"550 5.1.1", b"550")  # no enhanced code in the diagnostic
    (finding,) = classify(email.message_from_bytes(text, policy=email.policy.compat32))
    assert (finding.kind, finding.status) == (kind, status)


def test_more_bad_input_is_refused_cleanly(tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_bytes(b"\x00\x01 not a mailbox\n")
    not_mbox = cli("bounces", "scan", junk)
    assert not_mbox.exit_code == 65 and "not an mbox" in not_mbox.output
    empty = tmp_path / "empty.mbox"
    empty.write_bytes(b"")
    assert scan_json(empty)["messages"] == 0
    bad_url = cli("bounces", "scan", "imaps://u@[::1/INBOX")
    assert bad_url.exit_code == 2 and "not a usable IMAP URL" in bad_url.output
    latin = tmp_path / "latin.csv"
    latin.write_bytes("email\nren\xe9@example.com\n".encode("latin-1"))
    assert cli("suppress", "import", latin).exit_code == 65
    latin_header = tmp_path / "latin-header.csv"
    latin_header.write_bytes("adresse \xe9lectronique\nann@example.com\n".encode("latin-1"))
    result = cli("suppress", "import", latin_header)
    assert result.exit_code == 65 and "latin-header.csv: line 1" in result.output


@pytest.mark.dovecot
def test_imap_delete_expunges_only_what_this_scan_read(
    imap_server: ImapServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another client's message marked \\Deleted (not expunged) is left alone."""
    imap_server.append(crlf(fixture("reply.eml")))
    imap_server.append(crlf(fixture("postfix-hard.eml")))
    client = imap_server.connect()
    client.select("INBOX")
    client.store("1", "+FLAGS", "(\\Deleted)")  # the reply, deleted by someone else
    client.logout()
    monkeypatch.setenv("MAILCLI_IMAP_PASSWORD", PASSWORD)
    assert scan_json(imap_url(imap_server), "--delete")["suppressed"] == ["gone@example.com"]
    client = imap_server.connect()
    client.select("INBOX", readonly=True)
    kind, data = client.search(None, "ALL")
    client.logout()
    assert kind == "OK" and len(data[0].split()) == 1  # the reply is still there
