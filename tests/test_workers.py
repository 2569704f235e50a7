"""`batch --dry-run` on several worker processes: the same outcome as one, errors intact."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import MappingProxyType

import pytest
from conftest import make_campaign, many_rows
from test_cli import runner

from mailcli import workers
from mailcli.addresses import parse_mailbox
from mailcli.batch import dry_run
from mailcli.campaign import load_campaign
from mailcli.cli import app
from mailcli.errors import ConfigError, DataError, InputFileError
from mailcli.message import MessageBuilder
from mailcli.pipeline import Pipeline

# The start methods this system can run workers with (fork and forkserver are POSIX only).
METHODS = [m for m in ("fork", "spawn") if m in multiprocessing.get_all_start_methods()]


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


def summary_without_timing(args: list[str], *, keep_bytes: bool = False) -> dict[str, object]:
    result = runner.invoke(app, args)
    data = json.loads(result.stdout)
    assert result.exit_code == data["exit_code"]
    for key in ("elapsed_s", "rate_per_s") + (() if keep_bytes else ("bytes",)):
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


def test_spawned_workers_give_the_same_report_as_forked_ones_and_one_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forced to spawn (as on Windows and macOS), two workers rebuild the pipeline from the
    campaign and report what one process and forked workers report: the same counts, the same
    problems in the same order, the same bytes save for the digits of Message-IDs."""
    rows = messy_rows(3000)
    files = make_campaign(tmp_path / "c", rows, text=TEXT)
    args = ["batch", str(files.yaml), "--dry-run", "--json"]
    reports = {}
    for jobs, method in (("1", None), ("2", "fork"), ("2", "spawn")):
        if method is None:
            monkeypatch.delenv(workers.START_METHOD_ENV, raising=False)
        else:
            monkeypatch.setenv(workers.START_METHOD_ENV, method)
        reports[method] = summary_without_timing([*args, "-j", jobs], keep_bytes=True)
    sizes = {method: report.pop("bytes") for method, report in reports.items()}
    assert reports["spawn"] == reports["fork"] == reports[None]
    one = reports[None]
    assert one["exit_code"] == 65 and one["total"] == 3000
    invalid, duplicates, good = expected_counts(rows)
    assert (one["invalid"], one["duplicates"], one["would_send"]) == (invalid, duplicates, good)
    problems = one["problems"]
    assert isinstance(problems, list)
    assert any("undefined_thing" in p["problem"] for p in problems)
    # A Message-ID holds the worker's pid and its own message count: each message may be a few
    # digits shorter or longer in another process; nothing else in a message may differ.
    assert isinstance(sizes[None], int) and sizes[None] > good * 500
    for method in ("fork", "spawn"):
        assert abs(sizes[method] - sizes[None]) <= good * 8, method


def test_the_start_method_is_fork_where_safe_unless_the_environment_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """fork on Linux (spawn on macOS and Windows); MAILCLI_START_METHOD overrides it."""
    monkeypatch.delenv(workers.START_METHOD_ENV, raising=False)
    expected = "fork" if sys.platform.startswith("linux") else "spawn"
    assert workers.start_method() == expected
    for method in METHODS:
        monkeypatch.setenv(workers.START_METHOD_ENV, f" {method.upper()} ")
        assert workers.start_method() == method


def test_an_unknown_start_method_is_a_config_error_through_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A typo in MAILCLI_START_METHOD is exit 78 naming the variable and the choices."""
    files = make_campaign(tmp_path / "c", many_rows(600))
    monkeypatch.setenv(workers.START_METHOD_ENV, "thread")
    result = runner.invoke(app, ["batch", str(files.yaml), "--dry-run", "-j", "2"])
    assert result.exit_code == ConfigError.exit_code == 78
    assert "MAILCLI_START_METHOD='thread': must be one of fork, spawn, forkserver" in (
        result.stderr
    )
    assert "Traceback" not in result.output + result.stderr


def test_available_cores_counts_the_cores_this_process_may_use() -> None:
    """The affinity mask where the system has one (a container may allow fewer than exist)."""
    cores = workers.available_cores()
    assert cores >= 1
    if hasattr(os, "sched_getaffinity"):
        assert cores == len(os.sched_getaffinity(0))


def test_the_pipeline_recipe_pickles_and_rebuilds_the_same_pipeline(tmp_path: Path) -> None:
    """The campaign (whose read-only mappings do not pickle) and a sender override with a
    non-ASCII, quoted name cross a pickle and make the same pipeline again."""
    files = make_campaign(tmp_path / "c", extra='headers: {X-Campaign: "spring"}\n')
    campaign = load_campaign(files.yaml)
    with pytest.raises(TypeError):
        pickle.dumps(campaign)  # why the recipe exists
    sender = '"Zoë \\"Z\\" Ünal, Acme" <zoe@example.com>'
    pipeline = Pipeline(campaign, sender=sender)
    rebuilt = pickle.loads(pickle.dumps(workers.PipelineRecipe.of(pipeline))).build()
    assert rebuilt.campaign == campaign
    assert isinstance(rebuilt.campaign.vars, MappingProxyType)
    assert rebuilt.sender == pipeline.sender == parse_mailbox(sender)
    assert rebuilt.sender.name == 'Zoë "Z" Ünal, Acme'


def test_spawned_workers_check_the_campaign_as_given_not_as_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A campaign changed after loading (here: without its `vars`) is what spawned workers
    check: every row then fails on the variable the file defines."""
    files = make_campaign(tmp_path / "c", many_rows(600))
    campaign = dataclasses.replace(load_campaign(files.yaml), vars=MappingProxyType({}))
    monkeypatch.setenv(workers.START_METHOD_ENV, "spawn")
    summary = dry_run(campaign, jobs=2)
    assert (summary.invalid, summary.would_send) == (600, 0)
    assert all("'company' is undefined" in p.problem for p in summary.problems)


def test_a_spawned_worker_that_cannot_rebuild_the_pipeline_reports_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A template deleted after the parent compiled it: a forked worker has the compiled copy,
    a spawned one reads the folder again and its InputFileError reaches the parent whole."""
    files = make_campaign(tmp_path / "c", many_rows(600))
    pipeline = Pipeline(load_campaign(files.yaml))
    (files.folder / "body.html.j2").unlink()
    monkeypatch.setenv(workers.START_METHOD_ENV, "spawn")
    with pytest.raises(InputFileError) as info:
        list(workers.checked(pipeline, 2))
    assert info.value.exit_code == 66
    assert info.value.message == "template not found: body.html.j2"
    assert info.value.path == str(files.folder / "body.html.j2")
    if "fork" in METHODS:
        monkeypatch.setenv(workers.START_METHOD_ENV, "fork")
        outcomes = [outcome for item, outcome in workers.checked(pipeline, 2)]
        assert len(outcomes) == 600 and all(isinstance(o, int) for o in outcomes)


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


@pytest.mark.parametrize("method", METHODS)
def test_an_error_raised_in_a_worker_keeps_its_exit_code_and_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """An included template is compiled when a worker first renders it: its syntax error
    reaches the parent as the same error, file and line included, however workers start."""
    monkeypatch.setenv(workers.START_METHOD_ENV, method)
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


def _children(pid: int, method: str) -> list[int]:
    """The worker processes of `pid`.

    A spawned worker is known by its command line; spawn's resource tracker is a child too, and
    before its exec any new child still shows the parent's command line.
    """
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    if method == "fork":
        return found
    pids: list[int] = []
    for child in found:
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue  # gone already
        if b"spawn_main" in command:
            pids.append(child)
    return pids


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("method", METHODS)
def test_a_killed_worker_is_a_clean_error_not_a_hang(tmp_path: Path, method: str) -> None:
    files = make_campaign(tmp_path / "c", many_rows(60_000))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailcli", "batch", str(files.yaml), "--dry-run", "-j", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, workers.START_METHOD_ENV: method},
    )
    deadline = time.monotonic() + 30
    pids: list[int] = []
    while not pids and time.monotonic() < deadline and proc.poll() is None:
        pids = _children(proc.pid, method)
        time.sleep(0.05)
    assert pids, "the dry run finished or failed before its workers started"
    os.kill(pids[0], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 70
    assert "a worker process died" in stderr
    assert "--jobs 1" in stderr
    assert "Traceback" not in stderr
