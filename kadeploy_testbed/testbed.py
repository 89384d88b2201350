"""The testbed's Python API, used by the CLI and by the pytest fixtures alike.

``up()`` prepares ``DIR`` (keys, IPMI password, deploy kernel, disks, daemon configuration),
starts the controller as a daemon and waits until every node answers SSH in its prod env.
``down()`` stops it and sweeps whatever is left, from the recorded state and by scanning.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kadeploy_testbed import controller, disks, netns
from kadeploy_testbed.confgen import write_conf
from kadeploy_testbed.layout import (
    MAX_NODES,
    NODE_DISK_DIR,
    WHOLE_DISK_MB,
    Layout,
    NodeSpec,
    name_format_problem,
    node_specs,
)
from kadeploy_testbed.nodefiles import make_disk, write_power_script
from kadeploy_testbed.state import TestbedConfig, load_state, record, reset_state, update_state

logger = logging.getLogger(__name__)

REQUIRED_TOOLS = (
    "unshare",
    "nsenter",
    "setsid",
    "sshd",
    "ssh-keygen",
    "ipmitool",
    "losetup",
    "mount",
    "debugfs",
)
NETNS_TOOLS = ("ip", "tc")
UP_TIMEOUT = 120.0


class TestbedError(Exception):
    """The testbed cannot do what was asked; the message says why and what to do."""

    __test__ = False


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds passed; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def ssh_answers(address: str, port: int = 22, timeout: float = 1.0) -> bool:
    """True when an SSH server at ``address:port`` sends its banner."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def _which(tool: str) -> bool:
    # sshd is run by its absolute path (it is often not on a user's PATH).
    return shutil.which(tool) is not None or (tool == "sshd" and Path("/usr/sbin/sshd").exists())


def check_prerequisites(netns_mode: bool) -> None:
    """Fail at once, naming what is missing, when ``up`` cannot work on this machine."""
    missing: list[str] = []
    if os.geteuid() != 0:
        missing.append("root privileges (namespaces, mounts, loop devices and port 22 need root)")
    tools = REQUIRED_TOOLS + (NETNS_TOOLS if netns_mode else ())
    absent = [tool for tool in tools if not _which(tool)]
    if absent:
        missing.append(
            "programs " + ", ".join(absent) + " (Debian packages: util-linux, openssh-server, "
            "openssh-client, ipmitool, mount, e2fsprogs, iproute2)"
        )
    if missing:
        raise TestbedError("kadeploy-testbed up cannot run: missing " + "; ".join(missing))


@dataclass
class Testbed:
    """A running testbed (its directory); methods talk to its controller."""

    __test__ = False

    layout: Layout
    config: TestbedConfig

    @property
    def nodes(self) -> list[NodeSpec]:
        return self.config.specs()

    def node(self, name: str) -> NodeSpec:
        for spec in self.nodes:
            if spec.name == name:
                return spec
        raise TestbedError(f"no node {name!r} in this testbed")

    def _request(self, message: dict[str, Any], timeout: float = 30.0) -> Any:
        try:
            return controller.request(self.layout, message, timeout)
        except controller.RequestError as error:
            raise TestbedError(str(error)) from None

    def status(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._request({"op": "status"})
        return result

    def node_status(self, name: str) -> dict[str, Any]:
        for entry in self.status():
            if entry["name"] == name:
                return entry
        raise TestbedError(f"no node {name!r} in this testbed")

    def power(self, name: str, action: str) -> str:
        return str(self._request({"op": "power", "node": name, "action": action}))

    def fault(self, name: str, kind: str) -> dict[str, Any]:
        result: dict[str, Any] = self._request({"op": "fault", "node": name, "kind": kind})
        return result

    def reset(self, names: list[str] | None = None, timeout: float = 60.0) -> None:
        """Clear faults, put nodes back on the default VLAN (``--netns``) and boot them
        straight back into prod; wait until they answer SSH."""
        if self.config.netns:
            for spec in self.nodes:
                vlan = netns.port_vlan(spec.veth_host)
                moved = vlan is not None and vlan != netns.DEFAULT_VLAN
                if moved and (not names or spec.name in names):
                    netns.set_port_vlan(spec.veth_host, netns.DEFAULT_VLAN)
        reset = self._request({"op": "reset", "nodes": names or []})
        self.wait_env(reset, "prod", timeout)

    def wait_env(self, names: list[str], env: str, timeout: float) -> None:
        """Wait until every node in ``names`` runs ``env`` and answers SSH."""
        specs = {spec.name: spec for spec in self.nodes}

        def ready() -> bool:
            states = {s["name"]: s for s in self.status()}
            return all(
                states[name]["env"] == env and ssh_answers(specs[name].address) for name in names
            )

        if not wait_until(ready, timeout, interval=0.2):
            states = {s["name"]: s["env"] for s in self.status() if s["name"] in names}
            raise TestbedError(
                f"nodes not in env {env!r} answering SSH after {timeout:g} s: {states}; "
                f"see {self.layout.controller_log} and {self.layout.root}/nodes/*/console.log"
            )

    def partition_device(self, name: str, partition: int) -> str:
        """The host block device behind ``/dev/testbed/sdaN`` of node ``name``."""
        backing = str(self.layout.disk_file(name, partition))
        for device in disks.loops_backed_under(self.layout.disk_dir(name)):
            try:
                text = Path(f"/sys/block/{Path(device).name}/loop/backing_file").read_text()
            except OSError:
                continue
            if text.strip() == backing:
                return device
        raise TestbedError(f"{name}: partition {partition} has no loop device (testbed down?)")

    def ssh_argv(self, name: str, *command: str, key: Path | None = None) -> list[str]:
        """An ``ssh`` command line to run ``command`` as root on node ``name``."""
        spec = self.node(name)
        return [
            "ssh", "-i", str(key or self.layout.deploy_key), "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
            "-o", "ConnectTimeout=5", f"root@{spec.address}", *command,
        ]  # fmt: skip

    def set_vlan(self, name: str, vlan: int) -> None:
        """Move node ``name``'s link onto VLAN ``vlan`` of the bridge (``--netns`` only): what
        the site's KaVLAN does when a deployment asks for ``--vlan``."""
        spec = self.node(name)
        if not self.config.netns:
            raise TestbedError("VLANs need a testbed brought up with --netns")
        try:
            netns.set_port_vlan(spec.veth_host, vlan)
        except netns.NetnsError as error:
            raise TestbedError(f"{name}: {error}") from None

    def vlan_namespace(self, vlan: int) -> netns.VlanNamespace:
        """A namespace on VLAN ``vlan`` of the bridge, to reach the nodes moved there; ``down``
        removes it."""
        if not self.config.netns:
            raise TestbedError("VLANs need a testbed brought up with --netns")
        record(self.layout, "vlan_netns", netns.vlan_namespace_of(vlan).name)
        try:
            return netns.vlan_namespace(vlan)
        except netns.NetnsError as error:
            raise TestbedError(str(error)) from None

    def remove_vlan_namespace(self, vlan: int) -> None:
        name = netns.vlan_namespace_of(vlan).name
        netns.remove_vlan_namespace(name)
        update_state(
            self.layout,
            lambda s: s.update(vlan_netns=[n for n in s.get("vlan_netns", []) if n != name]),
        )

    def down(self) -> list[str]:
        return down(self.layout.root)


def _deploy_kernel_bytes(kind: str) -> bytes:
    """Unique bytes standing for the testbed's deploy kernel or initrd."""
    header = f"KADEPLOY-TESTBED {kind} {secrets.token_hex(16)}\n".encode()
    return header + secrets.token_bytes(4096)


def _prepare(layout: Layout, config: TestbedConfig) -> None:
    root = layout.root
    root.mkdir(parents=True, exist_ok=True)
    (root / "firmware").mkdir(exist_ok=True)
    if not layout.deploy_key.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kadeploy-testbed deploy key",
             "-f", str(layout.deploy_key)],
            check=True, stdin=subprocess.DEVNULL, capture_output=True,
        )  # fmt: skip
    if not layout.ipmi_password.exists():
        fd = os.open(layout.ipmi_password, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as stream:
            stream.write(secrets.token_urlsafe(12) + "\n")
    layout.ipmi_password.chmod(0o600)
    kernels = layout.tftp_root / "kernels"
    kernels.mkdir(parents=True, exist_ok=True)
    if not layout.deploy_kernel.exists():
        layout.deploy_kernel.write_bytes(_deploy_kernel_bytes("deploy-vmlinuz"))
        layout.deploy_initrd.write_bytes(_deploy_kernel_bytes("deploy-initrd"))
    shutil.copyfile(layout.deploy_kernel, kernels / "deploy-vmlinuz")
    shutil.copyfile(layout.deploy_initrd, kernels / "deploy-initrd.img")
    profiles = layout.tftp_root / "pxelinux.cfg"
    profiles.mkdir(exist_ok=True)
    default = profiles / "default"
    if not default.exists():
        default.write_text("# kadeploy-testbed: boot the local disk (prod env)\nDEFAULT local\n"
                           "LABEL local\n  LOCALBOOT 0\n")  # fmt: skip
    layout.daemon_state.mkdir(exist_ok=True)
    write_power_script(layout)
    nodes = config.specs()
    for spec in nodes:
        make_disk(layout, spec, config.disk_mb, WHOLE_DISK_MB)
    write_conf(
        layout,
        nodes,
        config.tftp_host,
        config.tftp_port,
        name_format=config.name_format,
        netns=config.netns,
    )
    layout.nodefile.write_text("".join(f"{spec.name}\n" for spec in nodes), encoding="utf-8")
    # Mount point of the nodes' disk tmpfs (mounted only inside node namespaces).
    Path(NODE_DISK_DIR).mkdir(mode=0o755, exist_ok=True)


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (an unreaped child of ours)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _controller_alive(layout: Layout) -> int | None:
    pid = load_state(layout).get("controller_pid")
    if not isinstance(pid, int):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if (
        b"kadeploy_testbed.controller" in cmdline
        and str(layout.root).encode() in cmdline
        and _running(pid)
    ):
        return pid
    return None


def up(
    directory: str | Path,
    config: TestbedConfig,
    *,
    timeout: float = UP_TIMEOUT,
) -> Testbed:
    """Bring up a testbed in ``directory`` and return when every node answers SSH in prod."""
    check_prerequisites(config.netns)
    if config.nodes < 1 or config.first < 1 or config.first + config.nodes - 1 > MAX_NODES:
        raise TestbedError(
            f"nodes {config.first}..{config.first + config.nodes - 1} do not fit: node numbers "
            f"go from 1 to {MAX_NODES} (-n N, --first F)"
        )
    problem = name_format_problem(config.name_format)
    if problem is not None:
        raise TestbedError(f"--name-format {problem}")
    layout = Layout.at(directory)
    if _controller_alive(layout):
        raise TestbedError(
            f"a testbed already runs in {layout.root}; "
            f"run kadeploy-testbed down --dir {layout.root}"
        )
    down(layout.root, quiet=True)
    _prepare(layout, config)
    reset_state(layout, config)
    with layout.controller_log.open("ab") as log:
        # setsid --fork: the controller is a daemon, not our child (no zombie, own session).
        subprocess.run(
            [
                "setsid",
                "--fork",
                sys.executable,
                "-m",
                "kadeploy_testbed.controller",
                str(layout.root),
            ],
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=True,
        )
    testbed = Testbed(layout, config)

    def settled() -> bool:
        state = load_state(layout)
        pid = state.get("controller_pid")
        return bool(state.get("controller_ready")) or (isinstance(pid, int) and not _running(pid))

    wait_until(settled, timeout)
    if not load_state(layout).get("controller_ready"):
        tail = layout.controller_log.read_text(errors="replace").strip().splitlines()[-5:]
        down(layout.root, quiet=True)
        raise TestbedError("the testbed controller did not start:\n  " + "\n  ".join(tail))
    try:
        testbed.wait_env([spec.name for spec in testbed.nodes], "prod", timeout)
    except TestbedError:
        down(layout.root, quiet=True)
        raise
    return testbed


def attach(directory: str | Path) -> Testbed:
    """The testbed running in ``directory``."""
    layout = Layout.at(directory)
    state = load_state(layout)
    if "config" not in state:
        raise TestbedError(f"no testbed in {layout.root} (no state.json); run kadeploy-testbed up")
    return Testbed(layout, TestbedConfig.from_dict(state["config"]))


def _ancestors() -> set[int]:
    pids = set()
    pid = os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return pids


def _processes_referring_to(root: Path) -> list[int]:
    """Processes whose command line names a path under ``root`` (controller, unshare, inits).

    A node's other processes live in its PID namespace and die with its init.
    """
    needle = str(root).encode() + b"/"
    exact = str(root).encode()
    mine = _ancestors()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in mine:
            continue
        try:
            args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(arg == exact or arg.startswith(needle) for arg in args):
            found.append(int(entry))
    return found


def _pids_in(namespaces: set[str]) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") in namespaces:
                    found.append(int(entry))
            except OSError:
                continue
    return found


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root) + "/"
    mounts = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split()
        if len(fields) > 4 and (fields[4] == str(root) or fields[4].startswith(prefix)):
            mounts.append(fields[4])
    return mounts


def _stop_controller(layout: Layout) -> list[str]:
    pid = _controller_alive(layout)
    if pid is None:
        return []
    try:
        controller.request(layout, {"op": "shutdown"}, timeout=10)
    except controller.RequestError:
        os.kill(pid, signal.SIGTERM)
    if not wait_until(lambda: not _running(pid), 60):
        os.kill(pid, signal.SIGKILL)
        return [f"controller {pid} killed"]
    return []


def _kill_leftovers(layout: Layout) -> list[str]:
    """Kill processes left behind (after a crash) and wait until their PID namespaces are gone."""
    swept: list[str] = []
    own_pidns = os.readlink("/proc/self/ns/pid")
    node_pidns: set[str] = set()
    for _ in range(3):
        pids = _processes_referring_to(layout.root)
        if not pids:
            break
        for victim in pids:
            with contextlib.suppress(OSError):
                node_pidns.add(os.readlink(f"/proc/{victim}/ns/pid"))
        for victim in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
                swept.append(f"process {victim}")
        wait_until(lambda: not _processes_referring_to(layout.root), 5)
    # Killing a namespace's init kills the rest of it, asynchronously.
    node_pidns.discard(own_pidns)
    if node_pidns and not wait_until(lambda: not _pids_in(node_pidns), 10):
        swept.append(f"PID namespaces still alive: {sorted(node_pidns)}")
    return swept


def _sweep_devices(layout: Layout, state: dict[str, Any]) -> list[str]:
    swept: list[str] = []
    for mount in reversed(_mounts_under(layout.root)):
        subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
        swept.append(f"mount {mount}")
    for device in disks.loops_backed_under(layout.root):
        with contextlib.suppress(disks.DiskError):
            disks.throttle([device], 0)
        disks.detach(device)
        swept.append(f"loop {device}")
    if isinstance(state.get("config"), dict) and state["config"].get("netns"):
        config = TestbedConfig.from_dict(state["config"])
        vlans = [str(name) for name in state.get("vlan_netns", [])]
        swept += netns.sweep(node_specs(config.nodes, netns=True, first=config.first), vlans)
    return swept


def down(directory: str | Path, *, quiet: bool = False) -> list[str]:
    """Stop the testbed in ``directory`` and remove everything it made; idempotent.

    Works from the recorded state and by scanning (processes naming DIR, loop devices backed
    by files under DIR, mounts under DIR, the testbed's kdtb-* namespaces and links), so it
    also cleans up after a crash. Returns what had to be swept (empty after an orderly stop).
    """
    layout = Layout.at(directory)
    swept = _stop_controller(layout)
    swept += _kill_leftovers(layout)
    state = load_state(layout)
    swept += _sweep_devices(layout, state)
    layout.control_socket.unlink(missing_ok=True)
    if layout.state_file.exists():
        update_state(
            layout,
            lambda s: s.update(
                controller_ready=False, controller_pid=None, loops=[], netns=[], vlan_netns=[]
            ),
        )
    if swept and not quiet:
        logger.info("swept: %s", ", ".join(swept))
    return swept
