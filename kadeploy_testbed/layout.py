"""Names, addresses and paths of a testbed: one place that says where everything lives.

Node ``i`` (1-based) is ``node-i``; on loopback it answers on ``127.0.2.i:22``; with ``--netns``
it lives in network namespace ``kdtb-node-i`` at ``198.18.0.(i+1)`` behind bridge ``kdtb0``
(host side ``198.18.0.1/15``). Its MAC is ``02:00:00:00:02:<i in hex>``; its BMC listens on
``127.0.3.i:623``. Only its name may be chosen (``--name-format``, e.g.
``griffon-{n}.nancy.grid5000.fr`` as Grid'5000 names its nodes): everything else derives from
``i``, so two testbeds with distinct numbers never share a namespace, address or directory.
"""

from __future__ import annotations

import logging
import re
import string
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

DEFAULT_NAME_FORMAT = "node-{i}"
NAME_FIELDS = {"i": "the node's number", "n": "its position in this testbed, from 1"}
"""The fields a name format may use."""
MAX_NAME_LENGTH = 64
"""A node sets its name as its hostname, which Linux limits to 64 bytes."""
_NODE_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
"""What the daemon accepts as a node name (kadeploy_core/nodelist.py)."""


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


def name_format_problem(name_format: str) -> str | None:
    """Why ``name_format`` cannot name a testbed's nodes, or None when it can: it must use
    ``{i}`` or ``{n}`` (and no other field) and give host names such as
    ``griffon-1.nancy.grid5000.fr``."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(name_format) if f is not None]
    except ValueError as exc:
        return f"{name_format!r}: {exc}"
    unknown = sorted(set(fields) - set(NAME_FIELDS))
    if unknown:
        valid = ", ".join(f"{{{k}}} ({v})" for k, v in NAME_FIELDS.items())
        return f"{name_format!r}: unknown field {{{unknown[0]}}}; valid fields: {valid}"
    if not fields:
        return f"{name_format!r} names every node alike: use {{i}} or {{n}}, e.g. node-{{i}}"
    try:
        sample = name_format.format(i=MAX_NODES, n=MAX_NODES)
    except ValueError as exc:  # a bad format spec, such as {i:x2}
        return f"{name_format!r}: {exc}"
    if not _NODE_NAME.fullmatch(sample) or len(sample) > MAX_NAME_LENGTH:
        return (
            f"{name_format!r} gives names such as {sample!r}: a node name is at most "
            f"{MAX_NAME_LENGTH} letters, digits, '.', '_' or '-', starting and ending with a "
            "letter or digit"
        )
    return None


def node_spec(
    index: int, *, netns: bool, name_format: str = DEFAULT_NAME_FORMAT, first: int = 1
) -> NodeSpec:
    """The fixed identity of node ``index`` (1-based) of a testbed whose first node is
    ``first``; only its name follows ``name_format`` (``{i}``: ``index``, ``{n}``: its
    position from 1)."""
    if not 1 <= index <= MAX_NODES:
        raise ValueError(f"node index {index} out of range 1..{MAX_NODES}")
    return NodeSpec(
        index=index,
        name=name_format.format(i=index, n=index - first + 1),
        address=f"198.18.0.{index + 1}" if netns else f"127.0.2.{index}",
        mac=f"02:00:00:00:02:{index:02x}",
        bmc=f"127.0.3.{index}",
        netns=f"{NETNS_PREFIX}node-{index}" if netns else None,
    )


def node_specs(
    count: int, *, netns: bool, first: int = 1, name_format: str = DEFAULT_NAME_FORMAT
) -> list[NodeSpec]:
    """Specs of nodes first..first+count-1 (``first`` lets two testbeds share the machine)."""
    return [
        node_spec(i, netns=netns, name_format=name_format, first=first)
        for i in range(first, first + count)
    ]


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

    @property
    def nodefile(self) -> Path:
        """The nodes' names, one a line, as OAR's ``$OAR_NODEFILE`` (``kadeploy -f``)."""
        return self.root / "nodefile"

    def node_dir(self, name: str) -> Path:
        return self.root / "nodes" / name

    def disk_dir(self, name: str) -> Path:
        return self.node_dir(name) / "disk"

    def disk_file(self, name: str, partition: int | None = None) -> Path:
        """``sda`` (partition None) or ``sdaN`` of node ``name`` on the host."""
        suffix = "" if partition is None else str(partition)
        return self.disk_dir(name) / f"sda{suffix}"
