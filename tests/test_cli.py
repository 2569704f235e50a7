"""The command line end to end: files in tmp_path, a real SMTP server, exit codes and output."""

from __future__ import annotations

import email.policy
import json
import os
import re
import signal
import smtplib
import subprocess
import sys
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest
from conftest import BATCH_JSON_KEYS, Recorder, make_campaign, many_rows, server_args, write_csv
from typer.testing import CliRunner

from mailcli import __version__
from mailcli.cli import app
from mailcli.sandbox import SmtpServer

runner = CliRunner()
REQUIRED = ("From", "To", "Subject", "Date", "Message-ID", "MIME-Version")


def run(*args: str | Path) -> object:
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def parse(data: bytes) -> EmailMessage:
    message = BytesParser(policy=email.policy.default).parsebytes(data)
    assert isinstance(message, EmailMessage)
    return message


def test_version() -> None:
    """--version prints the installed version."""
    result = run("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"mailcli {__version__}"


def test_dry_run_json_over_500_rows_with_bom(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """500 rows (BOM, non-ASCII names): one JSON object, total 500, no connection, no state."""
    rows = [
        {"email": f"p{i}@example.com", "name": f"Zoë Ñúñez {i}", "first_name": f"Zoë{i}"}
        for i in range(500)
    ]
    files = make_campaign(
        tmp_path, rows, bom=True, extra=f"smtp: {{host: 127.0.0.1, port: {smtp_server.port}}}\n"
    )
    result = run("batch", files.yaml, "--dry-run", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)  # exactly one JSON document, nothing else on stdout
    assert summary["total"] == 500 and summary["would_send"] == 500
    assert (summary["sent"], summary["invalid"], summary["connections"]) == (0, 0, 0)
    assert summary["exit_code"] == 0
    for key in BATCH_JSON_KEYS:
        assert key in summary
    assert recorder.peers == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["body.html.j2", "body.txt.j2", "campaign.yaml", "list.csv"]
    )


def test_dry_run_names_each_bad_row_and_exits_65(tmp_path: Path) -> None:
    """A short row and an invalid address: exit 65, both rows named on stderr and in JSON."""
    files = make_campaign(tmp_path, many_rows(4))
    with open(files.csv, "a", encoding="utf-8") as handle:
        handle.write("short@example.com,Only Two\n")
        handle.write("not an address,Bad,Bad\n")
    result = run("batch", files.yaml, "--dry-run")
    assert result.exit_code == 65
    assert "row 5: has 2 fields, the header has 3" in result.stderr
    assert re.search(r"row 6: invalid address 'not an address'", result.stderr)
    as_json = json.loads(run("batch", files.yaml, "--dry-run", "--json").stdout)
    assert [p["row"] for p in as_json["problems"]] == [5, 6]
    assert as_json["exit_code"] == 65


def test_dry_run_summary_exact_output(tmp_path: Path) -> None:
    """The human dry-run summary line is pinned."""
    files = make_campaign(tmp_path)
    result = run("batch", files.yaml, "--dry-run")
    assert result.exit_code == 0
    size = json.loads(run("batch", files.yaml, "--dry-run", "--json").stdout)["bytes"]
    assert result.stdout == (
        f"Dry run of campaign 'test-campaign': 3 rows, 3 messages built ({size / 1024:.1f} KB), "
        "0 invalid, 0 duplicates; nothing sent.\n"
    )


def test_preview_raw_is_a_standard_message(tmp_path: Path) -> None:
    """preview --row 2 --format raw: each required header once, personal subject, alternative."""
    files = make_campaign(tmp_path)
    result = run("preview", files.yaml, "--row", "2", "--format", "raw")
    assert result.exit_code == 0
    message = parse(result.stdout_bytes)
    for name in REQUIRED:
        assert len(message.get_all(name) or []) == 1, name
    assert message["Subject"] == "Hello Bob"
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    assert message["Message-ID"].endswith("@example.com>")


def test_preview_by_address_and_text_format(tmp_path: Path) -> None:
    """preview --to picks the row with that address and shows headers and the text body."""
    files = make_campaign(tmp_path)
    result = run("preview", files.yaml, "--to", "CHLOE@example.net")
    assert result.exit_code == 0
    assert "Row 3: chloe@example.net" in result.stdout
    assert "Subject: Hello Chloé" in result.stdout
    assert "Hi Chloé," in result.stdout


def test_preview_all_writes_eml_and_html(tmp_path: Path) -> None:
    """preview --all --out DIR writes one .eml and one .html per message."""
    files = make_campaign(tmp_path)
    out = tmp_path / "previews"
    result = run("preview", files.yaml, "--all", "--out", out)
    assert result.exit_code == 0
    emls = sorted(out.glob("*.eml"))
    assert [p.name for p in emls] == [
        "000001-ann@example.com.eml",
        "000002-bob@example.org.eml",
        "000003-chloe@example.net.eml",
    ]
    assert len(list(out.glob("*.html"))) == 3
    assert parse(emls[1].read_bytes())["Subject"] == "Hello Bob"


def test_preview_all_exits_65_on_a_bad_row(tmp_path: Path) -> None:
    """preview --all validates every row."""
    files = make_campaign(tmp_path, text="{{ first_name }} {{ missing }}\n")
    result = run("preview", files.yaml, "--all")
    assert result.exit_code == 65
    assert "row 1: 'missing' is undefined" in result.stderr


def test_batch_to_a_real_server(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """batch with --host/--port/--security none delivers over one connection; --json reports it."""
    files = make_campaign(tmp_path, many_rows(25))
    result = run(
        "batch",
        files.yaml,
        *server_args(smtp_server),
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["sent"], summary["connections"], summary["exit_code"]) == (25, 1, 0)
    assert len(recorder.messages) == 25 and recorder.connections == 1


def test_batch_sandbox_writes_eml_files(tmp_path: Path) -> None:
    """--sandbox DIR delivers over SMTP to the embedded server, one .eml per recipient."""
    files = make_campaign(tmp_path)
    out = tmp_path / "outbox"
    result = run("batch", files.yaml, "--sandbox", out)
    assert result.exit_code == 0, result.stderr
    saved = sorted(out.glob("*.eml"))
    assert len(saved) == 3
    first = parse(saved[0].read_bytes())
    assert first["X-RcptTo"] == "ann@example.com"
    assert first["Subject"] == "Hello Ann"


def test_sandbox_without_dir_uses_outbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--sandbox with no value (even before the campaign argument) saves into ./outbox."""
    files = make_campaign(tmp_path / "c")
    monkeypatch.chdir(tmp_path)
    result = run("batch", "--sandbox", files.yaml)
    assert result.exit_code == 0, result.stderr
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 3


def test_send_sandbox_envelope_has_bcc_but_headers_do_not(tmp_path: Path) -> None:
    """send: two To, a Cc and a Bcc reach the envelope; Bcc is in no header; attachment intact."""
    blob = bytes(range(256)) * 40
    attachment = tmp_path / "data.bin"
    attachment.write_bytes(blob)
    out = tmp_path / "out"
    result = run(
        "send",
        "--to",
        "a@example.com",
        "--to",
        "Bé <b@example.com>",
        "--cc",
        "c@example.com",
        "--bcc",
        "hidden@example.com",
        "--from",
        "me@example.com",
        "--subject",
        "Grüße {{ who }}",
        "--text",
        "Hello {{ who }}",
        "--var",
        "who=Welt",
        "--attach",
        attachment,
        "--sandbox",
        out,
    )
    assert result.exit_code == 0, result.stderr
    [saved] = out.glob("*.eml")
    message = parse(saved.read_bytes())
    assert message["X-RcptTo"] == "a@example.com, b@example.com, c@example.com, hidden@example.com"
    sent_headers = [(k, v) for k, v in message.items() if k not in ("X-MailFrom", "X-RcptTo")]
    assert not [k for k, v in sent_headers if "hidden" in str(v)]
    assert message["Bcc"] is None
    assert message["Subject"] == "Grüße Welt"
    assert message.get_body(("plain",)).get_content().strip() == "Hello Welt"
    [part] = message.iter_attachments()
    assert part.get_payload(decode=True) == blob


def test_send_dry_run_prints_the_message(tmp_path: Path) -> None:
    """send --dry-run prints the exact bytes and sends nothing."""
    result = run(
        "send",
        "--to",
        "a@example.com",
        "--from",
        "me@example.com",
        "--subject",
        "S",
        "--text",
        "Body",
        "--dry-run",
    )
    assert result.exit_code == 0
    assert parse(result.stdout_bytes)["To"] == "a@example.com"


def test_unknown_key_exits_78_with_file_and_line(tmp_path: Path) -> None:
    """An unknown campaign key: exit 78, 'file:line', the key named, no traceback."""
    files = make_campaign(tmp_path, extra="colour: blue\n")
    result = run("batch", files.yaml, "--dry-run")
    assert result.exit_code == 78
    assert f"{files.yaml}:8: unknown key 'colour'" in result.stderr


def test_json_error_is_still_one_object(tmp_path: Path) -> None:
    """With --json, a configuration error still prints exactly one JSON object."""
    files = make_campaign(tmp_path, extra="password: hunter2\n")
    result = run("batch", files.yaml, "--dry-run", "--json")
    assert result.exit_code == 78
    obj = json.loads(result.stdout)
    assert obj["exit_code"] == 78 and "password" in obj["error"]
    assert "hunter2" not in result.output


def test_missing_campaign_exits_66(tmp_path: Path) -> None:
    """A campaign file that does not exist: exit 66 naming it."""
    result = run("batch", tmp_path / "nope.yaml", "--dry-run")
    assert result.exit_code == 66
    assert "nope.yaml" in result.stderr


def test_missing_csv_column_exits_65(tmp_path: Path) -> None:
    """A list without an email column: exit 65 naming the file and the columns found."""
    files = make_campaign(tmp_path)
    write_csv(files.csv, [{"mail": "a@example.com", "first_name": "A"}])
    result = run("batch", files.yaml, "--dry-run")
    assert result.exit_code == 65
    assert "no 'email' column; the header has: mail, first_name" in result.stderr


def test_bad_format_is_a_usage_error(tmp_path: Path) -> None:
    """An invalid --format value exits 2."""
    files = make_campaign(tmp_path)
    assert run("preview", files.yaml, "--format", "pdf").exit_code == 2


def test_no_smtp_server_configured_exits_78(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real batch with no server anywhere says how to give one (exit 78)."""
    monkeypatch.setenv("MAILCLI_CONFIG", str(tmp_path / "none.yaml"))
    monkeypatch.delenv("MAILCLI_HOST", raising=False)
    files = make_campaign(tmp_path)
    result = run("batch", files.yaml)
    assert result.exit_code == 78
    assert "no SMTP server given" in result.stderr and "--sandbox" in result.stderr


def test_sink_captures_and_stops_on_sigterm(tmp_path: Path) -> None:
    """`mailcli sink` in a subprocess: saves a message smtplib sends, exits 0 on SIGTERM."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailcli", "sink", "--port", "0", "--dir", str(tmp_path / "cap")],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stderr is not None
        banner = proc.stderr.readline()
        port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", banner).group(1))  # type: ignore[union-attr]
        with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
            client.sendmail("a@example.com", ["b@example.com"], b"Subject: hi\r\n\r\nbody\r\n")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert "stopped after 1 messages" in err
    [saved] = (tmp_path / "cap").glob("*.eml")
    assert parse(saved.read_bytes())["X-RcptTo"] == "b@example.com"


def test_sample_campaign_runs_into_the_sandbox(tmp_path: Path) -> None:
    """The shipped sample campaign (the README's Quick start) delivers one .eml per recipient."""
    sample = Path(__file__).parent.parent / "campaigns" / "welcome" / "campaign.yaml"
    result = run("batch", sample, "--sandbox", tmp_path / "outbox", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    saved = list((tmp_path / "outbox").glob("*.eml"))
    assert summary["sent"] == len(saved) == summary["total"] >= 5


def test_preview_html_and_json_formats(tmp_path: Path) -> None:
    """--format html prints the HTML part; --json describes headers, parts and envelope."""
    files = make_campaign(tmp_path)
    html = run("preview", files.yaml, "--row", "1", "--format", "html")
    assert html.exit_code == 0
    assert html.stdout.strip() == "<p>Hi Ann, this is Acme.</p>"
    described = json.loads(run("preview", files.yaml, "--row", "3", "--json").stdout)
    assert described["email"] == "chloe@example.net"
    assert described["headers"]["Subject"] == "Hello Chloé"
    assert described["envelope"] == {
        "mail_from": "sender@example.com",
        "rcpt_to": ["chloe@example.net"],
    }


def test_preview_of_a_markdown_campaign(tmp_path: Path) -> None:
    """A markdown: campaign previews as multipart/alternative with rendered HTML."""
    files = make_campaign(tmp_path)
    (tmp_path / "body.md.j2").write_text(
        "# Hi {{ first_name }}\n\n*{{ company }}*\n", encoding="utf-8"
    )
    files.yaml.write_text(
        files.yaml.read_text(encoding="utf-8").replace(
            "text: body.txt.j2\nhtml: body.html.j2\n", "markdown: body.md.j2\n"
        ),
        encoding="utf-8",
    )
    message = parse(run("preview", files.yaml, "--format", "raw").stdout_bytes)
    assert message.get_body(("html",)).get_content().count("<h1>Hi Ann</h1>") == 1
    assert message.get_body(("plain",)).get_content().startswith("# Hi Ann")


def test_preview_of_a_missing_row_is_a_usage_error(tmp_path: Path) -> None:
    """--row past the end of the list exits 2 naming the row."""
    files = make_campaign(tmp_path)
    result = run("preview", files.yaml, "--row", "9")
    assert result.exit_code == 2
    assert "no data row 9" in result.stderr


def test_batch_limit_and_duplicates_in_json(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """--limit caps the messages; a repeated address counts as a duplicate in the JSON."""
    files = make_campaign(tmp_path, [*many_rows(5), many_rows(1)[0]])
    result = run(
        "batch",
        files.yaml,
        *server_args(smtp_server),
        "--limit",
        "2",
        "--json",
    )
    summary = json.loads(result.stdout)
    assert (summary["sent"], summary["duplicates"], summary["total"]) == (2, 1, 6)
    assert len(recorder.messages) == 2


def test_batch_skip_invalid_from_the_command_line(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """--skip-invalid sends the valid rows and still names the invalid one on stderr."""
    files = make_campaign(tmp_path, [*many_rows(2), {"email": "x@", "name": "", "first_name": ""}])
    result = run(
        "batch",
        files.yaml,
        *server_args(smtp_server),
        "--skip-invalid",
    )
    assert result.exit_code == 0
    assert "row 3: invalid address 'x@'" in result.stderr
    assert len(recorder.messages) == 2


def test_batch_rejected_recipient_exits_1_and_is_listed(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """A 550 for one recipient: exit 1, the address and the server's reply on stderr."""
    recorder.rcpt_replies["bob@example.org"] = "550 5.1.1 mailbox unavailable"
    files = make_campaign(tmp_path)
    result = run(
        "batch",
        files.yaml,
        *server_args(smtp_server),
    )
    assert result.exit_code == 1
    assert "row 2: bob@example.org: failed: 550 5.1.1 mailbox unavailable" in result.stderr
    assert "2 sent, 1 failed" in result.stdout


def test_bad_rate_option_is_a_usage_error(tmp_path: Path) -> None:
    """--rate that does not parse exits 2."""
    files = make_campaign(tmp_path)
    result = run("batch", files.yaml, "--dry-run", "--rate", "lots")
    assert result.exit_code == 2
    assert "--rate: invalid rate 'lots'" in result.stderr


def test_send_to_a_real_server_reports_refusals(
    smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """send --json: accepted and refused recipients, exit 1 when one is refused for good."""
    recorder.rcpt_replies["gone@example.com"] = "550 no such user"
    result = run(
        "send",
        "--to",
        "a@example.com",
        "--to",
        "gone@example.com",
        "--from",
        "me@example.com",
        "--subject",
        "S",
        "--text",
        "T",
        *server_args(smtp_server),
        "--json",
    )
    assert result.exit_code == 1
    reply = json.loads(result.stdout)
    assert reply["accepted"] == ["a@example.com"]
    assert reply["refused"] == {"gone@example.com": "550 no such user"}
    assert recorder.recipients() == ["a@example.com"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--to", "a@example.com", "--subject", "S", "--from", "me@example.com"], 2, "give a body"),
        (
            ["--to", "not-an-address", "--subject", "S", "--text", "T", "--from", "m@example.com"],
            65,
            "--to 'not-an-address'",
        ),
        (
            [
                "--to",
                "a@example.com",
                "--subject",
                "S {{ x }}",
                "--text",
                "T",
                "--from",
                "m@example.com",
            ],
            65,
            "'x' is undefined",
        ),
        (
            [
                "--to",
                "a@example.com",
                "--subject",
                "S",
                "--text",
                "T",
                "--from",
                "m@example.com",
                "--attach",
                "/nonexistent/file.pdf",
            ],
            66,
            "/nonexistent/file.pdf",
        ),
        (
            [
                "--to",
                "a@example.com",
                "--subject",
                "S",
                "--text",
                "T",
                "--from",
                "m@example.com",
                "--var",
                "novalue",
            ],
            2,
            "--var takes KEY=VALUE",
        ),
        (
            [
                "--to",
                "a@example.com",
                "--subject",
                "S",
                "--text",
                "T",
                "--from",
                "m@example.com",
                "--text-file",
                "x.txt",
            ],
            2,
            "not both",
        ),
    ],
)
def test_send_bad_input(args: list[str], code: int, message: str) -> None:
    """send refuses bad input with the contract's exit code and a clear message."""
    result = run("send", *args, "--dry-run")
    assert result.exit_code == code
    assert message in result.stderr


def test_every_command_has_help() -> None:
    """--help works for every command and lists its options."""
    for command, option in (
        ("batch", "--dry-run"),
        ("preview", "--format"),
        ("send", "--bcc"),
        ("sink", "--dir"),
    ):
        result = run(command, "--help")
        assert result.exit_code == 0 and option in result.stdout


def test_deliverability_warnings_are_one_line_each_and_not_errors(tmp_path: Path) -> None:
    """A mailto-only unsubscribe and a DKIM domain that does not align with From are warned
    about on stderr by batch --dry-run and preview; the exit code stays 0; --quiet hides them."""
    from test_deliverability import make_key

    files = make_campaign(
        tmp_path,
        extra='unsubscribe: "mailto:leave@example.com"\n'
        "dkim: {domain: other.example, selector: s1, key: dkim.pem}\n",
    )
    make_key(files.folder)
    dry = runner.invoke(app, ["batch", str(files.yaml), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    warnings = [line for line in dry.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 2
    assert "campaign.yaml: dkim.domain other.example does not align" in warnings[0]
    assert "unsubscribe has only a mailto" in warnings[1]
    shown = runner.invoke(app, ["preview", str(files.yaml), "--row", "1"])
    assert shown.exit_code == 0 and shown.stderr.count("mailcli: warning:") == 2
    quiet = runner.invoke(app, ["batch", str(files.yaml), "--dry-run", "--quiet"])
    assert quiet.exit_code == 0 and "warning" not in quiet.stderr


def test_every_dkim_key_is_checked_for_alignment(tmp_path: Path) -> None:
    """With two keys, the one whose domain does not align with From is the one warned about."""
    from test_deliverability import make_key

    files = make_campaign(
        tmp_path,
        extra="dkim: [{domain: example.com, selector: s1, key: dkim.pem},\n"
        "       {domain: other.example, selector: s2, key: dkim.pem}]\n",
    )
    make_key(files.folder)
    dry = runner.invoke(app, ["batch", str(files.yaml), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    warnings = [line for line in dry.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1
    assert (
        "dkim.domain other.example does not align with the From domain example.com" in (warnings[0])
    )
