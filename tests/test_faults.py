"""The faults of the machine mailcli runs on: a full disk under the state file, a state file
removed mid-run, a state folder it may not write, a state file another program holds locked.

Real faults, real processes: a small tmpfs mounted for the test (root only; CI runs as root),
a child process stripped of the capability to bypass file permissions, a second SQLite
connection holding the lock. Each fault is exit 75 (73 when the state cannot be created at
all) with one line naming the state file, the complete `--json` summary, nobody sent twice
when the run is repeated, and a run record that tells how the run ended.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    BATCH_JSON_KEYS,
    Recorder,
    SmtpServer,
    make_campaign,
    many_rows,
    server_args,
)

import mailcli
from mailcli.campaign import load_campaign
from mailcli.state import StateError

IN_CI = bool(os.environ.get("CI"))
MAILCLI = [sys.executable, "-m", "mailcli"]


def batch(
    campaign: Path, server: SmtpServer, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """A real `mailcli batch --json` process."""
    return subprocess.run(
        [*MAILCLI, "batch", str(campaign), *server_args(server), "--json", *extra],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )


def last_run_exit_code(state: Path) -> int:
    with sqlite3.connect(state) as db:
        (summary,) = db.execute("SELECT summary FROM runs ORDER BY id DESC LIMIT 1").fetchone()
    return int(json.loads(summary)["exit_code"])


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MB tmpfs of the test's own (mounting needs root)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        if IN_CI:
            pytest.fail(f"cannot mount a tmpfs in CI: {done.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path, leave: int) -> Path:
    """A file that takes all the free space of `folder`'s device but `leave` bytes."""
    filler = folder / "filler"
    free = shutil.disk_usage(folder).free
    with open(filler, "wb") as handle:
        handle.write(b"\0" * max(0, free - leave))
    return filler


def test_a_disk_that_fills_mid_run_is_exit_75_and_nobody_is_sent_twice(
    tmp_path: Path, small_fs: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    state = small_fs / "news.sqlite"
    files = make_campaign(tmp_path / "camp", many_rows(3000), extra=f"state: {state}\n")
    filler = fill(small_fs, 160_000)

    first = batch(files.yaml, smtp_server)
    assert first.returncode == 75, first.stderr
    errors = [line for line in first.stderr.splitlines() if line.startswith("mailcli: error:")]
    assert len(errors) == 1
    assert str(state) in errors[0] and "no space" in errors[0]
    assert "Traceback" not in first.stderr and "internal error" not in first.stderr
    summary = json.loads(first.stdout)
    assert set(summary) >= BATCH_JSON_KEYS
    assert summary["exit_code"] == 75 and "no space" in summary["error"]
    assert 0 < summary["sent"] < 3000
    stopped_at = len(recorder.recipients())
    assert 0 < stopped_at < 3000

    filler.unlink()  # space freed; the same run again
    assert last_run_exit_code(state) == 75  # the record says what the process said
    second = batch(files.yaml, smtp_server)
    assert second.returncode in (0, 75), second.stderr
    again = json.loads(second.stdout)
    got = recorder.recipients()
    assert len(got) == len(set(got)), "somebody got the message twice"
    # Only the last group handed over before the disk filled may be left unknown (the server
    # took it: it is not sent again).
    assert again["unknown"] <= 32
    assert len(got) == 3000
    assert last_run_exit_code(state) == second.returncode


def test_the_state_file_removed_mid_run_is_written_back(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    files = make_campaign(tmp_path / "camp", many_rows(400))
    state = load_campaign(files.yaml).state_path
    removed: list[bool] = []

    def remove_state(envelope: Any) -> None:
        if len(recorder.messages) == 100 and not removed:
            state.unlink()
            removed.append(True)

    recorder.on_data = remove_state
    first = batch(files.yaml, smtp_server)
    assert removed, "the test never removed the state file"
    assert first.returncode == 75, first.stderr
    assert str(state) in first.stderr and "removed during the run" in first.stderr
    assert state.exists()
    assert json.loads(first.stdout)["exit_code"] == 75
    assert last_run_exit_code(state) == 75

    recorder.on_data = None
    second = batch(files.yaml, smtp_server)
    assert second.returncode == 0, second.stderr
    got = recorder.recipients()
    assert len(got) == len(set(got)) == 400


def no_bypass() -> list[str]:
    """The prefix that runs a child without root's power to ignore file permissions."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        if IN_CI:
            pytest.fail("setpriv (util-linux) is needed to drop root's file capabilities")
        pytest.skip("needs setpriv to drop root's file capabilities")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]


def batch_without_bypass(campaign: Path, server: SmtpServer) -> subprocess.CompletedProcess[str]:
    """`mailcli batch --json` in a child that cannot ignore file permissions."""
    return subprocess.run(
        [*no_bypass(), *MAILCLI, "batch", str(campaign), *server_args(server), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_state_folder_without_write_permission_is_exit_73(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    files = make_campaign(tmp_path / "camp", many_rows(3))
    state_dir = files.folder / ".mailcli"
    state_dir.mkdir(mode=0o555)
    try:
        done = batch_without_bypass(files.yaml, smtp_server)
    finally:
        state_dir.chmod(0o755)
    assert done.returncode == 73, done.stderr
    assert str(state_dir) in done.stderr and "Permission denied" in done.stderr
    assert "Traceback" not in done.stderr
    assert json.loads(done.stdout)["exit_code"] == 73
    assert recorder.recipients() == []


def test_a_state_file_that_cannot_be_written_is_exit_75(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    files = make_campaign(tmp_path / "camp", many_rows(3))
    assert batch(files.yaml, smtp_server, "--limit", "1").returncode == 75  # 2 left
    state = load_campaign(files.yaml).state_path
    state.chmod(0o444)
    try:
        done = batch_without_bypass(files.yaml, smtp_server)
    finally:
        state.chmod(0o600)
    assert done.returncode == 75, done.stderr
    assert str(state) in done.stderr and "cannot write" in done.stderr
    assert len(recorder.recipients()) == 1  # nothing sent without a state to record it in


def test_a_state_file_locked_by_another_program_is_exit_75(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    files = make_campaign(tmp_path / "camp", many_rows(3))
    assert batch(files.yaml, smtp_server, "--limit", "1").returncode == 75
    state = load_campaign(files.yaml).state_path
    holder = sqlite3.connect(state, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # a backup tool, an sqlite3 shell left open
    try:
        done = batch(files.yaml, smtp_server, env={"MAILCLI_STATE_TIMEOUT": "1"})
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert done.returncode == 75, done.stderr
    assert str(state) in done.stderr and "locked by another program" in done.stderr
    assert json.loads(done.stdout)["exit_code"] == 75
    assert len(recorder.recipients()) == 1
    assert batch(files.yaml, smtp_server).returncode == 0
    assert len(recorder.recipients()) == 3


def test_little_free_space_is_warned_about_before_sending(
    tmp_path: Path, small_fs: Path, smtp_server: SmtpServer
) -> None:
    files = make_campaign(
        tmp_path / "camp", many_rows(3000), extra=f"state: {small_fs / 'news.sqlite'}\n"
    )
    fill(small_fs, 400_000)
    done = batch(files.yaml, smtp_server, "--limit", "10")
    assert "may outgrow the free space" in done.stderr
    assert done.returncode == 75  # --limit left the rest; the warning is not an error


def test_the_library_raises_with_the_summary_of_what_was_done(
    tmp_path: Path, small_fs: Path, smtp_server: SmtpServer
) -> None:
    state = small_fs / "news.sqlite"
    files = make_campaign(tmp_path / "camp", many_rows(3000), extra=f"state: {state}\n")
    fill(small_fs, 160_000)
    mailer = mailcli.Mailer("127.0.0.1", smtp_server.port, "none")
    with pytest.raises(StateError) as caught:
        mailcli.send_campaign(files.yaml, mailer)
    assert caught.value.exit_code == 75
    summary = caught.value.summary
    assert isinstance(summary, mailcli.Summary)
    assert summary.sent > 0 and summary.exit_code == 75 and summary.error
