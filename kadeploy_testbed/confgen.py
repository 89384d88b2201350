"""The daemon configuration ``up`` writes into ``DIR/conf``: the testbed as a real cluster.

Same structure as the project's ``conf/`` (deploy.conf, clusters/testbed.conf, nodes.conf);
power commands are plain ipmitool calls against each node's BMC and ssh with the deploy key.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import yaml

from kadeploy_core.ranges import RangeError, expand_range
from kadeploy_testbed.layout import (
    BMC_PORT,
    BMC_USER,
    DEFAULT_NAME_FORMAT,
    DEPLOY_PARTITION,
    NODE_DISK_DIR,
    NODE_RUN_DIR,
    PROD_PARTITION,
    SSH_PORT,
    SWAP_PARTITION,
    TMP_PARTITION,
    Layout,
    NodeSpec,
)
from kadeploy_testbed.nodefiles import ensure_host_key

logger = logging.getLogger(__name__)

CLUSTER = "testbed"


SOFT_REBOOT = "nohup sh -c 'sleep 1; reboot' </dev/null >/dev/null 2>&1 &"
"""The remote command of a soft reboot: it answers before the node goes down, so ssh reports
success instead of the connection dropping under it (exit 255, read as a failed reboot)."""


def _ipmitool(*command: str) -> list[str]:
    return [
        "ipmitool", "-I", "lanplus", "-H", "{bmc}", "-p", str(BMC_PORT), "-U", "{ipmi_user}",
        "-f", "{ipmi_password_file}", *command,
    ]  # fmt: skip


def deploy_conf(layout: Layout, tftp_host: str, tftp_port: int) -> dict[str, Any]:
    return {
        "daemon": {
            "state_dir": str(layout.daemon_state),
            "tftp": {"listen": tftp_host, "port": tftp_port, "root": str(layout.tftp_root)},
        },
        "ssh": {"user": "root", "port": SSH_PORT, "identity_file": str(layout.deploy_key)},
        "vars": {"ipmi_user": BMC_USER, "ipmi_password_file": str(layout.ipmi_password)},
        "power": {
            "command_timeout": 30,
            "reboot_soft": [
                "ssh",
                "-i",
                "{ssh_key}",
                "-p",
                "{ssh_port}",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "ConnectTimeout=10",
                "{ssh_user}@{address}",
                SOFT_REBOOT,
            ],
            "reboot_hard": _ipmitool("chassis", "power", "cycle"),
            "reboot_very_hard": _ipmitool("chassis", "power", "reset"),
            "power_on": _ipmitool("chassis", "power", "on"),
            "power_off": _ipmitool("chassis", "power", "off"),
            "power_status": _ipmitool("chassis", "power", "status"),
        },
        "boot": {
            "deploy_kernel": "kernels/deploy-vmlinuz",
            "deploy_initrd": "kernels/deploy-initrd.img",
            "deploy_kernel_params": "console=ttyS0 quiet",
            "prod_boot": "chain",
            "check_interval": 1,
            # The deploy envs' one host key (kadeploy_testbed/nodefiles.py): pinned.
            "deploy_host_key_file": str(layout.deploy_host_pubkey),
            # The deploy env's sshd reads the node's private copy (nodefiles.sshd_config).
            "deploy_authorized_keys": f"{NODE_RUN_DIR}/authorized_keys",
        },
        # Emulated nodes boot in about a second: tighter timeouts than on hardware.
        "automata": {
            "macrosteps": {
                "SetDeploymentEnv": [{"type": "untrusted", "retries": 2, "timeout": 120}],
                "BroadcastEnv": [
                    {"type": "chain", "retries": 2, "timeout": "120 + 10 * n"},
                    {"type": "direct", "retries": 1, "timeout": "120 + 30 * n"},
                ],
                "BootNewEnv": [
                    {"type": "kexec", "retries": 0, "timeout": 60},
                    {"type": "classical", "retries": 1, "timeout": 120},
                    {"type": "hard_reboot", "retries": 1, "timeout": 120},
                ],
            }
        },
    }


def cluster_conf() -> dict[str, Any]:
    return {
        "disk": {
            "block_device": f"{NODE_DISK_DIR}/sda",
            "partition_device": "{block_device}{partition}",
            "deploy_partition": DEPLOY_PARTITION,
            "prod_partition": PROD_PARTITION,
            "swap_partition": SWAP_PARTITION,
            "tmp_partition": TMP_PARTITION,
            "filesystem": "ext4",
        }
    }


def _entry(node: NodeSpec) -> dict[str, Any]:
    return {"cluster": CLUSTER, "address": node.address, "mac": node.mac, "bmc": node.bmc}


def _range_entry(nodes: list[NodeSpec], name_format: str) -> tuple[str, dict[str, Any]] | None:
    """One nodes.conf range entry standing for ``nodes`` (numbered in a row), or None when a
    range cannot say it: names, addresses, MACs and BMCs must each expand to the nodes'
    own, in order (MACs are hex, ranges decimal: nodes 10-15 end in 0a-0f, no range)."""
    if len(nodes) < 2:
        return None
    first, last = nodes[0], nodes[-1]
    base = first.index - 1  # the position n of a node is index - base, when they are in a row
    prefix, first_octet = first.address.rsplit(".", 1)
    last_octet = last.address.rsplit(".", 1)[1]
    try:
        # Only one of {i} and {n} may be written as a range (one [...] group per name).
        key = name_format.format(
            i=f"[{first.index}-{last.index}]", n=f"[{first.index - base}-{last.index - base}]"
        )
        entry = {
            "cluster": CLUSTER,
            "address": f"{prefix}.[{first_octet}-{last_octet}]",
            "mac": f"{first.mac.rsplit(':', 1)[0]}:[{first.index:02x}-{last.index:02x}]",
            "bmc": f"127.0.3.[{first.index}-{last.index}]",
        }
        stands_for = {
            "name": expand_range(key),
            "address": expand_range(entry["address"]),
            "mac": expand_range(entry["mac"]),
            "bmc": expand_range(entry["bmc"]),
        }
    except (RangeError, ValueError, KeyError):
        return None
    for field, values in stands_for.items():
        if values != [getattr(node, field) for node in nodes]:
            return None
    return key, entry


def nodes_conf(nodes: list[NodeSpec], name_format: str = DEFAULT_NAME_FORMAT) -> dict[str, Any]:
    """With names of another format than ``node-{i}``, one range entry for all the nodes when
    a range can stand for them (``griffon-[1-4].nancy.grid5000.fr``, as a site writes it).
    Else one range entry for the nodes up to 9 (their MAC's last byte reads the same in hex
    and decimal) and one entry per node after that, which tests and benches edit by name."""
    whole = _range_entry(nodes, name_format) if name_format != DEFAULT_NAME_FORMAT else None
    if whole is not None:
        return {whole[0]: whole[1]}
    entries: dict[str, Any] = {}
    low = [n for n in nodes if n.index <= 9]
    found = _range_entry(low, name_format)
    if found is not None:
        entries[found[0]] = found[1]
    rest = nodes[len(low) :] if found is not None else nodes
    for node in rest:
        entries[node.name] = _entry(node)
    return entries


def vlan_conf(layout: Layout) -> dict[str, Any]:
    """KaVLAN of a ``--netns`` testbed: ``kadeploy-testbed vlan NODE ID`` moves the node's
    link onto VLAN ID of the bridge (run by this very interpreter: no PATH needed)."""
    command = [sys.executable, "-m", "kadeploy_testbed.cli", "vlan", "--dir", str(layout.root)]
    return {"switch": [*command, "{node}", "{vlan}"], "command_timeout": 30}


def _dump(path: Path, header: str, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)
    path.write_text(header + text, encoding="utf-8")


def write_conf(
    layout: Layout,
    nodes: list[NodeSpec],
    tftp_host: str,
    tftp_port: int,
    *,
    name_format: str = DEFAULT_NAME_FORMAT,
    netns: bool = False,
) -> None:
    """Write ``DIR/conf`` for a daemon driving this testbed (and the deploy env host key it
    pins, made once per testbed); with ``netns``, nodes can change VLAN (``vlan.switch``)."""
    conf = layout.conf_dir
    layout.root.mkdir(parents=True, exist_ok=True)
    ensure_host_key(layout.deploy_host_key, regenerate=False)
    settings = deploy_conf(layout, tftp_host, tftp_port)
    if netns:
        settings["vlan"] = vlan_conf(layout)
    _dump(
        conf / "deploy.conf",
        "# Written by kadeploy-testbed up: a daemon configuration for this testbed.\n",
        settings,
    )
    _dump(
        conf / "clusters" / f"{CLUSTER}.conf",
        "# Cluster of emulated nodes: disks are loop devices seen at /dev/testbed/sda*.\n",
        cluster_conf(),
    )
    _dump(
        conf / "nodes.conf",
        "# The testbed's nodes: address, MAC and BMC of each.\n",
        nodes_conf(nodes, name_format),
    )
