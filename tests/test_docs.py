"""Docs that tests check: the README's commands and reference stay true."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from mailcli.campaign import TOP_KEYS
from mailcli.cli import app

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import command_reference  # noqa: E402

README = (ROOT / "README.md").read_text(encoding="utf-8")


def quick_start() -> list[str]:
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_quick_start_has_exactly_two_commands() -> None:
    """Quick start: one command to run the sample campaign, one to run the suite."""
    first, second = quick_start()
    assert "mailcli batch campaigns/welcome/campaign.yaml --sandbox" in first
    assert "pytest" in second and "[test]" in second


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    """.ci/run runs exactly the README's test command."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert quick_start()[1] in ci


def test_every_campaign_key_is_documented() -> None:
    """The campaign reference table lists every key the loader accepts."""
    table = README.split("## Campaign file", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| ([^|]+) \|", table, re.M))
    names = {name for cell in documented for name in re.findall(r"`([a-z_]+)`", cell)}
    assert set(TOP_KEYS) <= names, set(TOP_KEYS) - names


def test_every_command_is_documented_with_help_and_example() -> None:
    """Each command has a README section, and every --help (the program's, each group's, each
    command's) shows an example; the program's lists the contract's commands and init."""
    runner = CliRunner()
    commands = command_reference.commands(typer.main.get_command(app))
    contract = {"batch", "preview", "send", "status", "test-connection", "sink", "password"}
    assert contract | {"init", "dkim"} <= {c[0] for c in commands}
    listing = runner.invoke(app, ["--help"])
    for name in contract | {"init"}:
        assert re.search(rf"^  {name} ", listing.stdout, re.M), name
    for words in [(), *commands]:
        if words:
            assert f"### `mailcli {words[0]}`" in README
        result = runner.invoke(app, [*words, "--help"])
        assert result.exit_code == 0
        assert re.search(r"Example: [^\n]*mailcli " + " ".join(words), result.stdout), words


def test_the_command_reference_is_the_help_verbatim() -> None:
    """README's command reference is every --help as it prints today
    (`python scripts/command_reference.py --write` regenerates it)."""
    assert command_reference.readme_section(README) == command_reference.reference()


def test_sample_campaign_ships_every_file_it_names() -> None:
    """The sample campaign's files are all in the repository."""
    folder = ROOT / "campaigns" / "welcome"
    for name in (
        "campaign.yaml",
        "recipients.csv",
        "templates/base.txt.j2",
        "templates/welcome.txt.j2",
        "templates/base.html.j2",
        "templates/welcome.html.j2",
        "files/getting-started.txt",
    ):
        assert (folder / name).is_file(), name


def test_the_security_section_states_the_guarantees_and_how_to_report() -> None:
    """README's Security section covers what issue readers look for first."""
    section = README.split("\n## Security\n", 1)[1].split("\n## ", 1)[0]
    for topic in (
        "TLS is verified",
        "Secrets come from four places only",
        "Templates are sandboxed",
        "No header injection",
        "Attachments stay in the campaign folder",
        "Reporting a problem",
    ):
        assert topic in section, topic


def library_examples() -> list[str]:
    """The ```python blocks of README's Library section, in order."""
    section = README.split("\n## Library\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_library_examples_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every example of README's Library section runs, in order and in one namespace, against
    a real SMTP server (its port put where the README says 8025), from a folder holding the
    sample campaign; what the server got is checked afterwards."""
    from conftest import Recorder

    from mailcli.sandbox import SmtpServer

    examples = library_examples()
    assert len(examples) >= 5
    shutil.copytree(ROOT / "campaigns", tmp_path / "campaigns")
    monkeypatch.chdir(tmp_path)
    recorder = Recorder(pipelining=True)
    namespace: dict[str, object] = {}
    with SmtpServer(recorder) as server:
        for number, code in enumerate(examples, 1):
            source = code.replace("8025", str(server.port))
            exec(compile(source, f"README.md Library example {number}", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "refused: " in printed and "line break" in printed
    subjects = [m.message["Subject"] for m in recorder.messages]
    assert subjects[:4] == ["Your order #1001", "Hello Bob", "Hello Chloé", "Hello Dan"]
    # the single one, three over one connection, the campaign, then asyncio: three concurrent
    # send_async calls and three over connect_async
    assert len(subjects) == 4 + 5 + 6
    assert subjects.count("Your export is ready") == 3 and subjects.count("Weekly") == 3
    # one per send, one for send_many, one for the campaign; then the pool (at most one per
    # concurrent call) and one for connect_async
    assert 3 + 2 <= recorder.connections <= 3 + 4
    assert "Bcc" not in " ".join(m.data.decode() for m in recorder.messages)


def test_the_http_api_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """README's HTTP API example, against the local Postmark server of tests/apiservers.py put
    where the README says http://127.0.0.1:8025, with its token."""
    from apiservers import PostmarkServer

    section = README.split("\n## HTTP API providers\n", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    server = PostmarkServer().start()
    try:
        source = code.replace("http://127.0.0.1:8025", server.url)
        source = source.replace('"server-token"', repr(server.token))
        exec(compile(source, "README.md HTTP API example", "exec"), {})
    finally:
        server.stop()
    assert capsys.readouterr().out.split("\n")[:2] == ["sent", "120 True"]
    assert [len(r.json()) for r in server.sends()] == [1, 120]
    assert server.sends()[0].headers["x-postmark-server-token"] == server.token


def run_section_example(section_name: str, tmp_path: Path) -> Any:
    """Run the one ```python block of a README section in its own interpreter (it sets up a
    framework), against a real SMTP server put where the README says port 8025."""
    from conftest import Recorder

    from mailcli.sandbox import SmtpServer

    section = README.split(f"\n## {section_name}\n", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    recorder = Recorder(pipelining=True)
    with SmtpServer(recorder) as server:
        script = tmp_path / "example.py"
        script.write_text(code.replace("8025", str(server.port)), encoding="utf-8")
        run = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=120
        )
    assert run.returncode == 0, run.stderr
    return recorder


def test_the_django_example_runs(tmp_path: Path) -> None:
    """README's Django example: 50 over one connection, then one with an attachment."""
    recorder = run_section_example("Django", tmp_path)
    assert len(recorder.messages) == 51 and recorder.connections == 2
    assert recorder.messages[-1].message["From"] == "Acme <webmaster@acme.example>"


def test_the_flask_example_runs(tmp_path: Path) -> None:
    """README's Flask example: one message, then 100 over one pipelined connection."""
    recorder = run_section_example("Flask", tmp_path)
    assert len(recorder.messages) == 101 and recorder.connections == 2
    assert recorder.messages[0].message["From"] == "Acme Shop <shop@acme.example>"
