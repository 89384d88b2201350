"""``karights3``: Kadeploy3's rights management command, option for option.

- ``-a -u USER [-m NODE]... [-f FILE] [-p PART]... [-o]``: grant USER the nodes (none, or
  ``-m '*'``: every node) on the partitions (none, or ``-p '*'``: every partition). As in
  Kadeploy3 a node's rights are one user's: rights another user holds on the nodes refuse the
  grant (``Some rights are already set for user X``, error 11) unless ``-o/--overwrite-rights``
  revokes them first. A grant that adds nothing is error 14.
- ``-d -u USER [-m NODE]... [-p PART]...``: revoke them (none given: all of USER's); nothing
  revoked is error 14.
- ``-l [-u USER]``: Kadeploy3's table (``User``, ``Node``, ``Partitions`` in columns of 15 and
  41 characters), a line per user and node with the partitions joined by commas.

``-f MACHINELIST`` is Kadeploy3's file of nodes (``-`` for stdin), as in its other commands.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import click

from kadeploy_cli.client import Client
from kadeploy_cli.k3.common import CONTEXT, K3Command, generic_options, nodes_of
from kadeploy_cli.k3.k3_tool import (
    NOTHING_MODIFIED,
    echo_lines,
    fail,
    kadeploy_errors,
    open_client,
)

logger = logging.getLogger(__name__)

ANY = "*"
_USER = re.compile(r"^\w+$")


def _operation(name: str) -> Any:
    def remember(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
        if value:
            ctx.meta["karights3.operation"] = name
        return value

    return remember


def _user(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not _USER.match(value):
        raise click.BadParameter(f"invalid argument: {value}", ctx, param)
    return value


@click.command("karights3", cls=K3Command, context_settings=CONTEXT)
@generic_options
@click.option(
    "-a",
    "--add",
    is_flag=True,
    expose_value=False,
    callback=_operation("add"),
    help="Add some rights to a user",
)
@click.option(
    "-d",
    "--delete",
    is_flag=True,
    expose_value=False,
    callback=_operation("delete"),
    help="Delete some rights to a user",
)
@click.option(
    "-f",
    "--file",
    "nodefile",
    metavar="MACHINELIST",
    help="A file containing a list of nodes (- means stdin)",
)
@click.option(
    "-l",
    "--list",
    is_flag=True,
    expose_value=False,
    callback=_operation("show"),
    help="List the rights for a given user",
)
@click.option(
    "-m",
    "--machine",
    "machines",
    multiple=True,
    metavar="MACHINE",
    help="Include the machine in the operation",
)
@click.option("-o", "--overwrite-rights", is_flag=True, help="Overwrite existing rights")
@click.option(
    "-p",
    "--part",
    "parts",
    multiple=True,
    metavar="PARTNAME",
    help="Include the partition in the operation",
)
@click.option("-u", "--user", metavar="USERNAME", callback=_user, help="Specify the user")
@click.pass_context
def command(ctx: click.Context, **options: Any) -> None:  # fmt: skip
    """Rights management (Kadeploy3's karights3)."""
    operation = ctx.meta.get("karights3.operation")
    if operation is None:
        fail("You must choose an operation")
    machines = [m.strip() for m in options["machines"] if m.strip() != ANY]
    nodes = [r.name for r in nodes_of({**options, "machines": machines}, required=False)]
    parts = [p.strip() for p in options["parts"] if p.strip() != ANY]
    user = options["user"]
    if operation == "show":
        if nodes:
            fail("Node list is useless when showing rights of a specific user")
    elif not user:
        fail("You must choose a user")
    with open_client(options) as client, kadeploy_errors():
        if operation == "show":
            echo_lines(rights_table(client.get("/v1/rights", user=user)))
        elif operation == "add":
            body = {
                "user": user,
                "nodes": nodes or [ANY],
                "partitions": parts or [ANY],
                "others": "revoke" if options["overwrite_rights"] else "refuse",
            }
            if client.post("/v1/rights", body)["changed"] == 0:
                _nothing_modified()
        elif revoke(client, user, nodes, parts) == 0:
            _nothing_modified()


def revoke(client: Client, user: str, nodes: Sequence[str], parts: Sequence[str]) -> int:
    """Revoke ``user``'s rights on each node and partition (none given: all); how many."""
    removed = 0
    every: list[str | None] = [None]
    for node in [*nodes] or every:
        for part in [*parts] or every:
            answer = client.delete(f"/v1/rights/{quote(user, safe='')}", node=node, partition=part)
            removed += int(answer["changed"])
    return removed


def _nothing_modified() -> None:
    fail("No element has been modified\n[Kadeploy Error #14]", NOTHING_MODIFIED)


def rights_table(rights: Sequence[dict[str, Any]]) -> list[str]:
    """Kadeploy3's listing: a header, then a line per user and node with its partitions."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for right in rights:
        grouped.setdefault((right["user"], right["node"]), []).append(right["partition"])
    lines = [
        "%-15s %-41s %s\n" % ("User", "Node", "Partitions"),  # noqa: UP031
        "%-15s %-41s %s\n" % ("####", "####", "##########"),  # noqa: UP031
    ]
    lines += [
        "%-15s %-41s %s\n" % (user, node, ",".join(parts))  # noqa: UP031
        for (user, node), parts in grouped.items()
    ]
    return lines


def main(args: Sequence[str] | None = None) -> None:
    """The ``karights3`` console script."""
    command.main(args=list(args) if args is not None else None, prog_name="karights3")
