"""Campaign state in PostgreSQL (`state: postgresql://...`): one campaign, several hosts.

The same `StateStore` rules as SQLite, kept by the database for every host at once:

- The list is imported into the store (`import_rows`, idempotent: rows already there are left
  alone, or take the list's new data while still pending; appended rows are added). Any host may
  import; a host without the CSV sends what the store holds.
- A host takes work by claiming a group of due recipients (`claim`: one statement, `SELECT ...
  FOR UPDATE SKIP LOCKED`, so two hosts never claim the same row) under a lease of
  `lease_s` seconds, renewed by a heartbeat thread while the run lives. A claimed row is marked
  `unknown` and committed before its message leaves (`begin_flight`), then gets its outcome.
  A host that dies leaves its handed-over group `unknown` and its claimed-but-unsent rows to the
  others once the lease runs out.
- No transaction is open while a message is on the wire: every statement commits at once
  (autocommit), or in a short `transaction()` of its own.

The lease and the clock that judges it are the database's (`now()`), not the hosts'.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from mailcli.addresses import Mailbox, address_key
from mailcli.delivery import RECIPIENT_STATUSES, DeliveryStatus
from mailcli.errors import ConfigError, InputFileError, TempFailError
from mailcli.fingerprint import Fingerprint, Recorded
from mailcli.recipients import Recipient
from mailcli.sequence import UNIT_SEP, Clock, Timing, step_of, unit_key
from mailcli.state import (
    PROBLEM_STATUSES,
    Attempt,
    Entry,
    Flight,
    Outcome,
    RecipientRecord,
    RecipientState,
    RunRecord,
)

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# 2: mailcli_recipients.first_at and mailcli_attempts (a store of version 1 is upgraded by the
# first run that opens it).
# 3: the columns of a sequence's members (listed, met, seq_run, seq_due), and `skipped`.
SCHEMA_VERSION = 3
LEASE_S = 60.0  # the longest a dead host's claimed rows wait for another host
STATUS_CHECK = "status IN ('pending','sent','failed','deferred','unknown','skipped')"

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS mailcli_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS mailcli_campaigns (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS mailcli_runs (
    id BIGSERIAL PRIMARY KEY,
    campaign BIGINT NOT NULL REFERENCES mailcli_campaigns (id) ON DELETE CASCADE,
    started TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished TIMESTAMPTZ,
    heartbeat TIMESTAMPTZ NOT NULL DEFAULT now(),
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    summary JSONB
);
CREATE TABLE IF NOT EXISTS mailcli_recipients (
    campaign BIGINT NOT NULL REFERENCES mailcli_campaigns (id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    email TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    row INTEGER NOT NULL,
    line INTEGER NOT NULL,
    fields JSONB NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK ({STATUS_CHECK}),
    attempts INTEGER NOT NULL DEFAULT 0,
    run BIGINT,
    run_tries INTEGER NOT NULL DEFAULT 0,
    next_at DOUBLE PRECISION,
    code INTEGER,
    reply TEXT,
    message_id TEXT,
    host TEXT,
    lease_run BIGINT,
    lease_until TIMESTAMPTZ,
    updated TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at TIMESTAMPTZ,
    first_at TIMESTAMPTZ,
    listed BOOLEAN NOT NULL DEFAULT true,
    met TIMESTAMPTZ,
    seq_run BIGINT,
    seq_due DOUBLE PRECISION,
    PRIMARY KEY (campaign, key)
);
CREATE INDEX IF NOT EXISTS mailcli_recipients_due ON mailcli_recipients (campaign, status, row);
CREATE INDEX IF NOT EXISTS mailcli_recipients_lease ON mailcli_recipients (lease_run)
    WHERE lease_run IS NOT NULL;
CREATE INDEX IF NOT EXISTS mailcli_recipients_members ON mailcli_recipients
    (campaign, seq_due, row) WHERE met IS NOT NULL AND listed;
"""
# The send log (`status --recipient`): one row per recorded outcome.
ATTEMPTS = """
CREATE TABLE IF NOT EXISTS mailcli_attempts (
    campaign BIGINT NOT NULL REFERENCES mailcli_campaigns (id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    run BIGINT,
    at TIMESTAMPTZ NOT NULL DEFAULT now(),
    status TEXT NOT NULL,
    code INTEGER,
    reply TEXT,
    message_id TEXT
);
CREATE INDEX IF NOT EXISTS mailcli_attempts_key ON mailcli_attempts (campaign, key);
"""
# The index that finds a sequence's members due for a look (see _MEMBER_DUE).
MEMBERS_INDEX = (
    "CREATE INDEX IF NOT EXISTS mailcli_recipients_members ON mailcli_recipients "
    "(campaign, seq_due, row) WHERE met IS NOT NULL AND listed;"
)
# What a store of schema 1 or 2 lacks (ADD COLUMN without a volatile default only changes the
# catalogue). A sequence's (recipient, step) records are rows keyed `address key, \x1f, step`;
# its list's rows (the members) carry whether the list still has them, when a run first met
# them, and when they are next worth a look.
UPGRADE = (
    "ALTER TABLE mailcli_recipients ADD COLUMN IF NOT EXISTS first_at TIMESTAMPTZ, "
    "ADD COLUMN IF NOT EXISTS listed BOOLEAN NOT NULL DEFAULT true, "
    "ADD COLUMN IF NOT EXISTS met TIMESTAMPTZ, ADD COLUMN IF NOT EXISTS seq_run BIGINT, "
    "ADD COLUMN IF NOT EXISTS seq_due DOUBLE PRECISION, "
    "DROP CONSTRAINT IF EXISTS mailcli_recipients_status_check, "
    f"ADD CONSTRAINT mailcli_recipients_status_check CHECK ({STATUS_CHECK});"
    + ATTEMPTS
    + MEMBERS_INDEX
)
# Schema 2 at least (what a reader needs to know), and schema 3.
_UPGRADED = (
    "SELECT to_regclass('mailcli_attempts') IS NOT NULL AND EXISTS (SELECT 1 FROM pg_attribute"
    " WHERE attrelid = 'mailcli_recipients'::regclass AND attname = 'first_at'"
    " AND NOT attisdropped)"
)
_CURRENT = (
    "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'mailcli_recipients'::regclass"
    " AND attname = 'seq_due' AND NOT attisdropped)"
)
# The members of a sequence (rows with a `met`) worth a look by a run now: listed, their next
# look (`seq_due`, an epoch of the hosts' clock) has come, and no run as recent as this one
# has looked at them (`seq_run`: run ids grow, so of two runs at once only the newer takes a
# member back from the older, never the other way: no member goes back and forth), held by no
# live run. A member whose holder died (its lease ran out unrenewed) is any run's. A look sets
# the next: the next step's due time, now (for the next run), or never.
# An index holds them in that order.
_MEMBER_DUE = """
    campaign = %(campaign)s AND met IS NOT NULL AND listed AND seq_due <= %(now)s
    AND (seq_run IS NULL OR seq_run < %(run)s OR lease_run IS NOT NULL)
    AND (lease_until IS NULL OR lease_until < now())
"""

# A recipient is due for a run's first pass when it was never tried, is deferred and its backoff
# has passed (or its run gave up on it), was an invalid row, is unknown and the user asked, or
# was refused by a server before this run started and the user asked (--resend-failed: a refusal
# another host's run got meanwhile was a resend already, and is not resent twice); and nobody
# holds a live lease on it. This run's own deferred rows wait for its retry rounds.
_DUE = """
    campaign = %(campaign)s
    AND (lease_until IS NULL OR lease_until < now())
    AND (run IS DISTINCT FROM %(run)s)
    AND (status = 'pending'
         OR (status = 'failed' AND code IS NULL)
         OR (status = 'failed' AND %(resend_failed)s AND updated < COALESCE(
             (SELECT started FROM mailcli_runs WHERE id = %(run)s), now()))
         OR (status = 'deferred' AND (next_at IS NULL OR next_at <= %(now)s))
         OR (status = 'unknown' AND %(retry_unknown)s))
"""
# A retry round: this run's deferred rows whose backoff has passed.
_DUE_AGAIN = """
    campaign = %(campaign)s
    AND (lease_until IS NULL OR lease_until < now())
    AND status = 'deferred' AND run = %(run)s AND run_tries < %(attempts)s
    AND next_at <= %(now)s
"""
# Due for some run, leases aside (what `due` counts).
_DUE_ANY = """
    campaign = %(campaign)s
    AND (status = 'pending' OR (status = 'failed' AND (code IS NULL OR %(resend_failed)s))
         OR (status = 'deferred' AND (next_at IS NULL OR next_at <= %(now)s))
         OR (status = 'unknown' AND %(retry_unknown)s
             AND (lease_until IS NULL OR lease_until < now())))
"""
_ENTRY = "status, attempts, run, run_tries, next_at, code"
# The campaign's fingerprint history (`mailcli.fingerprint`): added by the first run that needs
# it, in a store of any schema version.
FINGERPRINTS = """
CREATE TABLE IF NOT EXISTS mailcli_fingerprints (
    id BIGSERIAL PRIMARY KEY,
    campaign BIGINT NOT NULL REFERENCES mailcli_campaigns (id) ON DELETE CASCADE,
    recorded TIMESTAMPTZ NOT NULL DEFAULT now(),
    file TEXT NOT NULL,
    host TEXT NOT NULL,
    digest TEXT NOT NULL,
    content JSONB NOT NULL,
    changes JSONB NOT NULL
);
CREATE INDEX IF NOT EXISTS mailcli_fingerprints_campaign ON mailcli_fingerprints (campaign, id);
"""


def lease_seconds() -> float:
    """The lease: LEASE_S, or MAILCLI_LEASE_SECONDS (5 to 600) for a quicker takeover."""
    text = os.environ.get("MAILCLI_LEASE_SECONDS")
    if not text:
        return LEASE_S
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(
            f"MAILCLI_LEASE_SECONDS must be a number of seconds, not {text!r}"
        ) from None
    if not 5 <= value <= 600:
        raise ConfigError(f"MAILCLI_LEASE_SECONDS must be from 5 to 600, not {text}")
    return value


@dataclass(frozen=True, slots=True)
class Claimed:
    """A recipient (or a recipient's step) this run holds the lease of, and what the store said
    of it."""

    recipient: Recipient
    entry: Entry | None  # None: never tried
    step: str | None = None  # a sequence's step (None: a one-message campaign's recipient)
    met: datetime | None = None  # a sequence's member: when a run first met it


@dataclass(frozen=True, slots=True)
class HostShare:
    """What one host did for the campaign (`status`)."""

    host: str
    sent: int
    failed: int
    deferred: int
    unknown: int


def _driver() -> Any:
    try:
        import psycopg
    except ImportError:
        raise ConfigError(
            "state: a PostgreSQL URL needs the PostgreSQL driver",
            hint="pip install 'mailcli[postgres]'",
        ) from None
    return psycopg


def _connect(url: str) -> psycopg.Connection[Any]:
    driver = _driver()
    try:
        conn: psycopg.Connection[Any] = driver.connect(
            url, autocommit=True, application_name="mailcli", connect_timeout=10
        )
    except driver.OperationalError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "no answer"
        if "password" in reason or "authentication" in reason:
            raise ConfigError(
                f"state database refused the login: {reason}",
                hint="the password comes from PGPASSWORD or ~/.pgpass, never the campaign file",
            ) from None
        raise TempFailError(
            f"cannot reach the state database: {reason}",
            hint="the run can be started again once PostgreSQL answers",
        ) from None
    # The 'unknown' mark must be on disk before a message is handed over, whatever the
    # server's default.
    conn.execute("SET synchronous_commit = on")
    return conn


def _reported(cls: type[_T]) -> type[_T]:
    """Every public method of `cls` reports a database failure (the server gone mid-run, the
    connection cut) as TempFailError, exit 75: the run can be started again, and what had no
    recorded outcome stays `unknown` or claimed, never sent twice."""
    for name, method in list(vars(cls).items()):
        if not name.startswith("_") and inspect.isfunction(method):
            setattr(cls, name, _translating(method))
    return cls


def _translating(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except Exception as exc:
            driver = sys.modules.get("psycopg")
            if driver is None or not isinstance(exc, driver.Error):
                raise
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TempFailError(
                f"state database: {reason}",
                hint="start the run again once PostgreSQL answers; nobody is sent twice",
            ) from None

    return call


@_reported
class PgState:
    """The PostgreSQL store of one campaign, shared by every host that runs it."""

    def __init__(
        self, conn: psycopg.Connection[Any], url: str, campaign_id: int, lease_s: float
    ) -> None:
        self.conn = conn
        self.url = url
        self.campaign_id = campaign_id
        self.run_id: int | None = None
        self.host = socket.gethostname()
        self.lease_s = lease_s
        self._pending: list[Outcome] = []
        self._reverts: list[tuple[str, Entry | None]] = []
        self._heartbeat: _Heartbeat | None = None
        # False: a schema-1 store opened by a reader (no first_at, no send log to read yet).
        self.upgraded = True
        self._skips: list[tuple[str, str]] = []  # (member key, step) of skipped steps
        self.writable = True  # False: opened by a reader (status), which writes nothing
        # A sequence's step names: its (member, step) records are looked up by their exact keys
        # (a range of keys would depend on the database's collation, which may ignore the
        # separator: ICU and glibc locales do).
        self.steps: tuple[str, ...] = ()
        # The clock of the times it records: the database's (None), or one a library caller
        # gives the run (a sequence's steps are timed by them).
        self.clock: Clock | None = None

    def _ts(self) -> datetime | None:
        return self.clock() if self.clock is not None else None

    @classmethod
    def open(cls, url: str, campaign: str, *, create: bool = True) -> PgState:
        """Connect, create the tables if needed (once, under an advisory lock), find the
        campaign's id by its name."""
        psycopg = _driver()
        lease_s = lease_seconds()  # a bad setting is refused before connecting
        conn = _connect(url)
        try:
            with conn.transaction():
                ready = conn.execute("SELECT to_regclass('mailcli_recipients')").fetchone()
                if create and (ready is None or ready[0] is None):
                    # Only the first run creates the tables: later ones need no more than
                    # SELECT, INSERT, UPDATE and DELETE on them.
                    conn.execute("SELECT pg_advisory_xact_lock(hashtext('mailcli schema'))")
                    conn.execute(SCHEMA + ATTEMPTS)
                    conn.execute(
                        "INSERT INTO mailcli_meta VALUES ('schema', %s) ON CONFLICT DO NOTHING",
                        (str(SCHEMA_VERSION),),
                    )
                upgraded = bool((conn.execute(_UPGRADED).fetchone() or (False,))[0])
                current = upgraded and bool((conn.execute(_CURRENT).fetchone() or (False,))[0])
                if create and not current:
                    # A store of an older mailcli: upgraded by the first run that opens it (a
                    # reader such as `status` never writes; it reads what there is).
                    conn.execute("SELECT pg_advisory_xact_lock(hashtext('mailcli schema'))")
                    conn.execute(UPGRADE)
                    conn.execute(
                        "UPDATE mailcli_meta SET value = %s WHERE key = 'schema' "
                        "AND value::int < %s",
                        (str(SCHEMA_VERSION), SCHEMA_VERSION),
                    )
                    upgraded = True
                if create:
                    conn.execute(
                        "INSERT INTO mailcli_campaigns (name) VALUES (%s) "
                        "ON CONFLICT (name) DO NOTHING",
                        (campaign,),
                    )
                row = conn.execute(
                    "SELECT id FROM mailcli_campaigns WHERE name = %s", (campaign,)
                ).fetchone()
        except psycopg.errors.UndefinedTable:
            conn.close()
            raise InputFileError("no state yet: the campaign has not been sent", path=url) from None
        except psycopg.errors.InsufficientPrivilege as exc:
            conn.close()
            raise ConfigError(
                f"the state database refused: {exc.diag.message_primary}",
                path=url,
                hint="the first run (and the first after an upgrade of mailcli) needs a role "
                "that owns the database (it creates or upgrades the tables); see README "
                "'Running on several hosts'",
            ) from None
        except psycopg.Error as exc:
            conn.close()
            raise TempFailError(f"state database: {exc}".strip(), path=url) from None
        if row is None:
            conn.close()
            raise InputFileError(
                f"no state yet for campaign '{campaign}': it has not been sent", path=url
            )
        state = cls(conn, url, int(row[0]), lease_s)
        state.upgraded = upgraded
        state.writable = create
        return state

    def close(self) -> None:
        """Commit what is buffered, stop the heartbeat, give back unsent claims, close."""
        try:
            self.flush()
            if self.run_id is not None:
                self._release_claims()
        finally:
            if self._heartbeat is not None:
                self._heartbeat.stop()
            self.conn.close()

    def __enter__(self) -> PgState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- runs -----------------------------------------------------------------------------

    def start_run(self) -> int:
        """Record the run and start renewing its leases."""
        row = self.conn.execute(
            "INSERT INTO mailcli_runs (campaign, pid, host) VALUES (%s, %s, %s) RETURNING id",
            (self.campaign_id, os.getpid(), self.host),
        ).fetchone()
        assert row is not None
        self.run_id = int(row[0])
        self._heartbeat = _Heartbeat(self.url, self.run_id, self.lease_s)
        self._heartbeat.start()
        return self.run_id

    def finish_run(self, summary: Mapping[str, object]) -> None:
        """Record the end of the run and its summary."""
        self.flush()
        self.conn.execute(
            "UPDATE mailcli_runs SET finished = now(), summary = %s WHERE id = %s",
            (json.dumps(summary), self.run_id),
        )

    # -- the list -------------------------------------------------------------------------

    def import_rows(
        self, recipients: Iterable[Recipient], *, members: bool = False, met: datetime | None = None
    ) -> int:
        """Add the list's rows to the store; returns how many were new.

        Idempotent, and safe while other hosts import or send: a row already in the store is
        kept, its data refreshed only while it is still pending.

        `members`: the list of a sequence, whose rows are its members: a new one is met now
        (`met`, else the database's clock), and a member the list no longer has is marked
        unlisted (it gets no further step) until the list has it again.
        """
        with self.conn.transaction():
            self.conn.execute(
                "CREATE TEMP TABLE mailcli_import (key TEXT, email TEXT, name TEXT, row INTEGER,"
                " line INTEGER, fields JSONB) ON COMMIT DROP"
            )
            with self.conn.cursor().copy(
                "COPY mailcli_import (key, email, name, row, line, fields) FROM STDIN"
            ) as copy:
                digest = 0  # the set of keys, whatever their order
                for r in recipients:
                    copy.write_row(
                        (r.key, r.email, r.mailbox.name, r.row, r.line, json.dumps(r.fields))
                    )
                    found = hashlib.blake2b(r.key.encode("utf-8"), digest_size=8).digest()
                    digest = (digest + int.from_bytes(found, "big")) % 2**64
            # A temporary table has no statistics until analysed: without them the planner
            # joins it with the store row by row (seconds for a few thousand rows).
            self.conn.execute("ANALYZE mailcli_import")
            # New rows only: DO NOTHING takes no lock on a row already there, so an import never
            # waits on (or deadlocks with) a host that is sending those rows.
            cur = self.conn.execute(
                "INSERT INTO mailcli_recipients (campaign, key, email, name, row, line, fields, "
                "met, seq_due) SELECT DISTINCT ON (key) %s, key, email, name, row, line, fields, "
                "CASE WHEN %s THEN COALESCE(%s, now()) END, CASE WHEN %s THEN 0 END "
                "FROM mailcli_import ORDER BY key, row "
                "ON CONFLICT (campaign, key) DO NOTHING RETURNING 1",
                (self.campaign_id, members, met, members),
            )
            added = len(cur.fetchall())
            if members and self._list_changed(digest):
                self._relist()
            # Rows still pending take the list's new data; a row another run holds or is
            # refreshing (locked) is skipped, never waited for.
            self.conn.execute(
                "WITH stale AS MATERIALIZED (SELECT t.key FROM mailcli_recipients AS t "
                "JOIN (SELECT DISTINCT ON (key) * FROM mailcli_import ORDER BY key, row) AS i "
                "ON i.key = t.key WHERE t.campaign = %(campaign)s AND t.status = 'pending' "
                "AND t.lease_run IS NULL AND (t.fields, t.row, t.line, t.name, t.email) "
                "IS DISTINCT FROM (i.fields, i.row, i.line, i.name, i.email) "
                "FOR UPDATE OF t SKIP LOCKED) "
                "UPDATE mailcli_recipients AS t SET email = i.email, name = i.name, "
                "row = i.row, line = i.line, fields = i.fields, "
                # A member's new data (a start, a zone) is looked at by the next run.
                "seq_due = CASE WHEN t.met IS NOT NULL THEN 0 END "
                "FROM stale, (SELECT DISTINCT ON (key) * FROM mailcli_import ORDER BY key, row)"
                " AS i WHERE t.campaign = %(campaign)s AND t.key = stale.key AND i.key = t.key",
                {"campaign": self.campaign_id},
            )
            return added

    def claim(
        self,
        count: int,
        *,
        retry_unknown: bool,
        retry_round: bool,
        attempts: int,
        resend_failed: bool = False,
    ) -> list[Claimed]:
        """Take the lease of up to `count` due recipients, in list order; none is shared."""
        where = _DUE_AGAIN if retry_round else _DUE
        rows = self.conn.execute(
            # MATERIALIZED: the locked, limited set is computed once (a subquery in the join
            # may be scanned again by the planner and hand out more than `count`).
            "WITH due AS MATERIALIZED (SELECT key FROM mailcli_recipients WHERE "
            + where
            + " ORDER BY row LIMIT %(count)s FOR UPDATE SKIP LOCKED) "
            "UPDATE mailcli_recipients AS t SET lease_run = %(run)s, "
            "lease_until = now() + make_interval(secs => %(lease)s) "
            "FROM due WHERE t.campaign = %(campaign)s AND t.key = due.key "
            f"RETURNING t.row, t.line, t.name, t.email, t.fields, t.key, {_ENTRY}",
            {
                "campaign": self.campaign_id,
                "run": self.run_id,
                "now": time.time(),
                "retry_unknown": retry_unknown,
                "resend_failed": resend_failed,
                "attempts": attempts,
                "count": count,
                "lease": self.lease_s,
            },
        ).fetchall()
        rows.sort(key=lambda r: r[0])
        claimed = []
        for row, line, name, email, fields, key, status, *entry in rows:
            recipient = Recipient(row, line, Mailbox(name, email), fields)
            tried = status != DeliveryStatus.PENDING or entry[0] > 0
            claimed.append(
                Claimed(
                    recipient,
                    Entry(DeliveryStatus(status), *entry) if tried else None,
                    step_of(key),
                )
            )
        return claimed

    # -- a sequence's members and steps ---------------------------------------------------

    def _list_changed(self, digest: int) -> bool:
        """Inside an import: whether the set of the list's keys differs from the last import's
        (recorded now); an unchanged list needs no new look at which members it has."""
        key = f"list:{self.campaign_id}"
        found = self.conn.execute(
            "SELECT value FROM mailcli_meta WHERE key = %s FOR UPDATE", (key,)
        ).fetchone()
        if found is not None and found[0] == str(digest):
            return False
        self.conn.execute(
            "INSERT INTO mailcli_meta VALUES (%s, %s) ON CONFLICT (key) "
            "DO UPDATE SET value = excluded.value",
            (key, str(digest)),
        )
        return True

    def _relist(self) -> None:
        """Inside an import: members the imported list has are listed, the others not (a
        member that left the list gets no further step)."""
        self.conn.execute(
            "UPDATE mailcli_recipients AS t SET listed = false WHERE t.campaign = %(c)s "
            "AND t.listed AND strpos(t.key, chr(31)) = 0 "
            "AND NOT EXISTS (SELECT 1 FROM mailcli_import AS i WHERE i.key = t.key)",
            {"c": self.campaign_id},
        )
        self.conn.execute(
            "UPDATE mailcli_recipients AS t SET listed = true WHERE t.campaign = %(c)s "
            "AND NOT t.listed AND strpos(t.key, chr(31)) = 0 "
            "AND EXISTS (SELECT 1 FROM mailcli_import AS i WHERE i.key = t.key)",
            {"c": self.campaign_id},
        )

    def check_schedule(self, digest: str) -> None:
        """A sequence's schedule (see `sequence_rows.schedule_digest`) other than the one the
        members' next looks were worked out under: every member is looked at again."""
        with self.conn.transaction():
            key = f"schedule:{self.campaign_id}"
            found = self.conn.execute(
                "SELECT value FROM mailcli_meta WHERE key = %s FOR UPDATE", (key,)
            ).fetchone()
            if found is not None and found[0] == digest:
                return
            self.conn.execute(
                "UPDATE mailcli_recipients SET seq_due = 0 WHERE campaign = %s "
                "AND met IS NOT NULL AND seq_due > 0",
                (self.campaign_id,),
            )
            self.conn.execute(
                "INSERT INTO mailcli_meta VALUES (%s, %s) ON CONFLICT (key) "
                "DO UPDATE SET value = excluded.value",
                (key, digest),
            )

    def claim_members(self, count: int, now: float) -> list[Claimed]:
        """Take the lease of up to `count` members of a sequence worth a look at `now` (an
        epoch of the hosts' clock), those due longest first; until this run settles them (or
        its lease runs out) no run looks at them again."""
        rows = self.conn.execute(
            "WITH due AS MATERIALIZED (SELECT key FROM mailcli_recipients WHERE "
            + _MEMBER_DUE
            + " ORDER BY seq_due, row LIMIT %(count)s FOR UPDATE SKIP LOCKED) "
            "UPDATE mailcli_recipients AS t SET lease_run = %(run)s, seq_run = %(run)s, "
            "lease_until = now() + make_interval(secs => %(lease)s) "
            "FROM due WHERE t.campaign = %(campaign)s AND t.key = due.key "
            "RETURNING t.row, t.line, t.name, t.email, t.fields, t.met",
            {
                "campaign": self.campaign_id,
                "run": self.run_id,
                "now": now,
                "count": count,
                "lease": self.lease_s,
            },
        ).fetchall()
        rows.sort(key=lambda r: r[0])
        return [
            Claimed(Recipient(row, line, Mailbox(name, email), fields), None, None, met)
            for row, line, name, email, fields, met in rows
        ]

    def members_due(self, now: float) -> int:
        """Members of a sequence a run would look at now (leases ignored)."""
        row = self.conn.execute(
            "SELECT COUNT(*) FROM mailcli_recipients WHERE campaign = %(campaign)s "
            "AND met IS NOT NULL AND listed AND seq_due <= %(now)s "
            "AND (seq_run IS NULL OR seq_run < %(run)s OR lease_run IS NOT NULL)",
            {"campaign": self.campaign_id, "now": now, "run": self.run_id},
        ).fetchone()
        return int(row[0]) if row else 0

    def member(self, email: str) -> Recipient | None:
        """A listed member of a sequence as the store holds it (None: not there)."""
        row = self.conn.execute(
            "SELECT row, line, name, email, fields FROM mailcli_recipients WHERE campaign = %s "
            "AND key = %s AND listed",
            (self.campaign_id, address_key(email)),
        ).fetchone()
        if row is None:
            return None
        return Recipient(row[0], row[1], Mailbox(row[2], row[3]), row[4])

    def members(self) -> int:
        """The members a sequence's list has (listed)."""
        row = self.conn.execute(
            "SELECT COUNT(*) FROM mailcli_recipients WHERE campaign = %s "
            "AND met IS NOT NULL AND listed",
            (self.campaign_id,),
        ).fetchone()
        return int(row[0]) if row else 0

    def lease_unit(self, email: str, step: str, entry: Entry | None) -> bool:
        """Take the lease of one step of a member this run holds, making its record if it
        has none; False when another live run holds that step (it is sending it), or when
        the step is no longer what this run read (`entry`: another run has sent it since)."""
        member = address_key(email)
        row = self.conn.execute(
            "INSERT INTO mailcli_recipients (campaign, key, email, name, row, line, fields, "
            "listed, lease_run, lease_until) SELECT campaign, %(unit)s, email, name, row, line, "
            "fields, false, %(run)s, now() + make_interval(secs => %(lease)s) "
            "FROM mailcli_recipients WHERE campaign = %(campaign)s AND key = %(member)s "
            "ON CONFLICT (campaign, key) DO UPDATE SET lease_run = excluded.lease_run, "
            "lease_until = excluded.lease_until WHERE (mailcli_recipients.lease_until IS NULL "
            "OR mailcli_recipients.lease_until < now()) "
            "AND mailcli_recipients.status = %(status)s "
            "AND mailcli_recipients.attempts = %(attempts)s RETURNING 1",
            {
                "unit": unit_key(member, step),
                "member": member,
                "run": self.run_id,
                "lease": self.lease_s,
                "campaign": self.campaign_id,
                "status": str(entry.status) if entry is not None else "pending",
                "attempts": entry.attempts if entry is not None else 0,
            },
        ).fetchone()
        return row is not None

    def lease_units(self, wanted: Sequence[tuple[str, str, Entry | None]]) -> set[str]:
        """`lease_unit` for a group, in one statement: (email, step, what the run read of the
        step); returns the keys of the members whose step this run now holds."""
        if not wanted:
            return set()
        members = [address_key(email) for email, _, _ in wanted]
        rows = self.conn.execute(
            "INSERT INTO mailcli_recipients AS t (campaign, key, email, name, row, line, fields, "
            "listed, lease_run, lease_until) SELECT m.campaign, w.unit, m.email, m.name, m.row, "
            "m.line, m.fields, false, %(run)s, now() + make_interval(secs => %(lease)s) "
            "FROM unnest(%(members)s::text[], %(units)s::text[], %(statuses)s::text[], "
            "%(attempts)s::int[]) AS w(member, unit, status, attempts) "
            "JOIN mailcli_recipients AS m ON m.campaign = %(campaign)s AND m.key = w.member "
            "ON CONFLICT (campaign, key) DO UPDATE SET lease_run = excluded.lease_run, "
            "lease_until = excluded.lease_until WHERE (t.lease_until IS NULL "
            "OR t.lease_until < now()) AND (t.status, t.attempts) = (SELECT w2.status, "
            "w2.attempts FROM unnest(%(units)s::text[], %(statuses)s::text[], "
            "%(attempts)s::int[]) AS w2(unit, status, attempts) WHERE w2.unit = t.key) "
            "RETURNING t.key",
            {
                "run": self.run_id,
                "lease": self.lease_s,
                "campaign": self.campaign_id,
                "members": members,
                "units": [
                    unit_key(m, step) for m, (_, step, _) in zip(members, wanted, strict=True)
                ],
                "statuses": [str(e.status) if e is not None else "pending" for _, _, e in wanted],
                "attempts": [e.attempts if e is not None else 0 for _, _, e in wanted],
            },
        ).fetchall()
        return {key.split(UNIT_SEP)[0] for (key,) in rows}

    def settle_members(self, settled: Sequence[tuple[str, float, bool]]) -> None:
        """`settle_member` for a group (email, next look, keep), in one round trip."""
        if not settled:
            return
        # One transaction: one commit (an fsync) for the group, not one per member.
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.executemany(
                "UPDATE mailcli_recipients SET seq_due = %(due)s, "
                "lease_run = CASE WHEN %(keep)s THEN lease_run END, "
                "lease_until = CASE WHEN %(keep)s THEN lease_until END "
                "WHERE campaign = %(campaign)s AND key = %(key)s AND lease_run = %(run)s",
                [
                    {
                        "due": due,
                        "keep": keep,
                        "campaign": self.campaign_id,
                        "key": address_key(email),
                        "run": self.run_id,
                    }
                    for email, due, keep in settled
                ],
            )

    def steps_of(self, emails: Collection[str]) -> dict[str, dict[str, Timing]]:
        """`step_records` of a group of members, by member key, in one round trip (a range of
        the key index each)."""
        keys = sorted({address_key(e) for e in emails})
        rows = self.conn.execute(
            f"SELECT key, {_ENTRY}, COALESCE(sent_at, updated), lease_run IS NOT NULL "
            "AND lease_run IS DISTINCT FROM %(run)s AND lease_until >= now() "
            "FROM mailcli_recipients WHERE campaign = %(campaign)s AND key = ANY(%(units)s)",
            {
                "run": self.run_id,
                "campaign": self.campaign_id,
                "units": [unit_key(k, step) for k in keys for step in self.steps],
            },
        )
        found: dict[str, dict[str, Timing]] = {key: {} for key in keys}
        for key, status, attempts, *rest in rows:
            if status == "pending" and attempts == 0:
                continue  # leased, never tried
            member, _, step = key.partition(UNIT_SEP)
            entry = Entry(DeliveryStatus(status), attempts, *rest[:4])
            found[member][step] = Timing(entry, rest[4], bool(rest[5]))
        return found

    def look_again(self, emails: Collection[str]) -> None:
        """Members this run looked at but could not send (another run held their step): this
        run (or another) takes them again in its next pass (the holder may be done by then,
        or its lease run out)."""
        self.conn.execute(
            "UPDATE mailcli_recipients SET seq_due = 0, seq_run = NULL WHERE campaign = %s "
            "AND key = ANY(%s) AND lease_run IS NULL",
            (self.campaign_id, [address_key(e) for e in emails]),
        )

    def settle_member(self, email: str, look_again: float, *, keep: bool = False) -> None:
        """Give back a member this run has looked at: the next look is at `look_again` (an
        epoch of the hosts' clock; inf: never, its sequence is over). `keep`: the run keeps
        the member's lease while it sends its step (given back when the run ends, or running
        out with the step's if it dies), so no run looks at the member before the step's fate
        is known."""
        release = "" if keep else "lease_run = NULL, lease_until = NULL, "
        self.conn.execute(
            f"UPDATE mailcli_recipients SET {release}seq_due = %s "
            "WHERE campaign = %s AND key = %s AND lease_run = %s",
            (look_again, self.campaign_id, address_key(email), self.run_id),
        )

    def step_records(self, email: str) -> dict[str, Timing]:
        """What the store holds of each step of a sequence for one member, by step name."""
        return self.steps_of([email])[address_key(email)]

    def met(self, emails: Collection[str]) -> dict[str, datetime]:
        """When the store first had each of these members (by key)."""
        rows = self.conn.execute(
            "SELECT key, met FROM mailcli_recipients WHERE campaign = %s AND key = ANY(%s) "
            "AND met IS NOT NULL",
            (self.campaign_id, list({address_key(e) for e in emails})),
        )
        return {key: met for key, met in rows}

    def record_skip(self, email: str, row: int, step: str) -> None:
        """A step whose `if:` was false for this member: `skipped`, never sent (committed
        with the next group, or by flush)."""
        self._skips.append((address_key(email), step))

    def step_counts(self) -> dict[str, dict[DeliveryStatus, int]]:
        """Records per status of each step of a sequence, over every host."""
        counts: dict[str, dict[DeliveryStatus, int]] = {}
        for step, status, n in self.conn.execute(
            "SELECT substr(key, strpos(key, chr(31)) + 1), status, COUNT(*) "
            "FROM mailcli_recipients WHERE campaign = %s AND strpos(key, chr(31)) > 0 "
            "AND NOT (status = 'pending' AND attempts = 0) GROUP BY 1, 2",
            (self.campaign_id,),
        ):
            counts.setdefault(step, {})[DeliveryStatus(status)] = n
        return counts

    def steps_had(self) -> dict[str, int]:
        """How many listed members of a sequence have had each step (a record other than
        pending)."""
        rows = self.conn.execute(
            "SELECT substr(u.key, strpos(u.key, chr(31)) + 1), COUNT(*) "
            "FROM mailcli_recipients AS u JOIN mailcli_recipients AS m ON m.campaign = u.campaign"
            " AND m.key = split_part(u.key, chr(31), 1) WHERE u.campaign = %s "
            "AND strpos(u.key, chr(31)) > 0 AND u.status <> 'pending' AND m.listed GROUP BY 1",
            (self.campaign_id,),
        )
        return {step: n for step, n in rows}

    def check_kind(self, sequence: bool) -> None:
        """A store holds one kind of campaign under a name: a sequence's steps, or a
        one-message campaign's recipients (see SqliteState.check_kind). The kind is recorded
        by the first run that finds it (a reader only reads), so later runs look it up."""
        key = f"kind:{self.campaign_id}"
        wanted = "sequence" if sequence else "message"
        recorded = self.conn.execute(
            "SELECT value FROM mailcli_meta WHERE key = %s", (key,)
        ).fetchone()
        if recorded is not None:
            if recorded[0] != wanted:
                self._refuse_kind(sequence)
            return
        self._scan_kind(sequence)
        if self.writable:
            self.conn.execute(
                "INSERT INTO mailcli_meta VALUES (%s, %s) ON CONFLICT (key) DO NOTHING",
                (key, wanted),
            )

    def _scan_kind(self, sequence: bool) -> None:
        """The kind of what the store holds, when none is recorded yet (a store of an older
        mailcli): refused when it is the other one."""
        if sequence:
            found = self.conn.execute(
                "SELECT EXISTS (SELECT 1 FROM mailcli_recipients WHERE campaign = %s "
                "AND strpos(key, chr(31)) = 0 AND attempts > 0)",
                (self.campaign_id,),
            ).fetchone()
        else:
            found = self.conn.execute(
                "SELECT EXISTS (SELECT 1 FROM mailcli_recipients WHERE campaign = %s "
                "AND strpos(key, chr(31)) > 0)",
                (self.campaign_id,),
            ).fetchone()
        if found and found[0]:
            self._refuse_kind(sequence)

    def _refuse_kind(self, sequence: bool) -> None:
        what = ("a one-message campaign", "a sequence (steps:)")
        raise ConfigError(
            f"the state holds the progress of {what[not sequence]}, and the campaign is now "
            f"{what[sequence]}",
            path=self.url,
            hint="give the campaign a new `name`: its progress cannot carry over",
        )

    def claimable(self, *, retry_unknown: bool, resend_failed: bool = False) -> bool:
        """Some recipient a `claim` of this run would take now."""
        row = self.conn.execute(
            "SELECT EXISTS (SELECT 1 FROM mailcli_recipients WHERE " + _DUE + ")",
            {**self._due_params(retry_unknown, resend_failed), "run": self.run_id},
        ).fetchone()
        return bool(row and row[0])

    def held_by_others(self) -> bool:
        """Recipients under another run's live lease, claimed or in flight: wait for them (they
        come back if that run dies), so that a run ends only when the campaign is settled."""
        row = self.conn.execute(
            "SELECT EXISTS (SELECT 1 FROM mailcli_recipients WHERE campaign = %s "
            "AND lease_run IS NOT NULL AND lease_run <> %s AND lease_until >= now())",
            (self.campaign_id, self.run_id),
        ).fetchone()
        return bool(row and row[0])

    def _release_claims(self) -> None:
        """Give back the rows this run claimed and never handed over (a stop, --limit)."""
        self.conn.execute(
            "UPDATE mailcli_recipients SET lease_run = NULL, lease_until = NULL "
            "WHERE lease_run = %s AND status <> 'unknown'",
            (self.run_id,),
        )

    # -- recipients -----------------------------------------------------------------------

    @property
    def empty(self) -> bool:
        """No recipient in the store yet."""
        row = self.conn.execute(
            "SELECT NOT EXISTS (SELECT 1 FROM mailcli_recipients WHERE campaign = %s)",
            (self.campaign_id,),
        ).fetchone()
        return bool(row and row[0])

    def contains(self, email: str) -> bool:
        """The address is in the store (imported), tried or not."""
        row = self.conn.execute(
            "SELECT EXISTS (SELECT 1 FROM mailcli_recipients WHERE campaign = %s AND key = %s)",
            (self.campaign_id, address_key(email)),
        ).fetchone()
        return bool(row and row[0])

    def lookup(self, email: str, step: str | None = None) -> Entry | None:
        """The recorded state of an address, or None if it was never tried."""
        row = self.conn.execute(
            f"SELECT {_ENTRY} FROM mailcli_recipients WHERE campaign = %s AND key = %s",
            (self.campaign_id, unit_key(address_key(email), step)),
        ).fetchone()
        if row is None or (row[0] == "pending" and row[1] == 0):
            return None
        return Entry(DeliveryStatus(row[0]), *row[1:])

    def begin_flight(self, group: Iterable[tuple[str, int, Entry | None] | Flight]) -> None:
        """Commit buffered outcomes and mark a claimed group `unknown`, durably.

        Only rows this run still holds the lease of are marked: if another run took any of
        them (this one could not renew for a whole lease: a frozen process or VM), nothing of
        the group is marked and TempFailError is raised, so none of it is sent twice.
        """
        keys = [unit_key(address_key(f[0]), f[3] if len(f) > 3 else None) for f in group]
        with self.conn.transaction():
            cur = self.conn.execute(
                "UPDATE mailcli_recipients SET status = 'unknown', attempts = attempts + 1, "
                "run_tries = CASE WHEN run = %(run)s THEN run_tries + 1 ELSE 1 END, "
                "run = %(run)s, host = %(host)s, updated = COALESCE(%(ts)s, now()), "
                # The first try only: a row tried before the column existed keeps NULL.
                "first_at = CASE WHEN attempts = 0 THEN COALESCE(%(ts)s, now()) ELSE first_at END "
                "WHERE campaign = %(campaign)s AND key = ANY(%(keys)s) AND lease_run = %(run)s",
                {
                    "run": self.run_id,
                    "host": self.host,
                    "campaign": self.campaign_id,
                    "keys": keys,
                    "ts": self._ts(),
                },
            )
            if cur.rowcount != len(keys):
                raise TempFailError(
                    f"this run lost its claim on {len(keys) - cur.rowcount} recipients (its "
                    "lease ran out and another run took them); stopping before sending them",
                    hint="a run must renew its lease within MAILCLI_LEASE_SECONDS (default 60)",
                )
            self._write_outcomes()

    def record(self, outcome: Outcome) -> None:
        """Buffer an outcome; it is committed with the next group (or by flush)."""
        self._pending.append(outcome)

    def record_invalid(self, email: str, row: int, problem: str, step: str | None = None) -> None:
        """A claimed row that cannot be built: `failed`, with the problem as the reply."""
        key = unit_key(address_key(email), step)
        self._pending.append(Outcome(key, DeliveryStatus.FAILED, None, f"invalid: {problem}"))

    def revert(self, email: str, entry: Entry | None, step: str | None = None) -> None:
        """Undo the flight mark of a message that was never handed over."""
        self._reverts.append((unit_key(address_key(email), step), entry))

    def flush(self) -> None:
        """Commit buffered outcomes now."""
        if self._pending or self._reverts or self._skips:
            with self.conn.transaction():
                self._write_outcomes()

    def _write_outcomes(self) -> None:
        ts = self._ts()
        with self.conn.cursor() as cur:
            if self._skips:
                cur.executemany(
                    "INSERT INTO mailcli_recipients (campaign, key, email, name, row, line, "
                    "fields, status, run, host, updated, listed) "
                    "SELECT campaign, %(unit)s, email, name, row, line, fields, 'skipped', "
                    "%(run)s, %(host)s, COALESCE(%(ts)s, now()), false FROM mailcli_recipients "
                    "WHERE campaign = %(campaign)s AND key = %(member)s "
                    "ON CONFLICT (campaign, key) DO UPDATE SET status = 'skipped', "
                    "run = excluded.run, updated = excluded.updated",
                    [
                        {
                            "unit": unit_key(member, step),
                            "member": member,
                            "run": self.run_id,
                            "host": self.host,
                            "ts": ts,
                            "campaign": self.campaign_id,
                        }
                        for member, step in self._skips
                    ],
                )
                cur.executemany(
                    "INSERT INTO mailcli_attempts (campaign, key, run, at, status) "
                    "VALUES (%s, %s, %s, COALESCE(%s, now()), 'skipped')",
                    [
                        (self.campaign_id, unit_key(member, step), self.run_id, ts)
                        for member, step in self._skips
                    ],
                )
                self._skips.clear()
            if self._pending:
                cur.executemany(
                    "UPDATE mailcli_recipients SET status = %s, code = %s, reply = %s, "
                    "message_id = COALESCE(%s, message_id), next_at = %s, "
                    "updated = COALESCE(%s, now()), "
                    "sent_at = CASE WHEN %s = 'sent' THEN COALESCE(%s, now()) ELSE sent_at END, "
                    "lease_run = NULL, lease_until = NULL WHERE campaign = %s AND key = %s",
                    [
                        (
                            str(o.status),
                            o.code,
                            o.reply,
                            o.message_id,
                            o.next_at,
                            ts,
                            str(o.status),
                            ts,
                            self.campaign_id,
                            o.key,
                        )
                        for o in self._pending
                    ],
                )
                self._release_members([o.key for o in self._pending], cur)
                # The send log (`status --recipient`), in the same transaction.
                cur.executemany(
                    "INSERT INTO mailcli_attempts (campaign, key, run, at, status, code, reply, "
                    "message_id) VALUES (%s, %s, %s, COALESCE(%s, now()), %s, %s, %s, %s)",
                    [
                        (
                            self.campaign_id,
                            o.key,
                            self.run_id,
                            ts,
                            str(o.status),
                            o.code,
                            o.reply,
                            o.message_id,
                        )
                        for o in self._pending
                    ],
                )
            if self._reverts:
                cur.executemany(
                    "UPDATE mailcli_recipients SET status = %s, attempts = %s, run = %s, "
                    "run_tries = %s, next_at = %s, lease_run = NULL, lease_until = NULL, "
                    "first_at = CASE WHEN %s = 0 THEN NULL ELSE first_at END "
                    "WHERE campaign = %s AND key = %s",
                    [
                        (
                            str(e.status) if e else "pending",
                            e.attempts if e else 0,
                            e.run if e else None,
                            e.run_tries if e else 0,
                            e.next_at if e else None,
                            e.attempts if e else 0,
                            self.campaign_id,
                            key,
                        )
                        for key, e in self._reverts
                    ],
                )
                self._release_members([key for key, _ in self._reverts], cur)
        self._pending.clear()
        self._reverts.clear()

    def _release_members(self, keys: Iterable[str], cur: Any) -> None:
        """A sequence's steps whose fate is recorded (or that never left): their members,
        which this run kept while it sent them, are given back (see `settle_member`)."""
        members = sorted({key.split(UNIT_SEP)[0] for key in keys if UNIT_SEP in key})
        if members:
            # Next worth a look by the next run (this one has looked).
            ts = self._ts()
            cur.execute(
                "UPDATE mailcli_recipients SET lease_run = NULL, lease_until = NULL, "
                "seq_due = COALESCE(%s, extract(epoch FROM now())) "
                "WHERE campaign = %s AND key = ANY(%s) AND lease_run = %s",
                (
                    ts.timestamp() if ts is not None else None,
                    self.campaign_id,
                    members,
                    self.run_id,
                ),
            )

    # -- reading --------------------------------------------------------------------------

    def counts(self) -> dict[DeliveryStatus, int]:
        """Recipients per status, over every host."""
        counts = dict.fromkeys(RECIPIENT_STATUSES, 0)
        for status, n in self.conn.execute(
            "SELECT status, COUNT(*) FROM mailcli_recipients WHERE campaign = %s GROUP BY 1",
            (self.campaign_id,),
        ):
            counts[DeliveryStatus(status)] = n
        return counts

    def stranded_unknown(self) -> int:
        """`unknown` recipients no live run will settle (a crash, a lost connection)."""
        row = self.conn.execute(
            "SELECT COUNT(*) FROM mailcli_recipients WHERE campaign = %s AND status = 'unknown'"
            " AND (lease_until IS NULL OR lease_until < now()) AND run IS DISTINCT FROM %s",
            (self.campaign_id, self.run_id),
        ).fetchone()
        return int(row[0]) if row else 0

    def left(self) -> int:
        """Recipients nobody has tried yet that no live run holds now."""
        row = self.conn.execute(
            "SELECT COUNT(*) FROM mailcli_recipients WHERE campaign = %s AND status = 'pending'"
            " AND (lease_until IS NULL OR lease_until < now())",
            (self.campaign_id,),
        ).fetchone()
        return int(row[0]) if row else 0

    def by_message_id(self, message_ids: Collection[str]) -> dict[str, str]:
        """The recipient each of these Message-IDs was sent to (those the store knows)."""
        rows = self.conn.execute(
            "SELECT message_id, email FROM mailcli_recipients WHERE campaign = %s "
            "AND message_id = ANY(%s)",
            (self.campaign_id, list(set(message_ids))),
        ).fetchall()
        return {m: e for m, e in rows}

    def left_emails(self) -> Iterator[str]:
        """The addresses `left` counts, streamed (a server-side cursor)."""
        with self.conn.transaction(), self.conn.cursor(name="mailcli_left") as cursor:
            cursor.execute(
                "SELECT email FROM mailcli_recipients WHERE campaign = %s AND status = 'pending'"
                " AND (lease_until IS NULL OR lease_until < now())",
                (self.campaign_id,),
            )
            for (email,) in cursor:
                yield email

    def export_rows(
        self, statuses: Collection[DeliveryStatus] | None = None, *, steps: bool = False
    ) -> Iterator[RecipientRecord]:
        """Every recipient of the campaign (or those in `statuses`) in list order, streamed
        (a server-side cursor): memory stays flat whatever the size of the campaign."""
        where = "campaign = %s"
        if steps:  # a sequence: its steps' records, not its members (the list's rows)
            where += " AND strpos(key, chr(31)) > 0"
        values: list[object] = [self.campaign_id]
        if statuses is not None:
            where += " AND status = ANY(%s)"
            values.append([DeliveryStatus(s).value for s in statuses])
        with self.conn.transaction(), self.conn.cursor(name="mailcli_export") as cursor:
            cursor.execute(
                f"SELECT {self._record_columns()} FROM mailcli_recipients WHERE {where} "
                "ORDER BY row, email, key",
                values,
            )
            for r in cursor:
                yield RecipientRecord.of(r)

    def known(self, emails: Collection[str]) -> set[str]:
        """Which of these addresses the store holds (their keys), in one round trip."""
        rows = self.conn.execute(
            "SELECT key FROM mailcli_recipients WHERE campaign = %s AND key = ANY(%s)",
            (self.campaign_id, list({address_key(e) for e in emails})),
        )
        return {key for (key,) in rows}

    def recipient(self, email: str, step: str | None = None) -> RecipientRecord | None:
        """What the store holds of one address (imported, tried or not; or of one step of
        it), or None."""
        r = self.conn.execute(
            f"SELECT {self._record_columns()} FROM mailcli_recipients "
            "WHERE campaign = %s AND key = %s",
            (self.campaign_id, unit_key(address_key(email), step)),
        ).fetchone()
        return None if r is None else RecipientRecord.of(r)

    def history(self, email: str, step: str | None = None) -> list[Attempt]:
        """Every recorded outcome of an address (or one step of it), oldest first, from any
        host."""
        if not self.upgraded:
            return []
        rows = self.conn.execute(
            f"SELECT run, {_utc('at')}, status, code, reply, message_id FROM mailcli_attempts "
            "WHERE campaign = %s AND key = %s ORDER BY at",
            (self.campaign_id, unit_key(address_key(email), step)),
        )
        return [Attempt(r[0], r[1], DeliveryStatus(r[2]), *r[3:]) for r in rows]

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads inside see one moment of the store (a read-only REPEATABLE READ transaction)
        while other hosts send: an export never misses a row imported between two reads."""
        with self.conn.transaction():
            self.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield

    def _record_columns(self) -> str:
        """The columns of a RecipientRecord; the times as SQLite writes them (ISO 8601, UTC)."""
        first = _utc("first_at") if self.upgraded else "NULL::text"
        return (
            f"email, row, status, code, reply, message_id, {first}, "
            f"CASE WHEN attempts > 0 THEN {_utc('updated')} END, attempts, run, key"
        )

    def due(self, *, retry_unknown: bool, resend_failed: bool = False) -> int:
        """Recipients a run would send now or once their holders finish (leases ignored)."""
        row = self.conn.execute(
            "SELECT COUNT(*) FROM mailcli_recipients WHERE " + _DUE_ANY,
            self._due_params(retry_unknown, resend_failed),
        ).fetchone()
        return int(row[0]) if row else 0

    def due_emails(self, *, retry_unknown: bool, resend_failed: bool = False) -> Iterator[str]:
        """The addresses `due` counts, streamed (a server-side cursor)."""
        with self.conn.transaction(), self.conn.cursor(name="mailcli_due") as cursor:
            cursor.execute(
                "SELECT email FROM mailcli_recipients WHERE " + _DUE_ANY,
                self._due_params(retry_unknown, resend_failed),
            )
            for (email,) in cursor:
                yield email

    def _due_params(self, retry_unknown: bool, resend_failed: bool) -> dict[str, object]:
        return {
            "campaign": self.campaign_id,
            "now": time.time(),
            "retry_unknown": retry_unknown,
            "resend_failed": resend_failed,
        }

    def set_aside(self, emails: Collection[str]) -> None:
        """Claimed recipients whose address is suppressed: given back at once (so no other
        host waits for them), still due once off the list (a deferred one is pending again),
        and not claimed again by this run."""
        self.conn.execute(
            "UPDATE mailcli_recipients SET lease_run = NULL, lease_until = NULL, run = %s, "
            "next_at = CASE WHEN status = 'deferred' THEN NULL ELSE next_at END, "
            "status = CASE WHEN status = 'deferred' THEN 'pending' ELSE status END "
            "WHERE campaign = %s AND key = ANY(%s) AND lease_run = %s",
            (self.run_id, self.campaign_id, [address_key(e) for e in emails], self.run_id),
        )

    def total(self) -> int:
        """Recipients in the store."""
        row = self.conn.execute(
            "SELECT COUNT(*) FROM mailcli_recipients WHERE campaign = %s", (self.campaign_id,)
        ).fetchone()
        return int(row[0]) if row else 0

    def failed_before(self) -> int:
        """Recipients refused by a server in another run."""
        # A refusal this run set aside unsent (due by --resend-failed, but suppressed) carries
        # this run's id, with its `updated` from the run that got the refusal.
        row = self.conn.execute(
            "SELECT COUNT(*) FROM mailcli_recipients WHERE campaign = %(campaign)s "
            "AND status = 'failed' AND code IS NOT NULL AND (run IS DISTINCT FROM %(run)s "
            "OR updated < (SELECT started FROM mailcli_runs WHERE id = %(run)s))",
            {"campaign": self.campaign_id, "run": self.run_id},
        ).fetchone()
        return int(row[0]) if row else 0

    def next_retry(self, max_tries: int) -> float | None:
        """When the earliest deferred recipient of this run may be tried again (None: none)."""
        row = self.conn.execute(
            "SELECT MIN(next_at) FROM mailcli_recipients WHERE campaign = %s "
            "AND status = 'deferred' AND run = %s AND run_tries < %s",
            (self.campaign_id, self.run_id, max_tries),
        ).fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def problems(
        self, statuses: tuple[DeliveryStatus, ...] = PROBLEM_STATUSES
    ) -> list[RecipientState]:
        """Recipients in the given statuses, in list order."""
        rows = self.conn.execute(
            "SELECT email, row, status, code, reply, attempts, "
            "to_char(updated AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"+00:00\"'), key "
            "FROM mailcli_recipients WHERE campaign = %s AND status = ANY(%s) "
            "ORDER BY row, email, key",
            (self.campaign_id, [s.value for s in statuses]),
        )
        return [
            RecipientState(r[0], r[1], DeliveryStatus(r[2]), r[3], r[4], r[5], r[6], step_of(r[7]))
            for r in rows
        ]

    def hosts(self) -> list[HostShare]:
        """Per host, the recipients it handled (`status` shows who sent what)."""
        rows = self.conn.execute(
            "SELECT host, COUNT(*) FILTER (WHERE status = 'sent'), "
            "COUNT(*) FILTER (WHERE status = 'failed'), "
            "COUNT(*) FILTER (WHERE status = 'deferred'), "
            "COUNT(*) FILTER (WHERE status = 'unknown') "
            "FROM mailcli_recipients WHERE campaign = %s AND host IS NOT NULL "
            "GROUP BY host ORDER BY host",
            (self.campaign_id,),
        )
        return [HostShare(*r) for r in rows]

    def live_runs(self) -> list[RunRecord]:
        """Runs that are sending now (their heartbeat is within the lease)."""
        rows = self.conn.execute(
            "SELECT id, started, finished, pid, host FROM mailcli_runs WHERE campaign = %s "
            "AND finished IS NULL AND heartbeat >= now() - make_interval(secs => %s) "
            "ORDER BY id",
            (self.campaign_id, self.lease_s),
        )
        return [RunRecord(r[0], _iso(r[1]), None, r[3], r[4], None, None) for r in rows.fetchall()]

    def last_run(self) -> RunRecord | None:
        """The most recent run of the campaign, on any host."""
        row = self.conn.execute(
            "SELECT id, started, finished, pid, host, summary FROM mailcli_runs "
            "WHERE campaign = %s ORDER BY id DESC LIMIT 1",
            (self.campaign_id,),
        ).fetchone()
        if row is None:
            return None
        summary = row[5] or {}
        return RunRecord(
            row[0],
            _iso(row[1]),
            _iso(row[2]) if row[2] else None,
            row[3],
            row[4],
            summary.get("exit_code"),
            summary.get("sent"),
        )

    # -- the campaign's fingerprint ---------------------------------------------------------

    def fingerprints(self) -> list[Recorded]:
        """The campaign's fingerprint history, oldest first (none in a store of an older
        mailcli: its first run here adds the table)."""
        found = self.conn.execute("SELECT to_regclass('mailcli_fingerprints')").fetchone()
        if found is None or found[0] is None:
            return []
        rows = self.conn.execute(
            f"SELECT id, {_utc('recorded')}, file, host, content, changes "
            "FROM mailcli_fingerprints WHERE campaign = %s ORDER BY id",
            (self.campaign_id,),
        ).fetchall()
        return [
            Recorded(r[0], r[1], Fingerprint.stored(r[2], r[3], r[4]), tuple(r[5])) for r in rows
        ]

    def add_fingerprint(
        self, fingerprint: Fingerprint, changes: Sequence[str], *, after: int | None
    ) -> bool:
        """Record a fingerprint unless another was recorded since the entry `after` (False).

        Hosts that start together check and record one at a time (an advisory lock per
        campaign), so the second compares with what the first recorded.
        """
        psycopg = _driver()
        try:
            with self.conn.transaction():
                self.conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext('mailcli fingerprint'), %s::int)",
                    (self.campaign_id % 2**31,),
                )
                found = self.conn.execute("SELECT to_regclass('mailcli_fingerprints')").fetchone()
                if found is None or found[0] is None:
                    self.conn.execute("SELECT pg_advisory_xact_lock(hashtext('mailcli schema'))")
                    self.conn.execute(FINGERPRINTS)
                cur = self.conn.execute(
                    "INSERT INTO mailcli_fingerprints (campaign, file, host, digest, content, "
                    "changes) SELECT %(campaign)s, %(file)s, %(host)s, %(digest)s, "
                    "%(content)s::jsonb, %(changes)s::jsonb WHERE (SELECT MAX(id) FROM "
                    "mailcli_fingerprints WHERE campaign = %(campaign)s) "
                    "IS NOT DISTINCT FROM %(after)s::bigint",
                    {
                        "campaign": self.campaign_id,
                        "file": fingerprint.file,
                        "host": fingerprint.host,
                        "digest": fingerprint.digest,
                        "content": json.dumps(fingerprint.content()),
                        "changes": json.dumps(list(changes)),
                        "after": after,
                    },
                )
                return cur.rowcount == 1
        except psycopg.errors.InsufficientPrivilege as exc:
            raise ConfigError(
                f"the state database refused: {exc.diag.message_primary}",
                path=self.url,
                hint="the first run after an upgrade of mailcli needs a role that owns the "
                "database (it adds the table mailcli_fingerprints); see README 'Running on "
                "several hosts'",
            ) from None


def _iso(value: Any) -> str:
    return str(value.isoformat(timespec="seconds"))


def _utc(column: str) -> str:
    """SQL for a timestamptz column as text, as the SQLite store writes times."""
    return f"to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"+00:00\"')"


class _Heartbeat:
    """Renews this run's leases every quarter lease, on a connection of its own."""

    def __init__(self, url: str, run: int, lease_s: float) -> None:
        self.url, self.run, self.lease_s = url, run, lease_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="mailcli-lease", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=10)

    def _beat(self) -> None:
        conn = None
        while not self._done.wait(self.lease_s / 4):
            try:
                if conn is None or conn.closed:
                    conn = _connect(self.url)
                # SKIP LOCKED: a row the run's own connection is writing now is renewed by the
                # next beat. Waiting for it instead could deadlock with that transaction (each
                # holding rows the other wants), which would fail the run.
                conn.execute(
                    "UPDATE mailcli_recipients AS t SET lease_until = now() + make_interval("
                    "secs => %(lease)s) FROM (SELECT campaign, key FROM mailcli_recipients "
                    "WHERE lease_run = %(run)s FOR UPDATE SKIP LOCKED) AS mine "
                    "WHERE t.campaign = mine.campaign AND t.key = mine.key",
                    {"lease": self.lease_s, "run": self.run},
                )
                conn.execute("UPDATE mailcli_runs SET heartbeat = now() WHERE id = %s", (self.run,))
            except Exception as exc:  # the next beat tries again; the lease is 4 beats long
                log.warning("renewing the claims failed: %s", exc)
                with contextlib.suppress(Exception):
                    if conn is not None:
                        conn.close()
                conn = None
        if conn is not None:
            conn.close()
