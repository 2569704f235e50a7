"""Bad input through the real command line: the contract's exit code, one clear message that says
where the problem is, no traceback, and nothing sent."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import CampaignFiles, Recorder, make_campaign, server_args
from typer.testing import CliRunner

from mailcli.cli import app
from mailcli.sandbox import SmtpServer

runner = CliRunner()


def replace_in(path_of: Callable[[CampaignFiles], Path], old: str, new: str) -> Callable[..., None]:
    def edit(files: CampaignFiles) -> None:
        path = path_of(files)
        text = path.read_text(encoding="utf-8")
        assert old in text, old
        path.write_text(text.replace(old, new), encoding="utf-8")

    return edit


def append_yaml(text: str) -> Callable[[CampaignFiles], None]:
    def edit(files: CampaignFiles) -> None:
        with open(files.yaml, "a", encoding="utf-8") as handle:
            handle.write(text)

    return edit


def write_csv_bytes(data: bytes) -> Callable[[CampaignFiles], None]:
    def edit(files: CampaignFiles) -> None:
        files.csv.write_bytes(data)

    return edit


def write_text_template(text: str) -> Callable[[CampaignFiles], None]:
    def edit(files: CampaignFiles) -> None:
        (files.folder / "body.txt.j2").write_text(text, encoding="utf-8")

    return edit


def remove(name: str) -> Callable[[CampaignFiles], None]:
    def edit(files: CampaignFiles) -> None:
        (files.folder / name).unlink()

    return edit


def yaml_of(files: CampaignFiles) -> Path:
    return files.yaml


def folder_instead(name: str) -> Callable[[CampaignFiles], None]:
    """The file replaced by a folder of the same name (unreadable as a file, even as root)."""

    def edit(files: CampaignFiles) -> None:
        (files.folder / name).unlink()
        (files.folder / name).mkdir()

    return edit


def both(*edits: Callable[[CampaignFiles], None]) -> Callable[[CampaignFiles], None]:
    def edit(files: CampaignFiles) -> None:
        for one in edits:
            one(files)

    return edit


def injected_first_name(yaml_line: str, line_break: bytes) -> Callable[[CampaignFiles], None]:
    """`first_name` used in `yaml_line` (the subject no longer uses it) and, in the data, a
    line break followed by a Bcc header: the classic header injection."""
    return both(
        replace_in(yaml_of, 'subject: "Hello {{ first_name }}"', 'subject: "Hello"'),
        append_yaml(yaml_line),
        write_csv_bytes(
            CSV_HEAD + b'a@example.com,A,"x' + line_break + b'Bcc: evil@example.com"\n'
        ),
    )


def symlink_out(files: CampaignFiles) -> None:
    """A link inside the campaign folder to a folder outside it, with a file in it."""
    outside = files.folder.parent / "outside"
    outside.mkdir()
    for name in ("Ann", "Bob", "Chloé"):
        (outside / f"{name}.txt").write_text("secret\n")
    (files.folder / "link").symlink_to(outside)


@dataclass(frozen=True)
class Case:
    edit: Callable[[CampaignFiles], None]
    code: int
    message: str  # a regex the stderr must match; {yaml} and {csv} stand for the paths


CSV_HEAD = b"email,name,first_name\n"
CASES: dict[str, Case] = {
    "unknown key": Case(append_yaml("colour: blue\n"), 78, r"{yaml}:8: unknown key 'colour'"),
    "unknown nested key": Case(
        append_yaml("smtp: {hots: x}\n"), 78, r"{yaml}:8: unknown key 'smtp.hots'"
    ),
    "password in yaml": Case(
        append_yaml("smtp: {password: s3cret}\n"), 78, r"{yaml}:8: 'smtp.password' is not allowed"
    ),
    "duplicate key": Case(
        append_yaml("name: again\n"),
        78,
        r"{yaml}:8: duplicate key 'name' \(first given on line 1\)",
    ),
    "yaml syntax": Case(append_yaml("vars: {a: 1\n"), 78, r"{yaml}:\d+: invalid YAML"),
    "subject a list": Case(
        replace_in(yaml_of, 'subject: "Hello {{ first_name }}"', "subject: [a, b]"),
        78,
        r"{yaml}:3: 'subject': must be a string, not a list",
    ),
    "missing name": Case(
        replace_in(yaml_of, "name: test-campaign\n", ""), 78, r"missing required key 'name'"
    ),
    "invalid from": Case(
        replace_in(yaml_of, "Test Sender <sender@example.com>", "nobody"),
        78,
        r"{yaml}:2: 'from': invalid address 'nobody'",
    ),
    "bad rate": Case(append_yaml("rate: fast\n"), 78, r"{yaml}:8: 'rate': invalid rate 'fast'"),
    "bad retry": Case(
        append_yaml("retry: {attempts: 0}\n"), 78, r"{yaml}:8: 'retry.attempts': must be at least 1"
    ),
    "bad port": Case(append_yaml("smtp: {port: 70000}\n"), 78, r"'smtp.port': 70000 is not a port"),
    "bad security": Case(
        append_yaml("smtp: {security: ssl}\n"),
        78,
        r"'smtp.security': must be one of starttls, tls, none",
    ),
    "reserved header": Case(
        append_yaml("headers: {Subject: x}\n"), 78, r"'headers.Subject': is set by mailcli itself"
    ),
    "plain http unsubscribe": Case(
        append_yaml("unsubscribe: http://x.example/u\n"),
        78,
        r"'unsubscribe': must be an https:// URL",
    ),
    "markdown and text": Case(
        append_yaml("markdown: body.txt.j2\n"), 78, r"'markdown': renders both"
    ),
    "odd yaml tag": Case(
        append_yaml("list_id: !custom x\n"), 78, r"'list_id': cannot read this value"
    ),
    "missing template": Case(remove("body.html.j2"), 66, r"'html': file not found: .*body.html.j2"),
    "missing csv": Case(remove("list.csv"), 66, r"'recipients': recipient list not found"),
    "missing attachment": Case(
        append_yaml("attachments: [nope.pdf]\n"),
        66,
        r"{yaml}:8: 'attachments': file not found: .*nope.pdf",
    ),
    "template syntax": Case(
        write_text_template("Hi {{ first_name }\n"), 65, r"body.txt.j2:1: template syntax error"
    ),
    "undefined variable": Case(
        write_text_template("Hi {{ nickname }}\n"),
        65,
        r"row 1: 'nickname' is undefined \(in body.txt.j2, line 1\)",
    ),
    "undefined variable close to a column": Case(
        both(
            replace_in(yaml_of, 'subject: "Hello {{ first_name }}"', 'subject: "Hello"'),
            write_csv_bytes(b"email,First Name\na@example.com,Ann\n"),
            write_text_template("Hi\n{{ First_Name }}\n"),
        ),
        65,
        r"row 1: 'First_Name' is undefined \(in body.txt.j2, line 2\); "
        r'did you mean row\["First Name"\]\?',
    ),
    "sandbox escape": Case(
        write_text_template("{{ ''.__class__.__mro__ }}\n"), 65, r"row 1: .*__class__"
    ),
    "crlf in subject from data": Case(
        write_csv_bytes(CSV_HEAD + b'a@example.com,A,"Ann\nBcc: x@evil.example"\n'),
        65,
        r"row 1: subject contains a line break",
    ),
    "no email column": Case(
        write_csv_bytes(b"mail,name\na@example.com,A\n"),
        65,
        r"{csv}:1: no 'email' column; the header has: mail, name",
    ),
    "semicolon-separated export": Case(
        write_csv_bytes(b"E-mail Address;First Name;Last Name\na@example.com;Ann;Lee\n"),
        65,
        r"{csv}:1: no 'email' column; the header looks ';'-separated "
        r"\(E-mail Address, First Name, Last Name\)\n"
        r'  hint: set `recipients: \{{path: list.csv, delimiter: ";", '
        r'email_column: "E-mail Address"\}}`',  # {{ }}: the pattern goes through str.format
    ),
    "tab-separated export": Case(
        write_csv_bytes(b"email\tname\na@example.com\tA\n"),
        65,
        r"{csv}:1: no 'email' column; the header looks tab-separated \(email, name\)\n"
        r'  hint: set `recipients: \{{path: list.csv, delimiter: "\\t"\}}`',
    ),
    "short row": Case(
        write_csv_bytes(CSV_HEAD + b"a@example.com,A\n"),
        65,
        r"row 1: has 2 fields, the header has 3 \(short row\)",
    ),
    "long row": Case(
        write_csv_bytes(CSV_HEAD + b"a@example.com,A,B,C\n"),
        65,
        r"row 1: has 4 fields, the header has 3 \(long row",
    ),
    "invalid address": Case(
        write_csv_bytes(CSV_HEAD + b"a@@example.com,A,A\n"),
        65,
        r"row 1: invalid address 'a@@example.com'",
    ),
    "empty address": Case(
        write_csv_bytes(CSV_HEAD + b",A,A\n"), 65, r"row 1: no address in column 'email'"
    ),
    "wrong encoding": Case(
        write_csv_bytes(CSV_HEAD + b"a@example.com,Z\xe9,Z\n"),
        65,
        r"{csv}:2: cannot decode the file as utf-8 .*\n.*encoding",
    ),
    "binary garbage": Case(
        write_csv_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe"), 65, r"{csv}"
    ),
    "empty csv": Case(write_csv_bytes(b""), 65, r"the recipient list is empty"),
    "name with line break": Case(
        write_csv_bytes(CSV_HEAD + b'a@example.com,"A\nB",A\n'),
        65,
        r"row 1: the name in column 'name' contains a line break",
    ),
    "missing campaign file": Case(remove("campaign.yaml"), 66, r"{yaml}: campaign file not found"),
    "campaign file is a folder": Case(
        folder_instead("campaign.yaml"), 66, r"{yaml}: the campaign file is a folder, not a file"
    ),
    "template is a folder": Case(
        folder_instead("body.txt.j2"), 66, r"{yaml}:4: 'text': file is a folder: .*body.txt.j2"
    ),
    "yaml alias bomb": Case(
        append_yaml("vars: {a: &a [x, x, x], b: [*a, *a, *a]}\n"),
        78,
        r"{yaml}:8: invalid YAML: YAML aliases \(\*name\) are not allowed",
    ),
    "attachment path with ..": Case(
        append_yaml('attachments: ["../outside/{{ first_name }}.txt"]\n'),
        65,
        r"row 1: attachment path '\.\./outside/Ann\.txt' is outside the campaign folder",
    ),
    "absolute attachment path": Case(
        append_yaml("attachments: [\"/etc/host{{ 'name' }}\"]\n"),
        65,
        r"row 1: attachment path '/etc/hostname' is outside the campaign folder",
    ),
    "attachment through a symlink": Case(
        both(symlink_out, append_yaml('attachments: ["link/{{ first_name }}.txt"]\n')),
        65,
        r"row 1: attachment path 'link/Ann\.txt' is outside the campaign folder",
    ),
    "per-row attachment missing": Case(
        append_yaml('attachments: ["invoices/{{ first_name }}.pdf"]\n'),
        65,
        r"row 1: attachment not found: invoices/Ann\.pdf",
    ),
    "crlf in a header from data": Case(
        injected_first_name('headers: {X-Ref: "{{ first_name }}"}\n', b"\r\n"),
        65,
        r"row 1: header X-Ref contains a line break",
    ),
    "crlf in the unsubscribe url from data": Case(
        injected_first_name('unsubscribe: "https://x.example/u/{{ first_name }}"\n', b"\n"),
        65,
        r"row 1: unsubscribe contains a line break",
    ),
    "nul in a name": Case(
        write_csv_bytes(CSV_HEAD + b"a@example.com,A\x00B,A\n"),
        65,
        r"row 1: the name in column 'name' contains a NUL character",
    ),
    "line break inside an address": Case(
        write_csv_bytes(CSV_HEAD + b'"a@example.com\nb@example.com",A,A\n'),
        65,
        r"row 1: address 'a@example\.com\\nb@example\.com' contains a control character",
    ),
    "a field larger than csv allows": Case(
        write_csv_bytes(CSV_HEAD + b"a@example.com,A," + b"x" * (16 * 1024 * 1024 + 1) + b"\n"),
        65,
        r"{csv}: line 2: unreadable CSV: field larger than field limit",
    ),
    "template includes itself": Case(
        write_text_template('{% include "body.txt.j2" %}\n'),
        65,
        r"row 1: template error: RecursionError",
    ),
    "sandbox subclasses": Case(
        write_text_template("{{ ().__class__.__base__.__subclasses__() }}\n"),
        65,
        r"row 1: unsafe template operation blocked: access to attribute '__class__'",
    ),
    "format string escape": Case(
        write_text_template('{{ "{0.__class__}".format(email) }}\n'),
        65,
        r"row 1: unsafe template operation blocked",
    ),
    "include outside the folder": Case(
        write_text_template('{% include "../../../../etc/passwd" %}\n'),
        65,
        r"row 1: template not found: \.\./\.\./\.\./\.\./etc/passwd",
    ),
    "number bomb in a template": Case(
        write_text_template("{{ 2 ** 1000000 }}\n"),
        65,
        r"row 1: unsafe template operation blocked: '\*\*' would make a number of more than",
    ),
    "memory bomb in a template": Case(
        write_text_template('{{ "x" * 10**10 }}\n'),
        65,
        r"row 1: unsafe template operation blocked: '\*' would make 10,000,000,000 items",
    ),
}


@pytest.mark.parametrize("command", ["batch", "preview"])
@pytest.mark.parametrize("case_id", list(CASES))
def test_bad_input_gives_exit_code_and_a_located_message(
    tmp_path: Path, case_id: str, command: str
) -> None:
    """Each bad input: the contract's exit code, a message naming where, and no traceback."""
    case = CASES[case_id]
    files = make_campaign(tmp_path / "camp")
    case.edit(files)
    args = [command, str(files.yaml)] + (["--dry-run"] if command == "batch" else ["--all"])
    result = runner.invoke(app, args)
    assert "Traceback" not in result.output
    assert result.exit_code == case.code, result.output
    pattern = case.message.format(yaml=re.escape(str(files.yaml)), csv=re.escape(str(files.csv)))
    assert re.search(pattern, result.stderr), result.stderr
    assert result.stdout.count("\n") <= 1  # at most the summary line


@pytest.mark.parametrize("case_id", ["unknown key", "missing csv", "short row", "template syntax"])
def test_bad_input_sends_nothing_to_a_live_server(
    tmp_path: Path, case_id: str, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """A real batch with bad input never connects: the server sees no session at all."""
    files = make_campaign(tmp_path / "camp")
    CASES[case_id].edit(files)
    result = runner.invoke(
        app,
        [
            "batch",
            str(files.yaml),
            *server_args(smtp_server),
            "--json",
        ],
    )
    assert result.exit_code == CASES[case_id].code
    assert json.loads(result.stdout)["exit_code"] == CASES[case_id].code
    assert recorder.peers == [] and recorder.messages == []


@pytest.mark.parametrize(
    "args",
    [
        ["batch", "x.yaml", "--bogus"],
        ["preview"],
        ["send", "--to", "a@example.com"],
        ["status", "x.yaml", "--failed=3"],
        ["nosuchcommand"],
        ["batch", "x.yaml", "--limit", "0"],
    ],
)
def test_usage_errors_exit_2_without_traceback(args: list[str]) -> None:
    """Unknown options, missing arguments and bad values are usage errors (exit 2)."""
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
