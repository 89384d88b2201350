"""`kadeploy-server`: run and inspect the daemon.

``check-config`` is implemented; start/stop/status/reload arrive with the server issue.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import click

from kadeployd import __version__
from kadeployd.config import Config, load_config
from kadeployd.errors import ConfigError
from kadeployd.suggest import did_you_mean

_SECRET = re.compile(r"(password|secret|token)(?!.*_file$)", re.IGNORECASE)

conf_option = click.option(
    "--conf",
    "conf_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("conf"),
    envvar="KADEPLOY_CONF",
    show_default=True,
    show_envvar=True,
    help="Configuration directory (deploy.conf, clusters/, nodes.conf).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kadeploy-server")
def main() -> None:
    """Run and inspect the kadeployd daemon."""


@main.command("check-config")
@conf_option
@click.option("--node", help="Print the effective settings of NODE and where each comes from.")
def check_config(conf_dir: Path, node: str | None) -> None:
    """Validate the configuration; report every mistake at once."""
    config = load_or_exit(conf_dir)
    if node is None:
        total = len(config.nodes)
        clusters = ", ".join(f"{c} ({len(n)} nodes)" for c, n in config.clusters.items())
        click.echo(f"{conf_dir}: configuration is valid: {total} nodes in {clusters}")
        return
    if node not in config.nodes:
        hint = did_you_mean(node, config.nodes)
        raise click.UsageError(f"unknown node {node!r} in {conf_dir}/nodes.conf{hint}")
    for line in describe_node(config, node):
        click.echo(line)


def load_or_exit(conf_dir: Path) -> Config:
    """The configuration, or every problem on stderr and exit status 1."""
    try:
        return load_config(conf_dir)
    except ConfigError as exc:
        count = len(exc.problems)
        click.echo(
            f"kadeploy-server: {count} error{'s' if count > 1 else ''} in {conf_dir}:", err=True
        )
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(1)


def describe_node(config: Config, name: str) -> Iterator[str]:
    """Lines showing a node's identity and each effective setting with its origin."""
    node = config.nodes[name]
    yield f"node {node.name}: cluster {node.cluster}, address {node.address}, mac {node.mac}" + (
        f", bmc {node.bmc}" if node.bmc else ""
    )
    origins = config.origins[name]
    settings = node.settings.model_dump(mode="json")
    rows = list(_leaves(settings, ""))
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        shown = "********" if _SECRET.search(key) else json.dumps(value)
        yield f"  {key:<{width}}  {shown:<40}  # {_origin(origins, key)}"


def _leaves(value: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping) and value:
        for key, item in value.items():
            yield from _leaves(item, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, value


def _origin(origins: Mapping[str, str], key: str) -> str:
    return origins.get(key, "default")


def _not_implemented(name: str, summary: str) -> None:
    @main.command(name, help=f"{summary} (not implemented yet: arrives with the server issue)")
    @conf_option
    def command(conf_dir: Path) -> None:
        raise click.ClickException(f"kadeploy-server {name} is not implemented yet")


for _name, _summary in (
    ("start", "Start the daemon"),
    ("stop", "Stop the daemon, aborting running deployments"),
    ("status", "Say whether the daemon runs"),
    ("reload", "Re-read the configuration"),
):
    _not_implemented(_name, _summary)
