"""``kareboot3``: Kadeploy3's kareboot3 on kadeployd's ``/v1/reboots``, with Kadeploy3's node
lists (``The reboot operation is successful on nodes``).

``-r simple`` (default) and ``set_pxe`` answer when the nodes' commands ended; ``deploy_env``
and ``recorded_env`` are operations followed like a deployment (``--no-wait`` prints their
``ID URL``). ``--set-pxe-pattern`` is done here: the nodes are grouped by their value, one
``set_pxe`` request per group with ``NODE_SINGULARITY`` replaced. ``-b``, ``--vlan`` and
``--reboot-classical-timeout`` are the reboot's ``block_device``, ``vlan`` and
``timeout_reboot_classical`` (taken by deploy_env and recorded_env; the server refuses the last
two, naming the field, for the kinds that only run the power commands, where Kadeploy3 would
switch the VLAN and wait; ``-b`` is not sent with them, as Kadeploy3 uses the block device only
to boot a partition). ``-k`` (deploy_env only, as
in Kadeploy3) sends the keys as ``authorized_keys``, read as kadeploy3 reads them; ``-c`` is
``check_destructive`` of a recorded_env reboot (Kadeploy3 ignores it for the other kinds).
"""

from __future__ import annotations

import logging
from typing import Any

import click

from kadeploy_cli.client import Client
from kadeploy_cli.errors import ApiFailure
from kadeploy_cli.k3.common import (
    CONTACT,
    CONTEXT,
    K3Command,
    K3Error,
    Session,
    generic_options,
    nodes_of,
)
from kadeploy_cli.k3.pxe import SINGULARITY, pxe_options, read_pxe_options
from kadeploy_cli.k3.workflow import (
    Outcome,
    Printer,
    follow,
    run_everywhere,
    start_workflow_options,
    started,
    workflow_options,
)
from kadeploy_cli.kadeploy import DEFAULT_KEY, key_file_of, located_failure
from kadeploy_cli.power import LONG_WAIT
from kadeploy_cli.uploads import deleted_on_failure
from kadeploy_core.nodelist import NodeRef

logger = logging.getLogger(__name__)

OPERATION = "Reboot operation"
KINDS = ["set_pxe", "simple", "deploy_env", "recorded_env"]
FIELDS = {
    "block_device": "block_device",
    "vlan": "vlan",
    "reboot_classical_timeout": "timeout_reboot_classical",
}
"""Options sent as they are, under the reboot API's names."""


@click.command("kareboot3", cls=K3Command, context_settings=CONTEXT, epilog=CONTACT)
@generic_options
@workflow_options
@click.option("-b", "--block-device", metavar="BLOCKDEVICE", help="Specify the block device to use")
@click.option(
    "-c",
    "--check-destructive-tag",
    "check_destructive",
    is_flag=True,
    help="Check if some nodes was deployed with an environment that have the destructive tag",
)
@click.option("-e", "--env-name", metavar="ENVNAME", help="Name of the recorded environment")
@click.option(
    "-k",
    "--key",
    is_flag=False,
    flag_value=DEFAULT_KEY,
    metavar="[FILE]",
    help="Public key to copy in the root's authorized_keys",
)
@click.option(
    "-l",
    "--op-level",
    "level",
    type=click.Choice(["soft", "hard", "very_hard"], case_sensitive=False),
    metavar="VALUE",
    help="Operation's level (soft, hard, very_hard)",
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
    "--reboot-kind",
    "kind",
    type=click.Choice(KINDS, case_sensitive=False),
    default="simple",
    metavar="REBOOT_KIND",
    help="Specify the reboot kind (set_pxe, simple, deploy_env, recorded_env)",
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
    "--reboot-classical-timeout",
    metavar="VALUE",
    help="Overload the default timeout for classical reboots",
)
@click.option(
    "--secure/--no-secure",
    default=False,
    help="Use a secure connection to export files to the server (files go through the API)",
)
def main(**options: Any) -> int:
    """Reboot nodes, as Kadeploy3's kareboot3."""
    start_workflow_options(options)
    session = Session.open(options)
    session.answer_generic(options)
    refs = nodes_of(options)
    kind = options["kind"].lower()
    _check(kind, options)
    pxe = read_pxe_options(options) if kind == "set_pxe" else None
    if options["dry_run"]:
        return 0
    body: dict[str, Any] = {"kind": kind, "force": options["force"]}
    if options["level"]:
        body["level"] = options["level"].lower()
    body.update({field: options[key] for key, field in FIELDS.items() if options[key] is not None})
    if kind in ("simple", "set_pxe"):  # Kadeploy3 boots no partition of it there
        body.pop("block_device", None)
    if options["key"] is not None:
        body["authorized_keys"] = _keys(options["key"])
    if kind == "recorded_env":
        environment = {"name": options["env_name"]}
        if options["env_user"]:
            environment["user"] = options["env_user"]
        if options["env_version"] is not None:
            environment["version"] = options["env_version"]
        body.update(environment=environment, partition=options["partition"])
        if options["check_destructive"]:  # Kadeploy3 checks it for recorded_env only
            body["check_destructive"] = True

    def run_one(client: Client, nodes: list[NodeRef], printer: Printer) -> Outcome | None:
        if kind in ("deploy_env", "recorded_env"):
            operation = _post(client, body, nodes)
            if not started(client, operation, options, printer):
                return None
            return follow(
                client,
                OPERATION,
                operation,
                [r.name for r in nodes],
                options=options,
                printer=printer,
            )
        printer.line(f"{OPERATION} started")
        results: list[dict[str, Any]] = []
        for group, profile in _groups(nodes, pxe):
            results += _reboot(client, body, group, profile, pxe)
        printer.line(f"{OPERATION} done\n")
        return Outcome(
            ok=[r["node"] for r in results if r["ok"]],
            ko=[(r["node"], r["message"]) for r in results if not r["ok"]],
        )

    return run_everywhere(session, refs, OPERATION, options, run_one)


def _check(kind: str, options: dict[str, Any]) -> None:
    """Kadeploy3's checks (exit 1), then what kadeployd cannot do."""
    if kind == "set_pxe" and not options["pxe_profile"]:
        raise K3Error("The set_pxe reboot must be used with the -w option")
    if kind == "recorded_env":
        if not options["env_name"]:
            raise K3Error(
                "An environment must be specified must be with the recorded_env kind of reboot"
            )
        if options["partition"] is None:
            raise K3Error(
                "A partition number must be specified must be with the recorded_env kind of reboot"
            )
    for key, flag in (("env_name", "-e"), ("env_user", "-u"), ("env_version", "--env-version")):
        if options[key] is not None and kind != "recorded_env":
            raise K3Error(
                f"The {flag} option can be only used with the recorded_env kind of reboot"
            )
    if options["key"] is not None and kind != "deploy_env":
        raise K3Error("The -k option can be only used with the deploy_env reboot kind")
    if kind != "set_pxe" and (options["pxe_profile"] or options["pxe_files"]):
        raise K3Error("-w and -x go with the set_pxe reboot kind")
    if options["breakpoint"] or options["custom_steps"]:
        raise K3Error("--breakpoint and --custom-steps are for deployments")
    if not options["wait"] and kind in ("simple", "set_pxe"):
        raise K3Error(f"--no-wait: kadeployd's {kind} reboots answer when they are done")


def _keys(key: str) -> str:
    """The public keys of ``-k`` (no file: ~/.ssh/authorized_keys, else ~/.ssh/id_*.pub, as
    kadeploy3's -k)."""
    path = key_file_of(key)
    assert path is not None
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise K3Error(f"-k {path}: cannot read the keys: {exc}") from None


def _groups(nodes: list[NodeRef], pxe: dict[str, Any] | None) -> list[tuple[list[NodeRef], str]]:
    """The requests to send as (nodes, profile): one for every node, or with
    ``--set-pxe-pattern`` one per value of ``NODE_SINGULARITY`` (the profile substituted)."""
    if pxe is None:
        return [(nodes, "")]
    singularities: dict[str, str] | None = pxe["singularities"]
    if singularities is None:
        return [(nodes, pxe["profile"])]
    missing = [r.name for r in nodes if r.name not in singularities]
    if missing:
        raise K3Error(f"--set-pxe-pattern: no value for the nodes {', '.join(missing)}")
    groups: dict[str, list[NodeRef]] = {}
    for ref in nodes:
        groups.setdefault(singularities[ref.name], []).append(ref)
    return [(group, pxe["profile"].replace(SINGULARITY, value)) for value, group in groups.items()]


def _reboot(
    client: Client,
    body: dict[str, Any],
    nodes: list[NodeRef],
    profile: str,
    pxe: dict[str, Any] | None,
) -> list[dict[str, Any]]:
    """One ``/v1/reboots`` request; with ``set_pxe``, its own uploads of the ``-x`` files
    (the server takes them for that request; deleted again if it is refused)."""
    if pxe is None:
        results: list[dict[str, Any]] = _post(client, body, nodes)
        return results
    with deleted_on_failure(client) as made:
        files: dict[str, str] = {}
        for name, local in pxe["files"].items():
            files[name] = str(client.upload(local, name)["id"])
            made.append(files[name])
        results = _post(client, {**body, "profile": profile, "files": files}, nodes)
    return results


def _post(client: Client, body: dict[str, Any], nodes: list[NodeRef]) -> Any:
    try:
        return client.post(
            "/v1/reboots", {**body, "nodes": [r.name for r in nodes]}, timeout=LONG_WAIT
        )
    except ApiFailure as exc:
        raise located_failure(exc, nodes) from None
