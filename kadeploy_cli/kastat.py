"""`kastat`: statistics of past deployments: per node (success rate, retries, mean time) and
per step (how often nodes entered it, mean and longest time in it)."""

from __future__ import annotations

import logging

import click

from kadeploy_cli.common import (
    CONTEXT,
    local_time,
    machine_options,
    make_client,
    node_refs,
    parse_date,
    print_json,
    server_option,
    table,
)
from kadeploy_cli.errors import TOOLS_EXIT_HELP

logger = logging.getLogger(__name__)


@click.command("kastat", context_settings=CONTEXT, epilog=TOOLS_EXIT_HELP)
@server_option
@machine_options
@click.option(
    "-x", "--date-min", metavar="DATE", help="Deployments from DATE (YYYY-MM-DD[ HH:MM])."
)
@click.option("-y", "--date-max", metavar="DATE", help="Deployments until DATE.")
@click.option("-e", "--env-name", metavar="ENVNAME", help="Only deployments of ENVNAME.")
@click.option("-u", "--user", metavar="USER", help="Only USER's deployments.")
@click.option("--nodes-only", "only", flag_value="nodes", help="Only the per-node table.")
@click.option("--steps-only", "only", flag_value="steps", help="Only the per-step table.")
@click.option(
    "--json", "json_output", is_flag=True, help="Print JSON: {nodes: [...], steps: [...]}."
)
def main(
    *,
    server: str | None,
    nodefile: str | None,
    machines: tuple[str, ...],
    date_min: str | None,
    date_max: str | None,
    env_name: str | None,
    user: str | None,
    only: str | None,
    json_output: bool,
) -> None:
    """Per-node success rate, retries and mean deployment time; per-step durations."""
    nodes = [r.name for r in node_refs(nodefile, machines, required=False)] or None
    since = parse_date(date_min, "--date-min") if date_min else None
    until = parse_date(date_max, "--date-max") if date_max else None
    common = {"since": since, "until": until, "environment": env_name, "user": user}
    with make_client(server) as client:
        per_node = client.get("/v1/stats/nodes", node=nodes, **common)
        per_step = client.get("/v1/stats/states", **common)
    if json_output:
        print_json({"nodes": per_node, "steps": per_step})
        return
    if only != "steps":
        rows = [
            [
                s["node"],
                str(s["deployments"]),
                str(s["deployed"]),
                str(s["failed"]),
                str(s["aborted"]),
                str(s["retries"]),
                _percent(s["success_rate"]),
                _seconds(s["mean_duration"]),
                local_time(s["last_at"]),
            ]
            for s in per_node
        ]
        header = ["NODE", "DEPLOYMENTS", "DEPLOYED", "FAILED", "ABORTED", "RETRIES", "SUCCESS",
                  "MEAN TIME", "LAST"]  # fmt: skip
        for line in table(rows, header):
            click.echo(line)
    if only is None:
        click.echo("")
    if only != "nodes":
        rows = [
            [d["state"], str(d["entered"]), _seconds(d["mean"]), _seconds(d["longest"])]
            for d in per_step
        ]
        for line in table(rows, ["STEP", "ENTERED", "MEAN", "LONGEST"]):
            click.echo(line)


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{100 * rate:.0f}%"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"
