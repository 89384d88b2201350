"""`kaenv`: manage the environment catalogue (add, list, print, delete, set visibility).

Versions: an environment is (owner, name, version); commands that take a NAME act on the
latest version you may see unless ``--env-version`` says which, and on your own environment
unless ``-u USER`` names the owner.

Kadeploy3's ``kaenv3`` options work too, as aliases of the subcommands: ``-a FILE`` (add),
``-l`` (list), ``-p NAME`` (print), ``-d NAME`` (delete), with the subcommand's own options
(``-u``, ``--env-version``, ``--json``...): ``kaenv -p debian -u bob`` is
``kaenv print debian -u bob``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
import yaml

from kadeploy_cli import envfiles, uploads
from kadeploy_cli.client import Client
from kadeploy_cli.common import (
    CONTEXT,
    local_time,
    make_client,
    print_json,
    server_option,
    table,
)
from kadeploy_cli.errors import TOOLS_EXIT_HELP

logger = logging.getLogger(__name__)

ALIASES = {"-a": "add", "--add": "add", "-l": "list", "--list": "list",
           "-p": "print", "--print": "print", "-d": "delete", "--delete": "delete"}  # fmt: skip
"""Kadeploy3's kaenv3 options -> the subcommand each stands for."""
_ALIAS_ARGUMENT = {"add": "FILE", "print": "NAME", "delete": "NAME"}
_SERVER_OPTIONS = ("-S", "--server")

VISIBILITIES = ("private", "shared", "public")

json_option = click.option("--json", "json_output", is_flag=True, help="Print JSON.")
user_option = click.option("-u", "--user", metavar="USER", help="The owner (default: you).")
version_option = click.option(
    "--env-version", type=click.IntRange(min=1), metavar="N", help="The version (default: latest)."
)


class KaenvGroup(click.Group):
    """The subcommands, also reached through Kadeploy3's options (:data:`ALIASES`)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Rewrite ``-a FILE``, ``-l``, ``-p NAME``, ``-d NAME`` as their subcommand."""
        return super().parse_args(ctx, translate_aliases(args, set(self.commands)))


def translate_aliases(args: list[str], commands: set[str]) -> list[str]:
    """``[-S X] -p NAME -u bob`` -> ``[-S X] print NAME -u bob``; other arguments unchanged.
    Two aliases, an alias beside a subcommand, or a missing FILE/NAME: click.UsageError."""
    server: list[str] = []
    rest: list[str] = []
    index = 0
    while index < len(args):
        word = args[index]
        if word in _SERVER_OPTIONS and index + 1 < len(args):
            server += args[index : index + 2]
            index += 2
            continue
        if word.startswith("--server="):
            server.append(word)
        else:
            rest.append(word)
        index += 1
    found = [(i, w) for i, w in enumerate(rest) if w.split("=", 1)[0] in ALIASES]
    if not found:
        return args
    position, word = found[0]
    option, _, inline = word.partition("=")
    command = ALIASES[option]
    taken = 1
    value: list[str] = []
    if command in _ALIAS_ARGUMENT:
        if inline:
            value = [inline]
        elif position + 1 < len(rest) and not rest[position + 1].startswith("-"):
            value = [rest[position + 1]]
            taken = 2
        else:
            raise click.UsageError(f"{option} needs {_ALIAS_ARGUMENT[command]}")
    elif inline:
        raise click.UsageError(f"{option} takes no value")
    remaining = rest[:position] + rest[position + taken :]
    others = [w for _, w in found[1:]] + [w for w in remaining if w in commands]
    if others:
        raise click.UsageError(
            f"{word} and {others[0]} are two commands; give one of -a FILE, -l, -p NAME, "
            "-d NAME (or a subcommand: add, list, print, delete...)"
        )
    return [*server, command, *value, *remaining]


@click.group("kaenv", cls=KaenvGroup, context_settings=CONTEXT, epilog=TOOLS_EXIT_HELP)
@server_option
@click.pass_context
def main(ctx: click.Context, server: str | None) -> None:
    """Manage the environment catalogue: what kadeploy -e deploys.

    Visibility: private (you), shared (anyone who names you with -u), public (everyone;
    administrators only).

    Kadeploy3's options work too: -a FILE (add), -l (list), -p NAME (print), -d NAME (delete),
    e.g. kaenv -p debian -u bob --env-version 2.
    """
    ctx.obj = ctx.with_resource(make_client(server))


@main.command("add")
@click.argument("envfile", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--visibility", type=click.Choice(VISIBILITIES), help="Override the file's.")
@json_option
@click.pass_obj
def add(client: Client, envfile: Path, visibility: str | None, json_output: bool) -> None:
    """Register the description ENVFILE; its image and archives are uploaded."""
    prepared = envfiles.prepare(envfile, client)
    body: dict[str, Any] = prepared.body()
    if visibility is not None:
        body["visibility"] = visibility
    try:
        record = client.post("/v1/environments", body)
    except BaseException:  # refused or interrupted: its uploads would stay on the server
        uploads.discard(client, prepared.files.values())
        raise
    if json_output:
        print_json(record)
        return
    click.echo(
        f"environment {record['name']} version {record['version']} of {record['owner']} "
        f"registered ({record['visibility']})"
    )


@main.command("list")
@user_option
@click.option("--name", metavar="NAME", help="Only environments named NAME.")
@click.option(
    "-s",
    "--all-versions",
    "--show-all-versions",
    is_flag=True,
    help="Every version, not the latest.",
)
@json_option
@click.pass_obj
def list_(
    client: Client, user: str | None, name: str | None, all_versions: bool, json_output: bool
) -> None:
    """List your environments and the public ones (with -u, USER's you may see)."""
    records = client.get("/v1/environments", user=user, name=name, all_versions=all_versions)
    if json_output:
        print_json(records)
        return
    rows = [
        [
            r["name"],
            str(r["version"]),
            r["owner"],
            r["visibility"],
            str(r["description"].get("description", "")),
        ]
        for r in records
    ]
    for line in table(rows, ["NAME", "VERSION", "USER", "VISIBILITY", "DESCRIPTION"]):
        click.echo(line)


@main.command("print")
@click.argument("name")
@user_option
@version_option
@json_option
@click.pass_obj
def print_(
    client: Client, name: str, user: str | None, env_version: int | None, json_output: bool
) -> None:
    """Print environment NAME's description (kaenv YAML)."""
    record = _record(client, name, user, env_version)
    if json_output:
        print_json(record)
        return
    click.echo(
        f"# owner: {record['owner']}, visibility: {record['visibility']}, "
        f"registered {local_time(record['created_at'])}"
    )
    click.echo(yaml.safe_dump(_shown(record), sort_keys=False).rstrip())


@main.command("delete")
@click.argument("name")
@user_option
@version_option
@click.pass_obj
def delete(client: Client, name: str, user: str | None, env_version: int | None) -> None:
    """Delete a version of environment NAME (default: the latest) and its files."""
    record = _record(client, name, user, env_version)
    client.delete(_path(record))
    click.echo(
        f"environment {record['name']} version {record['version']} of {record['owner']} deleted"
    )


@main.command("set-visibility")
@click.argument("name")
@click.argument("visibility", type=click.Choice(VISIBILITIES))
@user_option
@version_option
@click.pass_obj
def set_visibility(
    client: Client, name: str, visibility: str, user: str | None, env_version: int | None
) -> None:
    """Make a version of NAME private, shared or public (public: administrators only)."""
    record = _record(client, name, user, env_version)
    changed = client.patch(_path(record), {"visibility": visibility})
    click.echo(
        f"environment {changed['name']} version {changed['version']} of {changed['owner']} "
        f"is {changed['visibility']}"
    )


def _record(client: Client, name: str, user: str | None, version: int | None) -> dict[str, Any]:
    owner = user or client.get("/v1/whoami")["user"]
    path = f"/v1/environments/{quote(owner, safe='')}/{quote(name, safe='')}"
    if version is not None:
        path += f"/{version}"
    record: dict[str, Any] = client.get(path)
    return record


def _path(record: dict[str, Any]) -> str:
    owner, name = quote(record["owner"], safe=""), quote(record["name"], safe="")
    return f"/v1/environments/{owner}/{name}/{record['version']}"


def _shown(record: dict[str, Any]) -> dict[str, Any]:
    """The description as its owner wrote it: files by name (they live on the server), keys
    left at their empty defaults dropped, the visibility in force."""
    description = dict(record["description"])
    description["visibility"] = record["visibility"]
    image = description.get("image")
    if isinstance(image, dict) and image.get("file"):
        description["image"] = {**image, "file": Path(str(image["file"])).name}
    for key in ("preinstall",):
        part = description.get(key)
        if isinstance(part, dict) and part.get("archive"):
            description[key] = {**part, "archive": Path(str(part["archive"])).name}
    posts = description.get("postinstalls")
    if isinstance(posts, list):
        description["postinstalls"] = [
            {**p, "archive": Path(str(p["archive"])).name} if isinstance(p, dict) else p
            for p in posts
        ]
    return {k: v for k, v in description.items() if v not in (None, "", [], {})}
