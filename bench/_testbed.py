"""Benchmark helpers: a shaped ``--netns`` testbed, the server's own link, the machine.

The testbed shapes each node's veth (both ends) to the rate B. The server (the host, on the
bridge ``kdtb0``) has no link of its own in that picture: left alone, it could send to every
node at once at N x B. A real server has one NIC, so :func:`shaped_testbed` also puts a ``tbf``
of rate B on the bridge device itself, which shapes exactly what the host sends into the bridge
(node-to-node traffic is forwarded inside the bridge and never passes that qdisc).
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kadeploy_testbed.layout import BRIDGE, DEFAULT_DISK_MB, DEPLOY_PARTITION
from kadeploy_testbed.state import TestbedConfig
from kadeploy_testbed.testbed import Testbed, TestbedError, down, up

logger = logging.getLogger(__name__)

_RATE_RE = re.compile(r"^(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit|tbit|bps|kbps|mbps|gbps|tbps)$")
_RATE_UNITS = {
    # tc(8): "kbit" is 1000 bit/s; "bps" is bytes per second.
    "bit": 1.0,
    "kbit": 1e3,
    "mbit": 1e6,
    "gbit": 1e9,
    "tbit": 1e12,
    "bps": 8.0,
    "kbps": 8e3,
    "mbps": 8e6,
    "gbps": 8e9,
    "tbps": 8e12,
}
UP_TIMEOUT = 120.0


class BenchError(Exception):
    """The benchmark cannot run or a measurement failed; the message says why."""


def rate_bits(rate: str) -> float:
    """Bits per second of a tc rate such as ``200mbit`` (decimal units, as tc reads them)."""
    match = _RATE_RE.match(rate.strip().lower())
    if match is None:
        raise BenchError(
            f"--rate {rate!r}: expected a tc rate such as 200mbit, 1gbit or 25mbps "
            f"(units: {', '.join(_RATE_UNITS)})"
        )
    value = float(match.group(1)) * _RATE_UNITS[match.group(2)]
    if value <= 0:
        raise BenchError(f"--rate {rate!r}: must be more than 0")
    return value


def free_udp_port() -> int:
    """A UDP port free on 127.0.0.1 now (the daemon's TFTP server binds it later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _tc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["tc", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False
    )


def shape_server_link(rate: str) -> None:
    """Limit what the host sends into the bridge to ``rate`` (the server's one NIC)."""
    result = _tc(
        "qdisc", "replace", "dev", BRIDGE, "root", "tbf", "rate", rate,
        "burst", "256kb", "latency", "20ms",
    )  # fmt: skip
    if result.returncode != 0:
        raise BenchError(f"tc qdisc replace dev {BRIDGE} ... rate {rate}: {result.stderr.strip()}")


def unshape_server_link() -> None:
    """Remove the bridge's qdisc, if the bridge is still there."""
    _tc("qdisc", "del", "dev", BRIDGE, "root")


@contextlib.contextmanager
def ram_directory(path: Path) -> Iterator[Path]:
    """``path`` with a tmpfs mounted on it, unmounted on exit.

    The testbed's disks are files under its directory; on the host's one disk, sixteen nodes'
    ``sync`` after the image would queue behind each other (2 GiB of writeback at N = 16),
    which a real cluster, one disk per node, does not do. Sparse files in RAM take only what
    the nodes write.
    """
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "mode=0755", "kadeploy-bench", str(path)],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise BenchError(f"mount -t tmpfs on {path}: {result.stderr.strip()}")
    try:
        yield path
    finally:
        result = subprocess.run(["umount", str(path)], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            logger.warning("umount %s: %s; unmounting lazily", path, result.stderr.strip())
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@contextlib.contextmanager
def shaped_testbed(
    directory: Path,
    *,
    nodes: int,
    first: int,
    rate: str,
    tftp_port: int,
    image_mib: int,
    shape_server: bool,
) -> Iterator[Testbed]:
    """A ``--netns`` testbed of ``nodes`` nodes at ``rate``, taken down on exit whatever happens.

    The deploy partition is made big enough for an image of ``image_mib`` MiB extracted.
    """
    disk_mb = dict(DEFAULT_DISK_MB)
    disk_mb[DEPLOY_PARTITION] = max(disk_mb[DEPLOY_PARTITION], 2 * image_mib + 256)
    config = TestbedConfig(
        nodes=nodes,
        first=first,
        netns=True,
        rate=rate,
        tftp_host="127.0.0.1",
        tftp_port=tftp_port,
        boot_delay=0.1,
        disk_mb=disk_mb,
    )
    try:
        try:
            bed = up(directory, config, timeout=UP_TIMEOUT)
        except TestbedError as error:
            raise BenchError(f"kadeploy-testbed up: {error}") from None
        if shape_server:
            shape_server_link(rate)
        yield bed
    finally:
        if shape_server:
            unshape_server_link()
        swept = down(directory, quiet=True)
        if swept:
            logger.warning("testbed down swept: %s", ", ".join(swept))


@dataclass(frozen=True, slots=True)
class Machine:
    """What the numbers were measured on."""

    cpus: int
    cpu_model: str
    memory_gib: float
    kernel: str
    python: str

    def lines(self) -> list[str]:
        return [
            f"CPU: {self.cpus} x {self.cpu_model} (nproc {self.cpus})",
            f"RAM: {self.memory_gib:.1f} GiB",
            f"kernel: {self.kernel}",
            f"Python: {self.python}",
        ]


class CpuSampler:
    """Machine-wide CPU use sampled from /proc/stat in a thread, for any past time window.

    Tells whether a measurement was CPU-bound (two cores, shared with whatever else runs).
    """

    def __init__(self, interval: float = 0.25) -> None:
        self._interval = interval
        self._samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            busy, total = _cpu_jiffies()
            self._samples.append((time.time(), busy, total))
            if self._stop.wait(self._interval):
                return

    def busy(self, start: float, end: float) -> float | None:
        """Fraction of all cores busy between unix times ``start`` and ``end``, if sampled."""
        inside = [s for s in list(self._samples) if start <= s[0] <= end]
        if len(inside) < 2 or inside[-1][2] == inside[0][2]:
            return None
        return (inside[-1][1] - inside[0][1]) / (inside[-1][2] - inside[0][2])


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs; idle and iowait count as not busy."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    return total - fields[3] - fields[4], total


def machine() -> Machine:
    """nproc, CPU model, RAM, kernel and Python version of this machine."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) / (1 << 20)
                break
    return Machine(
        cpus=len(os.sched_getaffinity(0)),
        cpu_model=model,
        memory_gib=memory,
        kernel=platform.release(),
        python=platform.python_version(),
    )
