"""mailcli: mass mailing from the command line, as a library with a thin CLI on top.

The core modules (campaign, recipients, render, message, transport, batch, ...) work without the
CLI's dependencies (Typer, Rich); `mailcli.cli` is only a shell over them.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mailcli")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
