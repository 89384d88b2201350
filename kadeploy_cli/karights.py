"""`karights`: grant, revoke and list users' rights to deploy nodes (partitions).

Only administrators (``daemon.almighty_users``) grant and revoke; a user lists their own.
A right names a partition by number (deployments on the configured disk) or by device path
(``kadeploy -b DEV``: the deploy partition on DEV, e.g. ``/dev/sdb3``), or ``*``.
"""

from __future__ import annotations

import logging
from urllib.parse import quote

import click

from kadeploy_cli.client import Client
from kadeploy_cli.common import CONTEXT, make_client, print_json, server_option, table
from kadeploy_cli.errors import TOOLS_EXIT_HELP, UsageProblem
from kadeploy_core.errors import NodeListError
from kadeploy_core.nodelist import expand_node_args

logger = logging.getLogger(__name__)

ANY = "*"

user_required = click.option("-u", "--user", required=True, metavar="USER", help="The user.")
machines_option = click.option(
    "-m",
    "--machine",
    "machines",
    multiple=True,
    metavar="NODE",
    help="A node, a range (node-[1-4]) or * for every node (repeatable).",
)
parts_option = click.option(
    "-p",
    "--part",
    "parts",
    multiple=True,
    metavar="PART",
    help="A partition number, a partition's device path or * (repeatable; default *). "
    "kadeploy -b DEV needs a right on the deploy partition's path on DEV (e.g. /dev/sdb3 "
    "for -b /dev/sdb) or *.",
)


@click.group("karights", context_settings=CONTEXT, epilog=TOOLS_EXIT_HELP)
@server_option
@click.pass_context
def main(ctx: click.Context, server: str | None) -> None:
    """Grant, revoke and list rights: who may deploy, reboot and power which nodes."""
    ctx.obj = ctx.with_resource(make_client(server))


@main.command("add")
@user_required
@machines_option
@parts_option
@click.pass_obj
def add(client: Client, user: str, machines: tuple[str, ...], parts: tuple[str, ...]) -> None:
    """Grant USER the right to deploy the nodes on the partitions (administrators only)."""
    nodes = _nodes(machines, required=True)
    answer = client.post(
        "/v1/rights", {"user": user, "nodes": nodes, "partitions": list(parts) or [ANY]}
    )
    click.echo(f"{answer['changed']} rights granted to {user}")


@main.command("remove")
@user_required
@machines_option
@parts_option
@click.pass_obj
def remove(client: Client, user: str, machines: tuple[str, ...], parts: tuple[str, ...]) -> None:
    """Revoke USER's rights on the nodes and partitions (none given: all of them)."""
    nodes: list[str | None] = [*_nodes(machines, required=False)] or [None]
    partitions: list[str | None] = list(parts) or [None]
    removed = 0
    for node in nodes:
        for part in partitions:
            answer = client.delete(f"/v1/rights/{quote(user, safe='')}", node=node, partition=part)
            removed += int(answer["changed"])
    click.echo(f"{removed} rights of {user} revoked")


@main.command("list")
@click.option("-u", "--user", metavar="USER", help="Whose rights (default: yours; admins: all).")
@click.option("-m", "--machine", metavar="NODE", help="Only rights on NODE.")
@click.option("--json", "json_output", is_flag=True, help="Print JSON.")
@click.pass_obj
def list_(client: Client, user: str | None, machine: str | None, json_output: bool) -> None:
    """List rights."""
    rights = client.get("/v1/rights", user=user, node=machine)
    if json_output:
        print_json(rights)
        return
    rows = [[r["user"], r["node"], r["partition"]] for r in rights]
    for line in table(rows, ["USER", "NODE", "PARTITION"]):
        click.echo(line)


def _nodes(machines: tuple[str, ...], required: bool) -> list[str]:
    if required and not machines:
        raise UsageProblem("name the nodes with -m NODE (or -m '*' for every node)")
    star = [m for m in machines if m == ANY]
    try:
        names = expand_node_args([m for m in machines if m != ANY])
    except NodeListError as exc:
        problems = [str(p) for p in exc.problems]
        raise UsageProblem(problems[0], problems[1:]) from None
    return [*([ANY] if star else []), *names]
