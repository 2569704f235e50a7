"""The one exception hierarchy of mailcli and the exit codes it maps to.

Every error a user can cause is a `MailcliError` subclass that carries where the problem is
(file and line, row, recipient) and the sysexits code the CLI exits with. Per-recipient outcomes
(a 550 for one address) are data, not exceptions: see `mailcli.batch`.
"""

from __future__ import annotations

from enum import IntEnum
from pathlib import Path
from typing import Any


class ExitCode(IntEnum):
    """Exit codes of the contract (sysexits, as mail tools use them)."""

    OK = 0
    REJECTED = 1
    USAGE = 2
    DATAERR = 65
    NOINPUT = 66
    CANTCREAT = 73
    SOFTWARE = 70
    UNAVAILABLE = 69
    TEMPFAIL = 75
    NOPERM = 77
    CONFIG = 78


class MailcliError(Exception):
    """Root of every error mailcli reports to a user."""

    exit_code: ExitCode = ExitCode.SOFTWARE

    def __init__(
        self,
        message: str,
        *,
        path: Path | str | None = None,
        line: int | None = None,
        row: int | None = None,
        recipient: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = str(path) if path is not None else None
        self.line = line
        self.row = row
        self.recipient = recipient
        self.hint = hint
        #: What a campaign run had done when it failed (a `Summary`), if the error ended one.
        self.summary: Any = None

    def __reduce__(self) -> tuple[object, ...]:
        # An error raised in a worker process crosses back to the parent whole, place included.
        return (_rebuild, (type(self), self.__dict__.copy()))

    @property
    def location(self) -> str:
        """`file:line`, `file row N`, or '' when the error has no place."""
        parts: list[str] = []
        if self.path is not None:
            parts.append(self.path if self.line is None else f"{self.path}:{self.line}")
        if self.row is not None:
            parts.append(f"row {self.row}")
        return " ".join(parts)

    def __str__(self) -> str:
        where = self.location
        text = f"{where}: {self.message}" if where else self.message
        return f"{text}\n  hint: {self.hint}" if self.hint else text


def _rebuild(cls: type[MailcliError], state: dict[str, object]) -> MailcliError:
    error = cls.__new__(cls)
    Exception.__init__(error, state.get("message", ""))
    error.__dict__.update(state)
    return error


class UsageError(MailcliError):
    """A bad option or argument combination."""

    exit_code = ExitCode.USAGE


class DataError(MailcliError):
    """A template, CSV row or address problem."""

    exit_code = ExitCode.DATAERR


class BadHeaderError(DataError):
    """A CR or LF in a header value or an address (header injection): nothing was sent."""


class InputFileError(MailcliError):
    """An input file is missing or unreadable."""

    exit_code = ExitCode.NOINPUT


class CantCreateError(MailcliError):
    """An output file or folder cannot be written (init, a key file, a log file)."""

    exit_code = ExitCode.CANTCREAT


class UnavailableError(MailcliError):
    """The SMTP server (or the API endpoint) could not be reached, or TLS failed."""

    exit_code = ExitCode.UNAVAILABLE
    #: Whether reconnecting may help (False: the run stops at once, as at its start).
    retry = True


class CertificateError(UnavailableError):
    """The server's TLS certificate did not verify (exit 69); `reason` says why."""

    def __init__(self, endpoint: str, reason: str) -> None:
        super().__init__(
            f"TLS certificate of {endpoint} not trusted: {reason}",
            hint="check the host name, or give the CA with SSL_CERT_FILE; "
            "`mailcli test-connection` shows the certificate",
        )
        self.reason = reason

    retry = False  # a certificate does not get trusted by waiting


class TempFailError(MailcliError):
    """Interrupted, locked, or otherwise worth running again later."""

    exit_code = ExitCode.TEMPFAIL


class AuthError(MailcliError):
    """The SMTP server refused the credentials."""

    exit_code = ExitCode.NOPERM


class ConfigError(MailcliError):
    """An invalid campaign file or profile."""

    exit_code = ExitCode.CONFIG


class InvalidRowsError(DataError):
    """Some rows cannot be sent; carries every `row N: problem` line."""

    def __init__(self, problems: list[str], *, total: int) -> None:
        shown = "\n".join(problems)
        super().__init__(
            f"{len(problems)} of {total} rows are invalid; nothing was sent\n{shown}",
            hint="fix the rows, or pass --skip-invalid to send the others",
        )
        self.problems = problems


def open_error(path: Path, exc: OSError, what: str) -> InputFileError:
    """Turn an OSError from opening an input file into a one-line error naming the file."""
    if isinstance(exc, FileNotFoundError):
        return InputFileError(f"{what} not found", path=path)
    if isinstance(exc, IsADirectoryError):
        return InputFileError(f"the {what} is a folder, not a file", path=path)
    reason = exc.strerror or exc.__class__.__name__
    return InputFileError(f"cannot read {what}: {reason}", path=path)
