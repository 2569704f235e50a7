"""The campaign state database and lock, on real SQLite files and real flock() locks."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailcli.addresses import address_key
from mailcli.errors import ConfigError, ExitCode, InputFileError, TempFailError
from mailcli.state import CampaignLock, Entry, Outcome, SqliteState

ANN, BOB, CHLOE, DAN = "ann@example.com", "bob@example.org", "chloe@example.net", "dan@example.com"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "camp.sqlite"


@pytest.fixture
def state(db_path: Path) -> Iterator[SqliteState]:
    with SqliteState.open(db_path, "camp") as st:
        st.start_run()
        yield st


def peek(path: Path, email: str) -> tuple[Any, ...] | None:
    """The row of an address as an independent connection sees it."""
    with contextlib.closing(sqlite3.connect(path)) as other:
        row = other.execute(
            "SELECT status, code, reply, message_id, sent_at FROM recipients WHERE key=?",
            (address_key(email),),
        ).fetchone()
    return tuple(row) if row else None


def outcome(
    email: str, status: str, code: int | None = None, reply: str | None = None, **kw: Any
) -> Outcome:
    return Outcome(address_key(email), status, code, reply, **kw)


def fly(state: SqliteState, *recipients: tuple[str, int]) -> None:
    """Mark recipients in flight, passing what the state knew of each."""
    state.begin_flight((email, row, state.lookup(email)) for email, row in recipients)


# -- opening ------------------------------------------------------------------------------


def test_open_creates_schema_in_wal_mode_and_records_the_campaign(db_path: Path) -> None:
    """A new state file is a WAL database with the schema and the campaign's name in meta."""
    SqliteState.open(db_path, "camp").close()
    with contextlib.closing(sqlite3.connect(db_path)) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in other.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"meta", "recipients", "runs"} <= tables
        assert other.execute("SELECT value FROM meta WHERE key='campaign'").fetchone() == ("camp",)


def test_open_for_another_campaign_is_a_config_error_naming_both(db_path: Path) -> None:
    """A state file of campaign 'camp' refuses to serve campaign 'other' (exit 78)."""
    SqliteState.open(db_path, "camp").close()
    with pytest.raises(ConfigError) as info:
        SqliteState.open(db_path, "other")
    assert info.value.exit_code == ExitCode.CONFIG == 78
    assert "'camp'" in str(info.value) and "'other'" in str(info.value)


def test_a_file_that_is_not_a_database_is_a_config_error(tmp_path: Path) -> None:
    """Garbage bytes in the state file give ConfigError naming the file, not a traceback."""
    path = tmp_path / "garbage.sqlite"
    path.write_bytes(os.urandom(64) + b"this is not an sqlite database" * 200)
    with pytest.raises(ConfigError) as info:
        SqliteState.open(path, "camp")
    assert info.value.exit_code == 78
    assert str(path) in str(info.value)


def test_create_false_on_a_missing_file_is_an_input_file_error(db_path: Path) -> None:
    """Reading the state of a campaign never sent is exit 66, and creates nothing."""
    with pytest.raises(InputFileError) as info:
        SqliteState.open(db_path, "camp", create=False)
    assert info.value.exit_code == ExitCode.NOINPUT == 66
    assert not db_path.exists()


# -- durability ordering ------------------------------------------------------------------


def test_begin_flight_commits_the_unknown_mark_before_returning(
    state: SqliteState, db_path: Path
) -> None:
    """Right after begin_flight, another connection already sees the group as 'unknown'."""
    fly(state, (ANN, 1), (BOB, 2))
    assert peek(db_path, ANN) == ("unknown", None, None, None, None)
    assert peek(db_path, BOB) == ("unknown", None, None, None, None)


def test_recorded_outcomes_are_committed_by_flush(state: SqliteState, db_path: Path) -> None:
    """record() only buffers; flush() commits status, code, reply, Message-ID and sent_at."""
    fly(state, (ANN, 1))
    state.record(outcome(ANN, "sent", 250, "2.0.0 queued", message_id="<m1@example.com>"))
    assert peek(db_path, ANN) == ("unknown", None, None, None, None)
    state.flush()
    row = peek(db_path, ANN)
    assert row is not None
    assert row[:4] == ("sent", 250, "2.0.0 queued", "<m1@example.com>")
    assert isinstance(row[4], str) and row[4]


def test_recorded_outcomes_are_committed_with_the_next_group(
    state: SqliteState, db_path: Path
) -> None:
    """The next begin_flight commits the previous group's outcomes along with its own marks."""
    fly(state, (ANN, 1))
    state.record(outcome(ANN, "failed", 550, "5.1.1 no such user"))
    assert peek(db_path, ANN)[0] == "unknown"
    fly(state, (BOB, 2))
    assert peek(db_path, ANN) == ("failed", 550, "5.1.1 no such user", None, None)
    assert peek(db_path, BOB)[0] == "unknown"


# -- attempts and run_tries ---------------------------------------------------------------


def test_run_tries_count_within_a_run_and_restart_in_the_next(state: SqliteState) -> None:
    """attempts counts every try ever; run_tries only this run's, restarting at 1."""
    fly(state, (ANN, 1))
    state.record(outcome(ANN, "deferred", 451, "try later"))
    fly(state, (ANN, 1))
    entry = state.lookup(ANN)
    assert entry is not None and (entry.attempts, entry.run_tries) == (2, 2)
    state.record(outcome(ANN, "deferred", 451, "try later"))
    second_run = state.start_run()
    fly(state, (ANN, 1))
    entry = state.lookup(ANN)
    assert entry is not None
    assert (entry.attempts, entry.run_tries, entry.run) == (3, 1, second_run)


# -- revert -------------------------------------------------------------------------------


def test_revert_restores_the_previous_status(state: SqliteState, db_path: Path) -> None:
    """A deferred recipient marked in flight but never handed over is deferred again."""
    fly(state, (ANN, 1))
    state.record(outcome(ANN, "deferred", 451, "busy", next_at=123.0))
    state.flush()
    before = state.lookup(ANN)
    fly(state, (ANN, 1))
    assert peek(db_path, ANN)[0] == "unknown"
    state.revert(ANN, before)
    state.flush()
    assert state.lookup(ANN) == before
    assert peek(db_path, ANN)[0] == "deferred"


def test_revert_of_a_new_recipient_removes_it(state: SqliteState, db_path: Path) -> None:
    """A recipient the state never knew, reverted, is gone again (it stays pending)."""
    fly(state, (ANN, 1))
    state.revert(ANN, None)
    state.flush()
    assert state.lookup(ANN) is None
    assert peek(db_path, ANN) is None


# -- invalid rows -------------------------------------------------------------------------


def test_record_invalid_is_failed_without_code_and_not_rejected(
    state: SqliteState, db_path: Path
) -> None:
    """An invalid row is 'failed' with reply 'invalid: ...' and no code; only a 550 is rejected."""
    state.record_invalid(ANN, 3, "undefined variable 'first_name'")
    fly(state, (BOB, 4))
    state.record(outcome(BOB, "failed", 550, "5.1.1 no such user"))
    state.flush()
    assert peek(db_path, ANN) == (
        "failed",
        None,
        "invalid: undefined variable 'first_name'",
        None,
        None,
    )
    invalid, refused = state.lookup(ANN), state.lookup(BOB)
    assert invalid is not None and refused is not None
    assert (invalid.status, invalid.code, invalid.rejected) == ("failed", None, False)
    assert (refused.status, refused.code, refused.rejected) == ("failed", 550, True)


def test_entry_rejected_depends_on_the_code() -> None:
    """Entry.rejected: failed with an SMTP code; not failed-invalid, not deferred."""
    assert Entry("failed", 1, 1, 1, None, 550).rejected
    assert not Entry("failed", 0, None, 0, None, None).rejected
    assert not Entry("deferred", 1, 1, 1, None, 451).rejected


# -- reading ------------------------------------------------------------------------------


def sample(state: SqliteState) -> None:
    """Rows 5, 1, 3, 2: failed, sent, unknown, deferred (marked out of row order)."""
    fly(state, (DAN, 5), (ANN, 1), (CHLOE, 3), (BOB, 2))
    state.record(outcome(DAN, "failed", 550, "no such user"))
    state.record(outcome(ANN, "sent", 250, "ok", message_id="<a@x>"))
    state.record(outcome(BOB, "deferred", 451, "later", next_at=50.0))
    state.flush()


def test_counts_has_every_status(state: SqliteState) -> None:
    """counts() gives each of the five statuses, zero included."""
    sample(state)
    assert state.counts() == {"pending": 0, "sent": 1, "failed": 1, "deferred": 1, "unknown": 1}


def test_problems_are_the_undelivered_in_row_order(state: SqliteState) -> None:
    """problems() lists failed, deferred and unknown recipients by row; sent ones are left out."""
    sample(state)
    got = [(p.row, p.email, p.status, p.code, p.reply) for p in state.problems()]
    assert got == [
        (2, BOB, "deferred", 451, "later"),
        (3, CHLOE, "unknown", None, None),
        (5, DAN, "failed", 550, "no such user"),
    ]


def test_next_retry_only_sees_this_runs_deferred_rows_below_the_limit(state: SqliteState) -> None:
    """next_retry ignores earlier runs' deferred rows and rows that used up their tries."""
    fly(state, (ANN, 1))
    state.record(outcome(ANN, "deferred", 451, "later", next_at=10.0))  # run 1
    state.flush()
    state.start_run()
    assert state.next_retry(3) is None
    fly(state, (BOB, 2), (CHLOE, 3))
    state.record(outcome(BOB, "deferred", 451, "later", next_at=200.0))
    state.record(outcome(CHLOE, "deferred", 451, "later", next_at=300.0))
    fly(state, (CHLOE, 3))  # CHLOE's second try in this run
    state.record(outcome(CHLOE, "deferred", 451, "later", next_at=150.0))
    state.flush()
    assert state.next_retry(3) == 150.0
    assert state.next_retry(2) == 200.0
    assert state.next_retry(1) is None


# -- the lock -----------------------------------------------------------------------------


def test_second_lock_in_the_same_process_names_this_pid(tmp_path: Path) -> None:
    """A second CampaignLock is refused with exit 75 naming the holder; free after release."""
    path = tmp_path / "camp.lock"
    first = CampaignLock(path, "camp")
    first.acquire()
    with pytest.raises(TempFailError) as info:
        CampaignLock(path, "camp").acquire()
    assert info.value.exit_code == ExitCode.TEMPFAIL == 75
    assert f"pid {os.getpid()} " in str(info.value)
    first.release()
    with CampaignLock(path, "camp"):
        pass


HOLDER = textwrap.dedent("""\
    import sys, time
    from pathlib import Path
    from mailcli.state import CampaignLock
    lock = CampaignLock(Path(sys.argv[1]), "camp")
    lock.acquire()
    print("locked", flush=True)
    time.sleep(120)
    """)


def test_lock_held_by_another_process_and_released_by_its_death(tmp_path: Path) -> None:
    """Another process's lock is refused at once naming its pid; after kill -9 it is free."""
    path = tmp_path / "camp.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        with pytest.raises(TempFailError) as info:
            CampaignLock(path, "camp").acquire()
        assert time.monotonic() - started < 1.0
        assert f"pid {holder.pid} " in str(info.value)
    finally:
        holder.kill()
        holder.wait(timeout=10)
        holder.stdout.close()  # type: ignore[union-attr]
    lock = CampaignLock(path, "camp")
    lock.acquire()
    assert f"pid {os.getpid()} " in path.read_text(encoding="utf-8")
    lock.release()
