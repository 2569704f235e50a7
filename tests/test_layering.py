"""The core is a library: importing it pulls in neither Typer nor Rich."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import mailcli

CLI_MODULES = {"mailcli.cli", "mailcli.__main__"}


def core_modules() -> list[str]:
    return sorted(
        f"mailcli.{m.name}"
        for m in pkgutil.iter_modules(mailcli.__path__)
        if f"mailcli.{m.name}" not in CLI_MODULES
    )


def test_core_modules_do_not_import_typer_or_rich() -> None:
    """Every core module imports in a fresh interpreter without loading typer, click or rich."""
    modules = core_modules()
    assert {
        "mailcli.campaign",
        "mailcli.recipients",
        "mailcli.render",
        "mailcli.message",
        "mailcli.transport",
        "mailcli.batch",
        "mailcli.sandbox",
    } <= set(modules)
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('typer', 'rich', 'click'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_cli_module_does_load_typer() -> None:
    """The check above can fail: the CLI module itself does import typer."""
    code = "import sys, mailcli.cli; print('typer' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
