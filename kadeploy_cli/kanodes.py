"""`kanodes`: the nodes' current state, environment and owner."""

from __future__ import annotations

import logging

import click

from kadeploy_cli.common import (
    CONTEXT,
    local_time,
    machine_options,
    make_client,
    node_refs,
    print_json,
    server_option,
    table,
)
from kadeploy_cli.errors import TOOLS_EXIT_HELP, UsageProblem
from kadeploy_core.suggest import did_you_mean

logger = logging.getLogger(__name__)


@click.command("kanodes", context_settings=CONTEXT, epilog=TOOLS_EXIT_HELP)
@server_option
@machine_options
@click.option("--cluster", metavar="CLUSTER", help="Only the nodes of CLUSTER.")
@click.option("--json", "json_output", is_flag=True, help="Print JSON.")
def main(
    server: str | None,
    nodefile: str | None,
    machines: tuple[str, ...],
    cluster: str | None,
    json_output: bool,
) -> None:
    """Show the nodes (all, or those of -f/-m): state in their latest deployment, the
    environment they run, who deployed them, whether a deployment holds them now."""
    wanted = [r.name for r in node_refs(nodefile, machines, required=False)]
    with make_client(server) as client:
        nodes = client.get("/v1/nodes", cluster=cluster)
    if wanted:
        known = {n["name"]: n for n in nodes}
        unknown = [w for w in wanted if w not in known]
        if unknown:
            raise UsageProblem(
                f"unknown node {unknown[0]}{did_you_mean(unknown[0], list(known))}",
                [f"unknown node {u}{did_you_mean(u, list(known))}" for u in unknown[1:]],
            )
        nodes = [known[w] for w in wanted]
    if json_output:
        print_json(nodes)
        return
    rows = []
    for n in nodes:
        env = n.get("environment")
        env_text = "-"
        if env:
            env_text = f"{env['name']}" + (f":{env['version']}" if env.get("version") else "")
            env_text += " (anonymous)" if env.get("anonymous") else ""
        state = (n.get("state") or "never deployed") + (" (deploying)" if n.get("busy") else "")
        rows.append(
            [
                n["name"],
                n["cluster"],
                state,
                env_text,
                n.get("owner") or "-",
                local_time(n.get("since")),
            ]
        )
    for line in table(rows, ["NODE", "CLUSTER", "STATE", "ENVIRONMENT", "USER", "SINCE"]):
        click.echo(line)
