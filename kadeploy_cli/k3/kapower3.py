"""``kapower3``: Kadeploy3's kapower3 (``--on``, ``--off``, ``--status``) on kadeployd's
``/v1/power``, with Kadeploy3's node lists (``The power operation is successful on nodes``).

``--status`` first prints each node's state between ``---`` lines, as Kadeploy3's server log
does. kadeployd runs each node's one configured command per action: ``-l`` is accepted for
on/off and has no effect (a warning says so); with ``--status`` it is refused, as Kadeploy3
does. The operation answers at once, so ``--no-wait`` is refused.
"""

from __future__ import annotations

import logging
from typing import Any

import click

from kadeploy_cli.client import Client
from kadeploy_cli.k3.common import (
    CONTACT,
    CONTEXT,
    K3Command,
    K3Error,
    Session,
    generic_options,
    nodes_of,
)
from kadeploy_cli.k3.workflow import (
    Outcome,
    Printer,
    run_everywhere,
    start_workflow_options,
    workflow_options,
)
from kadeploy_cli.power import LONG_WAIT
from kadeploy_core.nodelist import NodeRef

logger = logging.getLogger(__name__)

OPERATION = "Power operation"


@click.command("kapower3", cls=K3Command, context_settings=CONTEXT, epilog=CONTACT)
@generic_options
@workflow_options
@click.option(
    "-l",
    "--op-level",
    "level",
    type=click.Choice(["soft", "hard", "very_hard"], case_sensitive=False),
    metavar="VALUE",
    help="Operation's level (soft, hard, very_hard)",
)
@click.option("--off", "operation", flag_value="off", help="Shutdown the nodes")
@click.option("--on", "operation", flag_value="on", help="Power on the nodes")
@click.option("--status", "operation", flag_value="status", help="Get the status of the nodes")
def main(**options: Any) -> int:
    """Power nodes on or off, or get their power status, as Kadeploy3's kapower3."""
    start_workflow_options(options)
    session = Session.open(options)
    session.answer_generic(options)
    refs = nodes_of(options)
    operation = options["operation"]
    if not operation:
        raise K3Error("No operation is chosen")
    if options["level"] and operation == "status":
        raise K3Error("Specifying the level is useless with the status operation")
    if options["level"]:
        click.echo(
            f"Warning: -l {options['level']}: kadeployd runs the node's configured power_"
            f"{operation} command, which has no level",
            err=True,
        )
    if not options["wait"]:
        raise K3Error("--no-wait: kadeployd's power operations answer when they are done")
    if options["breakpoint"] or options["custom_steps"]:
        raise K3Error("--breakpoint and --custom-steps are for deployments")
    if options["dry_run"]:
        return 0

    def run_one(client: Client, nodes: list[NodeRef], printer: Printer) -> Outcome:
        body = {"action": operation, "force": options["force"], "nodes": [r.name for r in nodes]}
        printer.line(f"{OPERATION} started")
        results: list[dict[str, Any]] = client.post("/v1/power", body, timeout=LONG_WAIT)
        if operation == "status":
            printer.line("---")
            for r in results:
                if r["ok"]:
                    printer.line(f"{r['node']}: {r.get('power_state') or r['message']}")
            printer.line("---")
        printer.line(f"{OPERATION} done\n")
        return Outcome(
            ok=[r["node"] for r in results if r["ok"]],
            ko=[(r["node"], r["message"]) for r in results if not r["ok"]],
        )

    return run_everywhere(session, refs, OPERATION, options, run_one)
