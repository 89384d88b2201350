"""Chain transfer on shaped links: time to deliver an S-byte image to N nodes, vs S/B.

    python bench/chain.py [--rate 200mbit] [--size-mib 128] [--nodes 1,4,8,16]
                          [--methods chain,direct,udpcast,taktuk] [--quick] [--markdown FILE]

Run as root. Brings up one ``--netns`` testbed of max(N) nodes (each node in its own network
namespace, its veth shaped to the rate B with tc tbf, and the server's side of the bridge
shaped to B too: the server has one link like the nodes), then, for each N and each method,
delivers the same image to the first N nodes:

- ``chain``, ``direct``: through the daemon (in-process, on a copy of the testbed's
  configuration): SetDeploymentEnv ``prod`` (no reboot), BroadcastEnv ``chain`` or ``direct``,
  BootNewEnv ``dummy``, a tar+zstd image whose padding is incompressible (zstd stores it in raw
  blocks, so decompression costs next to nothing and the nodes really extract S bytes).
  **transfer** (what the ratio is on): chain, from the round's start (every relay listening,
  the server starts streaming) to its end (the acknowledgement: every node holds the whole
  stream and its writer finished), from the ``chain round started/ended`` lines the daemon
  writes in the nodes' logs; direct, from the first node's stream start (its second
  ``transferring`` record: the SSH command started) to the last writer done (``postinstall``).
  **BroadcastEnv** is the whole macrostep, from the store's state history: from the first node
  entering ``transferring`` to the last node leaving the macrostep; on top of the transfer it
  holds each node's set-up (mount the deploy partition, start the relay) and tail (kernel
  file checks, umount).
- ``udpcast``: Debian's udp-sender on the bridge, one udp-receiver per node in its namespace
  writing to /dev/null; the time is from udp-sender's "Starting transfer" to its
  "Transfer complete." (the 2-s rendezvous before it is not counted).
- ``taktuk``: Debian's TakTuk (the engine Kadeploy3 uses), as Kadeploy3 drives it: ``taktuk -s
  -c "ssh ..." -d ARITY -m node ... broadcast exec [ zstd -dc | tar -x -C /mnt/dest ];
  broadcast input file [ image ]; broadcast input close``, its tree over the nodes' SSH (it
  deploys itself, perl, through the connector), every node decompressing and extracting into
  its deploy partition (mkfs'd beforehand, not timed) as the chain's writer does. **transfer**:
  from taktuk's start (its own deployment over SSH included) to its exit (every node's command
  done, each status checked); **BroadcastEnv**: on top of that, the mount before and the
  ``umount`` after, one SSH command per node in parallel.

The physical limit for one link is S/B; ``ratio`` = time / (S/B). TCP/IP headers alone make
a stream's ratio 1514/1448 = 1.046 (tbf counts whole frames). Exit status 1 if any
measurement failed or a method is not available; the testbed is taken down in every case.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pykka
import yaml
from _common import markdown_table as _markdown
from _common import print_table as _print_table
from _common import unwind_on_signals
from _testbed import (
    BenchError,
    CpuSampler,
    free_udp_port,
    machine,
    ram_directory,
    rate_bits,
    shaped_testbed,
)

from kadeploy_core.plans import VARIANTS, Macrostep
from kadeploy_testbed.image import ImageResult, MakeImageError, make_image
from kadeploy_testbed.layout import BRIDGE, DEPLOY_PARTITION, NODE_DISK_DIR
from kadeploy_testbed.testbed import Testbed
from kadeployd.actors.manager import CHAIN_ROUND_ENDED, CHAIN_ROUND_STARTED
from kadeployd.daemon import Daemon
from kadeployd.environment import load_environment
from kadeployd.store.records import HistoryEntry, LogLine
from kadeployd.workflow.job import DeploymentRequest

logger = logging.getLogger(__name__)

METHODS = ("chain", "direct", "udpcast", "taktuk")
DAEMON_METHODS = ("chain", "direct")
DEFAULT_NODES = (1, 4, 8, 16)
QUICK_NODES = (1, 4)
QUICK_SIZE_MIB = 64
FIRST_NODE = 151
"""Benchmark nodes are node-151... so they stay clear of the test suites' testbeds."""
BROADCAST = str(Macrostep.BROADCAST_ENV)
UDPCAST_RDV = "224.0.0.1"
"""udpcast's rendezvous group. Without it, receivers send their hello to the interface's
broadcast address, which the testbed's node addresses do not set (it would be 0.0.0.0)."""
MIB = 1 << 20
TAKTUK_MOUNT = "/mnt/dest"
"""Where the taktuk method's nodes mount their deploy partition (the daemon's mount point)."""
TAKTUK_DEVICE = f"{NODE_DISK_DIR}/sda{DEPLOY_PARTITION}"
TAKTUK_ARITY = 0
"""``taktuk -d`` (``--taktuk-arity``): dynamic (work-stealing) tree with no maximal arity,
TakTuk's default topology; 1 makes it a chain, -1 a flat tree."""
_STATUS_RE = re.compile(r"^(\S+)-(\d+): .* status > Exited with status (-?\d+)$")
"""TakTuk's default status line: ``HOST-RANK: COMMAND (PID): status > Exited with status 0``."""
_BYTES_RE = re.compile(r"bytes=\s*(\d[\d ]*)\(")


@dataclass(frozen=True, slots=True)
class Result:
    """One measurement (or why there is none)."""

    method: str
    nodes: int
    seconds: float | None
    """The transfer: the first byte sent to the last node holding the image (module doc)."""
    step_seconds: float | None = None
    """Daemon methods: the whole BroadcastEnv macrostep, set-up and tail included."""
    window: tuple[float, float] | None = None
    """Unix times the measured span began and ended."""
    cpu: float | None = None
    """Fraction of the machine's cores busy during ``window`` (anyone's work)."""
    error: str = ""


# ---------------------------------------------------------------- through the daemon


def _daemon_conf(bed: Testbed, workdir: Path, method: str, timeout: float) -> Path:
    """A copy of the testbed's configuration: prod -> ``method`` -> dummy, no retries."""
    conf = workdir / "conf"
    shutil.copytree(bed.layout.conf_dir, conf)
    path = conf / "deploy.conf"
    deploy = yaml.safe_load(path.read_text())
    deploy["daemon"]["state_dir"] = str(workdir / "state")
    deploy["automata"]["macrosteps"] = {
        "SetDeploymentEnv": [{"type": "prod", "retries": 0, "timeout": 120}],
        "BroadcastEnv": [{"type": method, "retries": 0, "timeout": round(timeout)}],
        "BootNewEnv": [{"type": "dummy", "retries": 0, "timeout": 60}],
    }
    path.write_text(yaml.safe_dump(deploy, sort_keys=False))
    return conf


@contextlib.contextmanager
def _running_daemon(conf: Path) -> Iterator[Daemon]:
    daemon = Daemon.start(conf)
    try:
        yield daemon
    finally:
        daemon.stop(abort_timeout=10)
        pykka.ActorRegistry.stop_all(timeout=10)


@dataclass(frozen=True, slots=True)
class Span:
    """When one node went through BroadcastEnv, from its state history (unix times)."""

    entered: float
    """First entry into ``transferring`` (before the deploy partition is mounted)."""
    streaming: float
    """Last entry into ``transferring`` before the writer finished: both variants record it
    again when the image stream to this node starts (direct: the SSH command; chain: the
    relay)."""
    written: float
    """Entry into the next state (``postinstall``): the node's writer is done."""
    left: float
    """First state outside BroadcastEnv: sync and umount done."""


def _span(history: list[HistoryEntry]) -> Span:
    node = history[0].node if history else "?"
    moves = [h for h in history if h.state == "transferring"]
    if not moves:
        raise BenchError(f"{node}: never entered transferring")
    after = [h for h in history if h.at >= moves[0].at and h.state != "transferring"]
    written = next((h for h in after), None)
    left = next((h for h in after if h.macrostep != BROADCAST), None)
    if written is None or left is None:
        raise BenchError(f"{node}: no state recorded after transferring")
    streaming = max(h.at for h in moves if h.seq < written.seq)
    return Span(moves[0].at, streaming, written.at, left.at)


def measure_daemon(
    bed: Testbed,
    method: str,
    names: tuple[str, ...],
    *,
    description: Path,
    workdir: Path,
    limit: float,
) -> Result:
    """Deploy through the daemon with BroadcastEnv ``method``; time the broadcast."""
    n = len(names)
    conf = _daemon_conf(bed, workdir, method, limit)
    environment = load_environment(description)
    request = DeploymentRequest(user="bench", environment=environment, nodes=names)
    with _running_daemon(conf) as daemon:
        deployment_id = daemon.deploy(request)
        reader = daemon.reader()
        try:
            deadline = time.monotonic() + limit + 180
            while (view := reader.deployment(deployment_id)).status == "running":
                if time.monotonic() > deadline:
                    raise BenchError(f"{method} N={n}: deployment not finished after {limit}s")
                time.sleep(0.2)
            if view.status != "succeeded":
                failures = [
                    f"{v.node}: {v.state} in {v.error_step}: {v.error_message}"
                    for v in reader.nodes(deployment_id)
                    if v.state != "deployed"
                ]
                raise BenchError(
                    f"{method} N={n}: deployment {view.status} ({view.reason}); "
                    + "; ".join(failures[:4])
                )
            spans = [_span(reader.history(deployment_id, name)) for name in names]
            logs = reader.log(deployment_id)
        finally:
            reader.close()
    began, ended = min(s.entered for s in spans), max(s.left for s in spans)
    if method == "chain":
        start, end = _chain_rounds(logs)
    else:
        start, end = min(s.streaming for s in spans), max(s.written for s in spans)
    return Result(method, n, seconds=end - start, step_seconds=ended - began, window=(start, end))


def _chain_rounds(logs: list[LogLine]) -> tuple[float, float]:
    """From the first chain round's start to the last one's end (one round when all went
    well; a node joining late or retrying makes another)."""
    starts = [line.at for line in logs if line.text.startswith(CHAIN_ROUND_STARTED)]
    ends = [line.at for line in logs if line.text.startswith(CHAIN_ROUND_ENDED)]
    if not starts or not ends:
        raise BenchError("no chain round recorded in the nodes' logs")
    rounds = {line.text for line in logs if line.text.startswith(CHAIN_ROUND_STARTED)}
    if len(rounds) > 1:
        print(f"  note: {len(rounds)} chain rounds", flush=True)
    return min(starts), max(ends)


# ---------------------------------------------------------------- udpcast


def _start(argv: list[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def _stop(proc: subprocess.Popen[Any]) -> None:
    """End a process group we started (udpcast, ip netns exec) and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _received_bytes(log: Path) -> int | None:
    """The last ``bytes=`` count a udp-receiver printed (digits grouped with spaces)."""
    counts = _BYTES_RE.findall(log.read_text(errors="replace"))
    return int(counts[-1].replace(" ", "")) if counts else None


def measure_udpcast(
    bed: Testbed, names: tuple[str, ...], *, image: Path, size: int, workdir: Path, limit: float
) -> Result:
    """udp-sender on the bridge, udp-receiver in each node's namespace; time the transfer."""
    n = len(names)
    workdir.mkdir(parents=True, exist_ok=True)
    receivers: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    sender: subprocess.Popen[bytes] | None = None
    lines: list[tuple[float, str]] = []
    try:
        for name in names:
            log_path = workdir / f"{name}.log"
            with log_path.open("wb") as log:
                proc = _start(
                    ["ip", "netns", "exec", str(bed.node(name).netns), "udp-receiver",
                     "--nokbd", "--interface", "eth0", "--mcast-rdv-address", UDPCAST_RDV,
                     "--file", "/dev/null"],
                    log,
                )  # fmt: skip
            receivers.append((name, proc, log_path))
        sender = subprocess.Popen(
            ["udp-sender", "--file", str(image), "--interface", BRIDGE,
             "--mcast-rdv-address", UDPCAST_RDV, "--min-receivers", str(n), "--max-wait", "60",
             "--nokbd", "--no-progress"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        reader = threading.Thread(target=_read_lines, args=(sender, lines), daemon=True)
        reader.start()
        try:
            status = sender.wait(timeout=limit + 60)
        except subprocess.TimeoutExpired:
            raise BenchError(
                f"udpcast N={n}: udp-sender still running after {limit + 60:g}s"
            ) from None
        reader.join(timeout=5)
        if status != 0:
            tail = " | ".join(text for _, text in lines[-3:])
            raise BenchError(f"udpcast N={n}: udp-sender exited with {status}: {tail}")
        connected = sum(1 for _, text in lines if text.startswith("New connection"))
        started = next((at for at, text in lines if text.startswith("Starting transfer")), None)
        done = next((at for at, text in lines if text.startswith("Transfer complete")), None)
        if connected != n or started is None or done is None:
            raise BenchError(
                f"udpcast N={n}: {connected} receivers connected, start seen: "
                f"{started is not None}, completion seen: {done is not None}"
            )
        for name, proc, log_path in receivers:
            try:
                code = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                raise BenchError(f"udpcast N={n}: {name}'s udp-receiver did not exit") from None
            got = _received_bytes(log_path)
            if code != 0 or got != size:
                raise BenchError(
                    f"udpcast N={n}: {name}'s udp-receiver exited {code} after {got} of "
                    f"{size} bytes (log {log_path})"
                )
        return Result("udpcast", n, seconds=done - started, window=(started, done))
    finally:
        if sender is not None:
            _stop(sender)
        for _, proc, _ in receivers:
            _stop(proc)


def _read_lines(proc: subprocess.Popen[bytes], into: list[tuple[float, str]]) -> None:
    """Timestamp each line udp-sender prints, as it prints it (it does not buffer them)."""
    assert proc.stdout is not None
    for raw in proc.stdout:
        text = raw.decode(errors="replace").strip()
        if text and not text.startswith("Timeout notAnswered"):
            into.append((time.time(), text))


# ---------------------------------------------------------------- taktuk


def _on_nodes(bed: Testbed, names: tuple[str, ...], command: str, what: str) -> dict[str, str]:
    """Run ``command`` on every node over SSH, all at once; raise if any of them fails.
    Returns each node's output."""
    procs = {
        name: subprocess.Popen(
            bed.ssh_argv(name, command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for name in names
    }
    failed: list[str] = []
    outputs: dict[str, str] = {}
    try:
        for name, proc in procs.items():
            try:
                out, _ = proc.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                failed.append(f"{name}: timed out")
                continue
            outputs[name] = out.decode(errors="replace")
            if proc.returncode != 0:
                text = out.decode(errors="replace").strip().replace("\n", " | ")
                failed.append(f"{name}: exit {proc.returncode}: {text[-200:]}")
    finally:
        for proc in procs.values():
            _stop(proc)
    if failed:
        raise BenchError(f"taktuk N={len(names)}: {what}: " + "; ".join(failed[:4]))
    return outputs


def taktuk_argv(
    bed: Testbed, names: tuple[str, ...], image: Path, arity: int, key: Path
) -> list[str]:
    """TakTuk's tree broadcast of ``image`` into ``zstd -dc | tar -x`` on every node; nodes
    connect to their children with the same connector, so ``key`` must be readable there."""
    ssh = bed.ssh_argv(names[0], key=key)
    connector = shlex.join(ssh[: ssh.index(f"root@{bed.node(names[0]).address}")])
    writer = f"zstd -dc | tar -x --numeric-owner -C {TAKTUK_MOUNT}"
    machines = [arg for name in names for arg in ("-m", bed.node(name).address)]
    return [
        "taktuk", "-s", "-l", "root", "-c", connector, "-d", str(arity), *machines,
        "broadcast", "exec", "[", writer, "]", ";",
        "broadcast", "input", "file", "[", str(image), "]", ";",
        "broadcast", "input", "close",
    ]  # fmt: skip


def measure_taktuk(
    bed: Testbed,
    names: tuple[str, ...],
    *,
    image: Path,
    size: int,
    workdir: Path,
    limit: float,
    arity: int = TAKTUK_ARITY,
) -> Result:
    """TakTuk's broadcast to the nodes, each extracting the image; time start to all done.

    TakTuk's tree has nodes open SSH connections to other nodes with the same ``ssh -i KEY``,
    but a node's ``/tmp`` (where the testbed's key usually is) and ``/root`` are its own; a
    copy of the key under ``/var/tmp``, which the nodes share with the host, serves them all.
    """
    keydir = Path(tempfile.mkdtemp(prefix="kadeploy-bench-taktuk-", dir="/var/tmp"))
    try:
        key = keydir / "id_deploy"
        shutil.copyfile(bed.layout.deploy_key, key)
        key.chmod(0o600)
        return _taktuk_run(
            bed, names, image=image, size=size, workdir=workdir, limit=limit, arity=arity, key=key
        )
    finally:
        shutil.rmtree(keydir, ignore_errors=True)


def _taktuk_run(
    bed: Testbed,
    names: tuple[str, ...],
    *,
    image: Path,
    size: int,
    workdir: Path,
    limit: float,
    arity: int,
    key: Path,
) -> Result:
    n = len(names)
    workdir.mkdir(parents=True, exist_ok=True)
    mount = f"mkdir -p {TAKTUK_MOUNT} && mount {TAKTUK_DEVICE} {TAKTUK_MOUNT}"
    _on_nodes(
        bed, names, f"umount {TAKTUK_MOUNT} 2>/dev/null; mkfs.ext4 -q -F {TAKTUK_DEVICE}", "mkfs"
    )
    log_path = workdir / "taktuk.log"
    argv = taktuk_argv(bed, names, image, arity, key)
    (workdir / "taktuk.argv").write_text(shlex.join(argv) + "\n")
    began = time.time()
    _on_nodes(bed, names, mount, "mount")
    with log_path.open("wb") as log:
        start = time.time()
        proc = _start(argv, log)
        try:
            status = proc.wait(timeout=limit + 60)
        except subprocess.TimeoutExpired:
            raise BenchError(f"taktuk N={n}: still running after {limit + 60:g}s") from None
        finally:
            end = time.time()
            _stop(proc)
    try:
        text = log_path.read_text(errors="replace")
        # One status per TakTuk instance on a node (its rank; the root, rank 0, runs nothing).
        statuses = {
            int(m.group(2)): (m.group(1), int(m.group(3)))
            for m in map(_STATUS_RE.match, text.splitlines())
            if m is not None
        }
        bad = [f"rank {rank} on {host}: {code}" for rank, (host, code) in statuses.items() if code]
        if len(statuses) != n:
            bad.append(f"{len(statuses)} statuses for {n} nodes")
        if status != 0 or bad:
            others = [line for line in text.splitlines() if not _STATUS_RE.match(line)]
            tail = " | ".join(others[-4:])
            raise BenchError(
                f"taktuk N={n}: taktuk exited {status}; writers: {', '.join(bad) or 'all 0'}; "
                f"{tail} (log {log_path})"
            )
    finally:
        extracted = _on_nodes(
            bed,
            names,
            f"du -s -B1 --apparent-size {TAKTUK_MOUNT} | cut -f1; umount {TAKTUK_MOUNT}",
            "umount",
        )
    ended = time.time()
    # The image's padding is incompressible: each node must hold about S bytes of files.
    short = [
        f"{name}: {text.strip()!r} bytes"
        for name, text in extracted.items()
        if not text.strip().isdigit() or int(text) < 0.9 * size
    ]
    if short:
        raise BenchError(f"taktuk N={n}: extracted less than the image: {', '.join(short[:4])}")
    return Result("taktuk", n, seconds=end - start, step_seconds=ended - began, window=(start, end))


# ---------------------------------------------------------------- the run


def _table(results: list[Result], size: int, bits: float) -> list[list[str]]:
    limit = size * 8 / bits
    rows = [
        ["method", "N", "transfer s", "ratio", "Mbit/s/node", "aggregate Mbit/s",
         "BroadcastEnv s", "BroadcastEnv ratio", "CPU busy"]
    ]  # fmt: skip
    for r in results:
        if r.seconds is None:
            rows.append([r.method, str(r.nodes), "FAILED", "", "", "", "", "", ""])
            continue
        per_node = size * 8 / r.seconds / 1e6
        step = r.step_seconds
        rows.append(
            [
                r.method,
                str(r.nodes),
                f"{r.seconds:.2f}",
                f"{r.seconds / limit:.3f}",
                f"{per_node:.1f}",
                f"{per_node * r.nodes:.1f}",
                "" if step is None else f"{step:.2f}",
                "" if step is None else f"{step / limit:.3f}",
                "" if r.cpu is None else f"{r.cpu:.0%}",
            ]
        )
    return rows


def _growth(results: list[Result], methods: list[str], low: int, high: int) -> list[str]:
    out: list[str] = []
    if low == high:
        return out
    for method in methods:
        times = {r.nodes: (r.seconds, r.step_seconds) for r in results if r.method == method}
        (small, small_step), (big, big_step) = (
            times.get(low, (None, None)),
            times.get(high, (None, None)),
        )
        if small and big:
            steps = (
                f" (BroadcastEnv: {big_step / small_step:.3f})" if small_step and big_step else ""
            )
            out.append(
                f"{method}: transfer(N={high}) / transfer(N={low}) = {big / small:.3f}{steps}"
            )
    return out


def _parse_nodes(text: str) -> list[int]:
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected node counts separated by commas, e.g. 1,4,8,16"
        ) from None
    if not values or values[0] < 1 or values[-1] > 90:
        raise argparse.ArgumentTypeError(f"{text!r}: node counts go from 1 to 90")
    return values


def _parse_methods(text: str) -> list[str]:
    methods = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if not methods or unknown:
        raise argparse.ArgumentTypeError(
            f"{text!r}: unknown method(s) {', '.join(unknown) or '(none)'}; "
            f"choose among {', '.join(METHODS)}"
        )
    return list(dict.fromkeys(methods))


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Chain vs direct vs udpcast vs taktuk on shaped testbed links (run as root)."
    )
    parser.add_argument("--rate", default="200mbit", help="tc rate B of every link")
    parser.add_argument("--size-mib", type=int, default=None, help="image size S (default 128)")
    parser.add_argument("--nodes", type=_parse_nodes, default=None, help="default 1,4,8,16")
    parser.add_argument(
        "--methods", type=_parse_methods, default=list(METHODS), help="chain,direct,udpcast,taktuk"
    )
    parser.add_argument("--quick", action="store_true", help="N=1,4 and 64 MiB")
    parser.add_argument(
        "--first", type=int, default=FIRST_NODE, help="number of the first testbed node"
    )
    parser.add_argument(
        "--unshaped-server",
        action="store_true",
        help="do not shape the server's side of the bridge (it may send N x B)",
    )
    parser.add_argument(
        "--disks",
        choices=("ram", "file"),
        default="ram",
        help="node disk files on a tmpfs (default: one disk per node, as on a cluster) or on "
        "the host's disk (N nodes' writeback then shares it)",
    )
    parser.add_argument(
        "--taktuk-arity",
        type=int,
        default=TAKTUK_ARITY,
        help="taktuk -d: 0 (default) TakTuk's dynamic tree, 1 a chain, -1 a flat tree",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the results here")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.nodes is None:
        args.nodes = list(QUICK_NODES if args.quick else DEFAULT_NODES)
    if args.size_mib is None:
        args.size_mib = QUICK_SIZE_MIB if args.quick else 128
    if not 1 <= args.size_mib <= 4096:
        parser.error(f"--size-mib {args.size_mib}: expected 1 to 4096")
    if args.first < 1 or args.first + max(args.nodes) - 1 > 250:
        parser.error(f"--first {args.first}: nodes must fit in 1..250")
    return args


def _check_tools(methods: list[str]) -> None:
    if os.geteuid() != 0:
        raise BenchError("run as root: the testbed needs namespaces, mounts and tc")
    if "udpcast" in methods and not (shutil.which("udp-sender") and shutil.which("udp-receiver")):
        raise BenchError("udpcast: udp-sender/udp-receiver not found (apt-get install udpcast)")
    if "taktuk" in methods and not shutil.which("taktuk"):
        raise BenchError("taktuk: not found (apt-get install taktuk)")


def _measure(
    bed: Testbed,
    method: str,
    n: int,
    *,
    built: ImageResult,
    workdir: Path,
    limit: float,
    taktuk_arity: int = TAKTUK_ARITY,
) -> Result:
    """One method at N nodes; a failure becomes a Result without a time, and is printed."""
    names = tuple(spec.name for spec in bed.nodes)[:n]
    # Generous bound: direct sends N copies over the server's link.
    bound = 120 + 3 * limit * (n if method == "direct" else 1)
    began = time.monotonic()
    try:
        if method == "udpcast":
            result = measure_udpcast(
                bed, names, image=built.image, size=built.size, workdir=workdir, limit=bound
            )
        elif method == "taktuk":
            result = measure_taktuk(
                bed,
                names,
                image=built.image,
                size=built.size,
                workdir=workdir,
                limit=bound,
                arity=taktuk_arity,
            )
        else:
            result = measure_daemon(
                bed, method, names, description=built.description, workdir=workdir, limit=bound
            )
    except BenchError as error:
        print(f"  {method} N={n}: FAILED: {error}", flush=True)
        return Result(method, n, None, error=str(error))
    seconds = result.seconds or 0.0
    print(
        f"  {method} N={n}: {seconds:.2f} s (ratio {seconds / limit:.3f}; "
        f"{time.monotonic() - began:.0f} s with setup)",
        flush=True,
    )
    return result


def run(args: argparse.Namespace) -> tuple[list[Result], int]:
    """Every measurement; returns the results and the image size in bytes."""
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kadeploy-bench-chain-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"working directory: {workdir}", flush=True)
    try:
        return _run_in(args, workdir)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def _run_in(args: argparse.Namespace, workdir: Path) -> tuple[list[Result], int]:
    try:
        built = make_image(
            workdir / "bench", name="bench", kind="tar", compression="zstd", size_mb=args.size_mib
        )
    except MakeImageError as error:
        raise BenchError(f"make-image: {error}") from None
    size = built.size
    limit = size * 8 / rate_bits(args.rate)
    results: list[Result] = []
    methods: list[str] = args.methods
    runnable = []
    for method in methods:
        if method in DAEMON_METHODS and method not in VARIANTS[Macrostep.BROADCAST_ENV]:
            print(f"{method}: not a BroadcastEnv variant of this daemon; not measured", flush=True)
            results += [Result(method, n, None, error="variant missing") for n in args.nodes]
        else:
            runnable.append(method)
    with contextlib.ExitStack() as stack:
        base = workdir
        if args.disks == "ram":
            base = stack.enter_context(ram_directory(workdir / "ram"))
        bed = stack.enter_context(
            shaped_testbed(
                base / "testbed",
                nodes=max(args.nodes),
                first=args.first,
                rate=args.rate,
                tftp_port=free_udp_port(),
                image_mib=args.size_mib,
                shape_server=not args.unshaped_server,
            )
        )
        cpu = stack.enter_context(CpuSampler())
        for n in args.nodes:
            for method in runnable:
                result = _measure(
                    bed,
                    method,
                    n,
                    built=built,
                    workdir=workdir / f"{method}-{n}",
                    limit=limit,
                    taktuk_arity=args.taktuk_arity,
                )
                if result.window is not None:
                    result = dataclasses.replace(result, cpu=cpu.busy(*result.window))
                results.append(result)
    return results, size


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    unwind_on_signals()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    when = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    command = shlex.join(["python", "bench/chain.py", *(argv or sys.argv[1:])])
    try:
        _check_tools(args.methods)
        rate_bits(args.rate)
        results, size = run(args)
    except BenchError as error:
        print(f"bench/chain.py: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench/chain.py: interrupted; testbed taken down", file=sys.stderr)
        return 130
    bits = rate_bits(args.rate)
    rows = _table(results, size, bits)
    methods = list(dict.fromkeys(r.method for r in results))
    growth = _growth(results, methods, min(args.nodes), max(args.nodes))
    failures = [f"{r.method} N={r.nodes}: {r.error}" for r in results if r.seconds is None]
    header = (
        f"S = {size} bytes ({size / MIB:.1f} MiB), B = {args.rate} ({bits / 1e6:g} Mbit/s), "
        f"S/B = {size * 8 / bits:.3f} s; server link "
        + ("unshaped" if args.unshaped_server else "shaped to B")
    )
    print()
    print(header)
    _print_table(rows)
    for line in growth + [f"failed: {line}" for line in failures]:
        print(line)
    if args.markdown is not None:
        text = [
            f"Command: `{command}`  ",
            f"Date: {when}  ",
            *[f"{line}  " for line in machine().lines()],
            header,
            "",
            *_markdown(rows),
            "",
            *[f"- {line}" for line in growth],
            *[f"- failed: {line}" for line in failures],
        ]
        args.markdown.write_text("\n".join(text) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
