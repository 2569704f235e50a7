"""The counts of one run (`Summary`), which `batch --json` prints and `send_campaign` returns.

The counts of this run's outcomes (sent, failed, deferred, unknown) move through `Summary.moved`:
each outcome is a transition from what this run had counted for the recipient before (nothing,
or `deferred` before a retry round) to its new status, so a recipient retried and then sent is
counted once, as sent. Recipients left `unknown` by an earlier run are added to `unknown` when
the run meets them (they are why it exits 75).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mailcli.delivery import DeliveryStatus
from mailcli.recipients import RowProblem

# Problems kept for the report; beyond this only the count grows, so memory stays bounded.
MAX_PROBLEMS = 1000
# The counts of each step of a sequence, in a real run and in a dry run. `skipped`: its `if:`
# was false; `waiting`: recipients whose next step it is, not due yet; `held`: due, outside
# the recipient's window.
STEP_KEYS = ("sent", "failed", "deferred", "unknown", "skipped", "suppressed", "waiting", "held")
STEP_DRY_KEYS = ("would_send", "skipped", "suppressed", "waiting", "held")
_COUNTED = (
    DeliveryStatus.SENT,
    DeliveryStatus.FAILED,
    DeliveryStatus.DEFERRED,
    DeliveryStatus.UNKNOWN,
)


@dataclass(frozen=True, slots=True)
class Failure:
    """A recipient that was not delivered in this run: refused, deferred or unknown."""

    row: int
    email: str
    status: DeliveryStatus
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
    # Due recipients not sent because their address is on the suppression list.
    suppressed: int = 0
    failed_before: int = 0
    pending: int = 0
    invalid: int = 0
    duplicates: int = 0
    would_send: int = 0
    bytes: int = 0
    elapsed_s: float = 0.0
    connections: int = 0
    requests: int = 0  # HTTP calls (an API transport)
    transport: str | None = None
    exit_code: int = 0
    error: str | None = None
    # "checking" (pass 1 of a real run), "sending", or "building" (a dry run); for displays.
    phase: str = "checking"
    problems: list[RowProblem] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    # A sequence's counts per step, by step name (None: a one-message campaign).
    steps: dict[str, dict[str, int]] | None = None

    def for_steps(self, names: Sequence[str]) -> None:
        """Count per step too (a sequence): every step is reported, with zeros."""
        keys = STEP_DRY_KEYS if self.dry_run else STEP_KEYS
        self.steps = {name: dict.fromkeys(keys, 0) for name in names}

    def step_count(self, name: str, key: str, n: int = 1) -> None:
        """Add to one count of one step (of a step still in the campaign)."""
        if self.steps is not None and name in self.steps:
            self.steps[name][key] = self.steps[name].get(key, 0) + n

    @property
    def rate_per_s(self) -> float:
        """Messages handled per second (built for a dry run, sent otherwise)."""
        done = self.would_send if self.dry_run else self.sent + self.failed + self.deferred
        return done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def step_lines(self) -> list[tuple[str, str]]:
        """Each step of a sequence with its non-zero counts, for the human report."""
        lines = []
        for name, counts in (self.steps or {}).items():
            words = [f"{n:,} {key.replace('_', ' ')}" for key, n in counts.items() if n]
            lines.append((name, ", ".join(words) or "nothing"))
        return lines

    def moved(
        self, previous: DeliveryStatus | None, new: DeliveryStatus, step: str | None = None
    ) -> None:
        """A recipient (or its `step`) went from `previous` (None: not counted in this run
        yet) to `new`."""
        if previous is not None:
            self._add(previous, -1)
            if step is not None and previous in _COUNTED:
                self.step_count(step, previous.value, -1)
        self._add(new, 1)
        if step is not None and new in _COUNTED:
            self.step_count(step, new.value)

    def _add(self, status: DeliveryStatus, n: int) -> None:
        if status is DeliveryStatus.SENT:
            self.sent += n
        elif status is DeliveryStatus.FAILED:
            self.failed += n
        elif status is DeliveryStatus.DEFERRED:
            self.deferred += n
        elif status is DeliveryStatus.UNKNOWN:
            self.unknown += n

    def problem(self, problem: RowProblem) -> None:
        """Count an invalid row, keeping the first MAX_PROBLEMS for the report."""
        self.invalid += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)

    def failure(self, failure: Failure) -> None:
        """Keep a recipient that was not delivered (the first MAX_PROBLEMS), for the report."""
        if len(self.failures) < MAX_PROBLEMS:
            self.failures.append(failure)

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
            "suppressed": self.suppressed,
            "failed_before": self.failed_before,
            "pending": self.pending,
            "invalid": self.invalid,
            "duplicates": self.duplicates,
            "would_send": self.would_send,
            "bytes": self.bytes,
            "elapsed_s": round(self.elapsed_s, 3),
            "rate_per_s": round(self.rate_per_s, 1),
            "connections": self.connections,
            "transport": self.transport,
            "requests": self.requests,
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
                    "status": f.status.value,
                    "code": f.code,
                    "reply": f.reply,
                }
                for f in self.failures
            ],
        } | ({"steps": self.steps} if self.steps is not None else {})


Progress = Callable[[Summary], None]
