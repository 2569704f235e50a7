"""The throw-away PostgreSQL server of tests/pgserver.py: a database per test, a role that owns it
and nothing more, and passwords really checked over TCP."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from pgserver import PgCluster
from psycopg.conninfo import make_conninfo

pytestmark = pytest.mark.postgres


def test_owner_can_create_insert_and_select(pg_url: str) -> None:
    """With PGPASSWORD, the URL's role logs in and creates a table in schema public of its db."""
    with psycopg.connect(pg_url) as conn:
        conn.execute("CREATE TABLE sent (email text PRIMARY KEY, status text NOT NULL)")
        conn.execute("INSERT INTO sent VALUES (%s, %s)", ("ann@example.com", "sent"))
        rows = conn.execute("SELECT email, status FROM sent").fetchall()
    assert rows == [("ann@example.com", "sent")]


def test_role_has_no_other_privilege(pg_url: str) -> None:
    """The role owns its database and is neither superuser nor allowed to create databases or roles
    (what the README tells users to grant)."""
    with psycopg.connect(pg_url) as conn:
        row = conn.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        owner = conn.execute(
            "SELECT pg_get_userbyid(datdba) = current_user FROM pg_database"
            " WHERE datname = current_database()"
        ).fetchone()
    assert row == (False, False, False)
    assert owner == (True,)


def test_password_is_required(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a password, or with a wrong one, the server refuses: scram-sha-256 on TCP."""
    monkeypatch.delenv("PGPASSWORD")
    with pytest.raises(psycopg.OperationalError, match="no password supplied"):
        psycopg.connect(pg_url)
    monkeypatch.setenv("PGPASSWORD", "wrong")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg_url)


def test_databases_are_separate(pg_cluster: PgCluster, pg_url: str) -> None:
    """A second database has its own role and its own tables, and its role may not create tables
    in the first database (PostgreSQL 15+: schema public belongs to pg_database_owner)."""
    other = f"other_{uuid.uuid4().hex[:12]}"
    other_url = pg_cluster.create_database(other)
    with psycopg.connect(pg_url) as conn:
        conn.execute("CREATE TABLE sent (email text)")
    with psycopg.connect(other_url) as conn:
        tables = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        assert tables.fetchall() == []
    # Every role has the same password, and PUBLIC may CONNECT by default: only CREATE is refused.
    with (
        psycopg.connect(make_conninfo(pg_url, user=other)) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute("CREATE TABLE intruder (x int)")
