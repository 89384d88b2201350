"""Live progress of a deployment and its final summary, as ``kadeploy`` prints them.

The progress is fed the deployment's server-sent events. On a terminal it is a live view
(:class:`rich.live.Live`) redrawn in place on its own clock, :data:`REFRESH_PER_SECOND` times
a second: one line per step with the number of nodes in it, the image transfer, and the
elapsed time, which keeps ticking between events. Elsewhere (a pipe, a log file) it appends a
timestamped line each time a step's count changes. Failures are printed as they happen in
both cases (on a terminal, above the live view). Times are the server's, relative to the
deployment's creation.

During the image transfer a bar follows the steps (``transfer [#####.....] 58% 112/192 MiB
48 MiB/s``): part of the live view on a terminal; elsewhere a line at most every
:data:`TRANSFER_LINE_INTERVAL` seconds, and one when the transfer is complete. The rate is
the one of the stream only (:class:`StreamRate`): the time nodes wait for a chain to gather,
before the first byte or between rounds, does not count.

Verbose levels (``--verbose-level``): 0 errors only, 1 the final summary, 2 failures as they
happen, 3 (default) the steps' counts, 4 every node's state change, 5 the nodes' logs.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import IO, Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

logger = logging.getLogger(__name__)

STEPS = (
    "pending",
    "rebooting",
    "deploy_env",
    "partitioning",
    "transferring",
    "postinstall",
    "booting",
    "deployed",
    "breakpointed",
    "already_installed",
    "deploy_failed",
    "incompatible",
    "decommissioned",
    "aborted",
)
"""The states users see, in the order a node goes through them."""
SUCCESS = frozenset({"deployed", "already_installed", "breakpointed"})
"""``breakpointed``: stopped at the ``--breakpoint`` as asked (left in its env): a success."""
FAILURE = frozenset({"deploy_failed", "incompatible", "decommissioned", "aborted"})
DEFAULT_VERBOSE = 3
TRANSFER_LINE_INTERVAL = 5.0
"""Without a terminal, seconds between two transfer lines."""
BAR_WIDTH = 20
REFRESH_PER_SECOND = 4
"""On a terminal, redraws of the live view a second (the clock ticks without events)."""
MIB = 1024 * 1024


def transfer_text(done: int, total: int, rate: float | None) -> str:
    """``transfer [#######.....] 58% 112/192 MiB 48 MiB/s`` (no rate when unknown)."""
    fraction = min(1.0, done / total) if total > 0 else 1.0
    filled = int(fraction * BAR_WIDTH)
    bar = "#" * filled + "." * (BAR_WIDTH - filled)
    digits = 0 if total >= 10 * MIB else 1
    text = (
        f"transfer [{bar}] {int(fraction * 100):3d}% "
        f"{done / MIB:.{digits}f}/{total / MIB:.{digits}f} MiB"
    )
    if rate is not None:
        text += f" {rate / MIB:.{0 if rate >= 10 * MIB else 1}f} MiB/s"
    return text


STREAM_GAP = 5.0
"""Seconds between two ``progress`` events past which the bytes are taken to have stopped
moving meanwhile (nodes report about every second while they receive)."""


class StreamRate:
    """The transfer's rate over the time its bytes were moving, not the time nodes waited.

    Fed the deployment's ``bytes_done`` at each ``progress`` event, with the local time it
    arrived. The time between two events counts when bytes moved between them and had already
    moved before the first one: a chain's nodes report ``0`` when their relay starts, then
    wait for the others to gather; the time until the first bytes are seen is that wait, not
    the stream. A pause (nothing moved, or no event for :data:`STREAM_GAP` seconds: between
    two chain rounds) or a total that goes down (a node restarted its transfer, or failed and
    left the sums) ends a stretch the same way. So during a stream the rate is the bytes from
    the first ones seen to the last ones over that time; after it, it stays the stream's.
    """

    def __init__(self) -> None:
        self._last: tuple[float, int] | None = None
        self._moving = False
        self.bytes = 0
        """Bytes counted (those that moved while the stream was known to run)."""
        self.seconds = 0.0
        """Seconds counted."""

    def add(self, now: float, done: int) -> None:
        """The transfer stood at ``done`` bytes at ``now`` (seconds, any monotonic origin)."""
        last, self._last = self._last, (now, done)
        if last is None:
            self._moving = done > 0  # joined during the stream (kadeploy --follow)
            return
        then, before = last
        moved = done > before
        if moved and self._moving and now - then <= STREAM_GAP:
            self.bytes += done - before
            self.seconds += now - then
        self._moving = moved

    def rate(self) -> float | None:
        """Bytes per second; None until bytes were seen moving over some time."""
        return self.bytes / self.seconds if self.seconds > 0 else None


@dataclass(frozen=True, slots=True)
class NodeOutcome:
    """A node at the end: deployed or not, and why not."""

    node: str
    state: str
    step: str | None
    reason: str | None

    @property
    def deployed(self) -> bool:
        """Whether the node runs the environment."""
        return self.state in SUCCESS


def outcomes(nodes: Iterable[dict[str, Any]]) -> list[NodeOutcome]:
    """The final records of ``GET /v1/deployments/{id}/nodes`` as outcomes."""
    return [
        NodeOutcome(
            node=str(n["node"]),
            state=str(n["state"]),
            step=n.get("error_step"),
            reason=n.get("error_message"),
        )
        for n in nodes
    ]


class Progress:
    """Renders state events; see the module docstring.

    On a terminal (at verbose level 3 and more) the live view runs from the start until
    :meth:`close`; :meth:`pause` and :meth:`resume` take it off the screen meanwhile (to ask
    a question). The view is drawn from rich's refresh thread, hence the lock around what it
    reads; nothing is printed while holding it (printing waits for the view's own lock).
    """

    def __init__(
        self,
        deployment: dict[str, Any],
        nodes: Sequence[str],
        verbose: int = DEFAULT_VERBOSE,
        stream: IO[str] | None = None,
        *,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty() if tty is None else tty
        self._verbose = verbose
        self._origin = float(deployment.get("created_at") or 0.0)
        self._total = len(nodes) or int(deployment.get("node_count") or 0)
        self._states: dict[str, str] = dict.fromkeys(nodes, "pending")
        self._last: dict[str, dict[str, Any]] = {}
        self._last_counts: Counter[str] = Counter()
        self._printed_at: dict[str, float] = {}
        self._elapsed = 0.0
        self._clock = clock
        self._ticked_from = (0.0, clock())
        """(server elapsed time, local clock then): the live view's clock runs on from it."""
        self._transfer: tuple[int, int] | None = None
        self._stream_rate = StreamRate()
        self._transfer_printed_at = float("-inf")
        self._transfer_complete_printed = False
        self._lock = threading.Lock()
        self._closed = False
        self._console: Console | None = None
        self._live: Live | None = None
        if self._tty and verbose >= 3:
            self._console = Console(
                file=self._stream, force_terminal=True, highlight=False, markup=False, emoji=False
            )
            self._live = self._start_live(self._console)

    # ------------------------------------------------------------ events

    def header(self, deployment: dict[str, Any]) -> None:
        """The first line: which deployment, of what, on how many nodes."""
        if self._verbose < 2:
            return
        env = deployment.get("environment") or {}
        version = env.get("version")
        name = f"{env.get('name')}" + (f" version {version}" if version is not None else "")
        if env.get("anonymous"):
            name += " (anonymous)"
        self._line(
            f"Deployment {deployment.get('id')} of {name} on {self._total} "
            f"node{'s' if self._total != 1 else ''} (user {deployment.get('user')})"
        )

    def state(self, event: dict[str, Any]) -> None:
        """A node entered a state."""
        node, state = str(event.get("node")), str(event.get("state"))
        with self._lock:
            self._elapsed = max(self._elapsed, float(event.get("at") or 0.0) - self._origin)
            if self._elapsed > self.elapsed():  # the clock never runs backwards
                self._ticked_from = (self._elapsed, self._clock())
            previous = self._states.get(node)
            self._states[node] = state
            self._last[node] = event
        if previous == state and state not in FAILURE:
            return
        if state in FAILURE and self._verbose >= 2:
            step = event.get("macrostep")
            where = f" in {step}" if step else ""
            message = event.get("message") or ""
            self._event_line(f"{node} {state.upper()}{where}" + (f": {message}" if message else ""))
        elif self._verbose >= 4:
            detail = [d for d in (event.get("macrostep"), event.get("variant")) if d]
            attempt = event.get("attempt")
            extra = "/".join(str(d) for d in detail)
            if attempt and int(attempt) > 1:
                extra += f", attempt {attempt}"
            self._event_line(f"{node} -> {state}" + (f" ({extra})" if extra else ""))
        self._counts_changed(state)

    def transfer(self, event: dict[str, Any]) -> None:
        """The deployment's image transfer moved (a ``progress`` event)."""
        try:
            done, total = int(event.get("bytes_done") or 0), int(event.get("bytes_total") or 0)
        except (TypeError, ValueError):
            return  # a malformed event is not worth stopping the watch for
        now = self._clock()
        with self._lock:
            self._transfer = (done, total)
            self._stream_rate.add(now, done)
        if self._verbose < 3 or self._live is not None:
            return  # the live view shows it at its next refresh
        complete = total > 0 and done >= total
        if complete and not self._transfer_complete_printed:
            self._transfer_complete_printed = True
        elif now - self._transfer_printed_at < TRANSFER_LINE_INTERVAL:
            return
        self._transfer_printed_at = now
        self._line(f"[{self._elapsed:7.1f}s] {self.transfer_line()}")

    def transfer_line(self) -> str | None:
        """The transfer bar as it stands; None before any ``progress`` event."""
        if self._transfer is None:
            return None
        return transfer_text(*self._transfer, self._rate())

    def _rate(self) -> float | None:
        """Bytes per second over the stream only (see :class:`StreamRate`)."""
        return self._stream_rate.rate()

    def log(self, event: dict[str, Any]) -> None:
        """A line of a node's log (verbose level 5)."""
        if self._verbose >= 5:
            text = str(event.get("text", "")).rstrip("\n")
            self._event_line(f"{event.get('node')} [{event.get('stream')}] {text}")

    def close(self) -> None:
        """Stop the live view, leaving its last state on screen; idempotent."""
        self._closed = True
        self.pause()

    def pause(self) -> None:
        """Take the live view off the screen's bottom (its last state stays above)."""
        if self._live is not None:
            self._live.stop()

    def resume(self) -> None:
        """Start the live view again after :meth:`pause` (not after :meth:`close`), below
        what was printed meanwhile."""
        if self._console is not None and not self._closed:
            self.pause()
            self._live = self._start_live(self._console)

    def _start_live(self, console: Console) -> Live:
        # A new Live each time: a restarted one would first erase as many lines as it drew
        # last, which are now the lines printed while it was paused (a question, its answer).
        live = Live(
            get_renderable=self.view,
            console=console,
            refresh_per_second=REFRESH_PER_SECOND,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        live.start(refresh=True)
        return live

    def all_final(self) -> bool:
        """Whether every node reached a final state in the events seen."""
        return bool(self._states) and all(
            s in SUCCESS or s in FAILURE for s in self._states.values()
        )

    def outcomes(self) -> list[NodeOutcome]:
        """The nodes' outcomes as the events told them (when the server is gone)."""
        results = []
        for node, state in self._states.items():
            event = self._last.get(node, {})
            failed = state not in SUCCESS
            results.append(
                NodeOutcome(
                    node=node,
                    state=state,
                    step=event.get("macrostep") if failed else None,
                    reason=(event.get("message") or None) if failed else None,
                )
            )
        return results

    # ------------------------------------------------------------ rendering

    def counts(self) -> Counter[str]:
        """How many nodes are in each state."""
        return Counter(self._states.values())

    def elapsed(self) -> float:
        """Seconds since the deployment's creation as the live view shows them: the server's
        time of the latest event, run on with the local clock since it arrived."""
        elapsed, at = self._ticked_from
        return elapsed + max(0.0, self._clock() - at)

    def view(self) -> RenderableType:
        """The live view: one line per step with its node count, the transfer, the clock."""
        with self._lock:
            counts = self.counts()
            lines = self._block_lines(counts)
        styled = []
        for line in lines:
            state = line.split(maxsplit=1)[0]
            style = "green" if state in SUCCESS else "red" if state in FAILURE else ""
            styled.append(Text(line, style=style, no_wrap=True, overflow="ellipsis"))
        return Group(*styled)

    def _counts_changed(self, state: str) -> None:
        if self._verbose < 3 or self._live is not None:
            return
        counts = self.counts()
        if counts[state] != self._last_counts[state] and self._due(state, counts[state]):
            self._line(f"[{self._elapsed:7.1f}s] {self._step_text(state, counts[state])}")
            self._printed_at[state] = self._elapsed
        self._last_counts = counts

    def _due(self, state: str, count: int) -> bool:
        """Without a terminal, a step's count is printed when every node reached it, or at
        most once a second: a log of 300 nodes stays readable (every change at -V 4)."""
        if self._verbose >= 4 or count == self._total:
            return True
        return self._elapsed - self._printed_at.get(state, float("-inf")) >= 1.0

    def _step_text(self, state: str, count: int) -> str:
        if state in SUCCESS:
            return f"{state:<14} {count}/{self._total} nodes"
        return f"{state:<14} {count} node{'s' if count != 1 else ''}"

    def _block_lines(self, counts: Counter[str]) -> list[str]:
        known = [s for s in STEPS if counts[s]]
        other = sorted(s for s in counts if s not in STEPS and counts[s])
        lines = [f"  {self._step_text(s, counts[s])}" for s in (*known, *other)]
        bar = self.transfer_line()
        if bar is not None:
            lines.append(f"  {bar}")
        return [*lines, f"  elapsed {self.elapsed():.1f} s"]

    def _event_line(self, text: str) -> None:
        self._line(f"[{self._elapsed:7.1f}s] {text}")

    def _line(self, text: str) -> None:
        if self._console is not None:  # above the live view
            self._console.print(Text(text), soft_wrap=True)
            return
        self._stream.write(text + "\n")
        self._stream.flush()


def summary_lines(deployment: dict[str, Any], results: Sequence[NodeOutcome]) -> list[str]:
    """The final summary: the outcome, then the deployed and the failed nodes (one per line,
    ready to copy into a nodefile), each failed one with its step and reason."""
    deployed = [r for r in results if r.deployed]
    failed = [r for r in results if not r.deployed]
    created = float(deployment.get("created_at") or 0.0)
    finished = deployment.get("finished_at")
    took = f" in {float(finished) - created:.1f} s" if finished is not None else ""
    status = deployment.get("status")
    reason = deployment.get("reason") or ""
    stopped = [r for r in deployed if r.state == "breakpointed"]
    deployed = [r for r in deployed if r.state != "breakpointed"]
    done = f"{len(deployed)}/{len(results)} nodes deployed"
    if stopped:
        where = (deployment.get("options") or {}).get("breakpoint") or "the breakpoint"
        done = f"{len(stopped)}/{len(results)} nodes stopped at breakpoint {where}" + (
            f", {len(deployed)} deployed" if deployed else ""
        )
    lines = [
        f"Deployment {deployment.get('id')} {status}{took}: "
        + done
        + (f" ({reason})" if reason and status != "succeeded" else "")
    ]
    if stopped:
        lines.append(f"Stopped at breakpoint {where} on {_nodes(len(stopped))} (left as they are):")
        lines += [f"  {r.node}" for r in stopped]
    if deployed:
        lines.append(f"The deployment is successful on {_nodes(len(deployed))}:")
        lines += [f"  {r.node}" for r in deployed]
    if failed:
        lines.append(f"The deployment failed on {_nodes(len(failed))}:")
        width = max(len(r.node) for r in failed)
        for r in failed:
            why = f"{r.step}: " if r.step else ""
            lines.append(f"  {r.node:<{width}}  {r.state}: {why}{r.reason or 'no reason recorded'}")
    return lines


def _nodes(count: int) -> str:
    return f"{count} node{'s' if count != 1 else ''}"


def exit_code(deployment: dict[str, Any], results: Sequence[NodeOutcome]) -> int:
    """0 all deployed or min nodes reached, 1 some failed, 4 none deployed."""
    deployed = sum(1 for r in results if r.deployed)
    if deployment.get("status") == "succeeded" or (results and deployed == len(results)):
        return 0
    return 1 if deployed else 4
