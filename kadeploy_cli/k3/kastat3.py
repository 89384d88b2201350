"""``kastat3``: Kadeploy3's statistics command, option for option.

Without ``-b`` it prints the deployment log as Kadeploy3's server sent it: one CSV line per
node and finished operation, no header, the fields of ``-F`` (default: all, in Kadeploy3's
order) joined by commas, sorted on ``--sort`` (default ``start``), at most ``--limit``. With
``-b [RATE]``, one ``hostname: rate`` line per node whose failure rate is at least RATE.
Filters: ``-m``/``-f`` nodes, ``-x``/``-y`` dates, ``-w`` a workflow, ``-o`` an operation,
``-r NB`` with ``-s STEPS`` retries.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import click

from kadeploy_cli.common import parse_date
from kadeploy_cli.k3.common import CONTEXT, K3Command, generic_options, machine_options, nodes_of
from kadeploy_cli.k3.k3_tool import deployment_id_of, echo_lines, fail, open_client

logger = logging.getLogger(__name__)

FIELDS = ("wid", "user", "hostname", "step1", "step2", "step3", "timeout_step1",
          "timeout_step2", "timeout_step3", "retry_step1", "retry_step2", "retry_step3",
          "start", "step1_duration", "step2_duration", "step3_duration", "env", "md5",
          "success", "error")  # fmt: skip
"""Kadeploy3's kastat3 fields, in its order."""
_RATE = re.compile(r"^(0?\.\d+|1(\.0)?|0)$")
_NUMBER = re.compile(r"^\d+$")


def _comma_list(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    return [v for v in value.split(",") if v]


def _matching(pattern: re.Pattern[str]) -> Any:
    def check(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value not in (None, "") and not pattern.match(value):
            raise click.BadParameter(f"invalid argument: {value}", ctx, param)
        return value

    return check


@click.command("kastat3", cls=K3Command, context_settings=CONTEXT)
@generic_options
@click.option("-a", "--all", "all_", is_flag=True, help="Print all the information")
@click.option(
    "-b",
    "--failure-rate",
    metavar="[RATE]",
    is_flag=False,
    flag_value="",
    callback=_matching(_RATE),
    help="Print the nodes which have a minimum failure-rate of RATE 1 (0 <= RATE <= 1)",
)
@machine_options
@click.option(
    "-F",
    "--fields",
    metavar="FIELDS",
    callback=_comma_list,
    help=f"Only print the selected fields ({', '.join(FIELDS)})",
)
@click.option(
    "-o",
    "--operation",
    type=click.Choice(["deploy", "reboot", "power"]),
    help="Only print statistics about a specific operation",
)
@click.option(
    "-r",
    "--min-retries",
    metavar="NB",
    callback=_matching(_NUMBER),
    help="Print the statistics about the nodes that need at least NB attempts to perform "
    "specific steps",
)
@click.option(
    "-s",
    "--retry-steps",
    metavar="STEPS",
    callback=_comma_list,
    help="Apply the retry filter on the given steps (1, 2 or 3)",
)
@click.option("-w", "--workflow-id", metavar="ID", help="Get the stats of a specific workflow")
@click.option(
    "-x", "--date-min", metavar="TIME", help="Get the stats from this date (yyyy-mm-dd hh:mm:ss)"
)
@click.option(
    "-y", "--date-max", metavar="TIME", help="Get the stats to this date (yyyy-mm-dd hh:mm:ss)"
)
@click.option(
    "--limit",
    metavar="N",
    callback=_matching(_NUMBER),
    help="Print a maximal number of N results",
)
@click.option(
    "--sort",
    metavar="VALS",
    callback=_comma_list,
    help="Sort the result on some specific fields (default: start)",
)
def command(**options: Any) -> None:
    """Stats operation (Kadeploy3's kastat3)."""
    fields = options["fields"]
    if fields:
        invalid = [f for f in fields if f not in FIELDS]
        if invalid:
            fail(f"Invalid field(s) {', '.join(invalid)}")
    nodes = [r.name for r in nodes_of(options, required=False)] or None
    params: dict[str, Any] = {
        "node": nodes,
        "since": parse_date(options["date_min"], "-x") if options["date_min"] else None,
        "until": parse_date(options["date_max"], "-y") if options["date_max"] else None,
        "wid": deployment_id_of(options["workflow_id"]) if options["workflow_id"] else None,
        "operation": options["operation"],
        "min_retries": options["min_retries"],
        "retry_step": options["retry_steps"],
    }
    with open_client(options) as client:
        if options["failure_rate"] is not None:
            rate = options["failure_rate"]
            rates = client.get("/v1/stats/failure-rates", min_rate=rate or None, **params)
            echo_lines([f"{r['hostname']}: {r['rate']!r}\n" for r in rates])
            return
        records = client.get(
            "/v1/stats/log", sort=options["sort"], limit=options["limit"], **params
        )
    echo_lines(csv_lines(records, fields or list(FIELDS)))


def csv_lines(records: Sequence[dict[str, Any]], fields: Sequence[str]) -> list[str]:
    """Kadeploy3's lines: the values joined by commas (MySQL CONCAT_WS: no quoting), booleans
    as ``true``/``false``."""
    return [",".join(_text(record.get(f)) for f in fields) + "\n" for record in records]


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def main(args: Sequence[str] | None = None) -> None:
    """The ``kastat3`` console script."""
    command.main(args=list(args) if args is not None else None, prog_name="kastat3")
