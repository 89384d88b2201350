"""Deployment time end to end on the emulated testbed: first deployment, redeploy, and a
redeploy with a node that does not boot, each as a ratio to a lower bound.

    python bench/e2e.py [--nodes 8,32] [--first 101] [--deadline 900] [--link-rate 1gbit]
                        [--boot-samples 3] [--size-mb 0] [--markdown FILE] [--keep]

Run as root, alone: ``flock /tmp/kadeploy-tests.lock .venv/bin/python bench/e2e.py`` (the
testbed uses fixed loopback addresses). For each N, in a fresh temp dir:

- a testbed of N nodes, as ``kadeploy-testbed up -n N`` makes it (loopback, boot delay 1 s),
  numbered from ``--first`` (node-101... by default, clear of ``make demo``'s node-1...), its
  nodes booting from a free TFTP port;
- ``kadeploy-server start --foreground`` on the configuration the testbed wrote, unchanged:
  the shipped timeouts and variants (SetDeploymentEnv untrusted, BroadcastEnv chain then
  direct, BootNewEnv classical then hard_reboot);
- the image of ``kadeploy-testbed make-image``, registered with ``kaenv add``;
- three deployments with the real ``kadeploy -f NODEFILE -e debian-min -k KEY --json``:
  **first** (the nodes run their prod env), **redeploy** (they run the env the first one
  deployed), **noboot** (the last node given the testbed's ``noboot`` fault, so it stays
  silent once power-cycled, and ``--min-nodes N-1``).

For each: **wall**, from spawning ``kadeploy`` to its exit (**store**: the deployment's
``created_at`` -> ``finished_at``); nodes deployed and exit status (from ``--json``); per
macrostep (SetDeploymentEnv, BroadcastEnv, BootNewEnv) the mean and max
over the deployed nodes of the time from the node's first state of the macrostep to its first
state after it, from the store's state history (``GET /v1/deployments/ID/nodes/NODE``); the
share of the machine's cores busy during the run (/proc/stat, anyone's work); the reboots the
daemon escalated (its "escalating to a ... reboot" log lines); how long the nodes gathered
for the chain (first node entering BroadcastEnv -> first ``chain round started``).

**Lower bound** = 2 boots + S/B + the fixed steps:

- **boot**: ``ipmitool ... chassis power cycle`` of the first node (the configuration's
  ``reboot_hard``), until the node runs its prod env and its sshd sends a banner, measured
  ``--boot-samples`` times (default 5, each after the node ran 2 s) before the first
  deployment (the daemon's TFTP server is up); their median (one sample in a few is 0.7 s
  faster than the others, e.g. 1.2 s against 2.0 s: the median is what a boot takes);
- **S/B**: the image's size over ``--link-rate`` (default 1 Gbit/s, a cluster's link: on
  loopback the link does not limit, so the rate is a choice, said in the output);
- **fixed steps**: on the fastest node of the first deployment (shortest pending -> deployed),
  ``partitioning`` -> ``transferring`` (partition the disk, format the deploy partition) plus
  ``postinstall`` -> ``booting`` (postinstalls, user keys, kernel checks, sync and umount).

Every row is printed as wall / bound, and the redeploys against the issue's target
(``wall/target``): at most 1.5 x the first deployment + 10 s. Every wait is bounded (testbed
up, API start, each ``kadeploy`` by ``--deadline``: past it the deployment is cancelled and
the run reported as a timeout); the daemon, the testbed and the temp dir are removed in every
case, also on Ctrl-C or SIGTERM. Exit status 1 if a run did not deploy what it should or the
redeploy misses the target (the noboot run is printed against it too, for information).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _common import markdown_table as _markdown
from _common import print_table as _print_table
from _common import unwind_on_signals
from _testbed import BenchError, CpuSampler, free_udp_port, machine, rate_bits
from control_plane import (
    START_TIMEOUT,
    Daemon,
    make_token,
    running_daemon,
    wait_for_api,
)

from kadeploy_core.machine import NodeState
from kadeploy_core.plans import Macrostep
from kadeploy_testbed.image import ImageResult, MakeImageError, make_image
from kadeploy_testbed.layout import BMC_PORT, BMC_USER
from kadeploy_testbed.state import TestbedConfig
from kadeploy_testbed.testbed import Testbed, TestbedError, down, ssh_answers, up
from kadeployd.actors.manager import CHAIN_ROUND_ENDED, CHAIN_ROUND_STARTED

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEFAULT_NODES = (8, 32)
FIRST_NODE = 101
"""Benchmark nodes are node-101...: clear of ``make demo``'s node-1... and the tests'."""
ENV_NAME = "debian-min"
MACROSTEPS = tuple(str(m) for m in Macrostep)
FINAL_STATES = frozenset(s.value for s in NodeState if s.final)
TARGET_FACTOR = 1.5
TARGET_SLACK = 10.0
"""The issue's target: a redeploy takes at most 1.5 x the first deployment + 10 s."""
BOOT_TIMEOUT = 60.0
BOOT_POLL = 0.05
BOOT_SETTLE = 2.0
"""Seconds a node runs before it is power-cycled for a boot sample (as a node of a
deployment has run for seconds before its reboot)."""
TOOL_TIMEOUT = 120.0
CANCEL_GRACE = 60.0
ESCALATING = "escalating to a"
PARAMIKO = "paramiko.transport"
REFUSED = "Permission denied (publickey)"
PHASES = {
    "boot 1": ("rebooting", "deploy_env"),
    "partition+format": ("partitioning", "transferring"),
    "transfer": ("transferring", "postinstall"),
    "postinstall..umount": ("postinstall", "booting"),
    "boot 2": ("booting", "deployed"),
}
"""Intervals of a node's history: from the first entry into one state to the first into the
other (the daemon's view: boot 1 includes the reboot command and its polls)."""
RUNS = ("first", "redeploy", "noboot")


# ---------------------------------------------------------------- results


@dataclass
class Run:
    """One ``kadeploy`` (or why it did not end)."""

    name: str
    nodes: int
    expected: int
    """Nodes it should deploy: N, or N - 1 with the noboot node."""
    wall: float | None = None
    store: float | None = None
    """The store's created_at -> finished_at."""
    exit_code: int | None = None
    deployment_id: str = ""
    status: str = ""
    deployed: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    macrosteps: dict[str, list[float]] = field(default_factory=dict)
    """Per macrostep, each deployed node's time in it."""
    phases: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per deployed node, its :data:`PHASES` and ``total``."""
    failed_spans: dict[str, float] = field(default_factory=dict)
    """Per node not deployed, seconds from its first state to its final one."""
    chain_rounds: int = 0
    chain_seconds: float | None = None
    chain_wait: float | None = None
    """From the first node entering BroadcastEnv to the first chain round's start (the nodes
    gathering, at most ``daemon.chain_gather_window``)."""
    escalations: list[str] = field(default_factory=list)
    cpu: float | None = None
    error: str = ""
    excerpt: list[str] = field(default_factory=list)
    """Daemon log and node log lines explaining a bad run."""

    @property
    def ok(self) -> bool:
        return not self.error and self.deployed >= self.expected and self.exit_code == 0

    def fastest(self) -> str | None:
        """The deployed node with the shortest pending -> deployed."""
        timed = {node: p["total"] for node, p in self.phases.items() if "total" in p}
        return min(timed, key=lambda node: timed[node]) if timed else None


@dataclass
class Bound:
    """2 boots + S/B + the fixed steps."""

    boots: list[float]
    size: int
    bits: float
    fixed_node: str
    partition: float
    tail: float

    @property
    def boot(self) -> float:
        return statistics.median(self.boots)

    @property
    def transfer(self) -> float:
        return self.size * 8 / self.bits

    @property
    def seconds(self) -> float:
        return 2 * self.boot + self.transfer + self.partition + self.tail


@dataclass
class Result:
    """Everything measured on one testbed of N nodes."""

    nodes: int
    runs: list[Run] = field(default_factory=list)
    boots: list[float] = field(default_factory=list)
    image_size: int = 0
    bound: Bound | None = None
    error: str = ""

    def run(self, name: str) -> Run | None:
        return next((r for r in self.runs if r.name == name), None)


# ---------------------------------------------------------------- history


def macrostep_times(history: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds from the node's first entry of each macrostep to its first entry after it
    (another macrostep or a final state)."""
    times: dict[str, float] = {}
    for macrostep in MACROSTEPS:
        start = next((i for i, h in enumerate(history) if h["macrostep"] == macrostep), None)
        if start is None:
            continue
        end = next(
            (
                h
                for h in history[start + 1 :]
                if h["macrostep"] != macrostep or h["state"] in FINAL_STATES
            ),
            None,
        )
        if end is not None:
            times[macrostep] = end["at"] - history[start]["at"]
    return times


def phase_times(history: list[dict[str, Any]]) -> dict[str, float]:
    """The node's :data:`PHASES` and its ``total`` (first entry -> ``deployed``)."""
    first: dict[str, float] = {}
    for entry in history:
        first.setdefault(entry["state"], entry["at"])
    times = {
        name: first[end] - first[begin]
        for name, (begin, end) in PHASES.items()
        if begin in first and end in first
    }
    if history and "deployed" in first:
        times["total"] = first["deployed"] - history[0]["at"]
    return times


# ---------------------------------------------------------------- the API


def _client(socket: Path, token: str) -> httpx.Client:
    return httpx.Client(
        transport=httpx.HTTPTransport(uds=str(socket)),
        base_url="http://kadeployd",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30.0,
    )


def _get(client: httpx.Client, path: str, **params: Any) -> Any:
    try:
        answer = client.get(path, params=params or None)
    except httpx.HTTPError as error:
        raise BenchError(f"GET {path}: {error}") from None
    if answer.status_code >= 400:
        raise BenchError(f"GET {path}: HTTP {answer.status_code}: {answer.text[:300]}")
    return answer.json()


def _deployment_log(client: httpx.Client, deployment_id: str) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    after = 0
    while True:
        page = _get(client, f"/v1/deployments/{deployment_id}/log", after=after, limit=10_000)
        lines += page
        if len(page) < 10_000:
            return lines
        after = page[-1]["seq"]


def _cancel_running(client: httpx.Client) -> list[str]:
    """Cancel every running deployment (a run past its deadline); their ids."""
    with contextlib.suppress(BenchError):
        running = _get(client, "/v1/deployments", status="running", limit=100)
        for view in running:
            with contextlib.suppress(httpx.HTTPError):
                client.post(
                    f"/v1/deployments/{view['id']}/cancel",
                    json={"reason": "bench/e2e.py: past its deadline"},
                )
        return [view["id"] for view in running]
    return []


# ---------------------------------------------------------------- the testbed


@contextlib.contextmanager
def testbed(directory: Path, n: int, first: int) -> Iterator[Testbed]:
    """``kadeploy-testbed up -n N`` (its defaults: loopback, boot delay 1 s) on a free TFTP
    port; taken down on exit whatever happens (also if ``up`` is interrupted)."""
    config = TestbedConfig(nodes=n, first=first, tftp_host="127.0.0.1", tftp_port=free_udp_port())
    try:
        try:
            yield up(directory, config, timeout=120 + 3 * n)
        except TestbedError as error:
            raise BenchError(f"kadeploy-testbed up: {error}") from None
    finally:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            swept = down(directory, quiet=True)
            if swept:
                print(f"  testbed down swept: {', '.join(swept[:10])}", flush=True)
        finally:
            signal.signal(signal.SIGINT, previous)


def measure_boot(bed: Testbed, name: str) -> float:
    """Seconds from ``ipmitool chassis power cycle`` to the node in prod with sshd answering."""
    spec = bed.node(name)
    argv = [
        "ipmitool", "-I", "lanplus", "-H", spec.bmc, "-p", str(BMC_PORT), "-U", BMC_USER,
        "-f", str(bed.layout.ipmi_password), "chassis", "power", "cycle",
    ]  # fmt: skip
    began = time.monotonic()
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30, check=False
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"{name}: ipmitool power cycle did not answer in 30 s") from None
    if done.returncode != 0:
        raise BenchError(f"{name}: ipmitool power cycle: {done.stderr.strip()}")
    deadline = began + BOOT_TIMEOUT
    while time.monotonic() < deadline:
        # The env turns "prod" only once the new init runs (the old one is reaped first).
        if bed.node_status(name)["env"] == "prod" and ssh_answers(spec.address, timeout=0.5):
            return time.monotonic() - began
        time.sleep(BOOT_POLL)
    raise BenchError(f"{name}: not back in prod with sshd answering {BOOT_TIMEOUT:.0f} s after")


# ---------------------------------------------------------------- one deployment


@dataclass
class Context:
    """What a deployment run needs."""

    bed: Testbed
    daemon: Daemon
    client: httpx.Client
    env: dict[str, str]
    nodefile: Path
    key: Path
    workdir: Path
    deadline: float
    cpu: CpuSampler


def _tool(ctx: Context, *argv: str) -> str:
    """Run one of the Kadeploy tools (bounded); its stdout, BenchError if it fails."""
    try:
        done = subprocess.run(
            [str(BIN / argv[0]), *argv[1:]],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            env=ctx.env,
            timeout=TOOL_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"{shlex.join(argv)}: no answer within {TOOL_TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        raise BenchError(f"{shlex.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def deploy(ctx: Context, run: Run, min_nodes: int | None) -> None:
    """``kadeploy ... --json``, bounded by the deadline; fills ``run``."""
    argv = [str(BIN / "kadeploy"), "-f", str(ctx.nodefile), "-e", ENV_NAME]
    argv += ["-k", str(ctx.key), "--json"]
    if min_nodes is not None:
        argv += ["--min-nodes", str(min_nodes)]
    out, err = ctx.workdir / f"{run.name}.json", ctx.workdir / f"{run.name}.stderr"
    log_offset = ctx.daemon.log.stat().st_size
    print(f"  {run.name}: {shlex.join(argv[1:])}", flush=True)
    with out.open("wb") as stdout, err.open("wb") as stderr:
        began = time.time()
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, env=ctx.env,
            start_new_session=True,
        )  # fmt: skip
        try:
            run.exit_code = proc.wait(timeout=ctx.deadline)
            run.wall = time.time() - began
        except subprocess.TimeoutExpired:
            cancelled = _cancel_running(ctx.client)
            run.error = (
                f"timed out: kadeploy still running after {ctx.deadline:.0f} s "
                f"(cancelled {', '.join(cancelled) or 'nothing'})"
            )
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=CANCEL_GRACE)
        finally:
            _stop_group(proc)
        ended = time.time()
    run.cpu = ctx.cpu.busy(began, ended)
    _read_outcome(run, out, err)
    if run.deployment_id:
        try:
            _read_history(ctx, run)
        except BenchError as error:
            run.error = run.error or f"reading the history: {error}"
    if not run.ok:
        run.excerpt = _excerpt(ctx, run, log_offset)


def _read_outcome(run: Run, out: Path, err: Path) -> None:
    text = out.read_text(errors="replace").strip()
    if not text:
        tail = err.read_text(errors="replace").strip().splitlines()[-3:]
        run.error = run.error or f"kadeploy printed no JSON: {' | '.join(tail)}"
        return
    try:
        document = json.loads(text)
    except ValueError:
        run.error = run.error or f"kadeploy's JSON does not parse: {text[:200]}"
        return
    final = document.get("deployment") or {}
    run.deployment_id = final.get("id", "")
    run.status = final.get("status", "")
    run.deployed = len(document.get("deployed") or [])
    run.failed = list(document.get("failed") or [])
    if final.get("finished_at") is not None and final.get("created_at") is not None:
        run.store = final["finished_at"] - final["created_at"]


def _read_history(ctx: Context, run: Run) -> None:
    ident = run.deployment_id
    entered: list[float] = []
    for spec in ctx.bed.nodes:
        detail = _get(ctx.client, f"/v1/deployments/{ident}/nodes/{spec.name}")
        history = sorted(detail["history"], key=lambda h: h["seq"])
        entered += [h["at"] for h in history if h["macrostep"] == str(Macrostep.BROADCAST_ENV)][:1]
        if detail["state"] == "deployed":
            for macrostep, seconds in macrostep_times(history).items():
                run.macrosteps.setdefault(macrostep, []).append(seconds)
            run.phases[spec.name] = phase_times(history)
        elif history:
            run.failed_spans[spec.name] = history[-1]["at"] - history[0]["at"]
    lines = _deployment_log(ctx.client, ident)
    run.escalations = [
        f"{line['node']}: {line['text']}" for line in lines if ESCALATING in line["text"]
    ]
    starts = [line["at"] for line in lines if line["text"].startswith(CHAIN_ROUND_STARTED)]
    ends = [line["at"] for line in lines if line["text"].startswith(CHAIN_ROUND_ENDED)]
    run.chain_rounds = len(
        {line["text"] for line in lines if line["text"].startswith(CHAIN_ROUND_STARTED)}
    )
    if starts and ends:
        run.chain_seconds = max(ends) - min(starts)
        if entered:
            run.chain_wait = min(starts) - min(entered)


def _excerpt(ctx: Context, run: Run, offset: int) -> list[str]:
    """The daemon log's warnings and errors of this run, and the last log lines of each node
    that did not deploy."""
    with ctx.daemon.log.open("rb") as log:
        log.seek(offset)
        text = log.read().decode(errors="replace")
    lines = [line for line in text.splitlines() if " WARNING " in line or " ERROR " in line]
    # Counted only: paramiko's traceback at ERROR for each probe of a node going down, and
    # the soft reboots the deployed env refuses (the escalation's evidence).
    kept = [line for line in lines if PARAMIKO not in line and REFUSED not in line]
    noise, lines = len(lines) - len(kept), kept
    # The lines naming a node that did not deploy first.
    failed = re.compile(
        "|".join(rf"\b{re.escape(f.get('node', ''))}\b" for f in run.failed) or "$^"
    )
    lines.sort(key=lambda line: failed.search(line) is None)
    excerpt = [f"daemon log: {line[:300]}" for line in lines[:12]]
    if len(lines) > 12:
        excerpt.append(f"daemon log: ... {len(lines) - 12} more warnings/errors")
    if noise:
        excerpt.append(
            f"daemon log: and {noise} lines of {PARAMIKO} tracebacks (SSH probes of "
            "rebooting nodes) and refused soft reboots"
        )
    for failure in run.failed[:3]:
        node = failure.get("node", "")
        with contextlib.suppress(BenchError):
            node_log = _get(ctx.client, f"/v1/deployments/{run.deployment_id}/nodes/{node}/log")
            excerpt += [f"{node} log: {line['text'][:300]}" for line in node_log[-8:]]
    return excerpt


# ---------------------------------------------------------------- one testbed


def measure(n: int, args: argparse.Namespace, cpu: CpuSampler, workdir: Path) -> Result:
    """Testbed, daemon, image, three deployments; errors end in ``error``."""
    result = Result(n)
    try:
        with testbed(workdir / "testbed", n, args.first) as bed:
            print(f"N={n}: testbed up: {bed.nodes[0].name}..{bed.nodes[-1].name}", flush=True)
            _measure_on(bed, n, args=args, cpu=cpu, workdir=workdir, result=result)
    except BenchError as error:
        result.error = str(error)
        print(f"N={n}: FAILED: {error}", flush=True)
    return result


def _measure_on(
    bed: Testbed,
    n: int,
    *,
    args: argparse.Namespace,
    cpu: CpuSampler,
    workdir: Path,
    result: Result,
) -> None:
    built = _image(workdir, args.size_mb)
    result.image_size = built.size
    conf = bed.layout.conf_dir
    token = make_token(conf, workdir / "token", REPO)
    key = _user_key(workdir)
    nodefile = workdir / "nodefile"
    nodefile.write_text("".join(f"{spec.name}\n" for spec in bed.nodes))
    with running_daemon(conf, bed.layout.daemon_state, REPO) as daemon:
        started = wait_for_api(daemon, START_TIMEOUT)
        print(f"  daemon pid {daemon.pid} up in {started:.1f} s", flush=True)
        env = dict(os.environ)
        env.update(
            KADEPLOY_SERVER=f"unix:{daemon.socket}", KADEPLOY_TOKEN=token, KADEPLOY_CONF=str(conf)
        )
        with _client(daemon.socket, token) as client:
            ctx = Context(bed, daemon, client, env, nodefile, key, workdir, args.deadline, cpu)
            _tool(ctx, "kaenv", "add", str(built.description))
            for _ in range(args.boot_samples):
                time.sleep(BOOT_SETTLE)
                result.boots.append(measure_boot(bed, bed.nodes[0].name))
            print(f"  boot: {', '.join(f'{b:.2f}' for b in result.boots)} s", flush=True)
            _three_runs(ctx, n, result)
    first = result.run("first")
    fastest = first.fastest() if first else None
    if first and fastest:
        phases = first.phases[fastest]
        result.bound = Bound(
            boots=result.boots,
            size=result.image_size,
            bits=rate_bits(args.link_rate),
            fixed_node=fastest,
            partition=phases.get("partition+format", 0.0),
            tail=phases.get("postinstall..umount", 0.0),
        )


def _three_runs(ctx: Context, n: int, result: Result) -> None:
    for name in RUNS:
        silent = ctx.bed.nodes[-1].name
        if name == "noboot":
            ctx.bed.fault(silent, "noboot")
            print(f"  {silent}: fault noboot", flush=True)
        run = Run(name, n, expected=n - 1 if name == "noboot" else n)
        deploy(ctx, run, min_nodes=n - 1 if name == "noboot" else None)
        result.runs.append(run)
        for line in _run_lines(run):
            print(f"    {line}", flush=True)
        if name == "noboot":
            ctx.bed.fault(silent, "clear")


def _image(workdir: Path, size_mb: int) -> ImageResult:
    (workdir / "images").mkdir(parents=True, exist_ok=True)
    try:
        return make_image(workdir / "images" / ENV_NAME, name=ENV_NAME, size_mb=size_mb)
    except MakeImageError as error:
        raise BenchError(f"make-image: {error}") from None


def _user_key(workdir: Path) -> Path:
    key = workdir / "user_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "e2e bench user", "-f", str(key)],
        check=True, stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
    )  # fmt: skip
    return key.with_suffix(".pub")


# ---------------------------------------------------------------- report


def _mean_max(values: list[float]) -> str:
    return f"{statistics.fmean(values):.2f} / {max(values):.2f}" if values else ""


def _run_lines(run: Run) -> list[str]:
    parts = [f"{run.name}: {run.deployed}/{run.nodes} deployed, exit {run.exit_code}"]
    if run.wall is not None:
        parts.append(f"wall {run.wall:.2f} s")
    for macrostep in MACROSTEPS:
        if run.macrosteps.get(macrostep):
            parts.append(f"{macrostep} {_mean_max(run.macrosteps[macrostep])} s")
    lines = [", ".join(parts)]
    for failure in run.failed:
        spent = run.failed_spans.get(failure.get("node", ""))
        after = f" after {spent:.1f} s" if spent is not None else ""
        step = f" in {failure['step']}" if failure.get("step") else ""
        lines.append(
            f"not deployed: {failure.get('node')}: {failure.get('state')}{step}{after}: "
            f"{failure.get('reason')}"
        )
    if run.chain_seconds is not None and run.chain_wait is not None:
        lines.append(
            f"chain: {run.chain_rounds} round(s), the first started {run.chain_wait:.2f} s after "
            f"the first node entered BroadcastEnv; {run.chain_seconds:.2f} s from the first "
            "round's start to the last one's end"
        )
    if run.escalations:
        lines.append(f"{len(run.escalations)} escalated reboots, e.g. {run.escalations[0]}")
    if run.error:
        lines.append(f"FAILED: {run.error}")
    lines += run.excerpt
    return [lines[0], *(f"{run.name}: {line}" for line in lines[1:])]


def _table(results: list[Result]) -> list[list[str]]:
    rows = [
        ["N", "run", "deployed", "exit", "wall s", "store s", "bound s", "wall/bound",
         "wall/target", *(f"{m} mean/max s" for m in MACROSTEPS), "CPU busy"],
    ]  # fmt: skip
    for result in results:
        bound = result.bound.seconds if result.bound else None
        first = result.run("first")
        target = None
        if first is not None and first.wall is not None:
            target = TARGET_FACTOR * first.wall + TARGET_SLACK
        for run in result.runs:
            versus = ""
            if run.name != "first" and target is not None and run.wall is not None:
                versus = f"{run.wall / target:.2f}"
            rows.append(
                [
                    str(run.nodes),
                    run.name + ("" if run.name != "noboot" else f" (--min-nodes {run.nodes - 1})"),
                    f"{run.deployed}/{run.nodes}",
                    "" if run.exit_code is None else str(run.exit_code),
                    "" if run.wall is None else f"{run.wall:.2f}",
                    "" if run.store is None else f"{run.store:.2f}",
                    "" if bound is None else f"{bound:.2f}",
                    "" if bound is None or run.wall is None else f"{run.wall / bound:.2f}",
                    versus,
                    *(_mean_max(run.macrosteps.get(m, [])) for m in MACROSTEPS),
                    "" if run.cpu is None else f"{run.cpu:.0%}",
                ]
            )
    return rows


def _bound_lines(result: Result, rate: str) -> list[str]:
    bound = result.bound
    if bound is None:
        return [f"N={result.nodes}: no bound (no deployed node in the first deployment)"]
    first = result.run("first")
    phases = first.phases.get(bound.fixed_node, {}) if first else {}
    seen = ", ".join(f"{name} {phases[name]:.2f} s" for name in PHASES if name in phases)
    lines = [
        f"N={result.nodes}: bound {bound.seconds:.2f} s = 2 x boot {bound.boot:.2f} s "
        f"(ipmitool power cycle -> prod sshd banner, median of "
        f"{', '.join(f'{b:.2f}' for b in bound.boots)}) + S/B {bound.transfer:.3f} s "
        f"(S = {bound.size} bytes, B = {rate}) + fixed {bound.partition + bound.tail:.2f} s "
        f"({bound.fixed_node}: partition+format {bound.partition:.2f} s, "
        f"postinstall..umount {bound.tail:.2f} s)",
        f"N={result.nodes}: fastest node of the first deployment, {bound.fixed_node}, from its "
        f"history: {seen}",
    ]
    return lines


def _target_lines(result: Result) -> tuple[list[str], bool]:
    first = result.run("first")
    if first is None or first.wall is None:
        return [], False
    target = TARGET_FACTOR * first.wall + TARGET_SLACK
    lines, met = [], True
    for run in result.runs:
        if run.name == "first" or run.wall is None:
            continue
        ok = run.wall <= target
        met = met and (ok or run.name != "redeploy")
        lines.append(
            f"N={result.nodes} {run.name}: {run.wall:.2f} s = {run.wall / first.wall:.2f} x first; "
            f"target {TARGET_FACTOR:g} x {first.wall:.2f} + {TARGET_SLACK:g} = {target:.2f} s: "
            f"{'met' if ok else 'NOT met'} ({run.wall / target:.2f} of it)"
            + ("" if run.name == "redeploy" else " (for information)")
        )
    return lines, met and result.run("redeploy") is not None


# ---------------------------------------------------------------- main


def _parse_nodes(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected node counts separated by commas, e.g. 8,32"
        ) from None
    if not values or min(values) < 2 or max(values) > 150:
        raise argparse.ArgumentTypeError(f"{text!r}: node counts go from 2 to 150")
    return list(dict.fromkeys(values))


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="First deployment, redeploy and redeploy with a noboot node on the testbed "
        "(run as root, under flock /tmp/kadeploy-tests.lock)."
    )
    parser.add_argument("--nodes", type=_parse_nodes, default=list(DEFAULT_NODES))
    parser.add_argument("--first", type=int, default=FIRST_NODE, help="first node's number")
    parser.add_argument(
        "--deadline", type=float, default=900.0, help="seconds each kadeploy may take"
    )
    parser.add_argument(
        "--link-rate", default="1gbit", help="B of the bound's S/B (loopback has no link rate)"
    )
    parser.add_argument("--boot-samples", type=int, default=5, help="power cycles timed")
    parser.add_argument("--size-mb", type=int, default=0, help="pad the image to about this")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the temp dirs (logs, store)")
    args = parser.parse_args(argv)
    if args.first < 1 or args.first + max(args.nodes) - 1 > 250:
        parser.error(f"--first {args.first}: nodes must fit in 1..250")
    if args.deadline <= 0 or args.boot_samples < 1 or args.size_mb < 0:
        parser.error("--deadline and --boot-samples must be positive, --size-mb not negative")
    try:
        rate_bits(args.link_rate)
    except BenchError as error:
        parser.error(str(error))
    return args


def _describe_source() -> str:
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        done = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        if done.returncode == 0:
            return done.stdout.strip()
    return "unknown"


def _mounted_under(path: Path) -> bool:
    prefix = str(path) + "/"
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            if len(fields) > 4 and fields[4].startswith(prefix):
                return True
    return False


def run(args: argparse.Namespace) -> list[Result]:
    results = []
    with CpuSampler() as cpu:
        for n in args.nodes:
            workdir = Path(tempfile.mkdtemp(prefix=f"kadeploy-bench-e2e-{n}-"))
            print(f"N={n}: working directory {workdir}", flush=True)
            try:
                results.append(measure(n, args, cpu, workdir))
            finally:
                if args.keep:
                    print(f"N={n}: kept {workdir}", flush=True)
                elif _mounted_under(workdir):
                    print(f"N={n}: {workdir} still has mounts: left in place", flush=True)
                else:
                    shutil.rmtree(workdir, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    unwind_on_signals()
    if os.geteuid() != 0:
        print("bench/e2e.py: run as root (the testbed needs namespaces, mounts)", file=sys.stderr)
        return 1
    when = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    command = shlex.join(["python", "bench/e2e.py", *(argv or sys.argv[1:])])
    host = machine()
    source = _describe_source()
    for line in [*host.lines(), f"source: {source}"]:
        print(line, flush=True)
    try:
        results = run(args)
    except KeyboardInterrupt:
        print("bench/e2e.py: interrupted; daemon and testbed removed", file=sys.stderr)
        return 130
    rows = _table(results)
    notes: list[str] = []
    met = True
    for result in results:
        targets, ok = _target_lines(result)
        met = met and ok
        notes += _bound_lines(result, args.link_rate) + targets
        notes += [f"N={result.nodes} {line}" for run in result.runs for line in _run_lines(run)]
        if result.error:
            notes.append(f"N={result.nodes}: FAILED: {result.error}")
    print()
    _print_table(rows)
    for line in notes:
        print(line)
    if args.markdown is not None:
        text = [
            f"Command: `{command}`  ",
            f"Date: {when}  ",
            *[f"{line}  " for line in host.lines()],
            f"Source: {source}",
            "",
            *_markdown(rows),
            "",
            *[f"- {line}" for line in notes],
        ]
        args.markdown.write_text("\n".join(text) + "\n")
    good = all(not r.error and all(run.ok for run in r.runs) for r in results)
    return 0 if good and met else 1


if __name__ == "__main__":
    sys.exit(main())
