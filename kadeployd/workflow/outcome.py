"""When a deployment is over: all nodes finished, or ``min_nodes`` reached or out of reach.

Without ``min_nodes`` every node goes to its end (deployed or failed) and the deployment
succeeds only if all are deployed; with it, the deployment ends as soon as the outcome is
certain and the nodes still working are aborted.

Pure logic fed with each node's final state by the DeploymentManager.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum

from kadeploy_core.machine import NodeState


class Verdict(StrEnum):
    """The deployment's status."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ABORTED = "aborted"


@dataclass
class Tally:
    """Counts final node states against the deployment's goal."""

    nodes: tuple[str, ...]
    min_nodes: int | None = None
    finished: dict[str, NodeState] = field(default_factory=dict)
    _counts: Counter[NodeState] = field(default_factory=Counter, init=False, repr=False)
    """Final states counted as they come: a verdict after each of 10,000 nodes stays O(1)."""

    def __post_init__(self) -> None:
        if self.min_nodes is not None and not 1 <= self.min_nodes <= len(self.nodes):
            raise ValueError(f"min_nodes must be between 1 and {len(self.nodes)}")
        self._counts.update(self.finished.values())

    @property
    def deployed(self) -> int:
        """Nodes whose final state is DEPLOYED."""
        return self._counts[NodeState.DEPLOYED]

    @property
    def breakpointed(self) -> int:
        """Nodes stopped at the deployment's breakpoint (a success, like DEPLOYED)."""
        return self._counts[NodeState.BREAKPOINTED]

    @property
    def unfinished_count(self) -> int:
        """How many nodes are still working."""
        return len(self.nodes) - len(self.finished)

    @property
    def succeeded(self) -> int:
        """Nodes that reached the deployment's goal: deployed, or stopped at its breakpoint."""
        return self.deployed + self.breakpointed

    @property
    def unfinished(self) -> list[str]:
        """Nodes still working, in deployment order."""
        return [n for n in self.nodes if n not in self.finished]

    def record(self, node: str, state: NodeState) -> None:
        """Note that ``node`` reached the final ``state`` (the first report wins)."""
        if not state.final:
            raise ValueError(f"{state} is not a final state")
        if node not in self.finished:
            self.finished[node] = state
            self._counts[state] += 1

    def verdict(self) -> tuple[Verdict, str]:
        """The deployment's status now, and why."""
        if self.min_nodes is not None:
            possible = self.succeeded + self.unfinished_count
            if self.succeeded >= self.min_nodes and self.unfinished_count:
                return Verdict.SUCCEEDED, f"min nodes reached ({self.succeeded}/{self.min_nodes})"
            if possible < self.min_nodes:
                failed = len(self.nodes) - possible
                return Verdict.FAILED, (
                    f"{self.min_nodes} deployed nodes needed, at most {possible} possible "
                    f"({failed} node{'s' if failed > 1 else ''} failed)"
                )
        if self.unfinished_count:
            return Verdict.RUNNING, ""  # without min_nodes, every node goes to its end
        summary = f"{self.deployed}/{len(self.nodes)} nodes deployed"
        if self.breakpointed:
            summary = f"{self.breakpointed}/{len(self.nodes)} nodes stopped at the breakpoint" + (
                f", {self.deployed} deployed" if self.deployed else ""
            )
        goal = self.min_nodes or len(self.nodes)
        return (Verdict.SUCCEEDED if self.succeeded >= goal else Verdict.FAILED), summary
