"""Campaign state: the `StateStore` seam the engine talks to, and its SQLite implementation.

Nothing outside this module knows how state is kept (no SQL anywhere else): the batch engine and
`status` call the store's methods. SQLite is the default: one database per campaign, and a lock
so that only one run sends.

Every recipient has a status: `pending`, `sent` (with the server's reply and the Message-ID),
`failed` (a permanent refusal or an invalid row), `deferred` (a 4xx, retried later) or `unknown`.

The ordering that makes "nobody gets a message twice" hold: a group of recipients is marked
`unknown` and that is committed (fsync'd) *before* their messages are handed to the server; each
gets its real status once the server has replied. A crash in between leaves `unknown` (the server
may have queued the message), which is never resent unless the user asks (`--retry-unknown`).
Committing a group at a time keeps the cost to one fsync per group and the unknown window to at
most one group.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import sys
import tempfile
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Protocol

from mailcli.addresses import address_key
from mailcli.delivery import RECIPIENT_STATUSES, DeliveryStatus
from mailcli.errors import ConfigError, InputFileError, TempFailError

SCHEMA_VERSION = 1
STATUSES = tuple(s.value for s in RECIPIENT_STATUSES)
PROBLEM_STATUSES = (DeliveryStatus.FAILED, DeliveryStatus.DEFERRED, DeliveryStatus.UNKNOWN)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS recipients (
    key TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    row INTEGER,
    status TEXT NOT NULL CHECK (status IN ('pending','sent','failed','deferred','unknown')),
    attempts INTEGER NOT NULL DEFAULT 0,
    run INTEGER,
    run_tries INTEGER NOT NULL DEFAULT 0,
    next_at REAL,
    code INTEGER,
    reply TEXT,
    message_id TEXT,
    updated TEXT NOT NULL,
    sent_at TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS recipients_status ON recipients (status);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    started TEXT NOT NULL,
    finished TEXT,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    summary TEXT
);
"""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True, slots=True)
class Entry:
    """What the state says about one recipient."""

    status: DeliveryStatus
    attempts: int
    run: int | None
    run_tries: int
    next_at: float | None
    code: int | None = None

    @property
    def rejected(self) -> bool:
        """Failed because a server refused it (an invalid row has no SMTP code)."""
        return self.status == "failed" and self.code is not None


@dataclass(frozen=True, slots=True)
class Outcome:
    """The status to record for one recipient after the server's answer."""

    key: str
    status: DeliveryStatus
    code: int | None = None
    reply: str | None = None
    message_id: str | None = None
    next_at: float | None = None


@dataclass(frozen=True, slots=True)
class RecipientState:
    """A row of `mailcli status --failed`."""

    email: str
    row: int | None
    status: DeliveryStatus
    code: int | None
    reply: str | None
    attempts: int
    updated: str


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run as the state remembers it (the last one is shown by `status`)."""

    id: int
    started: str
    finished: str | None
    pid: int
    host: str
    exit_code: int | None
    sent: int | None


class StateStore(Protocol):
    """Where a campaign's progress is kept: what the batch engine and `status` rely on.

    The ordering rule is the store's to keep: `begin_flight` makes the group durable as
    `unknown` before it returns, and outcomes recorded since the last flight are committed with
    the next one (or by `flush`).
    """

    run_id: int | None

    @property
    def empty(self) -> bool:
        """No recipient recorded yet (a campaign's first run)."""
        ...

    def lookup(self, email: str) -> Entry | None:
        """The recorded state of an address, or None if no run has met it yet."""
        ...

    def start_run(self) -> int:
        """Record the start of a run; returns its id."""
        ...

    def finish_run(self, summary: Mapping[str, object]) -> None:
        """Record the end of the run and its summary."""
        ...

    def begin_flight(self, group: Iterable[tuple[str, int, Entry | None]]) -> None:
        """Commit buffered outcomes and mark (email, row, previous entry) `unknown`, durably."""
        ...

    def record(self, outcome: Outcome) -> None:
        """Buffer an outcome for a recipient of the group in flight."""
        ...

    def record_invalid(self, email: str, row: int, problem: str) -> None:
        """An invalid row skipped with --skip-invalid: `failed`, with the problem as reply."""
        ...

    def revert(self, email: str, entry: Entry | None) -> None:
        """Undo the flight mark of a message that was never handed over."""
        ...

    def flush(self) -> None:
        """Commit what is buffered now."""
        ...

    def next_retry(self, max_tries: int) -> float | None:
        """When the earliest deferred recipient of this run may be tried again (None: none)."""
        ...

    def counts(self) -> dict[DeliveryStatus, int]:
        """Recipients per status."""
        ...

    def problems(
        self, statuses: tuple[DeliveryStatus, ...] = PROBLEM_STATUSES
    ) -> list[RecipientState]:
        """Recipients in the given statuses, in list order."""
        ...

    def last_run(self) -> RunRecord | None:
        """The most recent run, or None."""
        ...

    def close(self) -> None:
        """Commit and close (and release the run's lock, if it holds one)."""
        ...


def lock_path(state_path: Path) -> Path:
    """The lock file beside a SQLite state database."""
    return state_path.with_name(state_path.name + ".lock")


@contextlib.contextmanager
def scratch_copy(path: Path) -> Iterator[Path]:
    """A throw-away copy of a state database (none if there is none yet), removed afterwards.

    A run into the outbox (tests, MAILCLI_SUPPRESS_SEND) starts from the campaign's real
    progress but must never mark anyone as sent in it.
    """
    with tempfile.TemporaryDirectory(prefix="mailcli-state-") as folder:
        copy = Path(folder) / path.name
        if path.exists():
            try:
                source = sqlite3.connect(path)
                target = sqlite3.connect(copy)
                with source, target:
                    source.backup(target)  # consistent even while a run writes
                source.close()
                target.close()
            except sqlite3.DatabaseError as exc:
                raise ConfigError(f"cannot read the state file: {exc}", path=path) from None
        yield copy


def open_state(
    path: Path, campaign: str, *, create: bool = True, for_run: bool = False
) -> SqliteState:
    """The store of a campaign; `for_run` also takes the campaign's lock (exit 75 if held)."""
    lock = None
    if for_run:
        lock = CampaignLock(lock_path(path), campaign)
        lock.acquire()
    try:
        state = SqliteState.open(path, campaign, create=create)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    state.lock = lock
    return state


class CampaignLock:
    """An exclusive lock on a campaign, held for the length of a run.

    flock() locks belong to the open file: the kernel drops them when the process dies, even by
    kill -9, so a crashed run never leaves a stale lock behind.
    """

    def __init__(self, path: Path, campaign: str) -> None:
        self.path = path
        self.campaign = campaign
        self._handle: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock or raise TempFailError (exit 75) naming the run that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115
        if not _try_lock(handle):
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise TempFailError(
                f"campaign '{self.campaign}' is already being sent by {holder}",
                hint=f"wait for it to finish (lock file {self.path})",
            )
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {_now()}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        """Release the lock (closing the file is what releases it)."""
        if self._handle is not None:
            with contextlib.suppress(OSError):
                self._handle.seek(0)
                self._handle.truncate()
            self._handle.close()
            self._handle = None

    def __enter__(self) -> CampaignLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _try_lock(handle: IO[str]) -> bool:
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        import msvcrt

        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class SqliteState:
    """The SQLite state database of one campaign (WAL, synchronous=FULL)."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self.db = db
        self.path = path
        self.lock: CampaignLock | None = None
        self.run_id: int | None = None
        self._pending: list[Outcome] = []
        self._reverts: list[tuple[str, Entry | None]] = []

    @classmethod
    def open(cls, path: Path, campaign: str, *, create: bool = True) -> SqliteState:
        """Open (or create) the database; check that it belongs to this campaign."""
        if not create and not path.exists():
            raise InputFileError("no state yet: the campaign has not been sent", path=path)
        try:
            # The folder mailcli makes for its state is private: the database holds every
            # recipient's address and the server's replies about them.
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            db = sqlite3.connect(path, isolation_level=None, timeout=30)
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: the 'unknown' mark must be on disk before a message is handed over, even if
            # the machine loses power right after.
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(SCHEMA)
            found = db.execute("SELECT value FROM meta WHERE key='campaign'").fetchone()
            if found is None:
                db.execute(
                    "INSERT INTO meta VALUES ('campaign', ?), ('schema', ?), ('created', ?)",
                    (campaign, str(SCHEMA_VERSION), _now()),
                )
            elif found[0] != campaign:
                db.close()
                raise ConfigError(
                    f"the state file belongs to campaign '{found[0]}', not '{campaign}'",
                    path=path,
                    hint="give this campaign its own `state:` path",
                )
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"cannot use the state file: {exc}", path=path) from None
        except OSError as exc:
            raise InputFileError(
                f"cannot create the state file: {exc.strerror}", path=path
            ) from None
        return cls(db, path)

    def close(self) -> None:
        """Commit what is buffered, close, and release the lock if this store holds it."""
        try:
            self.flush()
            self.db.close()
        finally:
            if self.lock is not None:
                self.lock.release()
                self.lock = None

    def __enter__(self) -> SqliteState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- runs -----------------------------------------------------------------------------

    def start_run(self) -> int:
        """Record the start of a run; its id tells this run's retries from earlier ones."""
        cur = self.db.execute(
            "INSERT INTO runs (started, pid, host) VALUES (?, ?, ?)",
            (_now(), os.getpid(), socket.gethostname()),
        )
        self.run_id = int(cur.lastrowid or 0)
        return self.run_id

    def finish_run(self, summary: Mapping[str, object]) -> None:
        """Record the end of a run and its summary."""
        self.flush()
        self.db.execute(
            "UPDATE runs SET finished=?, summary=? WHERE id=?",
            (_now(), json.dumps(summary), self.run_id),
        )

    # -- recipients -----------------------------------------------------------------------

    @property
    def empty(self) -> bool:
        """No recipient recorded yet (a campaign's first run)."""
        return self.db.execute("SELECT 1 FROM recipients LIMIT 1").fetchone() is None

    def lookup(self, email: str) -> Entry | None:
        """The recorded state of an address, or None if no run has met it yet."""
        row = self.db.execute(
            "SELECT status, attempts, run, run_tries, next_at, code FROM recipients WHERE key=?",
            (address_key(email),),
        ).fetchone()
        if row is None:
            return None
        return Entry(DeliveryStatus(row[0]), *row[1:])

    def begin_flight(self, group: Iterable[tuple[str, int, Entry | None]]) -> None:
        """Commit buffered outcomes and mark a group `unknown`, durably, before it is sent.

        `group` holds (email, row, previous entry) for each message about to be handed over.
        """
        now = _now()
        run = self.run_id
        rows = [
            (
                address_key(email),
                email,
                row,
                run,
                entry.run_tries + 1 if entry is not None and entry.run == run else 1,
                now,
            )
            for email, row, entry in group
        ]
        with self._transaction():
            self._write_outcomes()
            self.db.executemany(
                "INSERT INTO recipients (key, email, row, status, attempts, run, run_tries,"
                " updated) VALUES (?, ?, ?, 'unknown', 1, ?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET status='unknown', attempts=attempts+1, "
                "run=excluded.run, run_tries=excluded.run_tries, updated=excluded.updated,"
                " email=excluded.email, row=excluded.row",
                rows,
            )

    def record(self, outcome: Outcome) -> None:
        """Buffer an outcome; it is committed with the next group (or by flush)."""
        self._pending.append(outcome)

    def record_invalid(self, email: str, row: int, problem: str) -> None:
        """An invalid row sent with --skip-invalid: `failed`, with the problem as the reply."""
        self._pending.append(
            Outcome(address_key(email), DeliveryStatus.FAILED, None, f"invalid: {problem}")
        )
        self.db.execute(
            "INSERT INTO recipients (key, email, row, status, updated) "
            "VALUES (?, ?, ?, 'pending', ?) ON CONFLICT (key) DO NOTHING",
            (address_key(email), email, row, _now()),
        )

    def revert(self, email: str, entry: Entry | None) -> None:
        """Undo a flight mark for a message that was never handed over."""
        self._reverts.append((address_key(email), entry))

    def flush(self) -> None:
        """Commit buffered outcomes now."""
        if self._pending or self._reverts:
            with self._transaction():
                self._write_outcomes()

    def _write_outcomes(self) -> None:
        now = _now()
        self.db.executemany(
            "UPDATE recipients SET status=?, code=?, reply=?, message_id=COALESCE(?, "
            "message_id), next_at=?, updated=?, sent_at=CASE WHEN ?='sent' THEN ? ELSE "
            "sent_at END WHERE key=?",
            [
                (
                    str(o.status),
                    o.code,
                    o.reply,
                    o.message_id,
                    o.next_at,
                    now,
                    str(o.status),
                    now,
                    o.key,
                )
                for o in self._pending
            ],
        )
        self._pending.clear()
        for key, entry in self._reverts:
            if entry is None:
                self.db.execute("DELETE FROM recipients WHERE key=?", (key,))
            else:
                self.db.execute(
                    "UPDATE recipients SET status=?, attempts=?, run=?, run_tries=?, next_at=? "
                    "WHERE key=?",
                    (
                        str(entry.status),
                        entry.attempts,
                        entry.run,
                        entry.run_tries,
                        entry.next_at,
                        key,
                    ),
                )
        self._reverts.clear()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- reading --------------------------------------------------------------------------

    def counts(self) -> dict[DeliveryStatus, int]:
        """Recipients per status."""
        counts = dict.fromkeys(RECIPIENT_STATUSES, 0)
        for status, n in self.db.execute("SELECT status, COUNT(*) FROM recipients GROUP BY 1"):
            counts[DeliveryStatus(status)] = n
        return counts

    def next_retry(self, max_tries: int) -> float | None:
        """When the earliest deferred recipient of this run may be tried again (None: none)."""
        row = self.db.execute(
            "SELECT MIN(next_at) FROM recipients WHERE status='deferred' AND run=? "
            "AND run_tries < ?",
            (self.run_id, max_tries),
        ).fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def problems(
        self, statuses: tuple[DeliveryStatus, ...] = PROBLEM_STATUSES
    ) -> list[RecipientState]:
        """Recipients in the given statuses, in list order."""
        marks = ",".join("?" * len(statuses))
        rows = self.db.execute(
            f"SELECT email, row, status, code, reply, attempts, updated FROM recipients "
            f"WHERE status IN ({marks}) ORDER BY row, email",
            [s.value for s in statuses],
        )
        return [RecipientState(r[0], r[1], DeliveryStatus(r[2]), *r[3:]) for r in rows]

    def by_message_id(self, message_ids: Collection[str]) -> dict[str, str]:
        """The recipient each of these Message-IDs was sent to (those the state knows)."""
        ids = list(set(message_ids))
        found: dict[str, str] = {}
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            marks = ",".join("?" * len(part))
            found.update(
                self.db.execute(
                    f"SELECT message_id, email FROM recipients WHERE message_id IN ({marks})", part
                ).fetchall()
            )
        return found

    def last_run(self) -> RunRecord | None:
        """The most recent run, with the exit code and sent count of its summary."""
        row = self.db.execute(
            "SELECT id, started, finished, pid, host, summary FROM runs ORDER BY id DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        summary = json.loads(row[5]) if row[5] else {}
        run_id, started, finished, pid, host = row[:5]
        return RunRecord(
            run_id, started, finished, pid, host, summary.get("exit_code"), summary.get("sent")
        )
