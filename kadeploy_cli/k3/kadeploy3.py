"""``kadeploy3``: Kadeploy3's kadeploy3, option for option, on kadeployd's API.

The request is the native ``kadeploy``'s (kadeploy_cli/kadeploy.py builds it and uploads the
local files), plus the fields of Kadeploy3's deployment options, named as Kadeploy3's API
names them and sent only when given: ``boot_partition`` (-c), ``reformat_tmp`` (-r),
``disable_kexec`` (--no-kexec), ``disable_bootloader_install``,
``disable_disk_partitioning``, ``timeout_reboot_classical``, ``timeout_reboot_kexec``,
``force_steps`` (the raw text; the server parses it), ``pxe`` (``profile``: the text of -w,
``singularities``: {node: value} of --set-pxe-pattern, ``files``: {name: upload id} of -x)
and ``vlan``. Output and exit status: kadeploy_cli/k3/workflow.py.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import click

from kadeploy_cli import custom_steps
from kadeploy_cli.client import Client
from kadeploy_cli.errors import ApiFailure, UsageProblem
from kadeploy_cli.k3.common import (
    CONTACT,
    CONTEXT,
    K3Command,
    K3Error,
    Session,
    generic_options,
    nodes_of,
)
from kadeploy_cli.k3.pxe import pxe_body, pxe_options, read_pxe_options
from kadeploy_cli.k3.workflow import (
    Outcome,
    Printer,
    follow,
    run_everywhere,
    start_workflow_options,
    started,
    workflow_options,
)
from kadeploy_cli.kadeploy import DEFAULT_KEY, key_file_of, located_failure, request_body
from kadeploy_cli.uploads import deleted_on_failure
from kadeploy_core.breakpoint import parse_breakpoint
from kadeploy_core.nodelist import NodeRef
from kadeploy_core.stepnames import UnknownStep

logger = logging.getLogger(__name__)

OPERATION = "Deployment"
FORCE_STEPS = re.compile(
    r"^SetDeploymentEnv\|(?:\w+:\d+:\d+,?)+&BroadcastEnv\|(?:\w+:\d+:\d+,?)+"
    r"&BootNewEnv\|(?:\w+:\d+:\d+,?)+$"
)
"""Kadeploy3's form of ``--force-steps`` (checked by its option parser)."""
FLAGS = ("disable_kexec", "disable_bootloader_install", "disable_disk_partitioning")
TEXTS = {
    "reformat_tmp": "reformat_tmp",
    "reboot_classical_timeout": "timeout_reboot_classical",
    "reboot_kexec_timeout": "timeout_reboot_kexec",
    "force_steps": "force_steps",
    "vlan": "vlan",
}
"""Option -> request field."""


@click.command(
    "kadeploy3",
    cls=K3Command,
    context_settings=CONTEXT,
    epilog=CONTACT,
    no_args_is_help=False,
)
@generic_options
@workflow_options
@click.option(
    "-a", "--env-file", metavar="ENVFILE", help="File containing the environment description"
)
@click.option("-b", "--block-device", metavar="BLOCKDEVICE", help="Specify the block device to use")
@click.option(
    "-c",
    "--boot-partition",
    type=click.IntRange(0, 128),
    metavar="NUMBER",
    help="Specify the number of the partition to boot on (use 0 to boot on the MBR)",
)
@click.option("-e", "--env-name", metavar="ENVNAME", help="Name of the recorded environment")
@click.option(
    "-k",
    "--key",
    is_flag=False,
    flag_value=DEFAULT_KEY,
    metavar="[FILE]",
    help="Public key to copy in the root's authorized_keys, if no argument is specified, "
    "use ~/.ssh/authorized_keys",
)
@click.option(
    "-p",
    "--partition-number",
    "partition",
    type=click.IntRange(1, 128),
    metavar="NUMBER",
    help="Specify the partition number to use",
)
@click.option(
    "-r",
    "--reformat-tmp",
    metavar="FSTYPE",
    help="Reformat the /tmp partition with the given filesystem type (this filesystem need "
    "to be supported by the deployment environment)",
)
@click.option(
    "-u",
    "--env-user",
    metavar="USERNAME",
    help="Specify the user that own the recorded environment",
)
@click.option("--vlan", metavar="VLANID", help="Set the VLAN")
@pxe_options
@click.option(
    "--env-version",
    type=click.IntRange(min=1),
    metavar="NUMBER",
    help="Version number of the recorded environment",
)
@click.option(
    "--no-kexec",
    "disable_kexec",
    is_flag=True,
    help="Disable kexec reboots during the deployment process",
)
@click.option(
    "--disable-bootloader-install",
    is_flag=True,
    help="Disable the automatic installation of a bootloader for a Linux based environnment",
)
@click.option("--disable-disk-partitioning", is_flag=True, help="Disable the disk partitioning")
@click.option(
    "--reboot-classical-timeout",
    metavar="VALUE",
    help="Overload the default timeout for classical reboots (an expression of n, the number "
    "of nodes)",
)
@click.option(
    "--reboot-kexec-timeout",
    metavar="VALUE",
    help="Overload the default timeout for kexec reboots (an expression of n, the number of nodes)",
)
@click.option(
    "--force-steps", metavar="STRING", help="Undocumented, for administration purpose only"
)
@click.option(
    "--secure/--no-secure",
    default=False,
    help="Use a secure connection to export files to the server (files go through the API)",
)
@click.option(
    "--min-deployed-nodes",
    "min_nodes",
    type=click.IntRange(min=1),
    metavar="N",
    help="kadeployd: succeed as soon as N nodes are deployed",
)
def main(**options: Any) -> int:
    """Deploy an environment on nodes, as Kadeploy3's kadeploy3."""
    start_workflow_options(options)
    session = Session.open(options)
    session.answer_generic(options)
    refs = nodes_of(options)
    _check(options)
    key_file = key_file_of(options["key"]) if options["key"] is not None else None
    steps = custom_steps.load(Path(options["custom_steps"])) if options["custom_steps"] else None
    pxe = read_pxe_options(options)
    if options["dry_run"]:
        return 0

    def run_one(client: Client, nodes: list[NodeRef], printer: Printer) -> Outcome | None:
        deployment = _create(client, options, refs=nodes, key_file=key_file, steps=steps, pxe=pxe)
        if not started(client, deployment, options, printer):
            return None
        return follow(
            client, OPERATION, deployment, [r.name for r in nodes], options=options, printer=printer
        )

    return run_everywhere(session, refs, OPERATION, options, run_one)


def _check(options: dict[str, Any]) -> None:
    """Kadeploy3's checks (exit 1), and ours before any upload."""
    if not options["env_name"] and not options["env_file"]:
        raise K3Error("You must choose an environment")
    if options["env_name"] and options["env_file"]:
        raise K3Error("Give one environment: -e ENVNAME or -a ENVFILE, not both")
    if options["pxe_files"] and not options["pxe_profile"]:
        raise K3Error(
            "You must define a PXE boot profile if you want to push some files in the PXE "
            "repository"
        )
    if options["force_steps"] is not None and not FORCE_STEPS.match(options["force_steps"]):
        raise K3Error(
            f"Option parsing error: invalid argument: --force-steps {options['force_steps']}"
        )
    device = options["block_device"]
    if device is not None and not re.fullmatch(r"[\w/]+", device):
        raise K3Error(f"Option parsing error: invalid argument: -b {device}")
    if device is not None and not device.startswith("/dev/"):
        raise K3Error(f"-b {device}: expected a device path under /dev, such as /dev/sdb")
    if options["breakpoint"]:
        try:
            parse_breakpoint(options["breakpoint"])
        except (UnknownStep, ValueError) as exc:
            raise K3Error(f"--breakpoint {options['breakpoint']}: {exc}") from None


def _create(
    client: Client,
    options: dict[str, Any],
    *,
    refs: list[NodeRef],
    key_file: Path | None,
    steps: custom_steps.LocalSteps | None,
    pxe: dict[str, Any] | None,
) -> dict[str, Any]:
    """POST the deployment, its files uploaded (and deleted again if it is refused)."""
    native = {
        "force": options["force"],
        "env_name": options["env_name"],
        "env_user": options["env_user"],
        "env_version": options["env_version"],
        "env_file": Path(options["env_file"]) if options["env_file"] else None,
        "min_nodes": options["min_nodes"],
        "partition": options["partition"],
        "block_device": options["block_device"],
        "breakpoint": options["breakpoint"],
    }
    with deleted_on_failure(client) as made:
        try:
            body = request_body(client, native, refs, key_file, steps, made=made)
        except UsageProblem as exc:
            raise K3Error(exc.format_message()) from None
        body.update(k3_fields(options))
        if pxe is not None:
            body["pxe"] = pxe_body(client, pxe, made)
        try:
            deployment: dict[str, Any] = client.post("/v1/deployments", body)
        except ApiFailure as exc:
            raise located_failure(exc, refs) from None
    return deployment


def k3_fields(options: dict[str, Any]) -> dict[str, Any]:
    """The request fields of Kadeploy3's deployment options that were given."""
    fields: dict[str, Any] = {}
    if options["boot_partition"] is not None:
        fields["boot_partition"] = options["boot_partition"]
    for flag in FLAGS:
        if options[flag]:
            fields[flag] = True
    for option, name in TEXTS.items():
        if options[option] is not None:
            fields[name] = options[option]
    return fields
