"""YAML documents that remember the line of every key, for error messages.

PyYAML's constructed objects lose their positions, so a document is composed into nodes first:
the nodes give a line for every key path, then the same nodes are constructed into plain data.
Duplicate keys, which PyYAML silently resolves to the last one, are reported as mistakes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kadeploy_core.errors import Problem

KeyPath = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class YamlDocument:
    """Parsed YAML data plus the line (1-based) where each key path starts."""

    source: str
    data: Any
    lines: Mapping[KeyPath, int] = field(default_factory=dict)

    def line_of(self, path: KeyPath) -> int | None:
        """Line of ``path``, or of its longest prefix present in the document."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None


class YamlLoadError(Exception):
    """The text is not valid YAML or repeats a key; ``problems`` says where."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


def load_yaml_file(path: Path, source: str | None = None) -> YamlDocument:
    """Read and parse ``path``; ``source`` is the name shown in messages (default: the path)."""
    name = source or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise YamlLoadError([Problem(name, "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise YamlLoadError([Problem(name, f"cannot read: {exc}")]) from None
    return parse_yaml(text, name)


def parse_yaml(text: str, source: str) -> YamlDocument:
    """Parse one YAML document from ``text``."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return YamlDocument(source, None, {})
        problems: list[Problem] = []
        lines: dict[KeyPath, int] = {}
        _record_lines(node, (), lines, problems, source)
        if problems:
            raise YamlLoadError(problems)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        what = " ".join(part for part in (exc.context, exc.problem) if part)
        raise YamlLoadError([Problem(source, f"invalid YAML: {what}", line=line)]) from None
    except yaml.YAMLError as exc:
        raise YamlLoadError([Problem(source, f"invalid YAML: {exc}")]) from None
    finally:
        loader.dispose()
    return YamlDocument(source, data, lines)


def _record_lines(
    node: yaml.Node,
    path: KeyPath,
    lines: dict[KeyPath, int],
    problems: list[Problem],
    source: str,
) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
                continue
            key = key_node.value
            if key in seen:
                line = key_node.start_mark.line + 1
                problems.append(Problem(source, "key repeated", dotted((*path, key)), line))
            seen.add(key)
            lines[(*path, key)] = key_node.start_mark.line + 1
            _record_lines(value_node, (*path, key), lines, problems, source)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record_lines(item, (*path, index), lines, problems, source)


def dotted(path: KeyPath) -> str:
    """``("a", 0, "b")`` as ``"a[0].b"``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
