"""Faults and load through a real ``kadeploy-server``: what is lost, leaked or broken, and when.

    python bench/faults.py [--nodes 10] [--scenarios a,b,...] [--deadline 240]
                           [--load-seconds 20] [--flood-rate 0] [--flood-sources 1]
                           [--markdown FILE] [--keep]

Run as root, alone: ``flock /tmp/kadeploy-tests.lock .venv/bin/python bench/faults.py`` (the
testbed uses fixed loopback addresses). Scenarios (default: all, in this order):

- ``api-load``: a daemon of 1,000 dummy nodes (bench/_scale_config.py, as control_plane.py);
  50 client threads, each its own user and connection over the Unix socket, ``GET /v1/nodes``
  in a loop for ``--load-seconds``: requests/s, p50, p99, errors, against the issue's
  "before" figures (139 requests/s, p50 303 ms, p99 1.18 s, no error).
- on one testbed of ``--nodes`` + 1 nodes (node-101..., loopback, ``kadeploy-testbed up``'s
  configuration with shorter timeouts, see :func:`_tune`; the last node's BMC password file is
  wrong and its soft reboot command is ``false``: it serves ``power-fails`` only), one daemon:

  - ``concurrent``: ``--nodes`` deployments of one node each at once (BroadcastEnv chain),
    registered and anonymous environments alternating;
  - ``die-mid-chain``: 4 nodes, ``--min-nodes 3``; one node gets the testbed's ``die`` fault
    (power lost) once it is ``transferring``;
  - ``noboot``: 3 nodes, ``--min-nodes 2``; one stays silent once power-cycled (``noboot``);
  - ``sshd-hang``: 3 nodes; one has every process stopped (``hang``: sshd accepts the TCP
    connection and never answers) before the deployment, so its soft reboot hangs;
  - ``power-fails``: the bad-power node and one other, ``--min-nodes 1``;
  - ``disk-full``: 2 nodes, an image of 64 MiB of incompressible data, ``--min-nodes 1``; one
    node's deploy partition is shrunk to 40 MiB first (its backing file truncated, then
    ``losetup -c``), so the extraction runs out of space; restored afterwards;
  - ``tftp-flood``: 4 nodes deployed while a second process sends the daemon's TFTP port
    read requests (for the deploy kernel, for missing files, and garbage) from 64 sockets as
    fast as it can, or at ``--flood-rate`` packets/s, from ``--flood-sources`` addresses
    127.0.9.x (default 1: one flooding host; the nodes' firmware asks from 127.0.0.1, and the
    daemon caps sessions per client address); the nodes must still boot (twice each).

For each scenario: **time** (first request -> every deployment ended), every node's **final
state** (``GET /v1/deployments/ID/nodes``: none may be left non-final) and the lines of its
**log** (each node must have some), the **HTTP** statuses the bench received (no 5xx; the
daemon log's tracebacks are counted too, paramiko's banner-timeout tracebacks apart, and how
much the log grew), **leaked processes** after the end (relays: a
command line naming ``kadeploy-relay``; power and ssh commands: ``ipmitool`` or ``ssh``
naming the testbed's directory; anything still a child of the daemon), **leaked files** (dirs
under the daemon's ``anonymous/``, files under ``uploads/``, ``envs/`` dirs of the TFTP root
that no node's PXE profile names, ``*.tmp`` files there; each given 15 s to be swept; the
daemon sweeps the anonymous env dirs of ended deployments when the next deployment starts, so
those left at a scenario's end are counted apart and must be gone once the next scenario's
first deployment started), and
for every deployed node the **image** on its deploy partition: the SHA-256 of
``/etc/os-release``, ``/boot/vmlinuz``, ``/boot/initrd.img``, ``/bin/busybox`` and (padded
image) ``/var/padding.bin``, read with ``debugfs`` from the host, against the image's tar. The
machine's busy share (/proc/stat) over each scenario too.

Everything started is removed in every case (daemons, testbed, flood process, temp dir), also
on Ctrl-C or SIGTERM. Exit status 1 if any check failed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import multiprocessing
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
import zstandard
from _common import markdown_table, print_table, unwind_on_signals
from _scale_config import write_dummy_config
from _testbed import BenchError, CpuSampler, machine
from control_plane import START_TIMEOUT, USER, Daemon, make_token, running_daemon, wait_for_api
from e2e import testbed

from kadeploy_core.machine import NodeState
from kadeploy_testbed.image import ImageResult, MakeImageError, make_image
from kadeploy_testbed.layout import DEPLOY_PARTITION
from kadeploy_testbed.testbed import Testbed, TestbedError
from kadeployd.api.tokens import TokenStore
from kadeployd.environment.bootfiles import UNREFERENCED_GRACE

REPO = Path(__file__).resolve().parents[1]
FIRST_NODE = 101
"""Nodes node-101...: clear of ``make demo``'s node-1... (and one nodes.conf entry each)."""
ENV_NAME = "debian-min"
SCENARIOS = (
    "api-load",
    "concurrent",
    "die-mid-chain",
    "noboot",
    "sshd-hang",
    "power-fails",
    "disk-full",
    "tftp-flood",
)
TESTBED_SCENARIOS = SCENARIOS[1:]
FINAL = frozenset(s.value for s in NodeState if s.final)
LOAD_CLIENTS = 50
LOAD_NODES = 1000
BEFORE = "139 requests/s, p50 303 ms, p99 1.18 s, no error"
"""The issue's figures for 50 clients listing 1,000 nodes, before the hardening."""
CHECKED_FILES = ("etc/os-release", "boot/vmlinuz", "boot/initrd.img", "bin/busybox")
PADDED_MIB = 64
SHRUNK_MIB = 40
SWEEP_GRACE = 15.0
POLL = 0.2
RELAY_MARKER = b"kadeploy-relay"
PARAMIKO = "paramiko.transport"
COMMAND_NAMES = frozenset({"ipmitool", "ssh"})


# ---------------------------------------------------------------- results


@dataclass
class Outcome:
    """One scenario's checks."""

    name: str
    what: str = ""
    seconds: float | None = None
    cpu: float | None = None
    states: dict[str, str] = field(default_factory=dict)
    """node -> final state (or the last one seen)."""
    log_lines: dict[str, int] = field(default_factory=dict)
    expected: dict[str, str] = field(default_factory=dict)
    """node -> the final state it should reach ("" = any final state)."""
    http: Counter[int] = field(default_factory=Counter)
    tracebacks: int = 0
    """Tracebacks in the daemon log but paramiko's (counted apart in ``paramiko``)."""
    paramiko: int = 0
    """paramiko.transport's tracebacks: an SSH probe of a node with no banner (library noise
    logged at ERROR, as bench/e2e.py counts it)."""
    log_bytes: int = 0
    """What the daemon's log grew by during the scenario."""
    leaked_processes: list[str] = field(default_factory=list)
    leaked_files: list[str] = field(default_factory=list)
    anonymous_left: list[str] = field(default_factory=list)
    """Anonymous env dirs of ended deployments still there at the end: the daemon sweeps them
    when the next deployment starts (checked at the next scenario's start)."""
    envs_in_grace: list[str] = field(default_factory=list)
    """Boot files (TFTP envs/) no profile names any more, within the daemon's grace."""
    images_ok: list[str] = field(default_factory=list)
    images_bad: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    """node -> its error step and message (nodes not deployed)."""
    notes: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def not_final(self) -> list[str]:
        return [node for node, state in self.states.items() if state not in FINAL]

    @property
    def no_log(self) -> list[str]:
        return [node for node in self.states if not self.log_lines.get(node)]

    @property
    def unexpected(self) -> list[str]:
        return [
            f"{node}: {self.states.get(node, '?')} (expected {want})"
            for node, want in self.expected.items()
            if want and self.states.get(node) != want
        ]

    @property
    def errors_5xx(self) -> int:
        return sum(count for code, count in self.http.items() if code >= 500)

    @property
    def ok(self) -> bool:
        return not (
            self.error
            or self.not_final
            or self.no_log
            or self.unexpected
            or self.errors_5xx
            or self.tracebacks
            or self.leaked_processes
            or self.leaked_files
            or self.images_bad
        )


# ---------------------------------------------------------------- the API


class Api:
    """httpx over the daemon's Unix socket, counting every answer's status."""

    def __init__(self, socket_path: Path, token: str) -> None:
        self.codes: Counter[int] = Counter()
        self.client = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(socket_path)),
            base_url="http://kadeployd",
            headers={"Authorization": f"Bearer {token}"},
            timeout=60.0,
            event_hooks={"response": [self._count]},
        )

    def _count(self, response: httpx.Response) -> None:
        self.codes[response.status_code] += 1

    def close(self) -> None:
        self.client.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            answer = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise BenchError(f"{method} {path}: {error!r}") from None
        if answer.status_code >= 400:
            raise BenchError(f"{method} {path}: HTTP {answer.status_code}: {answer.text[:300]}")
        return answer.json()

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, params=params or None)

    def upload(self, path: Path) -> str:
        answer = self.call(
            "POST", "/v1/uploads", params={"name": path.name}, content=path.read_bytes()
        )
        return str(answer["id"])


# ---------------------------------------------------------------- api-load


class Load:
    """Client threads, one connection each, sending ``GET /v1/nodes`` until a common end."""

    def __init__(self, socket_path: Path, tokens: list[str]) -> None:
        self.socket_path = socket_path
        self._tokens = list(tokens)
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.codes: Counter[int] = Counter()
        self._lock = threading.Lock()
        self._start = threading.Barrier(len(tokens) + 1)
        self._end = 0.0
        self._threads = [
            threading.Thread(target=self._client, args=(token,), daemon=True) for token in tokens
        ]

    def run(self, seconds: float) -> None:
        for thread in self._threads:
            thread.start()
        self._end = time.monotonic() + seconds
        self._start.wait()
        for thread in self._threads:
            thread.join(timeout=seconds + 120)

    def _client(self, token: str) -> None:
        mine: list[float] = []
        failed: Counter[str] = Counter()
        api = Api(self.socket_path, token)
        try:
            self._start.wait()
            while time.monotonic() < self._end:
                began = time.monotonic()
                try:
                    answer = api.client.get("/v1/nodes")
                except httpx.HTTPError as error:
                    failed[type(error).__name__] += 1
                    continue
                if answer.status_code != 200:
                    failed[f"HTTP {answer.status_code}"] += 1
                elif not answer.content.startswith(b"[{"):
                    failed["not a node list"] += 1
                mine.append(time.monotonic() - began)
        finally:
            with self._lock:
                self.latencies.extend(mine)
                self.errors.update(failed)
                self.codes.update(api.codes)
            api.close()


def api_load(workdir: Path, seconds: float, cpu: CpuSampler) -> Outcome:
    """50 clients listing the 1,000 nodes of a dummy daemon for ``seconds``."""
    out = Outcome(
        "api-load", f"{LOAD_CLIENTS} clients x GET /v1/nodes ({LOAD_NODES} nodes), {seconds:g} s"
    )
    conf, state = workdir / "conf", workdir / "state"
    write_dummy_config(conf, LOAD_NODES, state_dir=state, admins=(USER,))
    token = make_token(conf, workdir / "token", REPO)
    # One user per client, as 50 people would be (one user's requests in flight are capped at
    # daemon.api.max_requests_per_user, 32, beyond which 429 by design). The daemon's own
    # token store, as `kadeploy-server token add` uses it (which also wants a system account).
    store = TokenStore(state)
    tokens = [store.add(f"load{index:02d}") for index in range(LOAD_CLIENTS)]
    with running_daemon(conf, state, REPO) as daemon:
        wait_for_api(daemon, START_TIMEOUT)
        check = Api(daemon.socket, token)
        listed = len(check.get("/v1/nodes"))
        check.close()
        load = Load(daemon.socket, tokens)
        began = time.time()
        load.run(seconds)
        out.seconds = time.time() - began
        out.cpu = cpu.busy(began, time.time())
        out.http = load.codes
        out.tracebacks, out.paramiko = _tracebacks(daemon.log.read_text(errors="replace"))
    if listed != LOAD_NODES:
        out.error = f"GET /v1/nodes listed {listed} nodes, not {LOAD_NODES}"
    if load.errors:
        out.error = out.error or f"errors: {dict(load.errors)}"
    if load.latencies:
        ordered = sorted(load.latencies)
        rate = len(ordered) / out.seconds
        p50 = statistics.median(ordered)
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        out.notes.append(
            f"{len(ordered)} requests in {out.seconds:.1f} s: {rate:.0f} requests/s, "
            f"p50 {1000 * p50:.0f} ms, p99 {1000 * p99:.0f} ms, max {1000 * ordered[-1]:.0f} ms, "
            f"{sum(load.errors.values())} errors (before: {BEFORE})"
        )
    return out


# ---------------------------------------------------------------- the testbed scenarios


@dataclass
class Bench:
    """What the testbed scenarios share."""

    bed: Testbed
    daemon: Daemon
    api: Api
    image: ImageResult
    padded: ImageResult
    hashes: dict[Path, dict[str, str]]
    """image -> path in the image -> SHA-256 of its content."""
    pubkey: str
    good: list[str]
    """Testbed nodes with a working configuration."""
    bad_power: str
    deadline: float
    cpu: CpuSampler
    workdir: Path
    flood_rate: float
    flood_sources: int
    anonymous_left: list[str] = field(default_factory=list)
    """Anonymous env dirs the previous scenario left: the next deployment's start sweeps them."""

    @property
    def state_dir(self) -> Path:
        return Path(self.bed.layout.daemon_state)

    def start(
        self,
        nodes: list[str],
        *,
        anonymous: bool,
        image: ImageResult | None = None,
        min_nodes: int | None = None,
    ) -> str:
        """POST /v1/deployments (registered env, or anonymous from a fresh upload); its id."""
        body: dict[str, Any] = {"nodes": nodes, "authorized_keys": self.pubkey}
        if anonymous:
            chosen = image or self.image
            body["anonymous_environment"] = {
                "description": chosen.description.read_text(),
                "files": {chosen.image.name: self.api.upload(chosen.image)},
            }
        else:
            body["environment"] = {"name": ENV_NAME}
        if min_nodes is not None:
            body["min_nodes"] = min_nodes
        return str(self.api.call("POST", "/v1/deployments", json=body)["id"])


def _tune(conf: Path, bad_power: str, wrong_password: Path) -> None:
    """The testbed's daemon configuration with shorter timeouts (each scenario in minutes, not
    tens), and ``bad_power``'s power commands broken: a wrong IPMI password file (every
    ipmitool call fails) and ``false`` as its soft reboot."""
    deploy = yaml.safe_load((conf / "deploy.conf").read_text())
    deploy["power"]["command_timeout"] = 10
    deploy["power"]["soft_reboot_grace"] = 15
    deploy["power"]["hard_reboot_grace"] = 15
    steps = deploy["automata"]["macrosteps"]
    steps["SetDeploymentEnv"] = [{"type": "untrusted", "retries": 0, "timeout": 90}]
    steps["BroadcastEnv"] = [
        {"type": "chain", "retries": 1, "timeout": "60 + 10 * n"},
        {"type": "direct", "retries": 0, "timeout": "60 + 30 * n"},
    ]
    steps["BootNewEnv"] = [
        {"type": "classical", "retries": 0, "timeout": 90},
        {"type": "hard_reboot", "retries": 0, "timeout": 60},
    ]
    (conf / "deploy.conf").write_text(yaml.safe_dump(deploy, sort_keys=False))
    nodes = yaml.safe_load((conf / "nodes.conf").read_text())
    if bad_power not in nodes:
        raise BenchError(f"nodes.conf has no entry of its own for {bad_power}")
    nodes[bad_power]["vars"] = {"ipmi_password_file": str(wrong_password)}
    nodes[bad_power]["power"] = {"reboot_soft": ["false"]}
    (conf / "nodes.conf").write_text(yaml.safe_dump(nodes, sort_keys=False))


def _tar_hashes(image: Path) -> dict[str, str]:
    """SHA-256 of every regular file of a tar+zstd image, by path."""
    hashes: dict[str, str] = {}
    with (
        image.open("rb") as raw,
        zstandard.ZstdDecompressor().stream_reader(raw) as stream,
        tarfile.open(fileobj=stream, mode="r|") as tar,
    ):
        for member in tar:
            if member.isfile():
                data = tar.extractfile(member)
                if data is not None:
                    hashes[member.name.lstrip("./")] = hashlib.sha256(data.read()).hexdigest()
    return hashes


def _wait_ended(bench: Bench, ids: list[str], out: Outcome) -> None:
    """Until no deployment of ``ids`` runs; past the deadline they are cancelled."""
    limit = time.monotonic() + bench.deadline
    pending = set(ids)
    while pending:
        for ident in list(pending):
            if bench.api.get(f"/v1/deployments/{ident}")["status"] != "running":
                pending.discard(ident)
        if not pending:
            return
        if time.monotonic() > limit:
            out.error = f"still running after {bench.deadline:.0f} s: {sorted(pending)}; cancelled"
            for ident in pending:
                with contextlib.suppress(BenchError):
                    bench.api.call(
                        "POST", f"/v1/deployments/{ident}/cancel", json={"reason": "bench deadline"}
                    )
            limit = time.monotonic() + 60
            bench.deadline = 60
            continue
        time.sleep(POLL)


def _record(bench: Bench, ids: dict[str, Path], out: Outcome) -> None:
    """Every node's final state, log lines and image, from the API and the disks."""
    for ident, image in ids.items():
        view = bench.api.get(f"/v1/deployments/{ident}")
        out.notes.append(
            f"{ident}: {view['status']}" + (f" ({view['reason']})" if view.get("reason") else "")
        )
        for node in bench.api.get(f"/v1/deployments/{ident}/nodes"):
            name = node["node"]
            out.states[name] = node["state"]
            lines = bench.api.get(f"/v1/deployments/{ident}/nodes/{name}/log", limit=10_000)
            out.log_lines[name] = len(lines)
            if node["state"] == NodeState.DEPLOYED:
                _check_image(bench, name, image, out)
            else:
                out.reasons[name] = f"{node.get('error_step')}: {node.get('error_message')}"


def _check_image(bench: Bench, node: str, image: Path, out: Outcome) -> None:
    """The deploy partition's files against the image's, read with debugfs from the host."""
    try:
        device = bench.bed.partition_device(node, DEPLOY_PARTITION)
    except TestbedError as error:
        out.images_bad.append(f"{node}: {error}")
        return
    expected = bench.hashes[image]
    paths = [p for p in (*CHECKED_FILES, "var/padding.bin") if p in expected]
    for path in paths:
        done = subprocess.run(
            ["debugfs", "-R", f"cat /{path}", device],
            capture_output=True, stdin=subprocess.DEVNULL, timeout=60, check=False,
        )  # fmt: skip
        if hashlib.sha256(done.stdout).hexdigest() != expected[path]:
            out.images_bad.append(
                f"{node}: /{path} differs from the image ({len(done.stdout)} bytes read)"
            )
            return
    out.images_ok.append(node)


def _leaked_processes(bench: Bench) -> list[str]:
    """Relays, power and ssh commands still running, and children of the daemon."""
    root = str(bench.bed.layout.root).encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            continue
        parent = int(fields[1])
        name = os.path.basename(argv[0].decode(errors="replace"))
        text = b" ".join(argv)
        if (
            RELAY_MARKER in text
            or (name in COMMAND_NAMES and root in text)
            or parent == bench.daemon.pid
        ):
            found.append(f"pid {entry}: {text[:160].decode(errors='replace')}")
    return found


def _leaked_files(bench: Bench) -> list[str]:
    """Uploads left, envs/ dirs no PXE profile names, temp files in the TFTP root."""
    state = bench.state_dir
    tftp = bench.bed.layout.tftp_root
    leaked = [f"uploads/{p.name}" for p in _entries(state / "uploads")]
    profiles = " ".join(
        p.read_text(errors="replace") for p in _entries(tftp / "pxelinux.cfg") if p.is_file()
    )
    unnamed = [p for p in _entries(tftp / "envs") if f"envs/{p.name}/" not in profiles]
    # The daemon keeps boot files no profile names for UNREFERENCED_GRACE after their last
    # change (a deployment may be writing profiles), then sweeps them at a deployment's end.
    limit = time.time() - UNREFERENCED_GRACE
    leaked += [f"tftp envs/{p.name}" for p in unnamed if p.stat().st_mtime < limit]
    leaked += [f"tftp {p.relative_to(tftp)}" for p in tftp.rglob("*.tmp")]
    return leaked


def _envs_in_grace(bench: Bench) -> list[str]:
    """envs/ dirs no profile names, younger than the daemon's UNREFERENCED_GRACE."""
    tftp = bench.bed.layout.tftp_root
    profiles = " ".join(
        p.read_text(errors="replace") for p in _entries(tftp / "pxelinux.cfg") if p.is_file()
    )
    return [p.name for p in _entries(tftp / "envs") if f"envs/{p.name}/" not in profiles]


def _entries(directory: Path) -> list[Path]:
    with contextlib.suppress(OSError):
        return sorted(p for p in directory.iterdir() if not p.name.startswith("."))
    return []


def _until_clean(check: Callable[[], list[str]]) -> list[str]:
    """``check()`` until it finds nothing, for at most SWEEP_GRACE seconds; its last answer."""
    limit = time.monotonic() + SWEEP_GRACE
    while True:
        found = check()
        if not found or time.monotonic() > limit:
            return found
        time.sleep(0.5)


def _wait_state(bench: Bench, ident: str, node: str, states: set[str], timeout: float) -> str:
    """Until ``node`` of deployment ``ident`` is in one of ``states``; that state, or ""."""
    limit = time.monotonic() + timeout
    while time.monotonic() < limit:
        for entry in bench.api.get(f"/v1/deployments/{ident}/nodes"):
            if entry["node"] == node and entry["state"] in states:
                return str(entry["state"])
        time.sleep(0.05)
    return ""


def run_scenario(
    bench: Bench, name: str, action: Callable[[Bench, Outcome], dict[str, Path]]
) -> Outcome:
    """Reset the nodes, run ``action`` (it starts deployments and returns them), wait for
    their end, record and check everything."""
    out = Outcome(name)
    bench.bed.reset([spec.name for spec in bench.bed.nodes], timeout=90)
    log_offset = bench.daemon.log.stat().st_size
    bench.api.codes.clear()
    began = time.time()
    try:
        ids = action(bench, out)
        anonymous = bench.state_dir / "anonymous"
        out.leaked_files += [
            f"anonymous/{name} (of an ended deployment, not swept by the next one's start)"
            for name in bench.anonymous_left
            if (anonymous / name).exists()
        ]
        _wait_ended(bench, list(ids), out)
        out.seconds = time.time() - began
        out.cpu = bench.cpu.busy(began, time.time())
        _record(bench, ids, out)
    except (BenchError, TestbedError) as error:
        out.error = out.error or str(error)
    out.leaked_processes = _until_clean(lambda: _leaked_processes(bench))
    out.leaked_files += _until_clean(lambda: _leaked_files(bench))
    out.anonymous_left = [p.name for p in _entries(bench.state_dir / "anonymous")]
    out.envs_in_grace = _envs_in_grace(bench)
    bench.anonymous_left = out.anonymous_left
    out.http = Counter(bench.api.codes)
    with bench.daemon.log.open("rb") as log:
        log.seek(log_offset)
        out.tracebacks, out.paramiko = _tracebacks(log.read().decode(errors="replace"))
    out.log_bytes = bench.daemon.log.stat().st_size - log_offset
    return out


def _tracebacks(text: str) -> tuple[int, int]:
    """(the daemon's tracebacks, paramiko.transport's) in a piece of the daemon log."""
    lines = [line for line in text.splitlines() if "Traceback (most recent call last)" in line]
    noise = sum(1 for line in lines if f" {PARAMIKO}: " in line)
    return len(lines) - noise, noise


def s_concurrent(bench: Bench, out: Outcome) -> dict[str, Path]:
    nodes = bench.good
    out.what = (
        f"{len(nodes)} deployments x 1 node at once, chain, registered and anonymous env "
        "alternating"
    )
    ids = {}
    for index, node in enumerate(nodes):
        ident = bench.start([node], anonymous=index % 2 == 1)
        ids[ident] = bench.image.image
        out.expected[node] = NodeState.DEPLOYED
    return ids


def s_die_mid_chain(bench: Bench, out: Outcome) -> dict[str, Path]:
    nodes = bench.good[:4]
    victim = nodes[1]
    out.what = (
        f"4 nodes, --min-nodes 3, the {bench.padded.size >> 20} MiB image; {victim} loses "
        "power once transferring (fault die)"
    )
    ident = bench.start(nodes, anonymous=True, image=bench.padded, min_nodes=3)
    out.expected = {node: NodeState.DEPLOYED for node in nodes}
    out.expected[victim] = ""
    later = {"transferring", "postinstall", "booting", *FINAL}
    seen = _wait_state(bench, ident, victim, later, bench.deadline / 2)
    if seen and seen not in FINAL:
        bench.bed.fault(victim, "die")
        out.notes.append(f"{victim}: fault die when first seen {seen}")
    else:
        out.error = f"{victim} never seen transferring (last: {seen or 'not there'}); no fault"
    return {ident: bench.padded.image}


def s_noboot(bench: Bench, out: Outcome) -> dict[str, Path]:
    nodes = bench.good[:3]
    victim = nodes[2]
    out.what = f"3 nodes, --min-nodes 2; {victim} silent once power-cycled (fault noboot)"
    bench.bed.fault(victim, "noboot")
    out.expected = {node: NodeState.DEPLOYED for node in nodes}
    out.expected[victim] = ""
    return {bench.start(nodes, anonymous=True, min_nodes=2): bench.image.image}


def s_sshd_hang(bench: Bench, out: Outcome) -> dict[str, Path]:
    nodes = bench.good[:3]
    victim = nodes[0]
    out.what = f"3 nodes; {victim}'s processes all stopped before the start (fault hang: sshd mute)"
    bench.bed.fault(victim, "hang")
    out.expected = {node: NodeState.DEPLOYED for node in nodes}
    out.expected[victim] = ""
    return {bench.start(nodes, anonymous=False): bench.image.image}


def s_power_fails(bench: Bench, out: Outcome) -> dict[str, Path]:
    nodes = [bench.good[0], bench.bad_power]
    out.what = (
        f"2 nodes, --min-nodes 1; {bench.bad_power}'s power commands fail (wrong IPMI "
        "password file, soft reboot `false`)"
    )
    out.expected = {bench.good[0]: NodeState.DEPLOYED, bench.bad_power: NodeState.DEPLOY_FAILED}
    return {bench.start(nodes, anonymous=False, min_nodes=1): bench.image.image}


@contextlib.contextmanager
def _shrunk(bench: Bench, node: str, mib: int) -> Iterator[None]:
    """``node``'s deploy partition cut to ``mib`` MiB (backing file + losetup -c); restored."""
    device = bench.bed.partition_device(node, DEPLOY_PARTITION)
    backing = bench.bed.layout.disk_file(node, DEPLOY_PARTITION)
    size = backing.stat().st_size

    def resize(new: int) -> None:
        os.truncate(backing, new)
        done = subprocess.run(
            ["losetup", "-c", device], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise BenchError(f"losetup -c {device}: {done.stderr.strip()}")

    resize(mib << 20)
    try:
        yield
    finally:
        resize(size)


def s_disk_full(bench: Bench, out: Outcome) -> dict[str, Path]:
    nodes = bench.good[:2]
    victim = nodes[1]
    out.what = (
        f"2 nodes, --min-nodes 1, a {bench.padded.size >> 20} MiB incompressible image; "
        f"{victim}'s deploy partition cut to {SHRUNK_MIB} MiB"
    )
    out.expected = {nodes[0]: NodeState.DEPLOYED, victim: NodeState.DEPLOY_FAILED}
    return {bench.start(nodes, anonymous=True, image=bench.padded, min_nodes=1): bench.padded.image}


def flood_sources(count: int) -> list[str]:
    """The flood's source addresses: 127.0.9.1... (never the testbed's 127.0.0.1, from which
    every emulated node's firmware asks, nor its nodes' 127.0.2.x and BMCs' 127.0.3.x)."""
    return [f"127.0.9.{index}" for index in range(1, count + 1)]


def _flood(port: int, rate: float, sources: list[str], stop: Any, sent: Any) -> None:
    """Read requests and garbage at 127.0.0.1:``port`` from 64 sockets bound to ``sources``
    (round robin) until ``stop``, at ``rate`` packets/s (0: as fast as it can)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(64)]
    for index, sock in enumerate(sockets):
        sock.bind((sources[index % len(sources)], 0))
        sock.setblocking(False)
    packets = [
        b"\x00\x01kernels/deploy-vmlinuz\x00octet\x00",
        b"\x00\x01pxelinux.cfg/01-02-00-00-00-02-ff\x00octet\x00",
        b"\x00\x01no/such/file\x00octet\x00blksize\x001468\x00",
        b"\x00\x01../../etc/passwd\x00octet\x00",
        b"\x00\x05garbage",
        os.urandom(64),
    ]
    count = 0
    target = ("127.0.0.1", port)
    began = time.monotonic()
    while not stop.is_set():
        if rate > 0:
            ahead = count / rate - (time.monotonic() - began)
            if ahead > 0:
                stop.wait(ahead)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.sendto(packets[count % len(packets)], target)
                count += 1
            with contextlib.suppress(OSError):
                while sock.recv(2048):
                    pass
        sent.value = count
    for sock in sockets:
        sock.close()


def s_tftp_flood(bench: Bench, out: Outcome) -> dict[str, Path]:
    nodes = bench.good[:4]
    port = int(bench.bed.config.tftp_port)
    pace = f"{bench.flood_rate:.0f} packets/s" if bench.flood_rate else "as fast as it can"
    out.what = (
        f"4 nodes deployed while a second process floods the TFTP port ({pace}) from "
        f"{bench.flood_sources} address(es) 127.0.9.x"
    )
    context = multiprocessing.get_context("fork")
    stop, sent = context.Event(), context.Value("q", 0)
    flood = context.Process(
        target=_flood,
        args=(port, bench.flood_rate, flood_sources(bench.flood_sources), stop, sent),
        daemon=True,
    )
    flood.start()
    began = time.time()
    try:
        ident = bench.start(nodes, anonymous=True)
        out.expected = {node: NodeState.DEPLOYED for node in nodes}
        _wait_ended(bench, [ident], out)
    finally:
        stop.set()
        flood.join(timeout=10)
        if flood.is_alive():
            flood.kill()
            flood.join(timeout=10)
    spent = time.time() - began
    out.notes.append(
        f"flood: {sent.value} packets in {spent:.1f} s ({sent.value / spent:.0f}/s) from 64 "
        "sockets, during the whole deployment"
    )
    return {ident: bench.image.image}


def s_disk_full_wrapped(bench: Bench, out: Outcome) -> dict[str, Path]:
    with _shrunk(bench, bench.good[1], SHRUNK_MIB):
        ids = s_disk_full(bench, out)
        _wait_ended(bench, list(ids), out)
    return ids


ACTIONS: dict[str, Callable[[Bench, Outcome], dict[str, Path]]] = {
    "concurrent": s_concurrent,
    "die-mid-chain": s_die_mid_chain,
    "noboot": s_noboot,
    "sshd-hang": s_sshd_hang,
    "power-fails": s_power_fails,
    "disk-full": s_disk_full_wrapped,
    "tftp-flood": s_tftp_flood,
}


def testbed_scenarios(
    names: list[str], args: argparse.Namespace, cpu: CpuSampler, workdir: Path
) -> list[Outcome]:
    """One testbed and one daemon for every testbed scenario in ``names``."""
    images = workdir / "images"
    images.mkdir()
    try:
        image = make_image(images / ENV_NAME, name=ENV_NAME)
        padded = make_image(images / "padded", name="padded", size_mb=PADDED_MIB)
    except MakeImageError as error:
        raise BenchError(f"make-image: {error}") from None
    hashes = {built.image: _tar_hashes(built.image) for built in (image, padded)}
    key = workdir / "user_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "faults bench", "-f", str(key)],
        check=True, stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
    )  # fmt: skip
    outcomes = []
    with testbed(workdir / "testbed", args.nodes + 1, FIRST_NODE) as bed:
        names_all = [spec.name for spec in bed.nodes]
        good, bad_power = names_all[:-1], names_all[-1]
        wrong = workdir / "wrong-ipmi-password"
        wrong.write_text("not-the-password\n")
        wrong.chmod(0o600)
        conf = bed.layout.conf_dir
        _tune(conf, bad_power, wrong)
        token = make_token(conf, workdir / "token", REPO)
        with running_daemon(conf, bed.layout.daemon_state, REPO) as daemon:
            started = wait_for_api(daemon, START_TIMEOUT)
            print(f"daemon pid {daemon.pid} up in {started:.1f} s", flush=True)
            api = Api(daemon.socket, token)
            try:
                registered = {
                    "description": image.description.read_text(),
                    "files": {image.image.name: api.upload(image.image)},
                }
                api.call("POST", "/v1/environments", json=registered)
                bench = Bench(
                    bed=bed, daemon=daemon, api=api, image=image, padded=padded, hashes=hashes,
                    pubkey=key.with_suffix(".pub").read_text(), good=good, bad_power=bad_power,
                    deadline=args.deadline, cpu=cpu, workdir=workdir, flood_rate=args.flood_rate,
                    flood_sources=args.flood_sources,
                )  # fmt: skip
                for name in names:
                    bench.deadline = args.deadline
                    print(f"{name}: ...", flush=True)
                    outcome = run_scenario(bench, name, ACTIONS[name])
                    _print_outcome(outcome)
                    outcomes.append(outcome)
            finally:
                api.close()
    return outcomes


# ---------------------------------------------------------------- report


def _states_text(out: Outcome) -> str:
    counts = Counter(out.states.values())
    return ", ".join(f"{state} {n}" for state, n in sorted(counts.items())) or "-"


def _http_text(out: Outcome) -> str:
    return " ".join(f"{code}x{n}" for code, n in sorted(out.http.items())) or "-"


def _row(out: Outcome) -> list[str]:
    return [
        out.name,
        "" if out.seconds is None else f"{out.seconds:.1f}",
        _states_text(out),
        "yes" if out.states and not out.not_final else ("-" if not out.states else "NO"),
        "yes" if out.states and not out.no_log else ("-" if not out.states else "NO"),
        f"{len(out.images_ok)} ok" + (f", {len(out.images_bad)} BAD" if out.images_bad else ""),
        _http_text(out),
        str(out.errors_5xx + out.tracebacks),
        str(len(out.leaked_processes)),
        str(len(out.leaked_files)),
        f"{len(out.anonymous_left)} / {len(out.envs_in_grace)}",
        str(out.paramiko),
        f"{out.log_bytes / 1e6:.1f}",
        "" if out.cpu is None else f"{out.cpu:.0%}",
        "ok" if out.ok else "FAILED",
    ]


HEADER = [
    "scenario", "time s", "final states", "all final", "logs", "images", "HTTP",
    "5xx+tracebacks", "leaked procs", "leaked files",
    "left by design (anon / envs)", "paramiko tracebacks", "daemon log MB", "CPU busy", "verdict",
]  # fmt: skip


def _details(out: Outcome) -> list[str]:
    lines = [f"{out.name}: {out.what}"]
    lines += [f"{out.name}: {note}" for note in out.notes]
    lines.append(f"{out.name}: the daemon log grew by {out.log_bytes} bytes")
    for node, state in sorted(out.states.items()):
        reason = f" ({out.reasons[node][:200]})" if node in out.reasons else ""
        lines.append(f"{out.name}: {node} {state}, {out.log_lines.get(node, 0)} log lines{reason}")
    lines += [f"{out.name}: UNEXPECTED {line}" for line in out.unexpected]
    lines += [f"{out.name}: LEAKED process {p}" for p in out.leaked_processes]
    lines += [f"{out.name}: LEAKED file {f}" for f in out.leaked_files]
    if out.anonymous_left:
        lines.append(
            f"{out.name}: {len(out.anonymous_left)} anonymous env dirs of ended deployments left "
            "until the next deployment starts (the daemon sweeps them then; checked)"
        )
    lines += [f"{out.name}: BAD image {i}" for i in out.images_bad]
    if out.envs_in_grace:
        lines.append(
            f"{out.name}: {len(out.envs_in_grace)} TFTP envs/ dirs no profile names, within the "
            f"daemon's {UNREFERENCED_GRACE:.0f} s grace (swept at a deployment's end after it)"
        )
    if out.tracebacks:
        lines.append(f"{out.name}: {out.tracebacks} tracebacks in the daemon log")
    if out.error:
        lines.append(f"{out.name}: FAILED: {out.error}")
    return lines


def _print_outcome(out: Outcome) -> None:
    for line in _details(out):
        print(f"  {line}", flush=True)
    print(f"  {out.name}: {'ok' if out.ok else 'FAILED'}", flush=True)


# ---------------------------------------------------------------- main


def _parse_scenarios(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"--scenarios {text!r}: unknown {', '.join(unknown) or '(none given)'}; "
            f"valid: {', '.join(SCENARIOS)}"
        )
    return [name for name in SCENARIOS if name in names]


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Faults and load through a real kadeploy-server (run as root, under "
        "flock /tmp/kadeploy-tests.lock)."
    )
    parser.add_argument(
        "--nodes", type=int, default=10, help="testbed nodes (plus one bad-power node)"
    )
    parser.add_argument("--scenarios", type=_parse_scenarios, default=list(SCENARIOS))
    parser.add_argument("--deadline", type=float, default=240.0, help="seconds per scenario")
    parser.add_argument("--load-seconds", type=float, default=20.0)
    parser.add_argument(
        "--flood-rate", type=float, default=0.0, help="tftp-flood packets/s (0: all it can)"
    )
    parser.add_argument(
        "--flood-sources",
        type=int,
        default=1,
        help="tftp-flood source addresses (the daemon caps sessions per address)",
    )
    parser.add_argument("--markdown", type=Path, default=None, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, store)")
    args = parser.parse_args(argv)
    if not 4 <= args.nodes <= 100:
        parser.error(f"--nodes {args.nodes}: expected 4 to 100 (the scenarios use up to 4 nodes)")
    if not 1 <= args.flood_sources <= 64:
        parser.error(f"--flood-sources {args.flood_sources}: expected 1 to 64")
    if args.deadline <= 0 or args.load_seconds <= 0 or args.flood_rate < 0:
        parser.error("--deadline, --load-seconds must be more than 0, --flood-rate not negative")
    return args


def run(args: argparse.Namespace, workdir: Path) -> list[Outcome]:
    outcomes: list[Outcome] = []
    with CpuSampler() as cpu:
        if "api-load" in args.scenarios:
            print("api-load: ...", flush=True)
            try:
                outcome = api_load(workdir / "api-load", args.load_seconds, cpu)
            except BenchError as error:
                outcome = Outcome("api-load", error=str(error))
            _print_outcome(outcome)
            outcomes.append(outcome)
        names = [name for name in args.scenarios if name in TESTBED_SCENARIOS]
        if names:
            (workdir / "bed").mkdir()
            try:
                outcomes += testbed_scenarios(names, args, cpu, workdir / "bed")
            except (BenchError, TestbedError) as error:
                done = {o.name for o in outcomes}
                outcomes += [Outcome(n, error=str(error)) for n in names if n not in done]
    return outcomes


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    unwind_on_signals()
    if os.geteuid() != 0:
        print(
            "bench/faults.py: run as root (the testbed needs namespaces, mounts)", file=sys.stderr
        )
        return 1
    when = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    command = shlex.join(["python", "bench/faults.py", *(argv or sys.argv[1:])])
    host = machine()
    for line in host.lines():
        print(line, flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="kadeploy-bench-faults-"))
    print(f"working directory {workdir}", flush=True)
    try:
        outcomes = run(args, workdir)
    except KeyboardInterrupt:
        print("bench/faults.py: interrupted; daemons and testbed removed", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"kept {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    rows = [HEADER, *(_row(o) for o in outcomes)]
    details = [line for o in outcomes for line in _details(o)]
    print()
    print_table(rows)
    for line in details:
        print(line)
    if args.markdown is not None:
        text = [
            f"Command: `{command}`  ",
            f"Date: {when}  ",
            *[f"{line}  " for line in host.lines()],
            "",
            *markdown_table(rows),
            "",
            *[f"- {line}" for line in details],
        ]
        args.markdown.write_text("\n".join(text) + "\n")
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
