"""mailcli: mass mailing from the command line, as a library with a thin CLI on top.

The core modules (campaign, recipients, render, message, transport, batch, ...) work without the
CLI's dependencies (Typer, Rich); `mailcli.cli` is only a shell over them.
"""

from typing import Any

__all__ = ["__version__"]


def __getattr__(name: str) -> Any:
    # The version is read from the installed metadata only when asked for: importlib.metadata
    # costs tens of milliseconds at every start.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("mailcli")
        except PackageNotFoundError:  # a source tree that was never installed
            return "0.0.0+unknown"
    raise AttributeError(f"module 'mailcli' has no attribute {name!r}")
