"""``kanodes3``: Kadeploy3's nodes and operations status command, option for option.

- ``-s/--get-nodes-state``: the nodes' deployment states as Kadeploy3's YAML, a mapping
  ``hostname -> {state, user, environment: {name, version, user}}`` (a node never deployed
  maps to nothing), nodes with a record by name first, then the others;
- ``-d``, ``-r``, ``-p``, ``-c``, ``-a``: the running deployments, reboot operations, power
  operations, consoles, or all of them, as Kadeploy3's YAML list of workflow statuses (its
  keys are Ruby symbols: ``:wid:``, ``:user:``, ``:done:``, ``:nodes:``...); ``-w WID`` one
  workflow (finished ones too), as a single mapping.

kadeployd's power commands and kareboot's simple reboots answer when they are over: there are
no running power operations to list (``-p`` prints an empty list), and no consoles (``-c``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import click

from kadeploy_cli.client import Client
from kadeploy_cli.errors import ApiFailure
from kadeploy_cli.k3.common import CONTEXT, K3Command, generic_options, machine_options, nodes_of
from kadeploy_cli.k3.k3_tool import (
    INVALID_WORKFLOW_ID,
    deployment_id_of,
    echo_lines,
    fail,
    open_client,
    ruby_yaml,
)

logger = logging.getLogger(__name__)

STATUS_OPERATIONS = ("deploy", "reboot", "power", "console", "all")
REBOOT_OPERATIONS = ("deploy_env", "recorded_env")
SUCCESS_STATES = ("deployed", "already_installed", "breakpointed")


def _operation(name: str) -> Any:
    """A flag callback remembering which operation came last (Kadeploy3's last one wins)."""

    def remember(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
        if value:
            ctx.meta["kanodes3.operation"] = name
        return value

    return remember


def _flag(short: str, long: str, name: str, text: str) -> Any:
    return click.option(short, long, is_flag=True, expose_value=False,
                        callback=_operation(name), help=text)  # fmt: skip


@click.command("kanodes3", cls=K3Command, context_settings=CONTEXT)
@generic_options
@_flag("-s", "--get-nodes-state", "state", "Get the deployment state of the nodes")
@_flag("-d", "--get-deployments-status", "deploy", "Get the status of running deployments")
@_flag("-r", "--get-reboots-status", "reboot", "Get the status of running reboot operations")
@_flag("-p", "--get-powers-status", "power", "Get the status of running power operations")
@_flag("-c", "--get-consoles-status", "console", "Get the status of open consoles")
@_flag("-a", "--get-all-status", "all", "Get the status of all running operations")
@machine_options
@click.option(
    "-w",
    "--workflow-id",
    metavar="WID",
    help="Specify a workflow id (to be used with the get_status option). If no wid is "
    "specified, the information of all the running deployments will be returned.",
)
@click.pass_context
def command(ctx: click.Context, **options: Any) -> None:
    """Nodes statistics (Kadeploy3's kanodes3)."""
    operation = ctx.meta.get("kanodes3.operation")
    if operation is None:
        fail("You must choose an operation")
    given_nodes = options.get("nodefile") is not None or bool(options.get("machines"))
    if operation in STATUS_OPERATIONS and given_nodes:
        fail("Node list is useless when gathering deployment statuses")
    if operation == "state" and options["workflow_id"]:
        fail("Workflow ID is useless when gathering node's deployment states")
    wanted = [r.name for r in nodes_of(options, required=False)]
    with open_client(options) as client:
        if operation == "state":
            text = ruby_yaml(node_states(client.get("/v1/nodes"), wanted))
        elif options["workflow_id"]:
            text = ruby_yaml(one_status(client, operation, options["workflow_id"]))
        else:
            text = ruby_yaml(running_statuses(client, operation))
    echo_lines([text])


def kadeploy3_state(node: dict[str, Any]) -> str | None:
    """Kadeploy3's node state for a node's latest record: deploying/rebooting while held,
    then deployed, deploy_failed, aborted, or for kareboot's operations deploy_env,
    recorded_env, reboot_failed."""
    state = node.get("state")
    if state is None:
        return None
    operation = node.get("operation")
    if node.get("busy"):
        return "rebooting" if operation else "deploying"
    if state == "aborted":
        return "aborted"
    if operation:
        return operation if state in SUCCESS_STATES else "reboot_failed"
    return "deployed" if state in SUCCESS_STATES else "deploy_failed"


def node_states(nodes: Sequence[dict[str, Any]], wanted: Sequence[str]) -> dict[str, Any]:
    """``kanodes3 -s``: hostname -> state record (None for a node never deployed)."""
    known = {n["name"]: n for n in nodes}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        fail(f"The nodes {', '.join(unknown)} does not belongs to any server")
    chosen = [known[w] for w in wanted] if wanted else list(nodes)
    recorded = sorted((n for n in chosen if n.get("state") is not None), key=lambda n: n["name"])
    states: dict[str, Any] = {}
    for node in recorded:
        environment = node.get("environment") or {}
        states[node["name"]] = {
            "state": kadeploy3_state(node),
            "user": node.get("owner"),
            "environment": {
                "name": environment.get("name"),
                "version": environment.get("version"),
                "user": node.get("environment_owner"),
            },
        }
    for node in chosen:
        states.setdefault(node["name"], None)
    return states


def kind_of(deployment: dict[str, Any]) -> str:
    """deploy, or reboot for kareboot's deploy_env and recorded_env operations."""
    operation = (deployment.get("options") or {}).get("operation")
    return "reboot" if operation in REBOOT_OPERATIONS else "deploy"


def running_statuses(client: Client, operation: str) -> list[dict[str, Any]]:
    """The running workflows of ``operation`` (all kinds for ``all``)."""
    kinds = ("deploy", "reboot") if operation == "all" else (operation,)
    running = client.get("/v1/deployments", status="running", limit=10_000)
    me = client.get("/v1/whoami")
    return [workflow_status(client, d, me) for d in reversed(running) if kind_of(d) in kinds]


def one_status(client: Client, operation: str, wid: str) -> Any:
    """``-w WID``: the workflow's status; Kadeploy3's invalid workflow id error when it is not
    one of ``operation``."""
    deployment_id = deployment_id_of(wid)
    try:
        deployment = client.get(f"/v1/deployments/{quote(deployment_id, safe='')}")
    except ApiFailure as exc:
        if exc.status in (404, 422):
            fail(
                f"Invalid workflow ID\n[Kadeploy Error #{INVALID_WORKFLOW_ID}]", INVALID_WORKFLOW_ID
            )
        raise
    if operation != "all" and kind_of(deployment) != operation:
        fail(f"Invalid workflow ID\n[Kadeploy Error #{INVALID_WORKFLOW_ID}]", INVALID_WORKFLOW_ID)
    status = workflow_status(client, deployment, client.get("/v1/whoami"))
    return [status] if operation == "all" else status


def workflow_status(
    client: Client, deployment: dict[str, Any], me: dict[str, Any]
) -> dict[str, Any]:
    """One workflow as Kadeploy3's server describes it (``work_get``): the owner and
    administrators see its environment and the nodes by outcome, others the node list."""
    nodes = client.get(f"/v1/deployments/{quote(deployment['id'], safe='')}/nodes")
    done = deployment["status"] != "running"
    status: dict[str, Any] = {
        ":wid": deployment["id"],
        ":user": deployment["user"],
        ":done": done,
        ":error": False,
        ":start_time": int(deployment["created_at"]),
    }
    if not (me.get("admin") or me.get("user") == deployment["user"]):
        status[":nodes"] = [n["node"] for n in nodes]
        return status
    environment = deployment.get("environment") or {}
    status[":environment"] = {
        ":user": environment_owner(client, deployment),
        ":name": environment.get("name"),
        ":version": environment.get("version"),
    }
    status[":logs"] = False
    ok = [n["node"] for n in nodes if n["final"] and n["state"] in SUCCESS_STATES]
    ko = [n["node"] for n in nodes if n["final"] and n["state"] not in SUCCESS_STATES]
    outcome: dict[str, Any] = {":ok": ok, ":ko": ko}
    if not done:
        outcome[":processing"] = [n["node"] for n in nodes if not n["final"]]
    status[":nodes"] = outcome
    end = deployment.get("finished_at")
    if end is None:
        end = time.time()
    status[":time"] = round(float(end) - float(deployment["created_at"]), 2)
    return status


def environment_owner(client: Client, deployment: dict[str, Any]) -> str | None:
    """Who registered the environment a deployment runs, found as ``kadeploy -e`` resolves a
    name: the deployer's own, else the public one; the deployer for an anonymous one."""
    environment = deployment.get("environment") or {}
    if environment.get("anonymous") or environment.get("version") is None:
        return str(deployment["user"])
    records = client.get("/v1/environments", name=environment.get("name"), all_versions=True)
    same = [r for r in records if r["version"] == environment.get("version")]
    owners = [r["owner"] for r in same if r["owner"] == deployment["user"]]
    owners += [r["owner"] for r in same if r["visibility"] == "public"]
    owners += [r["owner"] for r in same]
    return str(owners[0]) if owners else None


def main(args: Sequence[str] | None = None) -> None:
    """The ``kanodes3`` console script."""
    command.main(args=list(args) if args is not None else None, prog_name="kanodes3")
