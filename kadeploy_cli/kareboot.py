"""`kareboot`: reboot nodes, as Kadeploy3's kareboot3 (``-r KIND``).

- ``simple`` (default): the nodes' configured reboot command at a level (soft, hard,
  very_hard);
- ``set_pxe -w PROFILE [-x FILE...]``: your own pxelinux profile for each node, then a simple
  reboot. The profile is read here and sent to the server (size-limited, text); the ``-x`` files
  are uploaded and published on the TFTP server under your directory, which the profile names
  ``FILES_PREFIX`` (``KERNEL FILES_PREFIX/vmlinuz``);
- ``deploy_env``: boot the deploy environment (and wait until it answers);
- ``recorded_env -e ENV [-u USER] [--env-version N] -p PART``: boot the environment already
  deployed on partition PART (and wait until it answers).

``deploy_env`` and ``recorded_env`` run on the server like a deployment (retries, timeouts,
per-node states in kastat); kareboot follows it to its end, Ctrl-C cancels it.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from kadeploy_cli import power
from kadeploy_cli.common import CONTEXT, machine_options, server_option
from kadeploy_cli.errors import TOOLS_EXIT_HELP, UsageProblem
from kadeploy_cli.kadeploy import DEFAULT_KEY, key_file_of
from kadeploy_core.filenames import check_file_name

logger = logging.getLogger(__name__)

KINDS = {"simple": "simple", "simple_reboot": "simple", "set_pxe": "set_pxe",
         "deploy_env": "deploy_env", "env_recorded": "recorded_env",
         "recorded_env": "recorded_env"}  # fmt: skip
MAX_PROFILE_BYTES = 64 * 1024
"""The server's limit on a PXE profile (kadeployd/pxe/user_profiles.py)."""

EPILOG = f"""\b
Examples:
  kareboot -m node-1 -l hard
  kareboot -f $OAR_NODEFILE -r deploy_env
  kareboot -m node-1 -r recorded_env -e debian-min -p 3
  kareboot -m node-1 -r set_pxe -w profile.txt -x vmlinuz -x initrd.img
  (profile.txt: DEFAULT x / LABEL x / KERNEL FILES_PREFIX/vmlinuz / INITRD FILES_PREFIX/...)

{TOOLS_EXIT_HELP}"""

_ONLY_WITH = {
    "env_name": ("-e", "recorded_env"),
    "env_user": ("-u", "recorded_env"),
    "env_version": ("--env-version", "recorded_env"),
    "partition": ("-p", "recorded_env"),
    "profile": ("-w", "set_pxe"),
    "pxe_files": ("-x", "set_pxe"),
    "block_device": ("-b", "deploy_env or recorded_env"),
    "key": ("-k", "deploy_env"),
}


@click.command("kareboot", context_settings=CONTEXT, epilog=EPILOG)
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
    help="simple, set_pxe (-w, -x), deploy_env, recorded_env (-e, -p).",
)
@click.option(
    "-l",
    "--reboot-level",
    "level",
    type=click.Choice(["soft", "hard", "very_hard"]),
    default="soft",
    show_default=True,
    help="soft asks the system, hard cycles the power, very_hard resets (falls to the next "
    "configured one). deploy_env, recorded_env: the first try's level; retries go harder.",
)
@click.option("-e", "--env-name", "env_name", metavar="ENV", help="recorded_env: the environment.")
@click.option(
    "-u", "--env-user", "env_user", metavar="USER", help="recorded_env: its owner (default: you)."
)
@click.option(
    "--env-version",
    type=click.IntRange(min=1),
    metavar="N",
    help="recorded_env: its version (default: latest).",
)
@click.option(
    "-p",
    "--partition-number",
    "partition",
    type=click.IntRange(min=1, max=128),
    metavar="PART",
    help="recorded_env: the partition the environment was deployed on.",
)
@click.option(
    "-w",
    "--set-pxe-profile",
    "profile",
    type=click.Path(path_type=Path, dir_okay=False),
    metavar="FILE",
    help="set_pxe: your pxelinux profile (text, at most 64 KiB).",
)
@click.option(
    "-x",
    "--set-pxe-pattern",
    "--pxe-files",
    "pxe_files",
    multiple=True,
    metavar="FILE",
    help="set_pxe: a file to put on the TFTP server, under FILES_PREFIX (repeatable, or a "
    "comma list).",
)
@click.option(
    "-b",
    "--block-device",
    "block_device",
    metavar="DEV",
    help="deploy_env, recorded_env: the disk (a path under /dev) instead of the cluster's "
    "disk.block_device.",
)
@click.option(
    "-k",
    "--key",
    is_flag=False,
    flag_value=DEFAULT_KEY,
    metavar="[KEYFILE]",
    help="deploy_env: public key(s) to put in the deploy env's root authorized_keys "
    "(no KEYFILE: ~/.ssh/authorized_keys, else ~/.ssh/id_*.pub).",
)
@click.option("--force", is_flag=True, help="Reboot nodes that a running deployment holds.")
@power.result_options(ok_help="Nodes rebooted.", ko_help="Nodes not rebooted.")
def main(
    *,
    server: str | None,
    nodefile: str | None,
    machines: tuple[str, ...],
    kind: str,
    level: str,
    env_name: str | None,
    env_user: str | None,
    env_version: int | None,
    partition: int | None,
    profile: Path | None,
    pxe_files: tuple[str, ...],
    block_device: str | None,
    key: str | None,
    force: bool,
    ok_file: str | None,
    ko_file: str | None,
    json_output: bool,
) -> None:
    """Reboot nodes (-f NODEFILE or -m NODE...): simply, with your own PXE profile, into the
    deploy environment, or into an environment already deployed on a partition."""
    kind = KINDS[kind]
    given: dict[str, Any] = {
        "env_name": env_name,
        "env_user": env_user,
        "env_version": env_version,
        "partition": partition,
        "profile": profile,
        "pxe_files": pxe_files,
        "block_device": block_device,
        "key": key,
    }
    _check_options(kind, given)
    body: dict[str, Any] = {"kind": kind, "level": level, "force": force}
    if kind == "recorded_env":
        environment: dict[str, Any] = {"name": env_name}
        if env_user is not None:
            environment["user"] = env_user
        if env_version is not None:
            environment["version"] = env_version
        body.update(environment=environment, partition=partition)
    if block_device is not None:
        body["block_device"] = block_device
    if key is not None:
        body["authorized_keys"] = _keys(key)
    targets = power.Targets(server, nodefile, machines, json_output, ok_file, ko_file)
    if kind in ("deploy_env", "recorded_env"):
        sys.exit(power.run_operation(body, targets))
    uploads: dict[str, Path] = {}
    if kind == "set_pxe":
        assert profile is not None
        body["profile"] = read_profile(profile)
        uploads = pxe_files_of(pxe_files)
    sys.exit(power.run("/v1/reboots", body, targets, uploads=uploads, profile_file=profile))


def _check_options(kind: str, given: dict[str, Any]) -> None:
    """Options of another kind, and missing ones, are usage errors (exit 2)."""
    for key, (option, wanted) in _ONLY_WITH.items():
        if given[key] not in (None, ()) and kind not in wanted.split(" or "):
            raise UsageProblem(f"{option} goes with -r {wanted}, not -r {kind}")
    if kind == "recorded_env":
        missing = [o for k, o in (("env_name", "-e ENV"), ("partition", "-p PART")) if not given[k]]
        if missing:
            raise UsageProblem(
                f"-r recorded_env needs {' and '.join(missing)}: the environment deployed on "
                "the nodes and its partition"
            )
    if kind == "set_pxe" and given["profile"] is None:
        raise UsageProblem("-r set_pxe needs -w FILE: the PXE profile to write for the nodes")


def _keys(key: str) -> str:
    """The public keys of ``-k``, found as kadeploy's -k finds them."""
    path = key_file_of(key)
    assert path is not None
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageProblem(f"-k {path}: cannot read the keys: {exc}") from None


def read_profile(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageProblem(f"{path}: cannot read the PXE profile: {exc.strerror}") from None
    if len(data) > MAX_PROFILE_BYTES:
        raise UsageProblem(
            f"{path}: {len(data)} bytes; a PXE profile may have at most {MAX_PROFILE_BYTES}"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageProblem(
            f"{path}: not a text file (byte {exc.start} is not UTF-8); -w takes a pxelinux "
            "profile, put binary files on the TFTP server with -x"
        ) from None
    if not text.strip():
        raise UsageProblem(f"{path}: empty PXE profile")
    return text


def pxe_files_of(values: tuple[str, ...]) -> dict[str, Path]:
    """``-x`` values (repeatable, comma lists) -> {name on the server: local path}."""
    files: dict[str, Path] = {}
    for value in values:
        for item in filter(None, (v.strip() for v in value.split(","))):
            path = Path(item)
            wrong = check_file_name(path.name)
            if wrong is not None:  # as the server would (before any upload)
                raise UsageProblem(f"-x {item}: {wrong}; the file goes under FILES_PREFIX")
            if not path.is_file():
                raise UsageProblem(f"-x {item}: no such file")
            if path.name in files:
                raise UsageProblem(f"-x {item}: two files named {path.name}")
            files[path.name] = path
    return files
