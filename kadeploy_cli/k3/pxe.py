"""Kadeploy3's PXE options of kadeploy3 and kareboot3: ``-w/--set-pxe-profile FILE``,
``--set-pxe-pattern FILE`` and ``-x/--upload-pxe-files FILES``.

- ``-w``: the profile's text (read here, size-limited, UTF-8: kareboot's checks);
- ``--set-pxe-pattern``: Kadeploy3's file of ``NODE,VALUE`` lines (``#`` comments and blank
  lines skipped), the value replacing ``NODE_SINGULARITY`` in the profile for that node;
- ``-x``: a comma list of local files (repeatable), uploaded; the profile names them under
  ``FILES_PREFIX``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from kadeploy_cli.client import Client
from kadeploy_cli.k3.common import K3Error
from kadeploy_cli.kareboot import pxe_files_of, read_profile

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
MAX_PATTERN_BYTES = 4 * 1024 * 1024
SINGULARITY = "NODE_SINGULARITY"


def pxe_options(function: F) -> F:
    """``-w``, ``--set-pxe-pattern`` and ``-x`` as Kadeploy3 names them."""
    function = click.option(
        "-x",
        "--upload-pxe-files",
        "pxe_files",
        multiple=True,
        metavar="FILES",
        help="Upload a list of files (file1,file2,file3) to the PXE repository. Those files "
        "will then be available with the prefix FILES_PREFIX-- ",
    )(function)
    function = click.option(
        "--set-pxe-pattern",
        "pxe_pattern",
        metavar="FILE",
        help="Specify a file containing the substitution of a pattern for each node in the PXE "
        "profile (the NODE_SINGULARITY pattern must be used in the PXE profile)",
    )(function)
    return click.option(
        "-w",
        "--set-pxe-profile",
        "pxe_profile",
        metavar="FILE",
        help="Set the PXE profile (use with caution)",
    )(function)


def read_pxe_options(options: dict[str, Any]) -> dict[str, Any] | None:
    """The profile, singularities and local files of the options; None without ``-w``."""
    if options.get("pxe_profile") is None:
        if options.get("pxe_pattern") is not None:
            raise K3Error("--set-pxe-pattern goes with -w/--set-pxe-profile FILE")
        return None
    profile = read_profile(Path(options["pxe_profile"]))
    pattern = options.get("pxe_pattern")
    singularities = read_singularities(Path(pattern)) if pattern is not None else None
    files = pxe_files_of(tuple(options.get("pxe_files") or ()))
    return {"profile": profile, "singularities": singularities, "files": files}


def read_singularities(path: Path) -> dict[str, str]:
    """Kadeploy3's ``NODE,VALUE`` lines as {node: value}; K3Error naming a bad line."""
    try:
        data = path.read_bytes()
    except OSError:
        raise K3Error(f"The file {path} cannot be read") from None
    if len(data) > MAX_PATTERN_BYTES:
        raise K3Error(f"{path}: {len(data)} bytes; at most {MAX_PATTERN_BYTES}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise K3Error(f"{path}: not UTF-8 text; expected NODE,VALUE lines") from None
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        node, comma, value = line.partition(",")
        if not comma or not node.strip():
            raise K3Error(f"{path}:{number}: expected NODE,VALUE; got {line!r}")
        values[node.strip()] = value.split(",")[0].strip()
    return values


def pxe_body(client: Client, pxe: dict[str, Any], made: list[str]) -> dict[str, Any]:
    """The request's ``pxe`` field: the local files uploaded (their ids added to ``made``)."""
    files: dict[str, str] = {}
    for name, local in pxe["files"].items():
        files[name] = str(client.upload(local, name)["id"])
        made.append(files[name])
    body: dict[str, Any] = {"profile": pxe["profile"]}
    if pxe["singularities"] is not None:
        body["singularities"] = pxe["singularities"]
    if files:
        body["files"] = files
    return body
