"""A throw-away PostgreSQL server for the tests: Debian's `postgresql` binaries, a temporary
folder, a free loopback port, scram-sha-256 passwords over TCP (as a real deployment has)."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

SUPERUSER = "postgres"


def find_bindir() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres, or None when PostgreSQL is not installed.

    Debian's /usr/lib/postgresql/<version>/bin (the highest version) first, then PATH, then
    `pg_config --bindir` (which may belong to libpq-dev alone, so its folder is checked too).
    """
    candidates: list[Path] = []
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        versions = [d for d in debian.iterdir() if d.name.replace(".", "").isdigit()]
        versions.sort(key=lambda d: [int(part) for part in d.name.split(".")], reverse=True)
        candidates += [d / "bin" for d in versions]
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).resolve().parent)
    if pg_config := shutil.which("pg_config"):
        result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if result.returncode == 0:
            candidates.append(Path(result.stdout.strip()))
    for bindir in candidates:
        if all((bindir / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return bindir
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PgCluster:
    """A PostgreSQL server in a temporary folder on 127.0.0.1:`port`, until `stop()`.

    Every role made by `create_database` has the password `password`; the superuser `postgres`
    logs in without one over the unix socket in the folder, which only this cluster uses.
    """

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.password = secrets.token_urlsafe(16)
        self.superuser_password = secrets.token_urlsafe(16)
        self.port = 0
        self.folder: Path | None = None

    def _run(self, *command: str, timeout: float = 60) -> None:
        """Run a PostgreSQL program, as the `postgres` system user when we are root (the server
        refuses to run as root), with none of the caller's PG* variables (PGPORT, PGDATA...)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        drop: dict[str, Any] = {}
        if os.geteuid() == 0:
            drop = {"user": SUPERUSER, "group": SUPERUSER, "extra_groups": []}
        program = str(self.bindir / command[0])
        result = subprocess.run(
            [program, *command[1:]],
            env=env,
            cwd=self.folder,
            capture_output=True,
            text=True,
            timeout=timeout,
            **drop,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{command[0]} failed ({result.returncode}):\n{result.stderr}")

    def start(self) -> PgCluster:
        """initdb a new cluster in a temporary folder and start the server (waits until ready)."""
        # Not pytest's tmp_path: a unix socket path must stay under ~107 bytes.
        self.folder = Path(tempfile.mkdtemp(prefix="mailcli-pg-"))
        log = self.folder / "log"
        try:
            self._initdb(self.folder)
            self._run("pg_ctl", "start", "-w", "-t", "30", f"-D{self.folder / 'data'}", f"-l{log}")
        except BaseException as error:
            if log.exists():
                error.add_note(log.read_text(encoding="utf-8", errors="replace"))
            self.stop()
            raise
        return self

    def _initdb(self, folder: Path) -> None:
        """A new cluster in folder/data: trust on the unix socket, scram-sha-256 on TCP."""
        data, pwfile = folder / "data", folder / "superuser-password"
        pwfile.write_text(self.superuser_password + "\n", encoding="utf-8")
        if os.geteuid() == 0:
            shutil.chown(folder, SUPERUSER, SUPERUSER)
            shutil.chown(pwfile, SUPERUSER, SUPERUSER)
        self._run(
            "initdb",
            f"--pgdata={data}",
            f"--username={SUPERUSER}",
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        )
        pwfile.unlink()
        self.port = free_port()
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{folder}'",
            "password_encryption": "'scram-sha-256'",
            # The data is thrown away at the end: no need to survive a crash.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        with open(data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def stop(self) -> None:
        """Stop the server at once (the data is thrown away) and remove the folder."""
        if self.folder is None:
            return
        try:
            if (self.folder / "data" / "postmaster.pid").exists():
                self._run("pg_ctl", "stop", "-w", "-m", "immediate", f"-D{self.folder / 'data'}")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def create_database(self, name: str, *, icu_locale: str | None = None) -> str:
        """A LOGIN role `name` (password `password`, no other privilege) owning a new database
        `name`; returns its libpq URL without the password. `icu_locale` (e.g. "en-US"): the
        database sorts text by that ICU collation, as a production database often does,
        rather than byte by byte."""
        # Imported here so that conftest, which imports this module, loads without psycopg.
        import psycopg
        from psycopg import sql

        with psycopg.connect(
            host=str(self.folder),
            port=self.port,
            user=SUPERUSER,
            dbname="postgres",
            autocommit=True,
        ) as conn:
            role = sql.Identifier(name)
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(role, sql.Literal(self.password))
            )
            # Owning the database is all the store needs: since PostgreSQL 15 the schema public
            # belongs to pg_database_owner, so the owner (and no one else) may CREATE in it.
            create = sql.SQL("CREATE DATABASE {} OWNER {}").format(role, role)
            if icu_locale is not None:
                create += sql.SQL(
                    " TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE {} LOCALE 'C.UTF-8'"
                ).format(sql.Literal(icu_locale))
            conn.execute(create)
        return f"postgresql://{name}@127.0.0.1:{self.port}/{name}"

    def __enter__(self) -> PgCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
