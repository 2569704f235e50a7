"""The batch engine: a whole campaign, dry-run or delivered over one persistent SMTP connection.

A real run checks every row before it connects (render included), so a bad row stops the run before
anyone gets a message; then it streams the list again and sends. Per-recipient outcomes are counted
in a `Summary`, never raised.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mailcli.campaign import Campaign, Rate
from mailcli.errors import ExitCode, UnavailableError
from mailcli.message import Built
from mailcli.pipeline import Duplicate, Pipeline, Ready
from mailcli.preview import Preview
from mailcli.ratelimit import RateLimiter
from mailcli.recipients import RowProblem
from mailcli.transport import ConnectionLost, Outcome, Reply, SmtpConnection

# Problems kept for the report; beyond this only the count grows, so memory stays bounded.
MAX_PROBLEMS = 1000
RECONNECT_DELAYS = (1.0, 2.0, 4.0)


@dataclass(frozen=True, slots=True)
class Failure:
    """A recipient the server refused."""

    row: int
    email: str
    status: str
    code: int | None
    reply: str


@dataclass
class Summary:
    """Counts for one run; `to_json()` is the contract's `--json` object."""

    campaign: str
    dry_run: bool = False
    total: int = 0
    sent: int = 0
    failed: int = 0
    deferred: int = 0
    unknown: int = 0
    skipped: int = 0
    invalid: int = 0
    duplicates: int = 0
    would_send: int = 0
    bytes: int = 0
    elapsed_s: float = 0.0
    connections: int = 0
    exit_code: int = 0
    error: str | None = None
    problems: list[RowProblem] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    @property
    def rate_per_s(self) -> float:
        """Messages handled per second (built for a dry run, sent otherwise)."""
        done = self.would_send if self.dry_run else self.sent + self.failed + self.deferred
        return done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def problem(self, problem: RowProblem) -> None:
        """Count an invalid row, keeping the first MAX_PROBLEMS for the report."""
        self.invalid += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)

    def to_json(self) -> dict[str, Any]:
        """The machine-readable summary."""
        return {
            "campaign": self.campaign,
            "dry_run": self.dry_run,
            "total": self.total,
            "sent": self.sent,
            "failed": self.failed,
            "deferred": self.deferred,
            "unknown": self.unknown,
            "skipped": self.skipped,
            "invalid": self.invalid,
            "duplicates": self.duplicates,
            "would_send": self.would_send,
            "bytes": self.bytes,
            "elapsed_s": round(self.elapsed_s, 3),
            "rate_per_s": round(self.rate_per_s, 1),
            "connections": self.connections,
            "exit_code": self.exit_code,
            "error": self.error,
            "problems": [
                {"row": p.row, "line": p.line, "email": p.email, "problem": p.problem}
                for p in self.problems
            ],
            "failures": [
                {
                    "row": f.row,
                    "email": f.email,
                    "status": f.status,
                    "code": f.code,
                    "reply": f.reply,
                }
                for f in self.failures
            ],
        }


Progress = Callable[[Summary], None]


def dry_run(
    campaign: Campaign,
    *,
    sender: str | None = None,
    limit: int | None = None,
    progress: Progress | None = None,
    on_message: Callable[[Preview], None] | None = None,
) -> Summary:
    """Read, validate, render and build every row; open no connection, write no state."""
    started = time.monotonic()
    summary = Summary(campaign=campaign.name, dry_run=True)
    pipeline = Pipeline(campaign, sender=sender)
    for item in pipeline.items():
        summary.total += 1
        if isinstance(item, RowProblem):
            summary.problem(item)
        elif isinstance(item, Duplicate):
            summary.duplicates += 1
        elif limit is None or summary.would_send < limit:
            built = pipeline.check(item)
            if isinstance(built, RowProblem):
                summary.problem(built)
            else:
                summary.would_send += 1
                summary.bytes += len(built.data)
                if on_message is not None:
                    on_message(Preview(item.recipient.row, item.recipient.email, built))
        if progress is not None:
            progress(summary)
    summary.elapsed_s = time.monotonic() - started
    summary.exit_code = ExitCode.DATAERR if summary.invalid else ExitCode.OK
    return summary


def send_batch(
    campaign: Campaign,
    connect: Callable[[], SmtpConnection],
    *,
    sender: str | None = None,
    limit: int | None = None,
    rate: Rate | None = None,
    skip_invalid: bool = False,
    progress: Progress | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Summary:
    """Validate every row, then deliver the campaign over one persistent connection."""
    started = time.monotonic()
    summary = Summary(campaign=campaign.name)
    pipeline = Pipeline(campaign, sender=sender)

    # Pass 1: every row is read, validated and rendered before any connection is made.
    for item in pipeline.items():
        summary.total += 1
        if isinstance(item, RowProblem):
            summary.problem(item)
        elif isinstance(item, Duplicate):
            summary.duplicates += 1
        else:
            summary.would_send += 1
    if summary.invalid and not skip_invalid:
        summary.elapsed_s = time.monotonic() - started
        summary.exit_code = ExitCode.DATAERR
        return summary

    connection = connect()
    limiter = RateLimiter(rate or campaign.rate, sleep=sleep)
    try:
        connection.open()
        _deliver(pipeline, connection, limiter, summary, limit, progress, sleep)
    finally:
        connection.close()
        summary.connections = connection.connections
        summary.elapsed_s = time.monotonic() - started
    if summary.error is not None or summary.deferred or summary.unknown:
        summary.exit_code = ExitCode.TEMPFAIL
    elif summary.failed:
        summary.exit_code = ExitCode.REJECTED
    else:
        summary.exit_code = ExitCode.OK
    return summary


def _deliver(
    pipeline: Pipeline,
    connection: SmtpConnection,
    limiter: RateLimiter,
    summary: Summary,
    limit: int | None,
    progress: Progress | None,
    sleep: Callable[[float], None],
) -> None:
    attempted = 0
    smtputf8 = "smtputf8" in connection.extensions
    for item in pipeline.items():
        if not isinstance(item, Ready):
            continue  # counted in the first pass
        if limit is not None and attempted >= limit:
            break
        built = pipeline.check(item, smtputf8=smtputf8)
        if isinstance(built, RowProblem):
            summary.problem(built)
            continue
        attempted += 1
        limiter.wait()
        recipient = item.recipient
        try:
            outcome = _send_with_reconnect(connection, built, sleep)
        except ConnectionLost as exc:
            if exc.handed_over:
                # The server may have queued it; sending again could duplicate it.
                summary.unknown += 1
                _fail(
                    summary,
                    recipient.row,
                    recipient.email,
                    "unknown",
                    None,
                    f"connection lost before the reply: {exc.reason}",
                )
                if _reconnect(connection, sleep):
                    continue
            summary.error = f"connection to {connection.settings.endpoint} lost: {exc.reason}"
            return
        _count(
            summary,
            recipient.row,
            recipient.email,
            outcome.reply,
            outcome.refused.get(built.rcpt_to[0]),
            outcome.delivered,
        )
        if progress is not None:
            progress(summary)


def _send_with_reconnect(
    connection: SmtpConnection, built: Built, sleep: Callable[[float], None]
) -> Outcome:
    """Send; if the connection broke before the message was handed over, reconnect and resend."""
    tries = len(RECONNECT_DELAYS)
    for attempt in range(tries):
        if not connection.is_open and not _reconnect(connection, sleep):
            raise ConnectionLost("reconnecting failed", handed_over=False)
        try:
            return connection.send(built)
        except ConnectionLost as exc:
            if exc.handed_over or attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


def _reconnect(connection: SmtpConnection, sleep: Callable[[float], None]) -> bool:
    for delay in RECONNECT_DELAYS:
        sleep(delay)
        try:
            connection.close()
            connection.open()
            return True
        except UnavailableError:
            continue
    return False


def _count(
    summary: Summary, row: int, email: str, reply: Reply, refusal: Reply | None, delivered: bool
) -> None:
    if delivered:
        summary.sent += 1
        return
    deciding = refusal or reply
    if deciding.temporary:
        summary.deferred += 1
        _fail(summary, row, email, "deferred", deciding.code, deciding.text)
    else:
        summary.failed += 1
        _fail(summary, row, email, "failed", deciding.code, deciding.text)


def _fail(
    summary: Summary, row: int, email: str, status: str, code: int | None, reply: str
) -> None:
    if len(summary.failures) < MAX_PROBLEMS:
        summary.failures.append(Failure(row, email, status, code, reply))
