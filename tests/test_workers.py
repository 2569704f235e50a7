"""`batch --dry-run` on several worker processes: the same outcome as one, errors intact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_campaign, many_rows
from test_cli import runner

from mailcli.addresses import parse_mailbox
from mailcli.batch import dry_run
from mailcli.campaign import load_campaign
from mailcli.cli import app
from mailcli.errors import DataError
from mailcli.message import MessageBuilder


def messy_rows(n: int) -> list[dict[str, str]]:
    """Rows with invalid addresses, duplicates and per-row render failures mixed in."""
    rows = many_rows(n)
    for i in range(0, n, 97):
        rows[i]["email"] = f"not-an-address-{i}"
    for i in range(50, n, 131):
        rows[i]["email"] = rows[i - 40]["email"]  # a duplicate of an earlier row
    for i in range(20, n, 89):
        rows[i]["first_name"] = "Zed"  # the template refuses this one
    return rows


TEXT = "Hi {{ first_name if first_name != 'Zed' else undefined_thing }},\nthis is {{ company }}.\n"


def summary_without_timing(args: list[str]) -> dict[str, object]:
    result = runner.invoke(app, args)
    data = json.loads(result.stdout)
    assert result.exit_code == data["exit_code"]
    for key in ("elapsed_s", "rate_per_s", "bytes"):
        data.pop(key)
    return data


def expected_counts(rows: list[dict[str, str]]) -> tuple[int, int, int]:
    """(invalid, duplicates, good) worked out from the rows themselves."""
    seen: set[str] = set()
    invalid = duplicates = 0
    for row in rows:
        if "@" not in row["email"]:
            invalid += 1
        elif row["email"] in seen:
            duplicates += 1
        else:
            seen.add(row["email"])
            invalid += row["first_name"] == "Zed"
    return invalid, duplicates, len(rows) - invalid - duplicates


def test_workers_give_the_same_report_as_one_process(tmp_path: Path) -> None:
    rows = messy_rows(3000)
    files = make_campaign(tmp_path / "c", rows, text=TEXT)
    one = summary_without_timing(["batch", str(files.yaml), "--dry-run", "--json", "-j", "1"])
    two = summary_without_timing(["batch", str(files.yaml), "--dry-run", "--json", "-j", "2"])
    assert one == two
    assert one["exit_code"] == 65
    assert one["total"] == 3000
    invalid, duplicates, good = expected_counts(rows)
    assert (one["invalid"], one["duplicates"], one["would_send"]) == (invalid, duplicates, good)
    assert invalid > 50 and duplicates > 10
    problems = one["problems"]
    assert isinstance(problems, list)
    rows = [p["row"] for p in problems]
    assert rows == sorted(rows)  # in list order, whichever worker checked them
    assert any("undefined_thing" in p["problem"] for p in problems)


def test_workers_count_the_same_bytes_give_or_take_message_ids(tmp_path: Path) -> None:
    files = make_campaign(tmp_path / "c", many_rows(1500))
    campaign = load_campaign(files.yaml)
    one = dry_run(campaign, jobs=1)
    two = dry_run(campaign, jobs=2)
    assert one.would_send == two.would_send == 1500
    # Message-IDs and boundaries carry a process id and a counter: a few bytes each way.
    assert abs(one.bytes - two.bytes) <= 1500 * 8


def test_limit_counts_the_first_rows_in_list_order(tmp_path: Path) -> None:
    files = make_campaign(tmp_path / "c", messy_rows(1200), text=TEXT)
    campaign = load_campaign(files.yaml)
    one = dry_run(campaign, jobs=1, limit=500)
    two = dry_run(campaign, jobs=2, limit=500)
    assert one.would_send == two.would_send == 500
    assert [p.row for p in one.problems] == [p.row for p in two.problems]


def test_an_error_raised_in_a_worker_keeps_its_exit_code_and_place(tmp_path: Path) -> None:
    """An included template is compiled when a worker first renders it: its syntax error
    reaches the parent as the same error, file and line included."""
    files = make_campaign(
        tmp_path / "c", many_rows(600), text='Hi {{ first_name }}\n{% include "footer.j2" %}\n'
    )
    (files.folder / "footer.j2").write_text("Bye\n{% if %}\n")
    result = runner.invoke(app, ["batch", str(files.yaml), "--dry-run", "-j", "2"])
    assert result.exit_code == DataError.exit_code == 65
    assert f"{files.folder / 'footer.j2'}:2: template syntax error" in result.stderr
    assert "Traceback" not in result.output + result.stderr


def test_reseeded_builders_never_share_message_ids_or_boundaries() -> None:
    builder = MessageBuilder(parse_mailbox("Team <team@example.com>"))
    first = (builder._message_id(), builder._boundaries.next())
    builder.reseed()
    second = (builder._message_id(), builder._boundaries.next())
    assert first[0] != second[0]
    assert first[1] != second[1]


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_a_killed_worker_is_a_clean_error_not_a_hang(tmp_path: Path) -> None:
    files = make_campaign(tmp_path / "c", many_rows(60_000))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailcli", "batch", str(files.yaml), "--dry-run", "-j", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    workers: list[int] = []
    while not workers and time.monotonic() < deadline and proc.poll() is None:
        workers = _children(proc.pid)
        time.sleep(0.05)
    assert workers, "the dry run finished or failed before its workers started"
    os.kill(workers[0], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 70
    assert "a worker process died" in stderr
    assert "--jobs 1" in stderr
    assert "Traceback" not in stderr
