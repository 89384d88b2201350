"""``kaenv3``: Kadeploy3's environment management command, option for option.

Operations (the last one given wins, as in Kadeploy3): ``-a ENVFILE``, ``-d ENVNAME``,
``-l [PATTERN]`` (``%`` is the wildcard), ``-p ENVNAME``, ``--set-visibility-tag ENVNAME``
with ``-t TAG``, ``--toggle-destructive-tag ENVNAME``, ``--update-image-checksum ENVNAME``,
``--update-preinstall-checksum ENVNAME``, ``--update-postinstalls-checksum ENVNAME``.
Modifiers: ``-u/--env-user``, ``--env-version``, ``-s/--all-versions``.

The listing is Kadeploy3's (``Name``/``Version``/``User``/``Description`` columns of 21, 7 and
11 characters, descriptions cut to an 80-column line with ``...``); ``-p`` prints the
description as YAML (``---`` first); successful changes print nothing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click

from kadeploy_cli import envfiles, uploads
from kadeploy_cli.client import Client
from kadeploy_cli.errors import ApiFailure
from kadeploy_cli.k3.common import CONTEXT, K3Command, generic_options
from kadeploy_cli.k3.k3_tool import (
    NOTHING_MODIFIED,
    fail,
    kadeploy_errors,
    open_client,
    ruby_yaml,
)

logger = logging.getLogger(__name__)

VISIBILITY_ORDER = {"public": 0, "private": 1, "shared": 2}
"""Kadeploy3 lists public environments first, then private, then shared, each by name."""
_USER = re.compile(r"^\w+$")
_KEY_ORDER = ("name", "version", "description", "author", "visibility", "destructive", "os",
              "image", "preinstall", "postinstalls", "boot", "filesystem", "partition_type",
              "clusters")  # fmt: skip
"""The keys of a printed description, in Kadeploy3's order."""
CHECKSUM_OPERATIONS = {
    "update-image-checksum": "image",
    "update-preinstall-checksum": "preinstall",
    "update-postinstalls-checksum": "postinstalls",
}


def _operation(name: str) -> Any:
    """A callback remembering which operation option came last (Kadeploy3's last one wins)."""

    def remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is not None and value is not False:
            ctx.meta["kaenv3.operation"] = (name, value)
        return value

    return remember


def _env_user(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not _USER.match(value):
        raise click.BadParameter(f"invalid argument: {value}", ctx, param)
    return value


@click.command("kaenv3", cls=K3Command, context_settings=CONTEXT)
@generic_options
@click.option(
    "-a", "--add", metavar="ENVFILE", callback=_operation("add"), help="Add an environment"
)
@click.option(
    "-d", "--delete", metavar="ENVNAME", callback=_operation("delete"), help="Delete an environment"
)
@click.option(
    "-l",
    "--list",
    "list_",
    metavar="[ENVNAME]",
    is_flag=False,
    flag_value="",
    callback=_operation("list"),
    help="List environments with the environment name pattern (% is the wildcard).",
)
@click.option(
    "-m", "--files-to-move", metavar="FILES", help="Files to move (src1::dst1,src2::dst2,...)"
)
@click.option(
    "-p",
    "--print",
    "print_",
    metavar="ENVNAME",
    callback=_operation("print"),
    help="Print an environment",
)
@click.option(
    "-s",
    "--all-versions",
    is_flag=True,
    help="Apply the operation on all the versions of the environment",
)
@click.option(
    "-t",
    "--visibility-tag",
    type=click.Choice(["public", "private", "shared"]),
    help="Set the visibility tag (private, shared, public)",
)
@click.option(
    "-u",
    "--env-user",
    metavar="USERNAME",
    callback=_env_user,
    help="Specify the user that own the recorded environment",
)
@click.option(
    "--env-version",
    type=click.IntRange(min=0),
    metavar="NUMBER",
    help="Version number of the recorded environment",
)
@click.option(
    "--toggle-destructive-tag",
    metavar="ENVNAME",
    callback=_operation("toggle-destructive-tag"),
    help="Toggle the destructive tag on an environment",
)
@click.option(
    "--set-visibility-tag",
    metavar="ENVNAME",
    callback=_operation("set-visibility-tag"),
    help="Set the visibility tag on an environment",
)
@click.option(
    "--update-image-checksum",
    metavar="ENVNAME",
    callback=_operation("update-image-checksum"),
    help="Update the checksum of the environment image",
)
@click.option(
    "--update-preinstall-checksum",
    metavar="ENVNAME",
    callback=_operation("update-preinstall-checksum"),
    help="Update the checksum of the environment preinstall",
)
@click.option(
    "--update-postinstalls-checksum",
    metavar="ENVNAME",
    callback=_operation("update-postinstalls-checksum"),
    help="Update the checksum of the environment postinstalls",
)
@click.option(
    "--move-files",
    is_flag=True,
    callback=_operation("move-files"),
    help="Move the files of the environments (for administrators only)",
)
@click.option(
    "--secure/--no-secure",
    default=False,
    help="Use a secure connection to export files to the server (no effect: files "
    "are uploaded through the API)",
)
@click.pass_context
def command(ctx: click.Context, **options: Any) -> None:  # fmt: skip
    """Environment management (Kadeploy3's kaenv3)."""
    chosen = ctx.meta.get("kaenv3.operation")
    if chosen is None:
        fail("You must choose an operation")
    operation, value = chosen
    if operation == "move-files":
        fail(
            "--move-files is not supported: kadeployd keeps the files of environments in its "
            "own directory (register the environment again with -a to change them)"
        )
    user = options["env_user"]
    version = options["env_version"]
    every = options["all_versions"]
    with open_client(options) as client, kadeploy_errors():
        if operation == "add":
            add(client, Path(value))
        elif operation == "list":
            list_(client, value or None, user, every)
        elif operation == "print":
            print_(client, value, user, version, every)
        elif operation == "delete":
            delete(client, value, user, version, every)
        else:
            if not value:
                fail("You must choose an environment")
            change: dict[str, Any] = {}
            if operation == "set-visibility-tag":
                if not options["visibility_tag"]:
                    fail("You must define the visibility value")
                change["visibility"] = options["visibility_tag"]
            elif operation == "toggle-destructive-tag":
                change["toggle_destructive"] = True
            else:
                change["update_checksums"] = [CHECKSUM_OPERATIONS[operation]]
            modify(client, name=value, user=user, version=version, every=every, change=change)


def add(client: Client, envfile: Path) -> None:
    """``-a ENVFILE``: register the description; its files are uploaded."""
    if not envfile.is_file():
        fail(f"File not found '{envfile}'")
    prepared = envfiles.prepare(envfile, client)
    try:
        client.post("/v1/environments", prepared.body())
    except BaseException:  # refused or interrupted: its uploads would stay on the server
        uploads.discard(client, prepared.files.values())
        raise


def list_(client: Client, pattern: str | None, user: str | None, every: bool) -> None:
    """``-l [PATTERN]``: Kadeploy3's listing."""
    records = client.get("/v1/environments", user=user, pattern=pattern, all_versions=every)
    if not records:
        if pattern:
            fail(f"Resource not found /environments (no environment matches {pattern})")
        click.echo("No environment has been found")
        return
    click.echo("".join(listing(ordered(records))), nl=False)


def print_(client: Client, name: str, user: str | None, version: int | None, every: bool) -> None:
    """``-p ENVNAME``: the descriptions as YAML; without ``-u``, yours when you have one."""
    records = _matching(client, name, user, version, every)
    if user is None:
        me = client.get("/v1/whoami")["user"]
        own = [r for r in records if r["owner"] == me]
        records = own or records
    for record in records:
        click.echo(description_yaml(record), nl=False)


def delete(client: Client, name: str, user: str | None, version: int | None, every: bool) -> None:
    """``-d ENVNAME``: the latest version (``--env-version``: that one; ``-s``: all)."""
    owner = user or client.get("/v1/whoami")["user"]
    for record in _versions(client, owner, name, version, every):
        client.delete(_path(record))


def modify(
    client: Client,
    *,
    name: str,
    user: str | None,
    version: int | None,
    every: bool,
    change: dict[str, Any],
) -> None:
    """A change of tags or checksums on the latest version (or ``--env-version``, or all with
    ``-s``). Kadeploy3 prints nothing; "nothing modified" exits 14."""
    owner = user or client.get("/v1/whoami")["user"]
    modified = 0
    for record in _versions(client, owner, name, version, every):
        try:
            client.patch(_path(record), change)
            modified += 1
        except ApiFailure as exc:
            if exc.code == "nothing_modified" and every:
                continue
            raise
    if every and modified == 0:
        fail("No element has been modified\n[Kadeploy Error #14]", NOTHING_MODIFIED)


def _matching(
    client: Client, name: str, user: str | None, version: int | None, every: bool
) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = client.get(
        "/v1/environments", user=user, pattern=name, all_versions=every or version is not None
    )
    if version is not None:
        records = [r for r in records if r["version"] == version]
    if not records:
        fail(f"Resource not found /environments (no environment {name})")
    return ordered(records)


def _versions(
    client: Client, owner: str, name: str, version: int | None, every: bool
) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = client.get(
        "/v1/environments", user=owner, name=name, all_versions=True
    )
    records = [r for r in records if r["owner"] == owner and r["name"] == name]
    if version is not None:
        records = [r for r in records if r["version"] == version]
    elif not every:
        records = records[:1]
    if not records:
        which = f" version {version}" if version is not None else ""
        fail(
            f"Resource not found /environments/{owner}/{name}"
            f" (no environment {name}{which} of {owner})"
        )
    return records


def _path(record: dict[str, Any]) -> str:
    owner, name = quote(record["owner"], safe=""), quote(record["name"], safe="")
    return f"/v1/environments/{owner}/{name}/{record['version']}"


def ordered(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Kadeploy3's order: public, private, shared; by name; newest version first."""
    return sorted(
        records,
        key=lambda r: (VISIBILITY_ORDER.get(r["visibility"], 3), r["name"], -int(r["version"])),
    )


def listing(records: Sequence[dict[str, Any]]) -> list[str]:
    """The header and one line per environment, as Kadeploy3's ``print_short``."""
    lines = [
        "%-21s %-7s %-11s %.35s\n" % ("Name", "Version", "User", "Description"),  # noqa: UP031
        "%-21s %-7s %-11s %.35s\n" % ("####", "#######", "####", "###########"),  # noqa: UP031
    ]
    lines += [short_line(r) for r in records]
    return lines


def short_line(record: dict[str, Any]) -> str:
    """One environment on a line of at most 80 columns (Kadeploy3's ``print_short``: a long
    name eats into the version column, the description is cut with ``...``)."""
    name, user = str(record["name"]), str(record["owner"])
    version = str(record["version"])
    description = str(record["description"].get("description") or "")
    total = max(len(name), 21)
    over = len(name) - 21
    if over > 0:
        if over < 7:
            version_cell = version.ljust(7 - over)
            total += 7 - over
        else:
            version_cell = version
            total += 8  # Kadeploy3 adds the size of a Ruby Integer, 8 bytes
    else:
        version_cell = version.ljust(7)
        total += 7
    total += max(len(user), 11) + 3
    room = 80 - total
    if len(description) > room:
        shown = description[: max(room - 3, 0)] + "..."
    else:
        shown = description[: max(room, 0)]
    return f"{name.ljust(21)} {version_cell} {user.ljust(11)} {shown}\n"


_SUB_KEY_ORDER = {
    "image": ("file", "kind", "compression"),
    "preinstall": ("archive", "compression", "script"),
    "postinstalls": ("archive", "compression", "script"),
    "boot": ("kernel", "initrd", "kernel_params"),
}


def _in_order(part: dict[str, Any], order: Sequence[str]) -> dict[str, Any]:
    """``part``'s keys in Kadeploy3's ``order`` (others after), empty values dropped."""
    keys = [*order, *(k for k in part if k not in order)]
    return {k: part[k] for k in keys if k in part and part[k] not in (None, "")}


def description_yaml(record: dict[str, Any]) -> str:
    """A registered environment as Kadeploy3's ``kaenv3 -p`` prints it."""
    description = dict(record["description"])
    description["visibility"] = record["visibility"]
    description["version"] = record["version"]
    image = description.get("image")
    if isinstance(image, dict) and image.get("file"):
        description["image"] = {**image, "file": Path(str(image["file"])).name}
    pre = description.get("preinstall")
    if isinstance(pre, dict) and pre.get("archive"):
        description["preinstall"] = {**pre, "archive": Path(str(pre["archive"])).name}
    posts = description.get("postinstalls")
    if isinstance(posts, list):
        description["postinstalls"] = [
            {**p, "archive": Path(str(p["archive"])).name} if isinstance(p, dict) else p
            for p in posts
        ]
    for key, order in _SUB_KEY_ORDER.items():
        part = description.get(key)
        if isinstance(part, dict):
            description[key] = _in_order(part, order)
        elif isinstance(part, list):
            description[key] = [_in_order(p, order) if isinstance(p, dict) else p for p in part]
    shown = {
        key: description[key]
        for key in _KEY_ORDER
        if key in description and description[key] not in (None, "", [], {})
    }
    return ruby_yaml(shown)


def main(args: Sequence[str] | None = None) -> None:
    """The ``kaenv3`` console script."""
    command.main(args=list(args) if args is not None else None, prog_name="kaenv3")
