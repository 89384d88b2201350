"""What every tool shares: the ``--server`` option, node lists (``-f``, ``-m``), JSON output,
the ok/ko node files, and dates."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from kadeploy_cli.client import SERVER_ENV, Client
from kadeploy_cli.errors import UsageProblem
from kadeploy_core.errors import NodeListError
from kadeploy_core.nodelist import NodeRef, expand_node_arg_refs, parse_nodefile, read_nodefile_refs

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def server_option(function: F) -> F:
    """``-S/--server ADDRESS``."""
    return click.option(
        "-S",
        "--server",
        metavar="ADDRESS",
        help=f"The kadeployd server: a socket path (unix:/path) or http://HOST:PORT "
        f"(default: ${SERVER_ENV}, else the socket of the default configuration).",
    )(function)


def machine_options(function: F) -> F:
    """``-f/--file NODEFILE`` and ``-m/--machine NODE`` (repeatable)."""
    function = click.option(
        "-m",
        "--machine",
        "machines",
        multiple=True,
        metavar="NODE",
        help="A node to act on (repeatable; also a comma list or a range: node-[1-4]).",
    )(function)
    return click.option(
        "-f",
        "--file",
        "nodefile",
        metavar="NODEFILE",
        help="A file listing the nodes, one per line (OAR's $OAR_NODEFILE; - for stdin).",
    )(function)


def node_refs(
    nodefile: str | None, machines: Sequence[str], required: bool = True
) -> list[NodeRef]:
    """The nodes of ``-f`` and ``-m``, first-seen order, without repeats; UsageProblem naming
    the file and line of every malformed entry."""
    refs: list[NodeRef] = []
    try:
        if nodefile is not None:
            if nodefile == "-":
                refs.extend(parse_nodefile(sys.stdin.read(), "<stdin>"))
            else:
                refs.extend(read_nodefile_refs(Path(nodefile)))
        refs.extend(expand_node_arg_refs(machines))
    except NodeListError as exc:
        problems = [str(p) for p in exc.problems]
        raise UsageProblem(problems[0], problems[1:]) from None
    seen: set[str] = set()
    unique: list[NodeRef] = []
    for ref in refs:
        if ref.name not in seen:
            seen.add(ref.name)
            unique.append(ref)
    if required and not unique:
        where = f"{nodefile} holds no node" if nodefile else "no node given"
        raise UsageProblem(f"{where}: name the nodes with -f NODEFILE or -m NODE")
    return unique


def where_of(refs: Sequence[NodeRef], index: int) -> str:
    """``file:line`` (or ``-m``) of the ``index``-th node, for server errors about it."""
    if 0 <= index < len(refs):
        ref = refs[index]
        return f"{ref.source}:{ref.line}" if ref.line is not None else ref.source
    return ""


def make_client(server: str | None) -> Client:
    """The API client for ``--server`` and the user's token."""
    return Client.from_options(server)


def print_json(document: Any) -> None:
    """One JSON document on stdout."""
    click.echo(json.dumps(document, indent=2, sort_keys=False))


def write_node_file(path: str | None, nodes: Iterable[str]) -> None:
    """Write node names, one per line (``-o``/``-n``)."""
    if path is None:
        return
    try:
        Path(path).write_text("".join(f"{n}\n" for n in nodes), encoding="utf-8")
    except OSError as exc:
        raise UsageProblem(f"{path}: cannot write: {exc.strerror}") from None


def parse_date(text: str, option: str) -> float:
    """A date (``YYYY-MM-DD``, ``YYYY-MM-DD HH:MM[:SS]``, ISO 8601, or unix seconds) as
    unix time, local time zone unless given."""
    stripped = text.strip()
    try:
        return float(stripped)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(stripped).timestamp()
    except ValueError:
        raise UsageProblem(
            f"{option}: cannot read the date {text!r}: expected YYYY-MM-DD, "
            "'YYYY-MM-DD HH:MM[:SS]' or unix seconds"
        ) from None


def local_time(stamp: float | None) -> str:
    """``YYYY-MM-DD HH:MM:SS`` in local time, or ``-``."""
    if stamp is None:
        return "-"
    return datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S")


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> list[str]:
    """Left-aligned columns."""
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return lines


class SectionedCommand(click.Command):
    """A command whose ``--help`` lists its options in titled sections, as Kadeploy3 does.

    ``sections`` maps a title to the parameter names it shows, in order; options not named
    go to the last section.
    """

    def __init__(self, *args: Any, sections: dict[str, list[str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sections = sections

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Options grouped by section."""
        help_option = self.get_help_option(ctx)
        records = {
            p.name: p.get_help_record(ctx)
            for p in self.get_params(ctx)
            if p.name is not None and p is not help_option
        }
        placed = {name for names in self.sections.values() for name in names}
        titles = list(self.sections)
        for title in titles:
            names = list(self.sections[title])
            if title == titles[0] and help_option is not None and help_option.name is not None:
                records[help_option.name] = help_option.get_help_record(ctx)
                names.append(help_option.name)
            if title == titles[-1]:
                names += [n for n in records if n not in placed]
            rows = [r for n in names if (r := records.get(n)) is not None]
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)
