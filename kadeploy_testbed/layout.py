"""Names, addresses and paths of a testbed: one place that says where everything lives.

Node ``i`` (1-based) is ``node-i``; on loopback it answers on ``127.0.2.i:22``; with ``--netns``
it lives in network namespace ``kdtb-node-i`` at ``198.18.0.(i+1)`` behind bridge ``kdtb0``
(host side ``198.18.0.1/15``). Its MAC is ``02:00:00:00:02:<i in hex>``; its BMC listens on
``127.0.3.i:623``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

MAX_NODES = 250
"""Addresses are 127.0.2.i / 127.0.3.i / 198.18.0.(i+1): one octet each."""

NETNS_PREFIX = "kdtb-"
"""Every network namespace, bridge and veth of a testbed starts with this (``down`` scans it)."""
BRIDGE = "kdtb0"
BRIDGE_ADDRESS = "198.18.0.1"
NETNS_PREFIXLEN = 15

PROD_PARTITION = 2
DEPLOY_PARTITION = 3
SWAP_PARTITION = 1
TMP_PARTITION = 4

DEFAULT_DISK_MB: dict[int, int] = {1: 64, 2: 256, 3: 1024, 4: 256}
"""Sparse sizes of sda1..sda4 in MiB; ``sda`` itself is a small file (the "MBR")."""
WHOLE_DISK_MB = 1

NODE_DISK_DIR = "/dev/testbed"
"""Where a node sees its disk files (bind mounts inside its mount namespace)."""
NODE_RUN_DIR = "/run/testbed"
"""Inside a node: private tmpfs holding its sshd config, keys, cmdline and chroot mount point."""
NODE_CHROOT = f"{NODE_RUN_DIR}/root"
"""Inside a node: where a deployed env's partition is mounted; every component is root-owned
and not group/world-writable (``/`` , ``/run`` tmpfs 0755, ``/run/testbed`` 0755), as sshd's
ChrootDirectory demands."""

SSH_PORT = 22
BMC_PORT = 623
BMC_USER = "admin"


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """Identity and addresses of one emulated node."""

    index: int
    name: str
    address: str
    mac: str
    bmc: str
    netns: str | None

    @property
    def veth_host(self) -> str:
        """Host end of the node's veth pair (``--netns`` only)."""
        return f"kdtbh{self.index}"

    @property
    def veth_node(self) -> str:
        """Node end of the veth pair before it moves into the namespace and becomes eth0."""
        return f"kdtbn{self.index}"


def node_spec(index: int, *, netns: bool) -> NodeSpec:
    """The fixed identity of node ``index`` (1-based)."""
    if not 1 <= index <= MAX_NODES:
        raise ValueError(f"node index {index} out of range 1..{MAX_NODES}")
    return NodeSpec(
        index=index,
        name=f"node-{index}",
        address=f"198.18.0.{index + 1}" if netns else f"127.0.2.{index}",
        mac=f"02:00:00:00:02:{index:02x}",
        bmc=f"127.0.3.{index}",
        netns=f"{NETNS_PREFIX}node-{index}" if netns else None,
    )


def node_specs(count: int, *, netns: bool, first: int = 1) -> list[NodeSpec]:
    """Specs of nodes first..first+count-1 (``first`` lets two testbeds share the machine)."""
    return [node_spec(i, netns=netns) for i in range(first, first + count)]


@dataclass(frozen=True, slots=True)
class Layout:
    """Paths under a testbed directory."""

    root: Path

    @classmethod
    def at(cls, directory: str | Path) -> Layout:
        """Layout of ``directory`` made absolute (the controller runs with another cwd)."""
        return cls(Path(directory).absolute())

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def control_socket(self) -> Path:
        return self.root / "control.sock"

    @property
    def controller_log(self) -> Path:
        return self.root / "controller.log"

    @property
    def conf_dir(self) -> Path:
        return self.root / "conf"

    @property
    def tftp_root(self) -> Path:
        return self.root / "tftp"

    @property
    def deploy_kernel(self) -> Path:
        """The testbed's reference copy of its deploy kernel (the firmware compares to it)."""
        return self.root / "firmware" / "deploy-vmlinuz"

    @property
    def deploy_initrd(self) -> Path:
        return self.root / "firmware" / "deploy-initrd.img"

    @property
    def deploy_key(self) -> Path:
        return self.root / "id_deploy"

    @property
    def deploy_pubkey(self) -> Path:
        return self.root / "id_deploy.pub"

    @property
    def deploy_host_key(self) -> Path:
        """The deploy env's SSH host key: one per testbed, every node's deploy env boots with
        it, and the daemon's configuration pins its public half (boot.deploy_host_key_file)."""
        return self.root / "deploy_host_key"

    @property
    def deploy_host_pubkey(self) -> Path:
        return self.root / "deploy_host_key.pub"

    @property
    def ipmi_password(self) -> Path:
        return self.root / "ipmi_password"

    @property
    def power_script(self) -> Path:
        """The nodes' own reboot/poweroff/halt/shutdown/systemctl (one dispatching script)."""
        return self.root / "firmware" / "node-power"

    @property
    def daemon_state(self) -> Path:
        return self.root / "daemon"

    def node_dir(self, name: str) -> Path:
        return self.root / "nodes" / name

    def disk_dir(self, name: str) -> Path:
        return self.node_dir(name) / "disk"

    def disk_file(self, name: str, partition: int | None = None) -> Path:
        """``sda`` (partition None) or ``sdaN`` of node ``name`` on the host."""
        suffix = "" if partition is None else str(partition)
        return self.disk_dir(name) / f"sda{suffix}"
