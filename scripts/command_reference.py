"""The README's command reference: every command's `--help`, verbatim.

    python scripts/command_reference.py          # print the section
    python scripts/command_reference.py --write  # replace it in README.md

tests/test_docs.py fails when the README and `--help` disagree, so a changed option cannot go
undocumented.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parent.parent / "README.md"
HEADING = "## Command reference"
WIDTH = "100"


def commands(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and group, depth first, in the order `--help` lists them."""
    found: list[tuple[str, ...]] = []
    for name, command in group.commands.items():
        found.append((*prefix, name))
        if hasattr(command, "commands"):
            found += commands(command, (*prefix, name))
    return found


def reference() -> str:
    """The section: an introduction, then each command's help in a text block."""
    os.environ["COLUMNS"] = WIDTH  # help is wrapped to the terminal: fix it for a stable text
    os.environ["TERM"] = "dumb"
    import typer.main
    from typer.testing import CliRunner

    from mailcli.cli import app

    runner = CliRunner()
    parts = [
        HEADING,
        "",
        "Every command's `--help`, as it prints. `python scripts/command_reference.py --write`",
        "regenerates this section; a test fails when it and `--help` disagree.",
    ]
    for words in [(), *commands(typer.main.get_command(app))]:
        result = runner.invoke(app, [*words, "--help"], env={"COLUMNS": WIDTH, "TERM": "dumb"})
        if result.exit_code != 0:
            raise SystemExit(f"mailcli {' '.join(words)} --help failed: {result.output}")
        title = " ".join(("mailcli", *words))
        parts += ["", f"### `{title} --help`", "", "```text", result.stdout.rstrip(), "```"]
    return "\n".join(parts) + "\n"


def readme_section(text: str) -> str:
    """The command reference as it stands in the README (up to the next `## ` heading)."""
    start = text.index(HEADING)
    end = text.find("\n## ", start + len(HEADING))
    return text[start : end + 1] if end != -1 else text[start:]


def main() -> None:
    section = reference()
    if "--write" not in sys.argv[1:]:
        sys.stdout.write(section)
        return
    text = README.read_text(encoding="utf-8")
    if HEADING in text:
        text = text.replace(readme_section(text), section)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    README.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
