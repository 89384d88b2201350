"""Live progress of a deployment and its final summary, as ``kadeploy`` prints them.

The progress is fed the deployment's server-sent events. On a terminal it keeps one block of
lines, one per step with the number of nodes in it, rewritten in place; elsewhere (a pipe, a
log file) it appends a line each time a step's count changes. Failures are printed as they
happen in both cases. Times are the server's, relative to the deployment's creation.

During the image transfer a bar follows the steps (``transfer [#####.....] 58% 112/192 MiB
48 MiB/s``): part of the block on a terminal; elsewhere a line at most every
:data:`TRANSFER_LINE_INTERVAL` seconds, and one when the transfer is complete.

Verbose levels (``--verbose-level``): 0 errors only, 1 the final summary, 2 failures as they
happen, 3 (default) the steps' counts, 4 every node's state change, 5 the nodes' logs.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import IO, Any

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
RATE_WINDOW = 5.0
"""The transfer rate shown is the one over about the last this many seconds."""
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
    """Renders state events; see the module docstring."""

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
        self._block = 0
        self._last_counts: Counter[str] = Counter()
        self._printed_at: dict[str, float] = {}
        self._elapsed = 0.0
        self._clock = clock
        self._transfer: tuple[int, int] | None = None
        self._samples: deque[tuple[float, int]] = deque()
        self._transfer_printed_at = float("-inf")
        self._transfer_complete_printed = False

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
        self._elapsed = max(self._elapsed, float(event.get("at") or 0.0) - self._origin)
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
        if self._transfer is not None and done < self._transfer[0]:
            self._samples.clear()  # a node restarted its transfer: the old rate means nothing
        self._transfer = (done, total)
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW:
            self._samples.popleft()
        if self._verbose < 3:
            return
        if self._tty:
            self._redraw(self.counts())
            return
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
        """Bytes per second over the samples kept (about the last RATE_WINDOW seconds)."""
        if len(self._samples) < 2:
            return None
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else None

    def log(self, event: dict[str, Any]) -> None:
        """A line of a node's log (verbose level 5)."""
        if self._verbose >= 5:
            text = str(event.get("text", "")).rstrip("\n")
            self._event_line(f"{event.get('node')} [{event.get('stream')}] {text}")

    def close(self) -> None:
        """Leave the last block on screen."""
        self._block = 0

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

    def _counts_changed(self, state: str) -> None:
        if self._verbose < 3:
            return
        counts = self.counts()
        if self._tty:
            self._redraw(counts)
        elif counts[state] != self._last_counts[state] and self._due(state, counts[state]):
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
        return [*lines, f"  [{self._elapsed:7.1f}s]"]

    def _redraw(self, counts: Counter[str]) -> None:
        self._erase()
        lines = self._block_lines(counts)
        for line in lines:
            self._stream.write(line + "\n")
        self._stream.flush()
        self._block = len(lines)

    def _erase(self) -> None:
        if self._tty and self._block:
            self._stream.write(f"\x1b[{self._block}F\x1b[J")
            self._block = 0

    def _event_line(self, text: str) -> None:
        self._line(f"[{self._elapsed:7.1f}s] {text}")

    def _line(self, text: str) -> None:
        if self._tty and self._block:
            self._erase()
            self._stream.write(text + "\n")
            self._redraw(self.counts())
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
