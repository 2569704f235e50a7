"""Real `mailcli` processes whose clock libfaketime starts at a chosen moment, for the
sequence tests: the SMTP server in the test process keeps the real clock."""

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
    """Runs real `mailcli` processes: with libfaketime preloaded (`faketime`: its path), their
    clock starting at a chosen moment and ticking on from there, or on the machine's clock.
    TZ=UTC makes local times (a naive --at) UTC."""

    faketime: str | None

    def command(self, args: tuple[str | Path, ...]) -> list[str]:
        return [sys.executable, "-m", "mailcli", *(str(a) for a in args)]

    def env(self, at: datetime | None, tz: str = "UTC") -> dict[str, str]:
        env = {**os.environ, "TZ": tz}
        if at is not None:
            assert self.faketime is not None
            # "@...": the clock starts at that moment and ticks on (without "@" it stands
            # still, monotonic time included, and timeouts never come).
            env["LD_PRELOAD"] = self.faketime
            env["FAKETIME"] = f"@{at.astimezone(UTC):%Y-%m-%d %H:%M:%S}"
        return env

    def __call__(self, *args: str | Path, at: datetime | None = None, tz: str = "UTC") -> Any:
        result = subprocess.run(
            self.command(args),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            env=self.env(at, tz),
            timeout=120,
        )
        assert "Traceback" not in result.stderr, result.stderr
        return result

    def spawn(self, *args: str | Path, at: datetime) -> subprocess.Popen[str]:
        """A process in a session of its own (kill -9 of the session, as of its group)."""
        return subprocess.Popen(
            self.command(args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
            env=self.env(at),
            start_new_session=True,
        )
