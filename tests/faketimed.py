"""Real `mailcli` processes whose clock `faketime` (libfaketime) starts at a chosen moment,
for the sequence tests: the SMTP server in the test process keeps the real clock."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Mailcli:
    """Runs real `mailcli` processes: under `faketime` from a chosen moment (its clock ticks on
    from there), or on the machine's clock. TZ=UTC makes local times (a naive --at) UTC."""

    faketime: str | None

    def command(self, args: tuple[str | Path, ...], at: datetime | None) -> list[str]:
        clock: list[str] = []
        if at is not None:
            assert self.faketime is not None
            # "-f @...": the clock starts at that moment and ticks on (without "@" it stands
            # still, monotonic time included, and timeouts never come).
            clock = [self.faketime, "-f", f"@{at.astimezone(UTC):%Y-%m-%d %H:%M:%S}"]
        return [*clock, sys.executable, "-m", "mailcli", *(str(a) for a in args)]

    def __call__(self, *args: str | Path, at: datetime | None = None, tz: str = "UTC") -> Any:
        result = subprocess.run(
            self.command(args, at),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "TZ": tz},
            timeout=120,
        )
        assert "Traceback" not in result.stderr, result.stderr
        return result

    def spawn(self, *args: str | Path, at: datetime) -> subprocess.Popen[str]:
        """A process in a session of its own: faketime forks the command, and kill -9 of the
        session kills both."""
        return subprocess.Popen(
            self.command(args, at),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "TZ": "UTC"},
            start_new_session=True,
        )
