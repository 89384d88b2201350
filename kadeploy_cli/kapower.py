"""`kapower`: power nodes on or off, or read their power status, with their configured
commands (IPMI...)."""

from __future__ import annotations

import logging
import sys

import click

from kadeploy_cli import power
from kadeploy_cli.common import CONTEXT, machine_options, server_option
from kadeploy_cli.errors import TOOLS_EXIT_HELP, UsageProblem

logger = logging.getLogger(__name__)


@click.command("kapower", context_settings=CONTEXT, epilog=TOOLS_EXIT_HELP)
@server_option
@machine_options
@click.option("--on", "action", flag_value="on", help="Power the nodes on.")
@click.option("--off", "action", flag_value="off", help="Power the nodes off.")
@click.option("--status", "action", flag_value="status", help="Print their power state.")
@click.option("--force", is_flag=True, help="Act on nodes that a running deployment holds.")
@power.result_options(ok_help="Nodes that succeeded.", ko_help="Nodes that failed.")
def main(
    *,
    server: str | None,
    nodefile: str | None,
    machines: tuple[str, ...],
    action: str | None,
    force: bool,
    ok_file: str | None,
    ko_file: str | None,
    json_output: bool,
) -> None:
    """Power nodes on or off, or read their power status (one of --on, --off, --status)."""
    if action is None:
        raise UsageProblem("say what to do: --on, --off or --status")
    targets = power.Targets(server, nodefile, machines, json_output, ok_file, ko_file)
    sys.exit(power.run("/v1/power", {"action": action, "force": force}, targets))
