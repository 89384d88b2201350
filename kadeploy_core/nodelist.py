"""Node lists given by users: nodefiles (``-f``) and ``-m`` arguments, as Kadeploy3 and OAR do.

A nodefile has one name per line; blank lines and ``#`` comments are ignored, and a name
repeated (OAR writes one line per reserved core) counts once, at its first line. A ``-m``
argument is a name, a comma list, or a range (``node-[1-16]``, ``node-[01-10,12]``, see
:mod:`kadeploy_core.ranges`). Names are then checked against the configured nodes: every unknown
one is reported at once, with the file and line it came from and the nearest known names.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kadeploy_core.errors import NodeListError, Problem
from kadeploy_core.ranges import MAX_EXPANSION, RangeError, expand_range
from kadeploy_core.suggest import did_you_mean

logger = logging.getLogger(__name__)

MACHINE_ARGUMENT = "-m"
"""The ``source`` of problems found in ``-m`` arguments."""

_NODE_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
"""A host name (letters, digits, '.', '_', '-'); ranges are expanded before this check."""


@dataclass(frozen=True, slots=True)
class NodeRef:
    """A node name and where the user wrote it, so errors can point back at it."""

    name: str
    source: str
    line: int | None = None


def read_nodefile(path: Path) -> list[str]:
    """The node names of a nodefile, first-seen order, without repeats."""
    return [ref.name for ref in read_nodefile_refs(path)]


def read_nodefile_refs(path: Path) -> list[NodeRef]:
    """Like :func:`read_nodefile`, keeping the line of each name's first occurrence.

    Raises :class:`NodeListError` naming the file when it is missing, unreadable or not
    UTF-8, and naming every line that does not hold exactly one node name.
    """
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NodeListError([Problem(source, "nodefile not found")]) from None
    except IsADirectoryError:
        raise NodeListError([Problem(source, "is a directory, expected a nodefile")]) from None
    except UnicodeDecodeError as exc:
        raise NodeListError(
            [Problem(source, f"not UTF-8 text (byte {exc.start}): expected one name per line")]
        ) from None
    except OSError as exc:
        raise NodeListError([Problem(source, f"cannot read nodefile: {exc.strerror}")]) from None
    return parse_nodefile(text, source)


def parse_nodefile(text: str, source: str) -> list[NodeRef]:
    """Parse nodefile ``text``; ``source`` names it in errors."""
    refs: list[NodeRef] = []
    seen: set[str] = set()
    problems: list[Problem] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        name = raw.partition("#")[0].strip()
        if not name:
            continue
        if not _NODE_NAME.fullmatch(name):
            problems.append(
                Problem(source, f"expected one node name per line; got {name!r}", line=number)
            )
            continue
        if name not in seen:
            seen.add(name)
            refs.append(NodeRef(name, source, number))
    if problems:
        raise NodeListError(problems)
    logger.debug("nodefile %s: %d nodes", source, len(refs))
    return refs


def expand_node_args(args: Iterable[str]) -> list[str]:
    """The node names of ``-m`` arguments, first-seen order, without repeats.

    Each argument is a name, a comma list, or a range; commas inside ``[...]`` belong to the
    range. Every bad argument is reported (one :class:`NodeListError` naming each).
    """
    return [ref.name for ref in expand_node_arg_refs(args)]


def expand_node_arg_refs(args: Iterable[str]) -> list[NodeRef]:
    """Like :func:`expand_node_args`, as :class:`NodeRef` with ``source`` ``-m``."""
    refs: list[NodeRef] = []
    seen: set[str] = set()
    problems: list[Problem] = []
    total = 0
    for arg in args:
        try:
            names = _expand_arg(arg)
        except RangeError as exc:
            reason = exc.reason if exc.text == arg else str(exc)
            problems.append(Problem(MACHINE_ARGUMENT, f"in {arg!r}: {reason}"))
            continue
        total += len(names)
        if total > MAX_EXPANSION:
            problems.append(
                Problem(
                    MACHINE_ARGUMENT,
                    f"in {arg!r}: the node list now stands for {total} names, more than the "
                    f"limit of {MAX_EXPANSION}",
                )
            )
            break
        for name in names:
            if name not in seen:
                seen.add(name)
                refs.append(NodeRef(name, MACHINE_ARGUMENT))
    if problems:
        raise NodeListError(problems)
    return refs


def resolve_nodes(
    names: Iterable[str | NodeRef], known: Sequence[str], source: str = MACHINE_ARGUMENT
) -> list[str]:
    """``names`` without repeats, after checking each is one of the ``known`` nodes.

    Every unknown name is reported in one :class:`NodeListError`, each with its nearest known
    names; a :class:`NodeRef` keeps its own file and line, a plain string is from ``source``.
    """
    known_set = set(known)
    result: list[str] = []
    seen: set[str] = set()
    problems: list[Problem] = []
    for item in names:
        ref = item if isinstance(item, NodeRef) else NodeRef(item, source)
        if ref.name in seen:
            continue
        seen.add(ref.name)
        if ref.name in known_set:
            result.append(ref.name)
        else:
            problems.append(Problem(ref.source, _unknown(ref.name, known), line=ref.line))
    if problems:
        raise NodeListError(problems)
    return result


def _unknown(name: str, known: Sequence[str]) -> str:
    if not known:
        return f"unknown node {name!r}: no nodes are configured"
    return f"unknown node {name!r}{node_hint(name, known)}"


def node_hint(name: str, known: Iterable[str]) -> str:
    """``"; did you mean ...?"`` for an unknown node ``name``, or an empty string.

    Sites name nodes by their fully qualified names (``griffon-2.nancy.grid5000.fr``) or by
    short ones, and users type the other kind: a short name suggests the configured names
    it is the host part of, a qualified one its configured short name, before the nearest
    spellings (which would not find ``griffon-2.nancy.grid5000.fr`` from ``griffon-2``).
    """
    candidates = list(known)
    host = name.split(".", 1)[0]
    if "." in name:
        same = [host] if host in set(candidates) else []
    else:
        same = [k for k in candidates if k.startswith(f"{name}.")][:3]
    if same:
        return "; did you mean " + " or ".join(repr(n) for n in same) + "?"
    return did_you_mean(name, candidates)


def _expand_arg(arg: str) -> list[str]:
    """Split ``arg`` on commas outside brackets, expand each item, check each name."""
    names: list[str] = []
    for item in _split_outside_brackets(arg):
        stripped = item.strip()
        if not stripped:
            raise RangeError(arg, "empty name (two commas in a row, or a trailing one)")
        for name in expand_range(stripped):
            if not _NODE_NAME.fullmatch(name):
                raise RangeError(
                    arg, f"{name!r} is not a node name (letters, digits, '.', '_', '-')"
                )
            names.append(name)
    return names


def _split_outside_brackets(text: str) -> list[str]:
    items: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        if char == "," and depth <= 0:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    return items
