"""`kadeploy-server`: run and inspect the daemon.

``check-config``, ``start [--foreground]``, ``stop``, ``status``, ``reload``, and ``token
add|remove|list`` (the users' API tokens). Process management lives in
:mod:`kadeployd.process`.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import click

from kadeploy_core.errors import ConfigError, KadeployError
from kadeploy_core.suggest import did_you_mean
from kadeployd import __version__, process
from kadeployd.api import TokenStore, tokenfile
from kadeployd.config import Config, DaemonSettings, load_config
from kadeployd.privileges import restrict_umask
from kadeployd.reboot.redact import is_secret_name

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
    # The state dir, its database and tokens file are root's alone, whichever command makes
    # them first (see kadeployd.privileges).
    restrict_umask()


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
        secret = _SECRET.search(key) or (
            key.startswith("vars.") and is_secret_name(key[5:], node.settings.power.secret_vars)
        )
        shown = "********" if secret else json.dumps(value)
        yield f"  {key:<{width}}  {shown:<40}  # {_origin(origins, key)}"


def _leaves(value: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping) and value:
        for key, item in value.items():
            yield from _leaves(item, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, value


def _origin(origins: Mapping[str, str], key: str) -> str:
    return origins.get(key, "default")


@main.command("start")
@conf_option
@click.option(
    "--foreground",
    is_flag=True,
    help="Run in this process, logging to stderr (for systemd); default: detach.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=process.START_TIMEOUT,
    show_default=True,
    help="Seconds to wait for the API to answer.",
)
def start(conf_dir: Path, foreground: bool, timeout: float) -> None:
    """Start the daemon: check the configuration, detach, return once the API answers."""
    config = load_or_exit(conf_dir)
    if foreground:
        process.serve_until_stopped(conf_dir, config, _echo_err)
    sys.exit(process.start_background(conf_dir, config.daemon, click.echo, timeout))


@main.command("stop")
@conf_option
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=process.STOP_TIMEOUT,
    show_default=True,
    help="Seconds to wait for the orderly shutdown.",
)
def stop(conf_dir: Path, timeout: float) -> None:
    """Stop the daemon, aborting running deployments (recorded as aborted)."""
    settings = settings_or_exit(conf_dir)
    sys.exit(_guard(lambda: process.stop(settings, click.echo, timeout)))


@main.command("status")
@conf_option
def status(conf_dir: Path) -> None:
    """Say whether the daemon runs: version, uptime, deployments in flight (exit 3: stopped)."""
    settings = settings_or_exit(conf_dir)
    sys.exit(_guard(lambda: process.status(settings, click.echo)))


@main.command("reload")
@conf_option
def reload(conf_dir: Path) -> None:
    """Re-read the configuration without dropping running deployments (as SIGHUP does)."""
    config = load_or_exit(conf_dir)
    sys.exit(_guard(lambda: process.reload(config.daemon, click.echo)))


@main.group("token")
def token() -> None:
    """Manage the users' API tokens."""


@token.command("add")
@conf_option
@click.argument("user")
@click.option(
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Where to write the token (default: ~USER/.kadeploy/token).",
)
def token_add(conf_dir: Path, user: str, output: Path | None) -> None:
    """Make a new token for USER (replacing theirs) and write it to a file only USER reads."""
    config = load_or_exit(conf_dir)
    try:
        owner = tokenfile.account(user)
        secret = TokenStore(config.daemon.state_dir).add(user)
        written = tokenfile.write_token_file(owner, secret, output)
    except KadeployError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"token of {user} written to {written}")


@token.command("remove")
@conf_option
@click.argument("user")
def token_remove(conf_dir: Path, user: str) -> None:
    """Revoke USER's token."""
    config = load_or_exit(conf_dir)
    try:
        removed = TokenStore(config.daemon.state_dir).remove(user)
    except KadeployError as exc:
        raise click.ClickException(str(exc)) from None
    if not removed:
        raise click.ClickException(f"{user} has no token")
    click.echo(f"token of {user} revoked")


@token.command("list")
@conf_option
def token_list(conf_dir: Path) -> None:
    """The users who have a token."""
    config = load_or_exit(conf_dir)
    try:
        users = TokenStore(config.daemon.state_dir).users()
    except KadeployError as exc:
        raise click.ClickException(str(exc)) from None
    for user, created in sorted(users.items()):
        made = time.strftime("%Y-%m-%d %H:%M", time.localtime(created))
        click.echo(f"{user}\t{made}")


def settings_or_exit(conf_dir: Path) -> DaemonSettings:
    """The daemon section (even if the rest of the configuration is broken), or exit 1."""
    try:
        return process.daemon_settings(conf_dir)
    except ConfigError:
        load_or_exit(conf_dir)  # prints every problem and exits
        raise


def _echo_err(message: str) -> None:
    click.echo(message, err=True)


def _guard(action: Callable[[], int]) -> int:
    try:
        return action()
    except KadeployError as exc:
        raise click.ClickException(str(exc)) from None


if __name__ == "__main__":
    main()
