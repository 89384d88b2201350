"""The daemon's own work at scale: one deployment of N dummy nodes through the real API.

    python bench/control_plane.py [--nodes 1000,5000,10000] [--deadline S] [--source DIR]
                                  [--markdown FILE] [--keep]

For each N, in a fresh temp dir: a configuration of N nodes whose three macrosteps are all
``dummy`` (bench/_scale_config.py: no node is contacted), a real ``kadeploy-server start
--foreground`` subprocess on it, a token made by ``kadeploy-server token add USER`` (the user
running the bench, made an almighty user of that daemon), and one
deployment of the N nodes with an anonymous environment (a tiny tar+zstd image uploaded through
``/v1/uploads``), sent with httpx over the daemon's Unix socket. Measured:

- **wall**: from just before ``POST /v1/deployments`` to the deployment's end as the store
  recorded it (``finished_at``); **store**: the store's own ``created_at`` to ``finished_at``;
  **ms/node**: wall / N. The issue's budget is 3 ms per node (1,000 nodes in 3 s, 10,000 in
  30 s); other N are compared with the same rate.
- **deployed**: nodes whose final state is ``deployed`` (the issue wants all of them).
- **RSS**: the daemon's peak resident set (``VmHWM`` of /proc/PID/status, and ``VmRSS``
  sampled every 50 ms), against 1 GB (10^9 bytes).
- **threads**: /proc/PID/status ``Threads`` before the request, its peak (sampled every
  50 ms), and after the end: the bench waits up to 30 s for it to come back within 2 of the
  start and reports how long that took.
- **rows**: rows of the store's ``state_history`` and ``node_logs`` tables after the run, per
  second of wall; **tx**: transactions, from the line ``store: wrote R rows in T
  transactions`` the StoreActor logs at stop ("n/a" if the daemon does not write it).
- **CPU**: the daemon's utime+stime (/proc/PID/stat) from the request until the bench saw
  the end, in cores; the machine's busy share of all cores (/proc/stat) over the wall.
- **start**: seconds from spawning the daemon to its API answering (the N nodes' configuration
  loaded).

Every wait is bounded: start-up, the deployment (``--deadline``, default max(120, 0.03 x N)
seconds; a run past it is reported as a timeout with the node states reached) and the stop
(SIGTERM, then SIGKILL of the daemon's process group). The daemon and the temp dirs are removed
in every case, also on Ctrl-C or SIGTERM. Exit status 1 if any run did not deploy every node.

``--source DIR`` runs the daemon of another source tree (e.g. ``git archive`` of a commit):
its directory is put first on the daemon's PYTHONPATH. By default it is this repository.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import pwd
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _common import markdown_table as _markdown
from _common import print_table as _print_table
from _common import unwind_on_signals
from _scale_config import node_names, write_dummy_config, write_environment
from _testbed import BenchError, CpuSampler, machine

REPO = Path(__file__).resolve().parents[1]
DEFAULT_NODES = (1000, 5000, 10000)
BUDGET_PER_NODE = 0.003
"""The issue's budget: 1,000 nodes in 3 s, 10,000 in 30 s."""
TARGETS = {1000: 3.0, 10000: 30.0}
RSS_LIMIT = 1_000_000_000
"""1 GB."""
SAMPLE_INTERVAL = 0.05
POLL_INTERVAL = 0.1
PROGRESS_INTERVAL = 10.0
START_TIMEOUT = 180.0
THREAD_SETTLE = 30.0
THREAD_SLACK = 2
"""Threads 'back where they were': at most this many above the count before the request."""
STOP_TIMEOUT = 120.0
KILL_TIMEOUT = 10.0
USER = pwd.getpwuid(os.getuid()).pw_name
"""Who deploys: the user running the bench, made an almighty user of the daemon."""
_STORE_LINE = re.compile(r"store: wrote (\d+) rows in (\d+) transactions")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- the daemon process


class ProcSampler:
    """VmRSS, VmHWM and Threads of one process, read from /proc every 50 ms in a thread."""

    def __init__(self, pid: int, interval: float = SAMPLE_INTERVAL) -> None:
        self.pid = pid
        self._interval = interval
        self.peak_rss = 0
        self.peak_threads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="proc-sampler", daemon=True)

    def __enter__(self) -> ProcSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            status = proc_status(self.pid)
            if status:
                self.peak_rss = max(self.peak_rss, status.get("VmRSS", 0))
                self.peak_threads = max(self.peak_threads, status.get("Threads", 0))
            self._stop.wait(self._interval)


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (bytes) and Threads of ``pid``; empty once it is gone."""
    values: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return values
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
        elif key == "Threads":
            values[key] = int(rest)
    return values


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of ``pid`` (all its threads), in seconds."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _environment(source: Path) -> dict[str, str]:
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(source) + (os.pathsep + path if path else "")
    return env


def _server_command() -> list[str]:
    script = Path(sys.executable).parent / "kadeploy-server"
    return [str(script)] if script.exists() else [sys.executable, "-m", "kadeployd.server_cli"]


@dataclass
class Daemon:
    """A ``kadeploy-server start --foreground`` child in its own session."""

    process: subprocess.Popen[bytes]
    log: Path
    socket: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def death(self) -> str:
        """Why the daemon ended, with the last lines of its log."""
        return f"the daemon died (exit status {self.process.returncode}): {_log_tail(self.log)}"


_EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Timeout|Exit)\b.*")


def first_errors(log: Path) -> str:
    """The daemon log's first ERROR line and first exception line (a traceback's last line),
    and how many of each there are: a hint of why nodes did not deploy."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    errors = [line for line in lines if " ERROR " in line]
    exceptions = Counter(line[:160] for line in lines if _EXCEPTION_LINE.match(line))
    parts = []
    if errors:
        parts.append(f"{len(errors)} ERROR lines, the first: {errors[0][:300]}")
    if exceptions:
        common = ", ".join(f"{count} x {text}" for text, count in exceptions.most_common(3))
        parts.append(f"exceptions: {common}")
    return "; ".join(parts)


def _log_tail(log: Path, lines: int = 3) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(line.strip() for line in text[-lines:]) or "(empty log)"


@contextlib.contextmanager
def running_daemon(conf: Path, state: Path, source: Path) -> Iterator[Daemon]:
    """Start the daemon; stop it (SIGTERM, then SIGKILL of its group) however the run ends."""
    log = state / "daemon.log"
    state.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [*_server_command(), "start", "--foreground", "--conf", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=_environment(source),
            cwd=state,
        )
    daemon = Daemon(process, log, state / "kadeployd.sock")
    try:
        yield daemon
    except BaseException:
        if daemon.alive():
            print(
                f"  stopping the daemon (pid {daemon.pid}): SIGTERM, SIGKILL after "
                f"{STOP_TIMEOUT:.0f} s",
                flush=True,
            )
        raise
    finally:
        stop_daemon(daemon)


def stop_daemon(daemon: Daemon) -> float | None:
    """SIGTERM (the orderly stop), bounded; then SIGKILL its process group. Seconds it took
    to stop by itself, None if it had to be killed or was already gone. Ctrl-C is ignored
    meanwhile, so a second one cannot leave the daemon behind."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        if not daemon.alive():
            return None
        began = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            daemon.process.send_signal(signal.SIGTERM)
        try:
            daemon.process.wait(timeout=STOP_TIMEOUT)
            return time.monotonic() - began
        except subprocess.TimeoutExpired:
            print(f"  the daemon did not stop within {STOP_TIMEOUT:.0f} s: killed", flush=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(daemon.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            daemon.process.wait(timeout=KILL_TIMEOUT)
        return None
    finally:
        # Whatever it started in its session (it should have none left).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(daemon.pid, signal.SIGKILL)
        signal.signal(signal.SIGINT, previous)


def make_token(conf: Path, output: Path, source: Path) -> str:
    """``kadeploy-server token add USER``; the token."""
    try:
        done = subprocess.run(
            [
                *_server_command(),
                "token",
                "add",
                USER,
                "--conf",
                str(conf),
                "--output",
                str(output),
            ],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            env=_environment(source),
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BenchError("kadeploy-server token add: no answer within 60 s") from None
    if done.returncode != 0:
        raise BenchError(f"kadeploy-server token add: {(done.stderr or done.stdout).strip()}")
    return output.read_text().strip()


def _client(socket: Path, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(
        transport=httpx.HTTPTransport(uds=str(socket)),
        base_url="http://kadeployd",
        headers=headers,
        timeout=30.0,
    )


def wait_for_api(daemon: Daemon, timeout: float) -> float:
    """Seconds until ``/v1/health`` answers with the daemon's pid."""
    began = time.monotonic()
    with _client(daemon.socket) as client:
        while True:
            if not daemon.alive():
                raise BenchError(daemon.death())
            with contextlib.suppress(httpx.HTTPError, ValueError):
                answer = client.get("/v1/health", timeout=2.0)
                if answer.status_code == 200 and answer.json().get("pid") == daemon.pid:
                    return time.monotonic() - began
            if time.monotonic() - began > timeout:
                raise BenchError(f"the API did not answer within {timeout:.0f} s")
            time.sleep(POLL_INTERVAL)


def _answer(response: httpx.Response, what: str) -> Any:
    if response.status_code >= 400:
        raise BenchError(f"{what}: HTTP {response.status_code}: {response.text[:500]}")
    return response.json()


# ---------------------------------------------------------------- one run


@dataclass
class Result:
    """One deployment of N nodes (or why it did not end)."""

    nodes: int
    status: str = ""
    reason: str = ""
    error: str = ""
    log_errors: str = ""
    """The first errors of the daemon's log, when not every node deployed."""
    deployed: int = 0
    states: dict[str, int] = field(default_factory=dict)
    startup: float | None = None
    """Seconds from the daemon's spawn to its API answering (config of N nodes loaded)."""
    wall: float | None = None
    """Request sent -> the store's finished_at."""
    store_span: float | None = None
    """The store's created_at -> finished_at."""
    post: float | None = None
    """Seconds POST /v1/deployments took to answer."""
    history_rows: int | None = None
    log_rows: int | None = None
    store_rows: int | None = None
    transactions: int | None = None
    peak_rss: int = 0
    threads_start: int | None = None
    threads_peak: int = 0
    threads_after: int | None = None
    threads_settle: float | None = None
    """Seconds after the end until the thread count came back; None if it did not."""
    daemon_cpu: float | None = None
    """Daemon CPU seconds from the request until the bench saw the end (or gave up)."""
    cpu_window: float | None = None
    """Seconds over which ``daemon_cpu`` was measured."""
    machine_busy: float | None = None
    stop_seconds: float | None = None

    @property
    def ok(self) -> bool:
        return not self.error and self.deployed == self.nodes and self.status == "succeeded"

    @property
    def rows(self) -> int | None:
        if self.history_rows is None or self.log_rows is None:
            return None
        return self.history_rows + self.log_rows


def measure(n: int, workdir: Path, source: Path, deadline: float, cpu: CpuSampler) -> Result:
    """One run: configure, start, deploy N nodes, wait, stop, count. Errors end in ``error``."""
    result = Result(n)
    conf = workdir / "conf"
    state = workdir / "state"
    write_dummy_config(conf, n, state_dir=state, admins=(USER,))
    description = write_environment(workdir / "env")
    deployment_id: list[str] = []
    try:
        token = make_token(conf, workdir / "token", source)
        with running_daemon(conf, state, source) as daemon:
            result.startup = wait_for_api(daemon, START_TIMEOUT)
            print(f"  N={n}: daemon pid {daemon.pid} up in {result.startup:.1f} s", flush=True)
            with ProcSampler(daemon.pid) as sampler, _client(daemon.socket, token) as client:
                try:
                    _deploy(
                        daemon,
                        client,
                        description=description,
                        cpu=cpu,
                        deadline=deadline,
                        result=result,
                        created_ids=deployment_id,
                    )
                finally:
                    hwm = proc_status(daemon.pid).get("VmHWM", 0)
                    result.peak_rss = max(sampler.peak_rss, hwm)
                    result.threads_peak = sampler.peak_threads
            result.stop_seconds = stop_daemon(daemon)
            transactions = _STORE_LINE.findall(daemon.log.read_text(errors="replace"))
            if transactions:
                result.store_rows, result.transactions = (int(v) for v in transactions[-1])
    except BenchError as error:
        result.error = str(error)
    if deployment_id:
        _count_rows(state / "kadeployd.db", deployment_id[0], result)
    if not result.ok:
        result.log_errors = first_errors(state / "daemon.log")
    return result


def _deploy(
    daemon: Daemon,
    client: httpx.Client,
    *,
    description: Path,
    cpu: CpuSampler,
    deadline: float,
    result: Result,
    created_ids: list[str],
) -> None:
    """Upload, deploy, wait for the end; fills ``result`` (``error`` if it did not end) and
    appends the deployment's id to ``created_ids`` once it exists."""
    n = result.nodes
    image = description.parent / f"{description.stem}.tar.zst"
    upload = _answer(
        client.post(
            "/v1/uploads", params={"name": image.name}, content=image.read_bytes(), timeout=60
        ),
        "upload",
    )
    # The API's worker thread exists before the baseline, like any idle daemon's.
    _answer(client.get("/v1/deployments", params={"limit": 1}), "list deployments")
    time.sleep(1.0)
    result.threads_start = proc_status(daemon.pid).get("Threads")
    body = {
        "nodes": node_names(n),
        "anonymous_environment": {
            "description": description.read_text(),
            "files": {image.name: upload["id"]},
        },
    }
    cpu_before = cpu_seconds(daemon.pid)
    sent = time.time()
    limit = time.monotonic() + deadline
    try:
        created = _answer(
            client.post("/v1/deployments", json=body, timeout=deadline), "POST /v1/deployments"
        )
    except httpx.TimeoutException:
        raise BenchError(f"POST /v1/deployments did not answer within {deadline:.0f} s") from None
    except httpx.HTTPError as error:
        raise BenchError(f"POST /v1/deployments: {error}" + _if_dead(daemon)) from None
    result.post = time.time() - sent
    deployment_id: str = created["id"]
    created_ids.append(deployment_id)
    print(
        f"  N={n}: deployment {deployment_id} created in {result.post:.2f} s",
        flush=True,
    )
    try:
        _wait_end(daemon, client, deployment_id, limit, deadline)
    except BenchError as error:
        result.error = str(error)
    ended = time.time()
    cpu_after = cpu_seconds(daemon.pid)
    if daemon.alive():
        _final_view(client, deployment_id, sent, ended, result)
    if cpu_before is not None and cpu_after is not None:
        result.daemon_cpu = cpu_after - cpu_before
        result.cpu_window = ended - sent
    end = sent + result.wall if result.wall is not None else ended
    result.machine_busy = cpu.busy(sent, end)
    if not result.error and daemon.alive():
        _settle_threads(daemon, ended, result)


def _if_dead(daemon: Daemon) -> str:
    time.sleep(0.5)
    return "" if daemon.alive() else f"; {daemon.death()}"


def _wait_end(
    daemon: Daemon, client: httpx.Client, deployment_id: str, limit: float, deadline: float
) -> None:
    """Until the deployment is no longer running; BenchError past ``limit`` or if it dies."""
    began = time.monotonic()
    progress = began + PROGRESS_INTERVAL
    while True:
        if not daemon.alive():
            raise BenchError(daemon.death())
        try:
            running = _answer(
                client.get("/v1/deployments", params={"status": "running", "limit": 100}),
                "list running deployments",
            )
        except (httpx.TimeoutException, httpx.RemoteProtocolError, httpx.ReadError) as error:
            # A daemon too busy to answer is slow, not finished (a connection that timed out
            # may then be dropped): wait on, on a new connection, up to the deadline.
            print(f"    {time.monotonic() - began:.0f} s: the API did not answer ({error!r})")
            running = [{"id": deployment_id}]
        except httpx.HTTPError as error:
            if not daemon.alive():
                raise BenchError(daemon.death()) from None
            raise BenchError(f"GET /v1/deployments: {error}") from None
        if all(view["id"] != deployment_id for view in running):
            return
        now = time.monotonic()
        if now > limit:
            raise BenchError(f"timed out: still running after the {deadline:.0f} s deadline")
        if now > progress:
            progress = now + PROGRESS_INTERVAL
            states = _states(client, deployment_id)
            print(f"    {now - began:.0f} s: {_format_states(states)}", flush=True)
        time.sleep(POLL_INTERVAL)


def _states(client: httpx.Client, deployment_id: str) -> dict[str, int]:
    with contextlib.suppress(httpx.HTTPError, BenchError):
        view = _answer(client.get(f"/v1/deployments/{deployment_id}"), "deployment")
        return dict(view.get("states") or {})
    return {}


def _format_states(states: dict[str, int]) -> str:
    pairs = sorted(states.items())
    return ", ".join(f"{state} {count}" for state, count in pairs) or "no answer from the API"


def _final_view(
    client: httpx.Client, deployment_id: str, sent: float, ended: float, result: Result
) -> None:
    try:
        view = _answer(client.get(f"/v1/deployments/{deployment_id}"), "deployment")
    except (httpx.HTTPError, BenchError) as error:
        result.error = result.error or f"reading the deployment: {error}"
        return
    result.status = view["status"]
    result.reason = view.get("reason") or ""
    result.states = dict(view.get("states") or {})
    result.deployed = result.states.get("deployed", 0)
    finished = view.get("finished_at")
    if finished is not None:
        result.wall = finished - sent
        result.store_span = finished - view["created_at"]
    elif not result.error:
        result.wall = ended - sent


def _settle_threads(daemon: Daemon, ended: float, result: Result) -> None:
    """Wait (bounded) for the thread count to come back near where it was."""
    start = result.threads_start or 0
    threads = None
    while time.time() - ended < THREAD_SETTLE:
        threads = proc_status(daemon.pid).get("Threads")
        if threads is not None and threads <= start + THREAD_SLACK:
            result.threads_settle = time.time() - ended
            break
        time.sleep(POLL_INTERVAL)
    result.threads_after = threads


def _count_rows(database: Path, deployment_id: str, result: Result) -> None:
    """History and log rows of the store after the run; deployed nodes if the API did not say."""
    if not database.exists():
        return
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
            result.history_rows = conn.execute("SELECT count(*) FROM state_history").fetchone()[0]
            result.log_rows = conn.execute("SELECT count(*) FROM node_logs").fetchone()[0]
            if not result.states:
                rows = conn.execute(
                    "SELECT state, count(*) FROM deployment_nodes WHERE deployment_id = ? "
                    "GROUP BY state",
                    (deployment_id,),
                ).fetchall()
                result.states = {state: count for state, count in rows}
                result.deployed = result.states.get("deployed", 0)
    except sqlite3.Error as error:
        print(f"  reading {database}: {error}", flush=True)


# ---------------------------------------------------------------- report


def budget(n: int) -> float:
    return TARGETS.get(n, BUDGET_PER_NODE * n)


def _status(r: Result) -> str:
    if "died" in r.error:
        return "died"
    if "timed out" in r.error:
        return "timeout"
    if r.error:
        return "error"
    return r.status or "?"


def _num(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _per_second(count: int | None, seconds: float | None) -> str:
    if count is None or not seconds:
        return "n/a"
    return f"{count / seconds:.0f}"


def _table(results: list[Result], cpus: int) -> list[list[str]]:
    rows = [
        [
            "N",
            "deployed",
            "status",
            "wall s",
            "store s",
            "ms/node",
            "budget s",
            "wall/budget",
            "rows",
            "rows/s",
            "tx",
            "tx/s",
            "peak RSS MB",
            "RSS/1GB",
            "threads start/peak/after",
            "daemon CPU",
            "machine busy",
            "start s",
        ]
    ]
    for r in results:
        wall = r.wall
        after = "" if r.threads_after is None else str(r.threads_after)
        if r.threads_after is not None and r.threads_settle is None:
            after += " (not back)"
        cpu = ""
        if r.daemon_cpu is not None and r.cpu_window:
            share = r.daemon_cpu / r.cpu_window
            cpu = f"{share:.2f} cores ({100 * share / cpus:.0f}%)"
        rows.append(
            [
                str(r.nodes),
                f"{r.deployed}/{r.nodes}",
                _status(r),
                _num(wall),
                _num(r.store_span),
                _num(None if wall is None else 1000 * wall / r.nodes),
                _num(budget(r.nodes), 1) + ("" if r.nodes in TARGETS else "*"),
                _num(None if wall is None else wall / budget(r.nodes)),
                "" if r.rows is None else str(r.rows),
                _per_second(r.rows, wall),
                "n/a" if r.transactions is None else str(r.transactions),
                _per_second(r.transactions, wall),
                f"{r.peak_rss / 1e6:.0f}" if r.peak_rss else "",
                f"{r.peak_rss / RSS_LIMIT:.2f}" if r.peak_rss else "",
                f"{r.threads_start or '?'}/{r.threads_peak}/{after}",
                cpu,
                "" if r.machine_busy is None else f"{100 * r.machine_busy:.0f}%",
                _num(r.startup, 1),
            ]
        )
    return rows


def _verdicts(results: list[Result]) -> list[str]:
    lines = []
    for r in results:
        parts = []
        if r.wall is not None:
            target = budget(r.nodes)
            kind = "target" if r.nodes in TARGETS else "3 ms/node"
            parts.append(f"wall {r.wall:.2f} s / {target:g} s {kind} = {r.wall / target:.2f}")
        if r.peak_rss:
            parts.append(f"RSS {r.peak_rss / 1e6:.0f} MB / 1 GB = {r.peak_rss / RSS_LIMIT:.2f}")
        parts.append(f"deployed {r.deployed}/{r.nodes}")
        if r.threads_start is not None and r.threads_after is not None:
            back = (
                f"back in {r.threads_settle:.1f} s"
                if r.threads_settle is not None
                else f"not back after {THREAD_SETTLE:.0f} s"
            )
            parts.append(f"threads {r.threads_start} -> {r.threads_after} ({back})")
        if r.states and r.deployed != r.nodes:
            parts.append(f"states: {_format_states(r.states)}")
        if r.reason and r.status != "succeeded":
            parts.append(f"reason: {r.reason}")
        if r.error:
            parts.append(f"FAILED: {r.error}")
        if r.log_errors:
            parts.append(f"daemon log: {r.log_errors}")
        if r.transactions is not None:
            parts.append(f"store log: {r.store_rows} rows in {r.transactions} transactions")
        if r.stop_seconds is not None:
            parts.append(f"stopped in {r.stop_seconds:.1f} s")
        lines.append(f"N={r.nodes}: " + "; ".join(parts))
    return lines


# ---------------------------------------------------------------- main


def _parse_nodes(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected node counts separated by commas, e.g. 1000,5000,10000"
        ) from None
    if not values or min(values) < 1 or max(values) > 100_000:
        raise argparse.ArgumentTypeError(f"{text!r}: node counts go from 1 to 100000")
    return list(dict.fromkeys(values))


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="One deployment of N dummy nodes through a real kadeploy-server."
    )
    parser.add_argument(
        "--nodes", type=_parse_nodes, default=list(DEFAULT_NODES), help="default 1000,5000,10000"
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=None,
        help="seconds a deployment may run before it is reported as hung (default "
        "max(120, 0.03 x N))",
    )
    parser.add_argument(
        "--source",
        type=Path,
        default=REPO,
        help="source tree whose daemon runs (put first on its PYTHONPATH); default: this repo",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="work here (kept)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, database)")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.deadline is not None and args.deadline <= 0:
        parser.error("--deadline must be more than 0")
    if not (args.source / "kadeployd").is_dir():
        parser.error(f"--source {args.source}: no kadeployd/ package there")
    return args


def _describe_source(source: Path) -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(source), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return str(source)
    described = done.stdout.strip()
    return f"{source} ({described})" if done.returncode == 0 and described else str(source)


def run(args: argparse.Namespace) -> list[Result]:
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kadeploy-bench-control-"))
    workdir.mkdir(parents=True, exist_ok=True)
    keep = args.keep or args.workdir is not None
    print(f"working directory: {workdir}" + ("" if keep else " (removed at the end)"), flush=True)
    results = []
    try:
        with CpuSampler(interval=0.1) as cpu:
            for n in args.nodes:
                deadline = args.deadline or max(120.0, 0.03 * n)
                print(f"N={n}: deadline {deadline:.0f} s", flush=True)
                result = measure(n, workdir / f"n{n}", args.source.resolve(), deadline, cpu)
                for line in _verdicts([result]):
                    print(f"  {line}", flush=True)
                results.append(result)
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    unwind_on_signals()
    when = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    command = shlex.join(["python", "bench/control_plane.py", *(argv or sys.argv[1:])])
    host = machine()
    source = _describe_source(args.source.resolve())
    for line in [*host.lines(), f"daemon source: {source}"]:
        print(line, flush=True)
    try:
        results = run(args)
    except BenchError as error:
        print(f"bench/control_plane.py: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench/control_plane.py: interrupted; daemon stopped", file=sys.stderr)
        return 130
    rows = _table(results, host.cpus)
    verdicts = _verdicts(results)
    note = (
        "budget: the issue's targets (1,000 nodes in 3 s, 10,000 in 30 s); "
        "* = the same 3 ms/node for another N. RSS/1GB: peak RSS over 10^9 bytes. "
        "threads after: within 30 s of the end, back = at most 2 above the start."
    )
    print()
    _print_table(rows)
    print(note)
    for line in verdicts:
        print(line)
    if args.markdown is not None:
        text = [
            f"Command: `{command}`  ",
            f"Date: {when}  ",
            *[f"{line}  " for line in host.lines()],
            f"Daemon source: {source}",
            "",
            *_markdown(rows),
            "",
            note,
            "",
            *[f"- {line}" for line in verdicts],
        ]
        args.markdown.write_text("\n".join(text) + "\n")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
