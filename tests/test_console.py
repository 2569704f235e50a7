"""What people see: a live bar in a terminal, plain lines in a pipe, logs on request.

The terminal tests run mailcli in a real pseudo-terminal (the `pty` module), as a person at a
shell would; the pipe tests run it as cron or CI would.
"""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Recorder, make_campaign, many_rows, server_args
from test_cli import runner

from mailcli.batch import Summary
from mailcli.cli import app
from mailcli.cli.console import BatchProgress
from mailcli.sandbox import SmtpServer

ANSI = re.compile(r"\x1b\[")
COLOUR = re.compile(r"\x1b\[[0-9;]*(3[0-9]|9[0-7])m")


def mailcli_in_pty(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> tuple[int, str]:
    """Run mailcli with stdin, stdout and stderr on a pseudo-terminal; its exit code and output."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: becomes mailcli
        os.chdir(cwd)
        os.environ.update({"COLUMNS": "150", "TERM": "xterm-256color", **(env or {})})
        os.environ.pop("NO_COLOR", None) if "NO_COLOR" not in (env or {}) else None
        os.execv(sys.executable, [sys.executable, "-m", "mailcli", *args])
    chunks: list[bytes] = []
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode("utf-8", "replace")


@pytest.fixture
def campaign(tmp_path: Path) -> Path:
    return make_campaign(tmp_path / "c", many_rows(240)).yaml


def test_a_terminal_gets_a_live_bar_with_percentage_rate_and_a_summary_table(
    campaign: Path, tmp_path: Path
) -> None:
    code, out = mailcli_in_pty(
        ["batch", str(campaign), "--sandbox", "sb", "--rate", "150/s"], tmp_path
    )
    assert code == 0, out
    assert ANSI.search(out) and COLOUR.search(out)
    shown = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", out)
    assert re.search(r"sending .* 100% +240 sent", shown)  # the bar ends full
    assert re.search(r"sending .* \d{1,2}% ", shown)  # and was seen on its way
    assert re.search(r"\d+\.\d msg/s", shown)
    assert "ETA" in shown
    table = shown
    assert re.search(r"│\s+sent\s+│\s+240 │", table)
    assert re.search(r"│\s+rate\s+│\s+[\d.]+ msg/s │", table)


def test_no_color_keeps_the_bar_and_drops_the_colours(campaign: Path, tmp_path: Path) -> None:
    code, out = mailcli_in_pty(
        ["batch", str(campaign), "--sandbox", "sb", "--rate", "400/s"], tmp_path, {"NO_COLOR": "1"}
    )
    assert code == 0, out
    assert "100%" in out and "msg/s" in out
    assert not COLOUR.search(out), out[:400]


def test_a_dry_run_in_a_terminal_shows_its_progress_too(tmp_path: Path) -> None:
    files = make_campaign(tmp_path / "c", many_rows(3000))
    code, out = mailcli_in_pty(["batch", str(files.yaml), "--dry-run", "-j", "2"], tmp_path)
    assert code == 0, out
    shown = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", out)
    assert re.search(r"building .* 100% +3,000 built", shown)


def test_a_pipe_gets_no_escape_codes_and_a_one_line_summary(campaign: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mailcli", "batch", str(campaign), "--sandbox", "sb"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TERM": "xterm-256color"},
    )
    assert proc.returncode == 0, proc.stderr
    assert not ANSI.search(proc.stdout + proc.stderr)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    assert re.match(r"Campaign 'test-campaign': 240 sent, 0 failed, .* of 240 rows \(", lines[0])


def test_quiet_prints_errors_only(campaign: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mailcli", "batch", str(campaign), "--sandbox", "sb", "--quiet"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0
    assert proc.stdout == "" and proc.stderr == ""
    bad = campaign.parent / "list.csv"
    bad.write_text(bad.read_text() + "not-an-address,X,X\n")
    proc = subprocess.run(
        [sys.executable, "-m", "mailcli", "batch", str(campaign), "--dry-run", "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 65
    assert proc.stdout == ""
    assert "row 241" in proc.stderr


def test_the_plain_progress_line_has_counts_percentage_rate_and_eta() -> None:
    progress = BatchProgress(dry_run=False, expected_rows=1000, enabled=True)
    s = Summary(campaign="c", phase="sending", would_send=1000, sent=250, failed=3, deferred=2)
    line = progress.plain_line(s, elapsed=10.0)
    assert line == (
        "progress: 250 sent, 3 failed, 2 deferred (26% of 1,000), 25.5/s, elapsed 10s, ETA 29s"
    )
    checking = Summary(campaign="c", total=400, would_send=390, invalid=1)
    assert progress.plain_line(checking, elapsed=2.0) == (
        "progress: 400 rows read, 390 due, 1 invalid (40% of 1,000), 200.0/s, elapsed 2s, ETA 3s"
    )


def test_verbose_and_log_file_record_the_run(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    files = make_campaign(tmp_path / "c", many_rows(3))
    log = tmp_path / "mailcli.log"
    args = [
        "batch",
        str(files.yaml),
        *server_args(smtp_server),
        "--verbose",
        "--log-file",
        str(log),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"transport: connected to 127.0.0.1:{smtp_server.port} (no TLS" in result.stderr
    assert "batch: campaign 'test-campaign': 3 rows read, 3 due in this run" in result.stderr
    lines = log.read_text().splitlines()
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} INFO    pid \d+ "
    assert all(re.match(stamp, line) for line in lines), lines
    assert any("batch: Campaign 'test-campaign': 3 sent, 0 failed" in line for line in lines)
    assert not any("smtp:" in line for line in lines)  # the dialogue only with --debug

    again = make_campaign(tmp_path / "again", many_rows(2))
    debug = runner.invoke(app, ["batch", str(again.yaml), *args[2:], "--debug"])
    assert debug.exit_code == 0
    logged = log.read_text()
    assert "DEBUG   pid" in logged
    assert "smtp: C: MAIL FROM:<sender@example.com>" in logged


def test_a_log_file_that_cannot_be_opened_is_a_clean_error(tmp_path: Path) -> None:
    files = make_campaign(tmp_path / "c", many_rows(1))
    result = runner.invoke(
        app, ["batch", str(files.yaml), "--dry-run", "--log-file", str(tmp_path / "no" / "x.log")]
    )
    assert result.exit_code == 73
    assert "cannot open the log file" in result.stderr


def test_json_mode_prints_one_object_and_no_progress(campaign: Path, tmp_path: Path) -> None:
    code, out = mailcli_in_pty(["batch", str(campaign), "--dry-run", "--json"], tmp_path)
    assert code == 0
    assert not ANSI.search(out)
    assert json.loads(out)["would_send"] == 240


def test_preview_in_a_terminal_shows_panels_and_an_html_summary(tmp_path: Path) -> None:
    files = make_campaign(
        tmp_path / "c",
        many_rows(2),
        html='<html><head><title>T</title></head><body><a href="https://acme.example/x">x</a>'
        '<img src="cid:logo"></body></html>\n',
    )
    code, out = mailcli_in_pty(["preview", str(files.yaml), "--row", "2"], tmp_path)
    assert code == 0, out
    shown = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", out)
    assert re.search(r"╭─ row 2: user00002@example\.com ─", shown)
    assert re.search(r"│ Subject:\s+Hello U2", shown)
    assert "─ text/plain ─" in shown and "Hi U2," in shown
    assert "─ text/html ─" in shown
    assert "title: T" in shown
    assert "1 links: https://acme.example/x" in shown and "1 images: cid:logo" in shown


def test_init_makes_a_campaign_that_runs_as_it_is(tmp_path: Path) -> None:
    from mailcli.campaign import TOP_KEYS, load_campaign

    folder = tmp_path / "spring-news"
    made = runner.invoke(app, ["init", str(folder)])
    assert made.exit_code == 0, made.output
    assert "mailcli batch" in made.stdout and "--sandbox" in made.stdout
    yaml = (folder / "campaign.yaml").read_text()
    for key in TOP_KEYS:  # every key is there, set or commented with what it does
        assert re.search(rf"^#? ?{key}:", yaml, re.M), key
    campaign = load_campaign(folder / "campaign.yaml")
    assert campaign.name == "spring-news"
    assert (folder / ".gitignore").read_text().startswith("# mailcli")
    dry = runner.invoke(app, ["batch", str(folder / "campaign.yaml"), "--dry-run", "--json"])
    assert dry.exit_code == 0 and json.loads(dry.stdout)["would_send"] == 3
    sent = runner.invoke(
        app, ["batch", str(folder / "campaign.yaml"), "--sandbox", str(tmp_path / "out"), "--json"]
    )
    assert sent.exit_code == 0 and json.loads(sent.stdout)["sent"] == 3
    assert len(list((tmp_path / "out").glob("*.eml"))) == 3


def test_init_sequence_makes_a_sequence_that_runs_as_it_is(tmp_path: Path) -> None:
    """`init --sequence`: every key is there, three steps (text, Markdown, HTML), and a dry run
    at a fixed moment shows the start, the zones and the window at work: at 10:00 UTC on
    3 March 2026 the two rows in Paris (11:00) get welcome, Bob in New York (05:00) is held,
    and Dan, who signs up on 4 March, is waiting."""
    from mailcli.campaign import TOP_KEYS, load_campaign

    folder = tmp_path / "onboarding"
    made = runner.invoke(app, ["init", str(folder), "--sequence"])
    assert made.exit_code == 0, made.output
    assert "--dry-run --at" in made.stdout and "--step tips" in made.stdout
    yaml = (folder / "campaign.yaml").read_text()
    for key in TOP_KEYS:  # every key is there, set or commented with what it does
        assert re.search(rf"^#? ?{key}:", yaml, re.M), key
    campaign = load_campaign(folder / "campaign.yaml")
    assert [(s.name, str(s.after)) for s in campaign.steps] == [
        ("welcome", "0d"),
        ("tips", "2d"),
        ("offer", "7d"),
    ]
    assert [bool(s.text) for s in campaign.steps] == [True, False, False]
    assert campaign.steps[1].markdown and campaign.steps[2].html
    assert campaign.steps[2].condition == "plan == 'free'"
    assert campaign.window is not None and campaign.window.text == "09:00-18:00"
    yaml_file = str(folder / "campaign.yaml")
    dry = runner.invoke(
        app, ["batch", yaml_file, "--dry-run", "--at", "2026-03-03T10:00Z", "--json"]
    )
    assert dry.exit_code == 0, dry.output
    report = json.loads(dry.stdout)
    assert report["would_send"] == 2 and report["problems"] == []
    assert report["steps"]["welcome"] == {
        "would_send": 2,
        "skipped": 0,
        "suppressed": 0,
        "waiting": 1,
        "held": 1,
    }
    for step in ("welcome", "tips", "offer"):  # every step renders for a row
        shown = runner.invoke(app, ["preview", yaml_file, "--step", step, "--row", "1"])
        assert shown.exit_code == 0, shown.output
    checked = runner.invoke(app, ["preview", yaml_file, "--all"])
    assert checked.exit_code == 0, checked.output


@pytest.mark.parametrize(
    ("target", "code", "message"),
    [
        ("exists", 2, "already exists and is not an empty folder"),
        ("bad name!", 2, "cannot name a campaign"),
        ("a-file/inside", 73, "cannot write the campaign"),
    ],
)
def test_init_refuses_what_it_cannot_do(
    tmp_path: Path, target: str, code: int, message: str
) -> None:
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "keep.txt").write_text("mine\n")
    (tmp_path / "a-file").write_text("not a folder\n")
    result = runner.invoke(app, ["init", str(tmp_path / target)])
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert (tmp_path / "exists" / "keep.txt").read_text() == "mine\n"


def test_version_and_shell_completion() -> None:
    import mailcli

    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.stdout == f"mailcli {mailcli.__version__}\n"
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("mailcli")), "--show-completion", "bash"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    assert "_MAILCLI_COMPLETE=complete_bash" in proc.stdout
