"""The suppression list: addresses that no campaign, `send` or library call mails again.

One list is shared by every campaign of a user (or of every host, in PostgreSQL). An address is
on it for a reason (`unsubscribed`, `hard-bounce`, `complaint`, `soft-bounce` once the soft
bounces reach their limit, or `manual`), with where that came from (the campaign and the
Message-ID of the message that bounced or was unsubscribed from) and when. Soft bounces are
counted here too, and the bounce reports already read, so that scanning a mailbox twice counts
nothing twice.

Where the list is (`locate`): the campaign's `suppression:` (a path, a `postgresql://` URL, or
`false` for none), else the profile's, else the campaign's own PostgreSQL state database when
its state is there, else `$MAILCLI_SUPPRESSION`, else `suppression.sqlite` in the user data
folder. Reading a list that does not exist yet finds nobody and creates nothing.

Addresses are compared by their normalised form (`address_key`), as the campaign state does.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
import sys
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from mailcli.addresses import address_key
from mailcli.errors import CantCreateError, ConfigError, TempFailError

if TYPE_CHECKING:
    import psycopg

    from mailcli.campaign import Campaign

_T = TypeVar("_T")

# The soft bounces (4xx: a full mailbox, a server down for days) after which an address is
# suppressed, unless `bounces scan --soft-limit` says otherwise.
SOFT_LIMIT = 3
# Addresses asked about in one query (SQLite allows 32,766 parameters).
CHUNK = 500


class Reason(StrEnum):
    """Why an address is suppressed."""

    UNSUBSCRIBED = "unsubscribed"
    HARD_BOUNCE = "hard-bounce"
    SOFT_BOUNCE = "soft-bounce"
    COMPLAINT = "complaint"
    MANUAL = "manual"


@dataclass(frozen=True, slots=True)
class Suppressed:
    """One entry of the list."""

    email: str
    reason: Reason
    created: str
    campaign: str | None = None
    message_id: str | None = None
    detail: str | None = None

    def to_json(self) -> dict[str, str | None]:
        return {
            "email": self.email,
            "reason": self.reason.value,
            "created": self.created,
            "campaign": self.campaign,
            "message_id": self.message_id,
            "detail": self.detail,
        }


class SuppressionList(Protocol):
    """What the engine, the CLI, the bounce scanner and the unsubscribe endpoint rely on."""

    where: str

    def add(
        self,
        email: str,
        reason: Reason,
        *,
        campaign: str | None = None,
        message_id: str | None = None,
        detail: str | None = None,
    ) -> bool:
        """Suppress an address; False when it already was (the first reason is kept)."""
        ...

    def remove(self, email: str) -> bool:
        """Make an address deliverable again (its soft bounces are forgotten too)."""
        ...

    def get(self, email: str) -> Suppressed | None:
        """The entry of one address, if it is suppressed."""
        ...

    def suppressed(self, emails: Collection[str]) -> set[str]:
        """The normalised keys (`address_key`) of those of `emails` that are suppressed."""
        ...

    def entries(self) -> Iterator[Suppressed]:
        """Every entry, oldest first (streamed)."""
        ...

    def count(self) -> int:
        """How many addresses are suppressed."""
        ...

    def soft_bounce(
        self,
        email: str,
        *,
        limit: int,
        campaign: str | None = None,
        message_id: str | None = None,
        detail: str | None = None,
    ) -> int:
        """Count one soft bounce; the address is suppressed when its count reaches `limit`.
        Returns the count."""
        ...

    def was_read(self, report_id: str) -> bool:
        """A bounce report (or a soft bounce of one message) already counted."""
        ...

    def mark_read(self, report_id: str) -> None:
        """Remember a report as counted (once what it says has been applied)."""
        ...

    def close(self) -> None: ...


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _key(email: str) -> str:
    try:
        return address_key(email)
    except ValueError:
        return email.strip().lower()


SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS suppression (
    key TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    reason TEXT NOT NULL,
    created TEXT NOT NULL,
    campaign TEXT,
    message_id TEXT,
    detail TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS soft_bounces (
    key TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    count INTEGER NOT NULL,
    last TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reports_seen (id TEXT PRIMARY KEY, seen TEXT NOT NULL) WITHOUT ROWID;
"""


class SqliteSuppression:
    """The list in a SQLite file (WAL: the unsubscribe endpoint writes while a run reads)."""

    def __init__(self, db: sqlite3.Connection | None, path: Path) -> None:
        self.db = db
        self.path = path
        self.where = str(path)

    @classmethod
    def open(cls, path: Path, *, create: bool = True) -> SqliteSuppression:
        """Open the list; without `create`, a list that does not exist is empty and no file is
        made."""
        if not create and not path.exists():
            return cls(None, path)
        return cls(_sqlite_connect(path), path)

    def _readable(self) -> bool:
        """The file is there (opened now if it was made since): a long-lived reader, such as
        an application's Mailer, sees a list created after it started."""
        if self.db is None and self.path.exists():
            self.db = _sqlite_connect(self.path)
        return self.db is not None

    def _write(self) -> sqlite3.Connection:
        if self.db is None:  # opened for reading before the file existed
            self.db = _sqlite_connect(self.path)
        return self.db

    def _run(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        try:
            return self._write().execute(sql, params)
        except sqlite3.OperationalError as exc:
            raise TempFailError(
                f"suppression list: {exc}", path=self.path, hint="try again"
            ) from None

    def add(
        self,
        email: str,
        reason: Reason,
        *,
        campaign: str | None = None,
        message_id: str | None = None,
        detail: str | None = None,
    ) -> bool:
        cursor = self._run(
            "INSERT INTO suppression VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (_key(email), email.strip(), reason.value, _now(), campaign, message_id, detail),
        )
        return cursor.rowcount > 0

    def remove(self, email: str) -> bool:
        if not self._readable():
            return False
        key = _key(email)
        self._run("DELETE FROM soft_bounces WHERE key = ?", (key,))
        return self._run("DELETE FROM suppression WHERE key = ?", (key,)).rowcount > 0

    def get(self, email: str) -> Suppressed | None:
        if not self._readable():
            return None
        row = self._run(
            "SELECT email, reason, created, campaign, message_id, detail FROM suppression "
            "WHERE key = ?",
            (_key(email),),
        ).fetchone()
        return _entry(row) if row else None

    def suppressed(self, emails: Collection[str]) -> set[str]:
        if not emails or not self._readable():
            return set()
        keys = list({_key(e) for e in emails})
        found: set[str] = set()
        for start in range(0, len(keys), CHUNK):
            part = keys[start : start + CHUNK]
            marks = ",".join("?" * len(part))
            found.update(
                k
                for (k,) in self._run(
                    f"SELECT key FROM suppression WHERE key IN ({marks})", tuple(part)
                )
            )
        return found

    def entries(self) -> Iterator[Suppressed]:
        if not self._readable():
            return
        for row in self._run(
            "SELECT email, reason, created, campaign, message_id, detail FROM suppression "
            "ORDER BY created, key"
        ):
            yield _entry(row)

    def count(self) -> int:
        if not self._readable():
            return 0
        return int(self._run("SELECT count(*) FROM suppression").fetchone()[0])

    def soft_bounce(
        self,
        email: str,
        *,
        limit: int,
        campaign: str | None = None,
        message_id: str | None = None,
        detail: str | None = None,
    ) -> int:
        key = _key(email)
        (count,) = self._run(
            "INSERT INTO soft_bounces VALUES (?, ?, 1, ?) ON CONFLICT (key) DO UPDATE SET "
            "count = count + 1, last = excluded.last RETURNING count",
            (key, email.strip(), _now()),
        ).fetchone()
        if count >= limit:
            self.add(
                email, Reason.SOFT_BOUNCE, campaign=campaign, message_id=message_id, detail=detail
            )
        return int(count)

    def was_read(self, report_id: str) -> bool:
        if not self._readable():
            return False
        found = self._run("SELECT 1 FROM reports_seen WHERE id = ?", (report_id,)).fetchone()
        return found is not None

    def mark_read(self, report_id: str) -> None:
        self._run(
            "INSERT INTO reports_seen VALUES (?, ?) ON CONFLICT DO NOTHING", (report_id, _now())
        )

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None


def _sqlite_connect(path: Path) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        db = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SQLITE_SCHEMA)
        with contextlib.suppress(OSError):
            path.chmod(0o600)  # addresses and why they left: private
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"cannot use the suppression list: {exc}", path=path) from None
    except OSError as exc:
        raise CantCreateError(
            f"cannot create the suppression list: {exc.strerror}", path=path
        ) from None
    return db


def _entry(row: tuple[Any, ...]) -> Suppressed:
    email, reason, created, campaign, message_id, detail = row
    return Suppressed(email, Reason(reason), str(created), campaign, message_id, detail)


PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS mailcli_suppression (
    key TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    reason TEXT NOT NULL,
    created TIMESTAMPTZ NOT NULL DEFAULT now(),
    campaign TEXT,
    message_id TEXT,
    detail TEXT
);
CREATE TABLE IF NOT EXISTS mailcli_soft_bounces (
    key TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    count INTEGER NOT NULL,
    last TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS mailcli_reports_seen (
    id TEXT PRIMARY KEY,
    seen TIMESTAMPTZ NOT NULL DEFAULT now()
);
"""


class PgSuppression:
    """The list in PostgreSQL, shared by every host (the tables sit beside the state's)."""

    def __init__(self, conn: psycopg.Connection[Any], url: str) -> None:
        self.conn = conn
        self.where = url.split("?", 1)[0]

    @classmethod
    def open(cls, url: str, *, create: bool = True) -> PgSuppression:
        from mailcli.pgstate import _connect, _driver

        driver = _driver()
        conn = _connect(url)
        try:
            with conn.transaction():
                ready = conn.execute("SELECT to_regclass('mailcli_suppression')").fetchone()
                if ready is None or ready[0] is None:
                    conn.execute("SELECT pg_advisory_xact_lock(hashtext('mailcli suppression'))")
                    conn.execute(PG_SCHEMA)
        except driver.errors.InsufficientPrivilege as exc:
            conn.close()
            raise ConfigError(
                f"the database refused to create the suppression list: {exc.diag.message_primary}",
                path=url,
                hint="run once with a role that owns the database; see README 'List hygiene'",
            ) from None
        except driver.Error as exc:
            conn.close()
            raise TempFailError(f"suppression list: {exc}".strip(), path=url) from None
        return cls(conn, url)

    def _run(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> Any:
        driver = sys.modules["psycopg"]
        try:
            return self.conn.execute(sql, params)
        except driver.Error as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TempFailError(f"suppression list: {reason}", path=self.where) from None

    def add(
        self,
        email: str,
        reason: Reason,
        *,
        campaign: str | None = None,
        message_id: str | None = None,
        detail: str | None = None,
    ) -> bool:
        cursor = self._run(
            "INSERT INTO mailcli_suppression (key, email, reason, campaign, message_id, detail) "
            "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (_key(email), email.strip(), reason.value, campaign, message_id, detail),
        )
        return bool(cursor.rowcount > 0)

    def remove(self, email: str) -> bool:
        key = _key(email)
        self._run("DELETE FROM mailcli_soft_bounces WHERE key = %s", (key,))
        return bool(self._run("DELETE FROM mailcli_suppression WHERE key = %s", (key,)).rowcount)

    def get(self, email: str) -> Suppressed | None:
        row = self._run(
            "SELECT email, reason, created, campaign, message_id, detail "
            "FROM mailcli_suppression WHERE key = %s",
            (_key(email),),
        ).fetchone()
        return _pg_entry(row) if row else None

    def suppressed(self, emails: Collection[str]) -> set[str]:
        if not emails:
            return set()
        keys = list({_key(e) for e in emails})
        rows = self._run(
            "SELECT key FROM mailcli_suppression WHERE key = ANY(%s)", (keys,)
        ).fetchall()
        return {k for (k,) in rows}

    def entries(self) -> Iterator[Suppressed]:
        with self.conn.cursor(name="mailcli_suppression_list") as cursor, self.conn.transaction():
            cursor.execute(
                "SELECT email, reason, created, campaign, message_id, detail "
                "FROM mailcli_suppression ORDER BY created, key"
            )
            for row in cursor:
                yield _pg_entry(row)

    def count(self) -> int:
        return int(self._run("SELECT count(*) FROM mailcli_suppression").fetchone()[0])

    def soft_bounce(
        self,
        email: str,
        *,
        limit: int,
        campaign: str | None = None,
        message_id: str | None = None,
        detail: str | None = None,
    ) -> int:
        (count,) = self._run(
            "INSERT INTO mailcli_soft_bounces AS s (key, email, count) VALUES (%s, %s, 1) "
            "ON CONFLICT (key) DO UPDATE SET count = s.count + 1, last = now() RETURNING count",
            (_key(email), email.strip()),
        ).fetchone()
        if count >= limit:
            self.add(
                email, Reason.SOFT_BOUNCE, campaign=campaign, message_id=message_id, detail=detail
            )
        return int(count)

    def was_read(self, report_id: str) -> bool:
        found = self._run(
            "SELECT 1 FROM mailcli_reports_seen WHERE id = %s", (report_id,)
        ).fetchone()
        return found is not None

    def mark_read(self, report_id: str) -> None:
        self._run(
            "INSERT INTO mailcli_reports_seen (id) VALUES (%s) ON CONFLICT DO NOTHING",
            (report_id,),
        )

    def close(self) -> None:
        self.conn.close()


def _pg_entry(row: tuple[Any, ...]) -> Suppressed:
    email, reason, created, campaign, message_id, detail = row
    created = created.astimezone(UTC).isoformat(timespec="seconds")
    return Suppressed(email, Reason(reason), created, campaign, message_id, detail)


# -- where the list is ---------------------------------------------------------------------


def data_folder(env: dict[str, str] | None = None) -> Path:
    """The platform's user data folder for mailcli."""
    env = dict(os.environ) if env is None else env
    if sys.platform == "win32":
        base = Path(env.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(env.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "mailcli"


def default_location() -> str:
    """`$MAILCLI_SUPPRESSION`, else suppression.sqlite in the user data folder."""
    return os.environ.get("MAILCLI_SUPPRESSION") or str(data_folder() / "suppression.sqlite")


@dataclass(frozen=True, slots=True)
class Location:
    """A list's place as configured: a SQLite path or a PostgreSQL URL (never a password)."""

    target: str

    @property
    def is_postgres(self) -> bool:
        return self.target.startswith(("postgresql://", "postgres://"))

    def open(self, *, create: bool = True) -> SuppressionList:
        """Open the list (without `create`, a missing SQLite list reads as empty)."""
        if self.is_postgres:
            return PgSuppression.open(self.target, create=create)
        return SqliteSuppression.open(Path(self.target), create=create)


def locate(
    configured: str | bool | None,
    *,
    profile: str | bool | None = None,
    state_url: str | None = None,
) -> Location | None:
    """The list a campaign (or `send`) uses; None when it is turned off (`suppression: false`).

    `configured` is the campaign's `suppression:` (None when absent), `profile` the profile's,
    `state_url` the campaign's PostgreSQL state URL, if any.
    """
    for value in (configured, profile):
        if value is False:
            return None
        if isinstance(value, str):
            return Location(value)
    if state_url is not None:
        return Location(state_url)
    return Location(default_location())


def open_for_reading(location: Location | None) -> SuppressionList | None:
    """The list to check before sending, or None when there is none to check. A SQLite list
    that does not exist yet is opened when it appears (an unsubscribe during a run counts)."""
    if location is None:
        return None
    return location.open(create=False)


def for_campaign(campaign: Campaign, *, profile: str | bool | None = None) -> Location | None:
    """The list a campaign checks: its own `suppression:`, else `profile` (the sending
    profile's or Mailer's choice; None: the profile the campaign's `smtp:` names, else
    $MAILCLI_PROFILE, else `default`, when there is one), else its PostgreSQL state database,
    else the default list. None when turned off."""
    if campaign.suppression is not None:
        return locate(campaign.suppression)
    if profile is None:
        from mailcli.settings import load_profile

        named = campaign.smtp.profile or os.environ.get("MAILCLI_PROFILE")
        try:
            found = load_profile(named)
        except ConfigError:
            found = None  # a missing profile is reported where it is used to send
        profile = found.suppression if found is not None else None
    return locate(None, profile=profile, state_url=campaign.state_url)


def key_of(email: str) -> str:
    """The form an address is kept and compared in."""
    return _key(email)


def screened(
    items: Iterable[_T], email: Callable[[_T], str | None], suppression: SuppressionList | None
) -> Iterator[tuple[_T, bool]]:
    """Each item with whether its address is suppressed, asking the list CHUNK at a time (one
    query per chunk, so a list in PostgreSQL costs no round trip per row). `email` gives an
    item's address, or None for an item that has none to check."""
    if suppression is None:
        for item in items:
            yield item, False
        return
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, CHUNK)):
        addresses = [a for a in map(email, chunk) if a is not None]
        found = suppression.suppressed(addresses) if addresses else set()
        for item in chunk:
            address = email(item)
            yield item, address is not None and _key(address) in found


def open_list(target: str | Path | None = None) -> SuppressionList:
    """The suppression list at `target` (a SQLite file or a `postgresql://` URL), else the
    default one (`$MAILCLI_SUPPRESSION`, else the user data folder), for an application's own
    use: `add`, `remove`, `get`. A SQLite list is created on its first write."""
    where = str(target) if target is not None else default_location()
    return Location(where).open(create=False)


# The names `mailcli` exports.
SuppressionReason = Reason
suppression_list = open_list
