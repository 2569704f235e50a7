"""YAML files with line numbers: every configuration error names the file and the line."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml

from mailcli.errors import ConfigError, open_error

T = TypeVar("T")


class Section:
    """One YAML mapping with the line of every key, for errors that point at the file."""

    def __init__(self, node: yaml.MappingNode, file: Path, where: str) -> None:
        self.file = file
        self.where = where
        self.line = node.start_mark.line + 1
        self.items: dict[str, tuple[int, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            line = key_node.start_mark.line + 1
            if not isinstance(key, str) or key_node.tag != "tag:yaml.org,2002:str":
                raise ConfigError(f"{where}keys must be plain names", path=file, line=line)
            if key in self.items:
                first = self.items[key][0]
                raise ConfigError(
                    f"duplicate key '{where}{key}' (first given on line {first})",
                    path=file,
                    line=line,
                )
            self.items[key] = (line, value_node)

    def error(self, key: str, message: str) -> ConfigError:
        line = self.items[key][0] if key in self.items else self.line
        return ConfigError(f"'{self.where}{key}': {message}", path=self.file, line=line)

    def reject_unknown(self, known: tuple[str, ...]) -> None:
        for key, (line, _) in self.items.items():
            if key == "password":
                raise ConfigError(
                    f"'{self.where}password' is not allowed: passwords never go in YAML",
                    path=self.file,
                    line=line,
                    hint="use MAILCLI_PASSWORD, `mailcli password set`, or a profile's "
                    "password_command",
                )
            if key not in known:
                raise ConfigError(
                    f"unknown key '{self.where}{key}'",
                    path=self.file,
                    line=line,
                    hint="known keys: " + ", ".join(known),
                )

    def value(self, key: str) -> Any:
        node = self.items[key][1]
        try:
            return yaml.SafeLoader("").construct_document(node)
        except (yaml.YAMLError, ValueError, TypeError) as exc:
            # Tags like !custom, impossible dates (2024-02-30), unhashable keys.
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise self.error(key, f"cannot read this value: {problem}") from None

    def node(self, key: str) -> yaml.Node:
        return self.items[key][1]

    def has(self, key: str) -> bool:
        return key in self.items and not _is_null(self.items[key][1])

    def get(self, key: str, kind: type[T], what: str, default: T | None = None) -> T | None:
        if not self.has(key):
            return default
        value = self.value(key)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise self.error(key, f"must be {what}, not {describe(value)}")
        return value

    def text(self, key: str, *, required: bool = False) -> str | None:
        value = self.get(key, str, "a string")
        if value is None and required:
            raise ConfigError(
                f"missing required key '{self.where}{key}'", path=self.file, line=self.line
            )
        if value is not None and not value.strip():
            raise self.error(key, "must not be empty")
        return value

    def section(self, key: str) -> Section | None:
        if not self.has(key):
            return None
        node = self.node(key)
        if not isinstance(node, yaml.MappingNode):
            raise self.error(key, f"must be a mapping, not {describe(self.value(key))}")
        return Section(node, self.file, f"{self.where}{key}.")


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def describe(value: object) -> str:
    names = {
        str: "a string",
        int: "a number",
        float: "a number",
        bool: "true/false",
        list: "a list",
        dict: "a mapping",
        type(None): "empty",
    }
    return names.get(type(value), type(value).__name__)


class _NoAliases(yaml.SafeLoader):
    """YAML without aliases (`*name`): a campaign never needs them, and nested aliases can
    make a few lines stand for billions of values (the "billion laughs")."""

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not allowed", event.start_mark
            )
        node: yaml.Node | None = super().compose_node(parent, index)
        return node


def load_mapping(file: Path, what: str) -> Section:
    """Parse a YAML file whose top level is a mapping; raise ConfigError/InputFileError."""
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise open_error(file, exc, what) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (byte {exc.start})", path=file) from None
    try:
        root = yaml.compose(text, Loader=_NoAliases)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"invalid YAML: {problem}", path=file, line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", path=file) from None
    if root is None:
        raise ConfigError(f"the {what} is empty", path=file)
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(
            f"a {what} must be a mapping of keys", path=file, line=root.start_mark.line + 1
        )
    return Section(root, file, "")
