"""`kaenv`: manage the environment catalogue (add, list, print, delete, set visibility).

Versions: an environment is (owner, name, version); commands that take a NAME act on the
latest version you may see unless ``--env-version`` says which, and on your own environment
unless ``-u USER`` names the owner.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
import yaml

from kadeploy_cli import envfiles
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

VISIBILITIES = ("private", "shared", "public")

json_option = click.option("--json", "json_output", is_flag=True, help="Print JSON.")
user_option = click.option("-u", "--user", metavar="USER", help="The owner (default: you).")
version_option = click.option(
    "--env-version", type=click.IntRange(min=1), metavar="N", help="The version (default: latest)."
)


@click.group("kaenv", context_settings=CONTEXT, epilog=TOOLS_EXIT_HELP)
@server_option
@click.pass_context
def main(ctx: click.Context, server: str | None) -> None:
    """Manage the environment catalogue: what kadeploy -e deploys.

    Visibility: private (you), shared (anyone who names you with -u), public (everyone;
    administrators only).
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
    record = client.post("/v1/environments", body)
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
