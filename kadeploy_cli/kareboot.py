"""`kareboot`: reboot nodes with their configured commands, at a level (soft, hard,
very_hard). Only simple reboots are supported so far: the other kinds of Kadeploy3's
kareboot (set_pxe, deploy_env, recorded_env) are refused by the server (exit 2)."""

from __future__ import annotations

import logging
import sys

import click

from kadeploy_cli import power
from kadeploy_cli.common import CONTEXT, machine_options, server_option
from kadeploy_cli.errors import TOOLS_EXIT_HELP

logger = logging.getLogger(__name__)

KINDS = {"simple": "simple", "simple_reboot": "simple", "set_pxe": "set_pxe",
         "deploy_env": "deploy_env", "env_recorded": "recorded_env",
         "recorded_env": "recorded_env"}  # fmt: skip


@click.command("kareboot", context_settings=CONTEXT, epilog=TOOLS_EXIT_HELP)
@server_option
@machine_options
@click.option(
    "-r",
    "--reboot-kind",
    "kind",
    type=click.Choice(list(KINDS)),
    metavar="KIND",
    default="simple",
    show_default=True,
    help="simple is supported; set_pxe, deploy_env and recorded_env not yet (exit 2).",
)
@click.option(
    "-l",
    "--reboot-level",
    "level",
    type=click.Choice(["soft", "hard", "very_hard"]),
    default="soft",
    show_default=True,
    help="soft asks the system, hard cycles the power, very_hard resets (falls to the next "
    "configured one).",
)
@click.option("--force", is_flag=True, help="Reboot nodes that a running deployment holds.")
@click.option("-o", "--output-ok-nodes", "ok_file", metavar="FILE", help="Nodes rebooted.")
@click.option("-n", "--output-ko-nodes", "ko_file", metavar="FILE", help="Nodes not rebooted.")
@click.option("--json", "json_output", is_flag=True, help="Print JSON: one result per node.")
def main(
    *,
    server: str | None,
    nodefile: str | None,
    machines: tuple[str, ...],
    kind: str,
    level: str,
    force: bool,
    ok_file: str | None,
    ko_file: str | None,
    json_output: bool,
) -> None:
    """Reboot nodes (-f NODEFILE or -m NODE...)."""
    sys.exit(
        power.run(
            "/v1/reboots",
            {"kind": KINDS[kind], "level": level, "force": force},
            server=server,
            nodefile=nodefile,
            machines=machines,
            json_output=json_output,
            ok_file=ok_file,
            ko_file=ko_file,
        )
    )
