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
import errno
import functools
import inspect
import json
import logging
import os
import socket
import sqlite3
import sys
import tempfile
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, NamedTuple, Protocol, TypeVar

from mailcli.addresses import address_key
from mailcli.delivery import RECIPIENT_STATUSES, DeliveryStatus
from mailcli.errors import (
    CantCreateError,
    ConfigError,
    InputFileError,
    MailcliError,
    TempFailError,
)
from mailcli.fingerprint import Fingerprint, Recorded
from mailcli.sequence import UNIT_SEP, Clock, Timing, step_of, system_clock, unit_key

# 2: recipients.first_at and the attempts table (a file of version 1 is upgraded on open).
SCHEMA_VERSION = 2
STATUSES = tuple(s.value for s in RECIPIENT_STATUSES)
PROBLEM_STATUSES = (DeliveryStatus.FAILED, DeliveryStatus.DEFERRED, DeliveryStatus.UNKNOWN)

RECIPIENTS_TABLE = """
CREATE TABLE IF NOT EXISTS recipients (
    key TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    row INTEGER,
    status TEXT NOT NULL
        CHECK (status IN ('pending','sent','failed','deferred','unknown','skipped')),
    attempts INTEGER NOT NULL DEFAULT 0,
    run INTEGER,
    run_tries INTEGER NOT NULL DEFAULT 0,
    next_at REAL,
    code INTEGER,
    reply TEXT,
    message_id TEXT,
    updated TEXT NOT NULL,
    sent_at TEXT,
    first_at TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS recipients_status ON recipients (status);
"""
SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
    + RECIPIENTS_TABLE
    + """CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    started TEXT NOT NULL,
    finished TEXT,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    summary TEXT
);
-- The send log: one row per recorded outcome, appended in the outcomes' transaction. No index
-- on `key`: a list's addresses come in no key order, so each group would write a page of the
-- index per message (about +40% on the state's cost per message); the rare lookup of one
-- recipient scans the log instead (about 0.2 s per million tries).
CREATE TABLE IF NOT EXISTS attempts (
    key TEXT NOT NULL,
    run INTEGER,
    at TEXT NOT NULL,
    status TEXT NOT NULL,
    code INTEGER,
    reply TEXT,
    message_id TEXT
);
-- When a run first met each row of a sequence's list (a step's default start).
CREATE TABLE IF NOT EXISTS members (
    key TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    row INTEGER,
    met TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS fingerprints (
    id INTEGER PRIMARY KEY,
    recorded TEXT NOT NULL,
    file TEXT NOT NULL,
    host TEXT NOT NULL,
    digest TEXT NOT NULL,
    content TEXT NOT NULL,
    changes TEXT NOT NULL
);
"""
)
# A RecipientRecord: the last try's time is `updated`, which only a try (or its outcome) sets.
RECORD_COLUMNS = (
    "email, row, status, code, reply, message_id, first_at, "
    "CASE WHEN attempts > 0 THEN updated END, attempts, run, key"
)


# A run's record until it finishes: what a run that never recorded its end (killed, or out of
# disk space) ended as.
UNFINISHED = json.dumps(
    {
        "exit_code": 75,
        "error": "the run did not record its end (killed, or the state file could not be written)",
    }
)


# What one recipient sent in one attempt costs the state file (its row, its index entry, its
# line in the attempts log), measured on a 20,000-recipient campaign: README "When things go
# wrong".
BYTES_PER_RECIPIENT = 410


def lock_timeout() -> float:
    """Seconds a run waits for a state file another program holds locked
    (`MAILCLI_STATE_TIMEOUT`, default 30), before it stops with exit 75."""
    text = os.environ.get("MAILCLI_STATE_TIMEOUT", "")
    try:
        value = float(text) if text else 30.0
    except ValueError:
        raise ConfigError(
            f"MAILCLI_STATE_TIMEOUT must be a number of seconds, not {text!r}"
        ) from None
    if not 0 < value <= 3600:
        raise ConfigError(f"MAILCLI_STATE_TIMEOUT must be from 0 to 3600 seconds, not {text!r}")
    return value


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of a file, or None when it is gone."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _upgrade(db: sqlite3.Connection) -> None:
    """Bring a state file of schema 1 up to SCHEMA_VERSION: SCHEMA has created the tables it
    lacked; the column `first_at` is added here. Older mailcli versions name the columns they
    write, so they keep working with an upgraded file."""
    if any(c[1] == "first_at" for c in db.execute("PRAGMA table_info(recipients)")):
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        # Looked at again under the write lock: another process may have just upgraded it.
        if not any(c[1] == "first_at" for c in db.execute("PRAGMA table_info(recipients)")):
            db.execute("ALTER TABLE recipients ADD COLUMN first_at TEXT")
        db.execute(
            "UPDATE meta SET value=? WHERE key='schema' AND CAST(value AS INTEGER) < ?",
            (str(SCHEMA_VERSION), SCHEMA_VERSION),
        )
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


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


class Flight(NamedTuple):
    """One message about to be handed over: its recipient's address and row, what the state
    said of it before, and the step of a sequence it is (None: a one-message campaign)."""

    email: str
    row: int
    entry: Entry | None
    step: str | None = None


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
    step: str | None = None  # the step of a sequence (None: a one-message campaign)


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


@dataclass(frozen=True, slots=True)
class RecipientRecord:
    """Everything the state knows of one recipient: a row of `status --export`.

    Times are ISO 8601 in UTC; `first_at` is None for a recipient never tried, or first tried
    before the state recorded it (a state file of schema 1); `last_at` is None until a try.
    """

    email: str
    row: int | None
    status: DeliveryStatus
    code: int | None
    reply: str | None
    message_id: str | None
    first_at: str | None
    last_at: str | None
    tries: int
    run: int | None
    step: str | None = None  # the step of a sequence (None: a one-message campaign)

    @classmethod
    def of(cls, r: Sequence[Any]) -> RecipientRecord:
        """A record from a row of RECORD_COLUMNS (the state's key last)."""
        return cls(
            r[0],
            r[1],
            DeliveryStatus(r[2]),
            r[3],
            r[4],
            r[5],
            r[6],
            r[7],
            r[8],
            r[9],
            step_of(r[10]),
        )


@dataclass(frozen=True, slots=True)
class Attempt:
    """One recorded outcome of a recipient (`status --recipient`): which run, when, what."""

    run: int | None
    at: str
    status: DeliveryStatus
    code: int | None
    reply: str | None
    message_id: str | None


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

    def lookup(self, email: str, step: str | None = None) -> Entry | None:
        """The recorded state of an address (or of one step of it), or None if no run has
        met it yet."""
        ...

    def start_run(self) -> int:
        """Record the start of a run; returns its id."""
        ...

    def finish_run(self, summary: Mapping[str, object]) -> None:
        """Record the end of the run and its summary."""
        ...

    def begin_flight(self, group: Iterable[tuple[str, int, Entry | None] | Flight]) -> None:
        """Commit buffered outcomes and mark (email, row, previous entry[, step]) `unknown`,
        durably."""
        ...

    def record(self, outcome: Outcome) -> None:
        """Buffer an outcome for a recipient of the group in flight."""
        ...

    def record_invalid(self, email: str, row: int, problem: str, step: str | None = None) -> None:
        """An invalid row skipped with --skip-invalid: `failed`, with the problem as reply."""
        ...

    def revert(self, email: str, entry: Entry | None, step: str | None = None) -> None:
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

    def fingerprints(self) -> list[Recorded]:
        """The campaign's fingerprint history, oldest first (see `mailcli.fingerprint`)."""
        ...

    def add_fingerprint(
        self, fingerprint: Fingerprint, changes: Sequence[str], *, after: int | None
    ) -> bool:
        """Record a fingerprint unless another was recorded since the entry `after`."""
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
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise CantCreateError(
                f"cannot create the campaign's lock file: {exc.strerror}",
                path=self.path,
                hint="the folder of the state file must be writable by the user running mailcli",
            ) from None
        if not _try_lock(handle):
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise TempFailError(
                f"campaign '{self.campaign}' is already being sent by {holder}",
                hint=f"wait for it to finish (lock file {self.path})",
            )
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {_now()}\n")
            handle.flush()
        except OSError as exc:
            handle.close()
            raise state_problem(exc, self.path) from None
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


log = logging.getLogger(__name__)
_T = TypeVar("_T")


class StateError(TempFailError):
    """The state file could not be written mid-run: no space, no permission, removed, locked
    by another program. Exit 75: once the cause is fixed the run is started again, and nobody
    is sent twice (what was handed over is recorded as `unknown` before it left)."""


def state_problem(exc: BaseException, path: Path) -> StateError:
    """A failure of SQLite (or of the file system under it) as the user should read it."""
    name = str(getattr(exc, "sqlite_errorname", "") or "")
    code = getattr(exc, "errno", None)
    text = str(exc)
    if name == "SQLITE_FULL" or code in (errno.ENOSPC, errno.EDQUOT) or "disk is full" in text:
        what, todo = "no space left on its device", "free some space"
    elif (
        name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH"))
        or code in (errno.EACCES, errno.EPERM, errno.EROFS)
        or "readonly" in text
    ):
        what = "cannot write it (no permission, or a read-only file system)"
        todo = "give the user running mailcli write access to the file and its folder"
    elif name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
        what, todo = "locked by another program", "let that program finish"
    elif name.startswith("SQLITE_IOERR") or isinstance(exc, OSError):
        what, todo = f"an input/output error ({text})", "check the disk"
    else:
        what, todo = text, "check the file"
    return StateError(
        f"state file: {what}; {todo} and run again (what was handed over is recorded as "
        "unknown: nobody is sent twice)",
        path=path,
    )


def _sqlite_reported(cls: type[_T]) -> type[_T]:
    """Every public method of the store reports SQLite and file system failures as a
    StateError (exit 75) naming the file, never as an internal error."""
    for name, method in list(vars(cls).items()):
        if not name.startswith("_") and inspect.isfunction(method):
            setattr(cls, name, _translating(method))
    return cls


def _translating(method: Any) -> Any:
    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (sqlite3.Error, OSError) as exc:
            raise state_problem(exc, self.path) from None

    return call


def _flight(item: tuple[str, int, Entry | None] | Flight) -> Flight:
    return item if isinstance(item, Flight) else Flight(*item)


@_sqlite_reported
class SqliteState:
    """The SQLite state database of one campaign (WAL, synchronous=FULL)."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self.db = db
        self.path = path
        self.lock: CampaignLock | None = None
        self.run_id: int | None = None
        self._pending: list[Outcome] = []
        self._reverts: list[tuple[str, Entry | None]] = []
        self._skips: list[tuple[str, str, int]] = []  # (key, email, row) of skipped steps
        self._identity: tuple[int, int] | None = None  # the file's (device, inode) at open
        # The clock of the times it records (a sequence's steps are timed by them): the
        # system's, or the one a library caller gives the run.
        self.clock: Clock = system_clock

    def _stamp(self) -> str:
        return self.clock().astimezone(UTC).isoformat(timespec="seconds")

    @classmethod
    def open(cls, path: Path, campaign: str, *, create: bool = True) -> SqliteState:
        """Open (or create) the database; check that it belongs to this campaign."""
        existed = path.exists()
        if not create and not existed:
            raise InputFileError("no state yet: the campaign has not been sent", path=path)
        try:
            # The folder mailcli makes for its state is private: the database holds every
            # recipient's address and the server's replies about them.
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            db = sqlite3.connect(path, isolation_level=None, timeout=lock_timeout())
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
            else:
                _upgrade(db)
        except sqlite3.DatabaseError as exc:
            name = str(getattr(exc, "sqlite_errorname", "") or "")
            if name in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
                raise ConfigError(f"cannot use the state file: {exc}", path=path) from None
            if not existed:
                raise CantCreateError(
                    f"cannot create the state file: {state_problem(exc, path).message}",
                    path=path,
                ) from None
            raise state_problem(exc, path) from None
        except OSError as exc:
            raise CantCreateError(
                f"cannot create the state file: {exc.strerror}",
                path=path,
                hint="its folder must be writable by the user running mailcli",
            ) from None
        state = cls(db, path)
        state._identity = _identity(path)
        return state

    @classmethod
    def read_only(cls, path: Path) -> SqliteState | None:
        """The state file opened for reading only (a dry run writes nothing); None when
        there is none yet."""
        if not path.is_file():
            return None
        try:
            db = sqlite3.connect(
                f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None
            )
            db.execute("SELECT 1 FROM recipients LIMIT 1").fetchall()
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"cannot read the state file: {exc}", path=path) from None
        return cls(db, path)

    def close(self) -> None:
        """Commit what is buffered, close, and release the lock if this store holds it.

        Never raises: a run that could not write its state has said so already (what was not
        written stays `unknown`, never resent).
        """
        try:
            self.flush()
        except MailcliError as exc:
            log.info("%s", exc)
        finally:
            with contextlib.suppress(sqlite3.Error):
                self.db.close()
            if self.lock is not None:
                self.lock.release()
                self.lock = None

    def __enter__(self) -> SqliteState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- runs -----------------------------------------------------------------------------

    def start_run(self) -> int:
        """Record the start of a run; its id tells this run's retries from earlier ones.

        The record says from the start that the run did not finish (exit 75); `finish_run`
        replaces that with how it did end. A run killed, or one that could not write its end
        (a full disk), is so recorded as what it was.
        """
        cur = self.db.execute(
            "INSERT INTO runs (started, pid, host, summary) VALUES (?, ?, ?, ?)",
            (self._stamp(), os.getpid(), socket.gethostname(), UNFINISHED),
        )
        self.run_id = int(cur.lastrowid or 0)
        return self.run_id

    def finish_run(self, summary: Mapping[str, object]) -> None:
        """Record the end of a run and its summary."""
        if self._identity is not None and _identity(self.path) is None:
            self._restore()  # removed during the last group: written back, then finished
        self.flush()
        self.db.execute(
            "UPDATE runs SET finished=?, summary=? WHERE id=?",
            (self._stamp(), json.dumps(summary), self.run_id),
        )

    # -- recipients -----------------------------------------------------------------------

    @property
    def empty(self) -> bool:
        """No recipient recorded yet (a campaign's first run)."""
        return self.db.execute("SELECT 1 FROM recipients LIMIT 1").fetchone() is None

    def lookup(self, email: str, step: str | None = None) -> Entry | None:
        """The recorded state of an address (or of one step of it), or None if no run has
        met it yet."""
        row = self.db.execute(
            "SELECT status, attempts, run, run_tries, next_at, code FROM recipients WHERE key=?",
            (unit_key(address_key(email), step),),
        ).fetchone()
        if row is None:
            return None
        return Entry(DeliveryStatus(row[0]), *row[1:])

    def step_records(self, email: str) -> dict[str, Timing]:
        """What the state holds of each step of a sequence for one address, by step name,
        with the time each went out (or was last tried): one range read of the key index."""
        key = address_key(email)
        rows = self.db.execute(
            "SELECT key, status, attempts, run, run_tries, next_at, code, "
            "COALESCE(sent_at, updated) FROM recipients WHERE key > ? AND key < ?",
            (key + UNIT_SEP, key + chr(ord(UNIT_SEP) + 1)),
        )
        records = {}
        for r in rows:
            entry = Entry(DeliveryStatus(r[1]), *r[2:7])
            at = datetime.fromisoformat(r[7]) if r[7] else None
            records[r[0][len(key) + 1 :]] = Timing(entry, at)
        return records

    def met(self, emails: Collection[str]) -> dict[str, datetime]:
        """When a run first met each of these addresses (by key; those never met are absent):
        the start of a sequence without `start:`."""
        keys = list({address_key(e) for e in emails})
        found: dict[str, datetime] = {}
        for first in range(0, len(keys), 500):
            part = keys[first : first + 500]
            marks = ",".join("?" * len(part))
            for key, met in self.db.execute(
                f"SELECT key, met FROM members WHERE key IN ({marks})", part
            ):
                found[key] = datetime.fromisoformat(met)
        return found

    def meet(self, rows: Collection[tuple[str, int]], *, at: datetime) -> None:
        """Record that a run met these (address, row) at `at`, for those never met before."""
        if not rows:
            return
        now = at.astimezone(UTC).isoformat(timespec="seconds")
        with self._transaction():
            self.db.executemany(
                "INSERT INTO members (key, email, row, met) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (key) DO NOTHING",
                [(address_key(email), email, row, now) for email, row in rows],
            )

    def record_skip(self, email: str, row: int, step: str) -> None:
        """A step whose `if:` was false for this recipient: `skipped`, never sent (committed
        with the next group, or by flush)."""
        self._skips.append((unit_key(address_key(email), step), email, row))

    def step_counts(self) -> dict[str, dict[DeliveryStatus, int]]:
        """Recipients per status of each step of a sequence."""
        counts: dict[str, dict[DeliveryStatus, int]] = {}
        for step, status, n in self.db.execute(
            "SELECT substr(key, instr(key, char(31)) + 1), status, COUNT(*) FROM recipients "
            "WHERE instr(key, char(31)) > 0 GROUP BY 1, 2"
        ):
            counts.setdefault(step, {})[DeliveryStatus(status)] = n
        return counts

    def check_kind(self, sequence: bool, *, write: bool = True) -> None:
        """A state file holds the progress of one kind of campaign: a sequence's records are
        per (recipient, step), a one-message campaign's per recipient. A campaign that turned
        from one kind to the other under the same name is refused (exit 78): each needs its
        own state."""
        found = self.db.execute("SELECT value FROM meta WHERE key='kind'").fetchone()
        kind = found[0] if found else None
        if kind is None and not self.empty:
            seq = self.db.execute(
                "SELECT 1 FROM recipients WHERE instr(key, char(31)) > 0 LIMIT 1"
            ).fetchone()
            kind = "sequence" if seq else "message"
        wanted = "sequence" if sequence else "message"
        if kind is not None and kind != wanted:
            what = {"sequence": "a sequence (steps:)", "message": "a one-message campaign"}
            raise ConfigError(
                f"the state file holds the progress of {what[kind]}, and the campaign is now "
                f"{what[wanted]}",
                path=self.path,
                hint="give the campaign a new `name` (or its own `state:`): its progress "
                "cannot carry over",
            )
        if not write:
            return
        if sequence:
            table = self.db.execute(
                "SELECT sql FROM sqlite_master WHERE type='table' AND name='recipients'"
            ).fetchone()
            if "'skipped'" not in table[0]:
                # A file made before sequences existed, still empty: its table is made again
                # with the statuses a sequence records.
                with self._transaction():
                    self.db.execute("DROP TABLE recipients")
                    for statement in RECIPIENTS_TABLE.split(";"):
                        if statement.strip():
                            self.db.execute(statement)
        if found is None:
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('kind', ?)", (wanted,))

    def begin_flight(self, group: Iterable[tuple[str, int, Entry | None] | Flight]) -> None:
        """Commit buffered outcomes and mark a group `unknown`, durably, before it is sent.

        `group` holds (email, row, previous entry[, step]) for each message about to be
        handed over.
        """
        self._check_file()
        now = self._stamp()
        run = self.run_id
        rows = [
            (
                unit_key(address_key(f.email), f.step),
                f.email,
                f.row,
                run,
                f.entry.run_tries + 1 if f.entry is not None and f.entry.run == run else 1,
                now,
            )
            for f in map(_flight, group)
        ]
        with self._transaction():
            self._write_outcomes()
            self.db.executemany(
                "INSERT INTO recipients (key, email, row, status, attempts, run, run_tries,"
                " updated, first_at) VALUES (?, ?, ?, 'unknown', 1, ?, ?, ?, ?6) "
                "ON CONFLICT (key) DO UPDATE SET status='unknown', attempts=attempts+1, "
                "run=excluded.run, run_tries=excluded.run_tries, updated=excluded.updated,"
                " email=excluded.email, row=excluded.row,"
                # The first try only: a row tried before the column existed keeps NULL, never
                # a later try's time.
                " first_at=CASE WHEN attempts=0 THEN excluded.updated ELSE first_at END",
                rows,
            )

    def record(self, outcome: Outcome) -> None:
        """Buffer an outcome; it is committed with the next group (or by flush)."""
        self._pending.append(outcome)

    def record_invalid(self, email: str, row: int, problem: str, step: str | None = None) -> None:
        """An invalid row sent with --skip-invalid: `failed`, with the problem as the reply."""
        key = unit_key(address_key(email), step)
        self._pending.append(Outcome(key, DeliveryStatus.FAILED, None, f"invalid: {problem}"))
        self.db.execute(
            "INSERT INTO recipients (key, email, row, status, updated) "
            "VALUES (?, ?, ?, 'pending', ?) ON CONFLICT (key) DO NOTHING",
            (key, email, row, self._stamp()),
        )

    def revert(self, email: str, entry: Entry | None, step: str | None = None) -> None:
        """Undo a flight mark for a message that was never handed over."""
        self._reverts.append((unit_key(address_key(email), step), entry))

    def flush(self) -> None:
        """Commit buffered outcomes now."""
        if self._pending or self._reverts or self._skips:
            with self._transaction():
                self._write_outcomes()

    def _write_outcomes(self) -> None:
        now = self._stamp()
        if self._skips:
            self.db.executemany(
                "INSERT INTO recipients (key, email, row, status, run, updated) "
                "VALUES (?, ?, ?, 'skipped', ?, ?) ON CONFLICT (key) DO UPDATE SET "
                "status='skipped', run=excluded.run, updated=excluded.updated",
                [(key, email, row, self.run_id, now) for key, email, row in self._skips],
            )
            self.db.executemany(
                "INSERT INTO attempts (key, run, at, status) VALUES (?, ?, ?, 'skipped')",
                [(key, self.run_id, now) for key, _email, _row in self._skips],
            )
            self._skips.clear()
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
        # The send log (`status --recipient`): one row per outcome, in the same transaction.
        self.db.executemany(
            "INSERT INTO attempts (key, run, at, status, code, reply, message_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (o.key, self.run_id, now, str(o.status), o.code, o.reply, o.message_id)
                for o in self._pending
            ],
        )
        self._pending.clear()
        for key, entry in self._reverts:
            if entry is None:
                self.db.execute("DELETE FROM recipients WHERE key=?", (key,))
            else:
                self.db.execute(
                    "UPDATE recipients SET status=?, attempts=?, run=?, run_tries=?, next_at=?, "
                    "first_at=CASE WHEN ?=0 THEN NULL ELSE first_at END WHERE key=?",
                    (
                        str(entry.status),
                        entry.attempts,
                        entry.run,
                        entry.run_tries,
                        entry.next_at,
                        entry.attempts,
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
            # SQLite has already rolled back after some failures (a full disk): nothing to undo.
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _check_file(self) -> None:
        """Before a group is marked: the state file is still the one this run opened. A file
        removed mid-run would take the record of who was sent with it (and the next run would
        send them again): it is written back from the open copy, and the run stops."""
        if self._identity is None:
            return
        now = _identity(self.path)
        if now == self._identity:
            return
        if now is None:
            self._restore()
            raise StateError(
                "the state file was removed during the run; mailcli wrote it back from the "
                "copy it had open. Run again to finish: nobody is sent twice",
                path=self.path,
            )
        raise StateError(
            "the state file was replaced by another file during the run; the run stopped "
            "(put the campaign's own file back, or give it its own `state:`)",
            path=self.path,
        )

    def _restore(self) -> None:
        """Write the open (removed) database back to its path, and go on with that file."""
        log.warning("the state file %s was removed during the run: writing it back", self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        spare = self.path.with_name(f"{self.path.name}.restore-{os.getpid()}")
        target = sqlite3.connect(spare)
        try:
            self.db.backup(target)
        finally:
            target.close()
        self.db.close()
        os.replace(spare, self.path)
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=lock_timeout())
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self._identity = _identity(self.path)

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
            f"SELECT email, row, status, code, reply, attempts, updated, key FROM recipients "
            f"WHERE status IN ({marks}) ORDER BY row, email, key",
            [s.value for s in statuses],
        )
        return [
            RecipientState(r[0], r[1], DeliveryStatus(r[2]), r[3], r[4], r[5], r[6], step_of(r[7]))
            for r in rows
        ]

    def export_rows(
        self, statuses: Collection[DeliveryStatus] | None = None, *, steps: bool = False
    ) -> Iterator[RecipientRecord]:
        """Every recipient (or those in `statuses`; of a sequence: every recipient's step) in
        list order, read from the cursor as it goes: memory stays flat whatever the size of
        the campaign."""
        where, values = "", []
        if statuses is not None:
            where = f"WHERE status IN ({','.join('?' * len(statuses))})"
            values = [DeliveryStatus(s).value for s in statuses]
        rows = self.db.execute(
            f"SELECT {RECORD_COLUMNS} FROM recipients {where} ORDER BY row, email, key", values
        )
        for r in rows:
            yield RecipientRecord.of(r)

    def known(self, emails: Collection[str]) -> set[str]:
        """Which of these addresses the state has a record of (their keys): one query per
        500, so matching a whole list against the state costs little per row."""
        keys = list({address_key(e) for e in emails})
        found: set[str] = set()
        for start in range(0, len(keys), 500):
            part = keys[start : start + 500]
            marks = ",".join("?" * len(part))
            rows = self.db.execute(f"SELECT key FROM recipients WHERE key IN ({marks})", part)
            found.update(key for (key,) in rows)
        return found

    def recipient(self, email: str, step: str | None = None) -> RecipientRecord | None:
        """What the state knows of one address (or one step of it), or None if no run has
        met it."""
        r = self.db.execute(
            f"SELECT {RECORD_COLUMNS} FROM recipients WHERE key=?",
            (unit_key(address_key(email), step),),
        ).fetchone()
        return None if r is None else RecipientRecord.of(r)

    def history(self, email: str, step: str | None = None) -> list[Attempt]:
        """Every recorded outcome of an address (or one step of it), oldest first (a scan of
        the log: see SCHEMA)."""
        rows = self.db.execute(
            "SELECT run, at, status, code, reply, message_id FROM attempts WHERE key=? "
            "ORDER BY rowid",
            (unit_key(address_key(email), step),),
        )
        return [Attempt(r[0], r[1], DeliveryStatus(r[2]), *r[3:]) for r in rows]

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads inside see one moment of the state, however long they take, while a run goes
        on writing (WAL): an export never misses a recipient marked between two reads."""
        self.db.execute("BEGIN")
        try:
            yield
        finally:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")

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

    # -- the campaign's fingerprint ---------------------------------------------------------

    def fingerprints(self) -> list[Recorded]:
        """The campaign's fingerprint history, oldest first (see `mailcli.fingerprint`)."""
        return [_recorded(row) for row in self.db.execute(_FINGERPRINTS_SELECT)]

    def add_fingerprint(
        self, fingerprint: Fingerprint, changes: Sequence[str], *, after: int | None
    ) -> bool:
        """Record a fingerprint unless another was recorded since the entry `after` (False)."""
        with self._transaction():
            last = self.db.execute("SELECT MAX(id) FROM fingerprints").fetchone()[0]
            if last != after:
                return False
            self.db.execute(
                "INSERT INTO fingerprints (recorded, file, host, digest, content, changes) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    _now(),
                    fingerprint.file,
                    fingerprint.host,
                    fingerprint.digest,
                    json.dumps(fingerprint.content()),
                    json.dumps(list(changes)),
                ),
            )
        return True


_FINGERPRINTS_SELECT = (
    "SELECT id, recorded, file, host, content, changes FROM fingerprints ORDER BY id"
)


def _recorded(row: tuple[Any, ...]) -> Recorded:
    return Recorded(
        row[0], row[1], Fingerprint.stored(row[2], row[3], row[4]), tuple(json.loads(row[5]))
    )


def read_fingerprints(path: Path, campaign: str) -> list[Recorded]:
    """The fingerprint history of a campaign's SQLite state, read without writing anything (a
    dry run); empty when there is no state file, no history in it yet, or when it is another
    campaign's state (which a real run reports)."""
    if not path.is_file():
        return []
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {
                name
                for (name,) in db.execute(
                    "SELECT name FROM sqlite_master WHERE type='table' "
                    "AND name IN ('meta', 'fingerprints')"
                )
            }
            if tables != {"meta", "fingerprints"}:
                return []
            owner = db.execute("SELECT value FROM meta WHERE key='campaign'").fetchone()
            if owner is None or owner[0] != campaign:
                return []
            return [_recorded(row) for row in db.execute(_FINGERPRINTS_SELECT)]
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        if str(getattr(exc, "sqlite_errorname", "")) in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
            raise ConfigError(f"cannot use the state file: {exc}", path=path) from None
        raise state_problem(exc, path) from None
