"""``--netns``: one network namespace per node on bridge ``kdtb0``, links shaped with ``tc``.

Node ``i`` gets namespace ``kdtb-node-i``, a veth pair ``kdtbh<i>`` (host, in the bridge) /
``eth0`` (node, ``198.18.0.(i+1)/15``), and ``tc qdisc tbf rate R burst 256kb latency 20ms``
on both ends (the burst must exceed veth's 64 KiB packets; see measured-facts). The bridge
holds ``198.18.0.1/15`` on the host side. Everything is named ``kdtb*`` so ``down`` finds it.

VLANs (KaVLAN, ``kadeploy --vlan``): VLAN 1 is bridge ``kdtb0``, which holds the host's
address; VLAN ID is bridge ``kdtbvlan<ID>``, made when first used, with no host address.
:func:`set_port_vlan` moves a node's host-side veth into the bridge of its VLAN: it then
no longer reaches the host nor the nodes of VLAN 1 (one L2 domain per VLAN, what an access
port on VLAN ID gives). One bridge per VLAN rather than ``vlan_filtering`` on ``kdtb0``:
kernels built without CONFIG_BRIDGE_VLAN_FILTERING refuse that ("Operation not supported",
the case of the machine this was written on). :func:`vlan_namespace` makes namespace
``kdtb-vlan-<ID>`` on VLAN ID at ``198.19.<ID / 256>.<ID % 256>/15``, from which the nodes
moved there are reached; one per VLAN id on the machine, shared by the testbeds.
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kadeploy_testbed.layout import BRIDGE, BRIDGE_ADDRESS, NETNS_PREFIX, NETNS_PREFIXLEN, NodeSpec

logger = logging.getLogger(__name__)


class NetnsError(Exception):
    """A namespace, link or qdisc could not be set up."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["ip", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False
    )
    if check and result.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def _tc(*args: str, netns: str | None = None) -> None:
    argv = ["tc", *args] if netns is None else ["ip", "netns", "exec", netns, "tc", *args]
    result = subprocess.run(
        argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False
    )
    if result.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {result.stderr.strip()}")


def ensure_bridge() -> None:
    if _ip("link", "show", BRIDGE, check=False).returncode != 0:
        _ip("link", "add", BRIDGE, "type", "bridge")
        _ip("addr", "add", f"{BRIDGE_ADDRESS}/{NETNS_PREFIXLEN}", "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")


DEFAULT_VLAN = 1
"""The default VLAN: bridge ``kdtb0``, the host's address and every node at first."""
MAX_VLAN = 4094
VLAN_NETNS_PREFIX = f"{NETNS_PREFIX}vlan-"
VLAN_BRIDGE_PREFIX = "kdtbvlan"


def vlan_bridge(vlan: int) -> str:
    """The bridge standing for VLAN ``vlan``."""
    return BRIDGE if vlan == DEFAULT_VLAN else f"{VLAN_BRIDGE_PREFIX}{vlan}"


def _ensure_vlan_bridge(vlan: int) -> str:
    if vlan == DEFAULT_VLAN:
        ensure_bridge()
        return BRIDGE
    bridge = vlan_bridge(vlan)
    if _ip("link", "show", bridge, check=False).returncode != 0:
        _ip("link", "add", bridge, "type", "bridge")
    _ip("link", "set", bridge, "up")
    return bridge


def port_vlan(port: str) -> int | None:
    """The VLAN of bridge port ``port`` (None: in no testbed bridge)."""
    try:
        master = Path(f"/sys/class/net/{port}/master").resolve().name
    except OSError:
        return None
    if master == BRIDGE:
        return DEFAULT_VLAN
    number = master.removeprefix(VLAN_BRIDGE_PREFIX)
    if master.startswith(VLAN_BRIDGE_PREFIX) and number.isdigit():
        return int(number)
    return None


def set_port_vlan(port: str, vlan: int) -> None:
    """Move bridge port ``port`` onto VLAN ``vlan`` (into that VLAN's bridge), then drop the
    bridge it left if no port remains in it."""
    if not 1 <= vlan <= MAX_VLAN:
        raise NetnsError(f"VLAN {vlan}: expected an id from 1 to {MAX_VLAN}")
    before = port_vlan(port)
    _ip("link", "set", port, "master", _ensure_vlan_bridge(vlan))
    if before is not None and before != vlan:
        _drop_empty_vlan_bridge(before)
    logger.info("port %s on VLAN %d", port, vlan)


def _drop_empty_vlan_bridge(vlan: int) -> bool:
    """Delete VLAN ``vlan``'s bridge if it exists and holds no port (never ``kdtb0``)."""
    bridge = vlan_bridge(vlan)
    ports = Path(f"/sys/class/net/{bridge}/brif")
    if vlan == DEFAULT_VLAN or not ports.is_dir() or any(ports.iterdir()):
        return False
    _ip("link", "delete", bridge, check=False)
    return True


@dataclass(frozen=True, slots=True)
class VlanNamespace:
    """A namespace with one port on a VLAN of the bridge: a host of that VLAN."""

    vlan: int
    name: str
    address: str
    port: str
    """The host end of its veth pair, in the bridge."""


def vlan_namespace_of(vlan: int) -> VlanNamespace:
    """Names and address of VLAN ``vlan``'s namespace (made or not)."""
    return VlanNamespace(
        vlan=vlan,
        name=f"{VLAN_NETNS_PREFIX}{vlan}",
        address=f"198.19.{vlan // 256}.{vlan % 256}",
        port=f"kdtbv{vlan}",
    )


def vlan_namespace(vlan: int) -> VlanNamespace:
    """VLAN ``vlan``'s namespace, made if missing (idempotent)."""
    if not 2 <= vlan <= MAX_VLAN:
        raise NetnsError(f"VLAN {vlan}: expected an id from 2 to {MAX_VLAN} (1 is the host's)")
    space = vlan_namespace_of(vlan)
    if space.name in leftover_namespaces():
        return space
    peer = f"kdtbw{vlan}"
    _ip("netns", "add", space.name)
    _ip("link", "add", space.port, "type", "veth", "peer", "name", peer)
    _ip("link", "set", peer, "netns", space.name)
    _ip("-n", space.name, "link", "set", peer, "name", "eth0")
    _ip("-n", space.name, "addr", "add", f"{space.address}/{NETNS_PREFIXLEN}", "dev", "eth0")
    _ip("-n", space.name, "link", "set", "lo", "up")
    _ip("-n", space.name, "link", "set", "eth0", "up")
    _ip("link", "set", space.port, "master", _ensure_vlan_bridge(vlan))
    _ip("link", "set", space.port, "up")
    return space


def remove_vlan_namespace(name: str) -> list[str]:
    """Delete VLAN namespace ``name`` and its port; what was there."""
    removed = []
    if name in leftover_namespaces():
        _ip("netns", "delete", name, check=False)
        removed.append(f"netns {name}")
    number = name.removeprefix(VLAN_NETNS_PREFIX)
    port = f"kdtbv{number}"
    if port in leftover_links():
        _ip("link", "delete", port, check=False)
        removed.append(f"link {port}")
    if number.isdigit() and _drop_empty_vlan_bridge(int(number)):
        removed.append(f"link {vlan_bridge(int(number))}")
    return removed


def _shape(node: NodeSpec, rate: str, verb: str) -> None:
    spec = ["root", "tbf", "rate", rate, "burst", "256kb", "latency", "20ms"]
    _tc("qdisc", verb, "dev", node.veth_host, *spec)
    _tc("qdisc", verb, "dev", "eth0", *spec, netns=node.netns)


def setup_node(node: NodeSpec, rate: str) -> None:
    """Create the node's namespace and link (idempotent after a teardown)."""
    assert node.netns is not None
    ensure_bridge()
    teardown_node(node)
    _ip("netns", "add", node.netns)
    _ip("link", "add", node.veth_host, "type", "veth", "peer", "name", node.veth_node)
    _ip("link", "set", node.veth_node, "netns", node.netns)
    _ip("-n", node.netns, "link", "set", node.veth_node, "name", "eth0")
    _ip("-n", node.netns, "addr", "add", f"{node.address}/{NETNS_PREFIXLEN}", "dev", "eth0")
    _ip("-n", node.netns, "link", "set", "lo", "up")
    _ip("-n", node.netns, "link", "set", "eth0", "up")
    _ip("-n", node.netns, "route", "add", "default", "via", BRIDGE_ADDRESS)
    _ip("link", "set", node.veth_host, "master", BRIDGE)
    _ip("link", "set", node.veth_host, "up")
    _shape(node, rate, "add")


def set_rate(node: NodeSpec, rate: str) -> None:
    _shape(node, rate, "change")


def teardown_node(node: NodeSpec) -> None:
    if node.netns:
        _ip("netns", "delete", node.netns, check=False)
    _ip("link", "delete", node.veth_host, check=False)


def leftover_namespaces() -> list[str]:
    """Network namespaces named ``kdtb-*`` (scanned from /run/netns)."""
    run = Path("/run/netns")
    if not run.is_dir():
        return []
    return sorted(p.name for p in run.iterdir() if p.name.startswith(NETNS_PREFIX))


def leftover_links() -> list[str]:
    """Links named ``kdtb*`` on the host (bridge and host veth ends)."""
    result = _ip("-o", "link", "show", check=False)
    names = []
    for line in result.stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            name = parts[1].strip().split("@")[0]
            if name.startswith("kdtb"):
                names.append(name)
    return sorted(names)


def sweep(nodes: list[NodeSpec], vlans: list[str] | None = None) -> list[str]:
    """Delete these nodes' namespaces and veths, the VLAN namespaces ``vlans``, and once no
    node uses the bridge, every VLAN namespace and the bridge."""
    removed = []
    present = leftover_namespaces()
    links = leftover_links()
    for node in nodes:
        if node.netns in present:
            _ip("netns", "delete", node.netns, check=False)
            removed.append(f"netns {node.netns}")
        if node.veth_host in links:
            _ip("link", "delete", node.veth_host, check=False)
            removed.append(f"link {node.veth_host}")
    for name in vlans or []:
        removed += remove_vlan_namespace(name)
    remaining = leftover_namespaces()
    if all(name.startswith(VLAN_NETNS_PREFIX) for name in remaining):
        for name in remaining:  # hosts of VLANs of testbeds that are all gone
            removed += remove_vlan_namespace(name)
    for link in leftover_links():  # VLAN bridges whose nodes are gone
        number = link.removeprefix(VLAN_BRIDGE_PREFIX)
        is_vlan = link.startswith(VLAN_BRIDGE_PREFIX) and number.isdigit()
        if is_vlan and _drop_empty_vlan_bridge(int(number)):
            removed.append(f"link {link}")
    if BRIDGE in links and not leftover_namespaces():
        _ip("link", "delete", BRIDGE, check=False)
        removed.append(f"link {BRIDGE}")
    return removed
