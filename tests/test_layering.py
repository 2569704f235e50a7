"""The core is a library: importing it pulls in neither Typer nor Rich."""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mailcli

CLI_MODULES = {"mailcli.cli", "mailcli.__main__"}
# Adapters for the optional extras: each imports its framework (Flask brings click along).
ADAPTER_MODULES = {"mailcli.flask", "mailcli.django"}


def core_modules() -> list[str]:
    return sorted(
        f"mailcli.{m.name}"
        for m in pkgutil.iter_modules(mailcli.__path__)
        if f"mailcli.{m.name}" not in CLI_MODULES | ADAPTER_MODULES
    )


def test_core_modules_do_not_import_typer_or_rich() -> None:
    """Every core module imports in a fresh interpreter without loading typer, click or rich
    (but for httpx's own command line, which httpx loads when click and rich are installed),
    and imports as well where typer, click and rich cannot be imported at all."""
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
        "cli = 'httpx._main' in sys.modules\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'typer' or "
        "(m.split('.')[0] in ('rich', 'click') and not cli))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
    blocked = (
        "import importlib, importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('typer', 'rich', 'click'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "assert not any(m.split('.')[0] in ('typer', 'rich', 'click') for m in sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, check=True)


def test_cli_module_does_load_typer() -> None:
    """The check above can fail: the CLI module itself does import typer."""
    code = "import sys, mailcli.cli; print('typer' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def _runtime_imports(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node except those under `if TYPE_CHECKING:` (imports for type checkers only)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.dump(child.test):
                todo.extend(child.orelse)
            else:
                todo.append(child)


def import_graph() -> dict[str, set[str]]:
    """Core module -> the core modules it imports at run time, lazy (in-function) ones too."""
    root = Path(mailcli.__file__).parent
    modules = {
        p: ".".join(("mailcli", *p.relative_to(root).with_suffix("").parts)).removesuffix(
            ".__init__"
        )
        for p in root.rglob("*.py")
    }
    core = {m for m in modules.values() if not m.startswith(tuple(CLI_MODULES))}
    graph: dict[str, set[str]] = {m: set() for m in core}
    for path, module in modules.items():
        if module not in core:
            continue
        for node in _runtime_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[module].update(t for t in targets if t in core and t != module)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that starts and ends at the same module, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)) is not None:
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)) is not None:
            return found
    return None


def test_no_import_cycle_among_core_modules() -> None:
    """The package imports the other way round nowhere, function-level imports included."""
    graph = import_graph()
    assert {"mailcli.message", "mailcli.transport", "mailcli.batch"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_check_can_fail() -> None:
    """The same search finds a cycle when there is one."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_public_api_loads_without_the_cli() -> None:
    """Every name of `mailcli.__all__` resolves without importing typer, click or rich."""
    code = (
        "import json, sys, mailcli\n"
        "[getattr(mailcli, n) for n in mailcli.__all__]\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('typer', 'rich', 'click'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_the_framework_adapters_do_not_load_the_cli() -> None:
    """mailcli.flask and mailcli.django load their frameworks, never typer or rich."""
    code = (
        "import json, sys\n"
        "import mailcli.flask, mailcli.django\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('typer', 'rich'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
