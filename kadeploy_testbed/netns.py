"""``--netns``: one network namespace per node on bridge ``kdtb0``, links shaped with ``tc``.

Node ``i`` gets namespace ``kdtb-node-i``, a veth pair ``kdtbh<i>`` (host, in the bridge) /
``eth0`` (node, ``198.18.0.(i+1)/15``), and ``tc qdisc tbf rate R burst 256kb latency 20ms``
on both ends (the burst must exceed veth's 64 KiB packets; see measured-facts). The bridge
holds ``198.18.0.1/15`` on the host side. Everything is named ``kdtb*`` so ``down`` finds it.
"""

from __future__ import annotations

import logging
import subprocess
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


def sweep(nodes: list[NodeSpec]) -> list[str]:
    """Delete these nodes' namespaces and veths, and the bridge once no node uses it."""
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
    if BRIDGE in links and not leftover_namespaces():
        _ip("link", "delete", BRIDGE, check=False)
        removed.append(f"link {BRIDGE}")
    return removed
