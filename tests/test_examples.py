"""The files in examples/ work as written: each runnable one is run here.

The cron line and the systemd unit's ExecStart run as they are, with only the install path
changed to a temporary folder; the CI workflow's `run:` steps run in a copy of the repository's
campaigns; the library example runs as a script and is called as a module. Mail goes to a real
aiosmtpd server through an SMTP profile, as it would to the real one.
"""

from __future__ import annotations

import configparser
import csv
import fcntl
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import zoneinfo
from datetime import UTC, datetime, time
from pathlib import Path

import pytest
import yaml
from conftest import Recorder

import mailcli
from mailcli.sandbox import SmtpServer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
SAMPLE = ROOT / "campaigns" / "welcome"
BIN = Path(sys.executable).parent  # the venv's bin, where the `mailcli` script is


def install(tmp_path: Path, rows: int | None = None) -> Path:
    """A copy of the sample campaign where the examples expect it, optionally with more rows."""
    home = tmp_path / "srv-mailcli"
    shutil.copytree(SAMPLE, home / "campaigns" / "welcome")
    # The sample's `rate: 50/s` would make these tests wait ten seconds for nothing.
    yaml_file = home / "campaigns" / "welcome" / "campaign.yaml"
    lines = yaml_file.read_text().splitlines(keepends=True)
    yaml_file.write_text("".join(line for line in lines if not line.startswith("rate:")))
    if rows is not None:
        listing = home / "campaigns" / "welcome" / "recipients.csv"
        with listing.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["email", "name", "first_name", "plan", "token"])
            for i in range(rows):
                writer.writerow([f"r{i}@example.com", f"R {i}", f"R{i}", "Pro", f"t{i}"])
    return home


def environment(tmp_path: Path, server: SmtpServer, **extra: str) -> dict[str, str]:
    """The environment of a cron job or a unit: PATH with mailcli, a profile for the server."""
    config = tmp_path / "config.yaml"
    config.write_text(
        f"profiles:\n  default:\n    host: 127.0.0.1\n    port: {server.port}\n    security: none\n"
    )
    return {
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "MAILCLI_CONFIG": str(config),
        **extra,
    }


def crontab(campaign: str) -> tuple[dict[str, str], str]:
    """The crontab's variables and the command of its one job that runs `campaign`."""
    variables: dict[str, str] = {}
    jobs: list[str] = []
    for line in (EXAMPLES / "cron" / "crontab").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if "=" in line.split()[0]:
            name, value = line.split("=", 1)
            variables[name.strip()] = value.strip()
        else:
            jobs.append(line.split(None, 5)[5])
    (job,) = [job for job in jobs if f" {campaign} " in job]
    return variables, job


@pytest.mark.skipif(shutil.which("flock") is None, reason="needs flock (util-linux)")
def test_the_cron_job_sends_resumes_and_never_overlaps(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    variables, command = crontab("campaigns/welcome/campaign.yaml")
    home = install(tmp_path, rows=520)
    command = command.replace("/srv/mailcli", str(home))
    env = environment(tmp_path, smtp_server, **variables)

    first = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True)
    assert first.returncode == 75  # --limit 500 leaves 20 for the next run
    assert first.stdout == "" and first.stderr == ""  # --quiet: cron mails nothing
    assert len(recorder.messages) == 500

    # A run still holding the lock: the next one is skipped at once, and sends nothing.
    with (home / ".drip.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        skipped = subprocess.run(["bash", "-c", command], env=env, capture_output=True)
    assert skipped.returncode == 1 and len(recorder.messages) == 500

    second = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert len(recorder.messages) == 520
    assert len(set(recorder.recipients())) == 520  # nobody twice
    log = (home / "drip.log").read_text()
    assert "500 sent" in log and "20 sent" in log and "500 done in earlier runs" in log


def in_window(listing: Path) -> set[str]:
    """The addresses of `listing` whose local time (its `tz` column) is inside 09:00-18:00 now."""
    now = datetime.now(UTC)
    with listing.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {
        row["email"]
        for row in rows
        if time(9) <= now.astimezone(zoneinfo.ZoneInfo(row["tz"])).time() < time(18)
    }


def test_the_cron_sequence_job_sends_what_is_due_and_is_refused_while_one_runs(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """The crontab's sequence job, on the sequence `mailcli init --sequence` writes: every
    row signed up in the past, so each one's first step is due and goes out where the
    recipient's local time is inside the window (09:00-18:00); the next run, ten minutes
    later or at once, sends nothing more; a run while another holds the lock is refused."""
    variables, command = crontab("campaigns/onboarding/campaign.yaml")
    home = tmp_path / "srv-mailcli"
    folder = home / "campaigns" / "onboarding"
    made = subprocess.run(
        [str(BIN / "mailcli"), "init", str(folder), "--sequence"], capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    command = command.replace("/srv/mailcli", str(home))
    env = environment(tmp_path, smtp_server, **variables)

    due = in_window(folder / "recipients.csv")
    first = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True)
    if in_window(folder / "recipients.csv") != due:
        pytest.skip("a recipient's window opened or closed during the run")
    assert first.returncode == 0, first.stderr  # a step held by the window is not a failure
    assert first.stdout == "" and first.stderr == ""  # --quiet: cron mails nothing
    assert set(recorder.recipients()) == due
    assert all(m.message["Subject"].startswith("Welcome") for m in recorder.messages)

    # One step per run, and the next comes two days after the first went out.
    second = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert len(recorder.messages) == len(due)

    # A run still going holds the campaign's lock: the next one is refused at once.
    with (folder / ".mailcli" / "onboarding.sqlite.lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        refused = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True)
    assert refused.returncode == 75 and "already being sent" in refused.stderr
    assert len(recorder.messages) == len(due)
    assert (home / "onboarding.log").exists()


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    parser.read(EXAMPLES / "systemd" / name)
    return parser


def test_the_systemd_units_run_and_accept_a_clean_stop(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    service = unit("mailcli-drip.service")["Service"]
    timer = unit("mailcli-drip.timer")["Timer"]
    assert timer["OnCalendar"] and timer["Persistent"] == "true"
    assert service["Type"] == "oneshot"
    accepted = {0, *map(int, service["SuccessExitStatus"].split())}

    home = install(tmp_path, rows=505)
    argv = shlex.split(service["ExecStart"])
    assert Path(argv[0]).name == "mailcli"
    argv[0] = str(BIN / "mailcli")
    name, value = service["Environment"].split("=", 1)
    env = environment(tmp_path, smtp_server, **{name: value})
    runs = [subprocess.run(argv, cwd=home, env=env, capture_output=True, text=True) for _ in "ab"]
    assert [r.returncode for r in runs] == [75, 0]
    assert all(r.returncode in accepted for r in runs)  # systemd counts both as success
    assert len(recorder.messages) == 505 and len(set(recorder.recipients())) == 505
    assert (home / service["WorkingDirectory"].replace("/srv/mailcli", ".") / "drip.log").exists()


def workflow_steps() -> list[str]:
    workflow = yaml.safe_load((EXAMPLES / "ci" / "mailcli-check.yml").read_text())
    steps = next(iter(workflow["jobs"].values()))["steps"]
    return [s["run"] for s in steps if "run" in s and "pip install" not in s["run"]]


def test_the_ci_workflow_passes_a_good_campaign_and_fails_a_bad_one(tmp_path: Path) -> None:
    steps = workflow_steps()
    assert any("preview" in s and "--all" in s for s in steps)
    assert any("--dry-run" in s for s in steps)
    repo = install(tmp_path)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    for step in steps:
        run = subprocess.run(
            ["bash", "-e", "-c", step], cwd=repo, env=env, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
    assert not (repo / "campaigns" / "welcome" / ".mailcli").exists()  # nothing was recorded

    listing = repo / "campaigns" / "welcome" / "recipients.csv"
    listing.write_text(listing.read_text() + "not-an-address,X,X,Pro,t-x\n")
    for step in steps:
        run = subprocess.run(
            ["bash", "-e", "-c", step], cwd=repo, env=env, capture_output=True, text=True
        )
        assert run.returncode == 65
        assert "row 6: invalid address" in run.stderr


def test_the_library_example_runs_as_a_script(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(EXAMPLES / "library" / "send_from_code.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["sent"] == 5 and summary["connections"] == 1
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 5
    assert "the last at 5 sent" in run.stderr


def test_the_library_example_sends_from_code(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    spec = importlib.util.spec_from_file_location(
        "send_from_code", EXAMPLES / "library" / "send_from_code.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    mailer = mailcli.Mailer("127.0.0.1", smtp_server.port, "none")
    seen: list[int] = []
    summary = module.send_campaign(
        module.SAMPLE,
        mailer,
        on_progress=lambda s: seen.append(s.sent),
        state_file=tmp_path / "state.sqlite",
    )
    assert summary.sent == 5 and summary.exit_code == 0
    assert seen[-1] == 5
    listed = [row["email"] for row in csv.DictReader((SAMPLE / "recipients.csv").open())]
    assert len(recorder.recipients()) == len(set(recorder.recipients())) == len(listed) == 5
    again = module.send_campaign(module.SAMPLE, mailer, state_file=tmp_path / "state.sqlite")
    assert again.sent == 0 and again.skipped == 5 and len(recorder.messages) == 5
