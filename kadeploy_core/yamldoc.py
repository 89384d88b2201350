"""YAML documents that remember the line of every key, for error messages.

PyYAML's constructed objects lose their positions, so a document is composed into nodes first:
the nodes give a line for every key path, then the same nodes are constructed into plain data.
Duplicate keys, which PyYAML silently resolves to the last one, are reported as mistakes.

Aliases (``*name``) make a node reachable through several paths: a few lines can stand for
billions of values ("billion laughs"). The walk visits each node once (by identity), the
number of aliases is bounded while composing, and so is the document's expanded size (the
count of values a consumer walking the constructed data would see), computed without
expanding anything. Callers that read user input pass tight bounds (:class:`YamlLimits`).
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


@dataclass(frozen=True, slots=True)
class YamlLimits:
    """Bounds on what one document may expand to."""

    max_aliases: int = 10_000
    """Alias uses (``*name``) in the document."""
    max_expanded_nodes: int = 5_000_000
    """Values (scalars, lists, mappings and mapping keys) counted with every alias expanded."""


DEFAULT_LIMITS = YamlLimits()
"""For administrators' files (configuration: a nodes.conf may list thousands of nodes)."""


class YamlLoadError(Exception):
    """The text is not valid YAML or repeats a key; ``problems`` says where."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


def load_yaml_file(
    path: Path, source: str | None = None, limits: YamlLimits = DEFAULT_LIMITS
) -> YamlDocument:
    """Read and parse ``path``; ``source`` is the name shown in messages (default: the path)."""
    name = source or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise YamlLoadError([Problem(name, "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise YamlLoadError([Problem(name, f"cannot read: {exc}")]) from None
    return parse_yaml(text, name, limits)


def parse_yaml(text: str, source: str, limits: YamlLimits = DEFAULT_LIMITS) -> YamlDocument:
    """Parse one YAML document from ``text``, within ``limits``."""
    loader = _BoundedLoader(text, limits.max_aliases)
    try:
        try:
            node = loader.get_single_node()
        except _TooManyAliases as exc:
            raise YamlLoadError(
                [
                    Problem(
                        source,
                        f"more than {limits.max_aliases} aliases (*name); "
                        "write the values out instead",
                        line=exc.line,
                    )
                ]
            ) from None
        if node is None:
            return YamlDocument(source, None, {})
        problems: list[Problem] = []
        lines: dict[KeyPath, int] = {}
        _LineWalk(lines, problems, source).walk(node, ())
        if problems:
            raise YamlLoadError(problems)
        _check_expanded_size(node, limits.max_expanded_nodes, source)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        what = " ".join(part for part in (exc.context, exc.problem) if part)
        raise YamlLoadError([Problem(source, f"invalid YAML: {what}", line=line)]) from None
    except yaml.YAMLError as exc:
        raise YamlLoadError([Problem(source, f"invalid YAML: {exc}")]) from None
    except RecursionError:  # PyYAML composes and constructs recursively
        raise YamlLoadError(
            [Problem(source, "invalid YAML: values nested too deeply (lists or mappings)")]
        ) from None
    finally:
        loader.dispose()
    return YamlDocument(source, data, lines)


class _TooManyAliases(Exception):
    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


class _BoundedLoader(yaml.SafeLoader):
    """A SafeLoader that stops composing at the alias past ``max_aliases``."""

    def __init__(self, text: str, max_aliases: int) -> None:
        super().__init__(text)
        self._aliases_left = max_aliases

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            self._aliases_left -= 1
            if self._aliases_left < 0:
                raise _TooManyAliases(self.peek_event().start_mark.line + 1)
        return super().compose_node(parent, index)


class _LineWalk:
    """Records the line of each key path, visiting each node once: the paths through an
    alias beyond its first use get the alias's own line (via their prefix), nothing deeper."""

    def __init__(self, lines: dict[KeyPath, int], problems: list[Problem], source: str) -> None:
        self._lines = lines
        self._problems = problems
        self._source = source
        self._seen: set[int] = set()

    def walk(self, root: yaml.Node, root_path: KeyPath) -> None:
        stack: list[tuple[yaml.Node, KeyPath]] = [(root, root_path)]
        while stack:  # iterative: deep nesting cannot exhaust the interpreter's stack
            node, path = stack.pop()
            self._lines.setdefault(path, node.start_mark.line + 1)
            if id(node) in self._seen:
                continue
            self._seen.add(id(node))
            children: list[tuple[yaml.Node, KeyPath]] = []
            if isinstance(node, yaml.MappingNode):
                children = self._mapping(node, path)
            elif isinstance(node, yaml.SequenceNode):
                children = [(item, (*path, i)) for i, item in enumerate(node.value)]
            stack.extend(reversed(children))

    def _mapping(self, node: yaml.MappingNode, path: KeyPath) -> list[tuple[yaml.Node, KeyPath]]:
        seen: set[str] = set()
        children: list[tuple[yaml.Node, KeyPath]] = []
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
                continue
            key = key_node.value
            if key in seen:
                line = key_node.start_mark.line + 1
                self._problems.append(
                    Problem(self._source, "key repeated", dotted((*path, key)), line)
                )
            seen.add(key)
            self._lines[(*path, key)] = key_node.start_mark.line + 1
            children.append((value_node, (*path, key)))
        return children


def _check_expanded_size(root: yaml.Node, limit: int, source: str) -> None:
    """Refuse a document that would hold more than ``limit`` values with its aliases
    expanded; the message names the line of the innermost value that is too large.

    Sizes are computed once per node (post-order, memoised by identity), so the cost is the
    number of distinct nodes, however many times aliases repeat them.
    """
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if not children_done:
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in sizes)
            continue
        size = 1 + sum(sizes[id(child)] for child in children)
        if size > limit:
            raise YamlLoadError(
                [
                    Problem(
                        source,
                        f"this value expands to more than {limit} values through aliases "
                        "(*name); write it out or use fewer aliases",
                        line=node.start_mark.line + 1,
                    )
                ]
            )
        sizes[id(node)] = size


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def dotted(path: KeyPath) -> str:
    """``("a", 0, "b")`` as ``"a[0].b"``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
