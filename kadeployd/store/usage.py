"""What the deployment records say about nodes: who holds each one now, and statistics
(Kadeploy3 ``kanodes`` and ``kastat``). Reads only, mixed into StoreQueries.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

logger = logging.getLogger(__name__)

# Statistics filter deployments by creation time, environment and user (bound parameters).
# They leave out the kareboot operations that run the deployment workflow (deploy_env,
# recorded_env: their options name the operation), so that reboots do not count as deployments.
_LATEST = """
SELECT * FROM (
    SELECT dn.node, dn.deployment_id, dn.state, dn.final, dn.step_started_at,
           d.user, d.environment_name, d.environment_version, d.anonymous, d.status,
           json_extract(d.options, '$.operation') AS operation,
           row_number() OVER (
               PARTITION BY dn.node ORDER BY d.created_at DESC, dn.rowid DESC
           ) AS recency
    FROM deployment_nodes dn JOIN deployments d ON d.id = dn.deployment_id
) WHERE recency = 1
"""

_NODE_STATS = """
SELECT dn.node,
       count(*) AS deployments,
       sum(dn.state IN ('deployed', 'already_installed')) AS deployed,
       sum(dn.state = 'deploy_failed') AS failed,
       sum(dn.state = 'aborted') AS aborted,
       avg(CASE WHEN dn.state = 'deployed' THEN dn.finished_at - dn.started_at END)
           AS mean_duration,
       max(d.created_at) AS last_at
FROM deployment_nodes dn JOIN deployments d ON d.id = dn.deployment_id
WHERE dn.final = 1 AND (:since IS NULL OR d.created_at >= :since)
AND (:until IS NULL OR d.created_at < :until)
AND (:environment IS NULL OR d.environment_name = :environment)
AND (:user IS NULL OR d.user = :user)
AND json_extract(d.options, '$.operation') IS NULL
GROUP BY dn.node ORDER BY dn.node
"""

_RETRIES = """
SELECT node, sum(extra) AS retries FROM (
    SELECT h.node, max(h.attempt) - 1 AS extra
    FROM state_history h JOIN deployments d ON d.id = h.deployment_id
    WHERE h.attempt >= 1 AND h.macrostep IS NOT NULL
    AND (:since IS NULL OR d.created_at >= :since) AND (:until IS NULL OR d.created_at < :until)
    AND (:environment IS NULL OR d.environment_name = :environment)
    AND (:user IS NULL OR d.user = :user)
    AND json_extract(d.options, '$.operation') IS NULL
    GROUP BY h.deployment_id, h.node, h.macrostep
) GROUP BY node
"""

_STATE_DURATIONS = """
SELECT state, count(*) AS entered, avg(next_at - at) AS mean, max(next_at - at) AS longest
FROM (
    SELECT h.node, h.state, h.at,
           lead(h.at) OVER (PARTITION BY h.deployment_id, h.node ORDER BY h.id) AS next_at
    FROM state_history h JOIN deployments d ON d.id = h.deployment_id
    WHERE (:since IS NULL OR d.created_at >= :since) AND (:until IS NULL OR d.created_at < :until)
    AND (:environment IS NULL OR d.environment_name = :environment)
    AND (:user IS NULL OR d.user = :user)
    AND json_extract(d.options, '$.operation') IS NULL
) WHERE next_at IS NOT NULL
GROUP BY state ORDER BY state
"""


@dataclass(frozen=True, slots=True)
class NodeUsage:
    """A node's latest deployment record: its state there, and whose environment it is."""

    node: str
    deployment_id: str
    user: str
    state: str
    final: bool
    environment_name: str
    environment_version: int | None
    anonymous: bool
    deployment_status: str
    since: float
    """When the node entered ``state``."""
    operation: str | None = None
    """The kareboot operation of that record (deploy_env, recorded_env); None for a
    deployment."""

    @property
    def busy(self) -> bool:
        """Whether a running deployment is still working on the node."""
        return self.deployment_status == "running" and not self.final


@dataclass(frozen=True, slots=True)
class NodeStats:
    """Outcomes of a node's finished deployment records."""

    node: str
    deployments: int
    deployed: int
    failed: int
    aborted: int
    retries: int
    """Attempts beyond the first, summed over macrosteps and deployments."""
    mean_duration: float | None
    """Mean seconds from leaving pending to deployed, over successful records."""
    last_at: float | None

    @property
    def success_rate(self) -> float | None:
        """Deployed over deployed + failed (aborted records are not counted)."""
        tried = self.deployed + self.failed
        return None if tried == 0 else self.deployed / tried


@dataclass(frozen=True, slots=True)
class StateDuration:
    """How long nodes stayed in one state."""

    state: str
    entered: int
    mean: float
    longest: float


@dataclass(frozen=True, slots=True)
class StatsFilter:
    """Which deployments statistics are computed over; None means no filter."""

    since: float | None = None
    until: float | None = None
    environment: str | None = None
    user: str | None = None
    nodes: Sequence[str] | None = None

    def params(self) -> dict[str, object]:
        """The SQL parameters of the statistics queries."""
        return {
            "since": self.since,
            "until": self.until,
            "environment": self.environment,
            "user": self.user,
        }


class UsageReads:
    """Node usage and statistics; mixed into StoreQueries."""

    def _reading(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError  # provided by StoreQueries

    def node_usage(self) -> dict[str, NodeUsage]:
        """Every node ever deployed -> its latest deployment record."""
        with self._reading() as conn:
            return {
                row["node"]: NodeUsage(
                    node=row["node"],
                    deployment_id=row["deployment_id"],
                    user=row["user"],
                    state=row["state"],
                    final=bool(row["final"]),
                    environment_name=row["environment_name"],
                    environment_version=row["environment_version"],
                    anonymous=bool(row["anonymous"]),
                    deployment_status=row["status"],
                    since=row["step_started_at"],
                    operation=row["operation"],
                )
                for row in conn.execute(_LATEST)
            }

    def node_stats(self, selection: StatsFilter | None = None) -> list[NodeStats]:
        """Per-node outcome counts over the finished records matching ``selection``."""
        chosen = selection or StatsFilter()
        params = chosen.params()
        with self._reading() as conn:
            retries = {r["node"]: int(r["retries"] or 0) for r in conn.execute(_RETRIES, params)}
            stats = [
                NodeStats(
                    node=row["node"],
                    deployments=row["deployments"],
                    deployed=row["deployed"] or 0,
                    failed=row["failed"] or 0,
                    aborted=row["aborted"] or 0,
                    retries=retries.get(row["node"], 0),
                    mean_duration=row["mean_duration"],
                    last_at=row["last_at"],
                )
                for row in conn.execute(_NODE_STATS, params)
            ]
        if chosen.nodes is not None:
            wanted = set(chosen.nodes)
            stats = [s for s in stats if s.node in wanted]
        return stats

    def state_durations(self, selection: StatsFilter | None = None) -> list[StateDuration]:
        """Per state: how many times nodes entered it and how long they stayed."""
        chosen = selection or StatsFilter()
        with self._reading() as conn:
            return [
                StateDuration(row["state"], row["entered"], row["mean"], row["longest"])
                for row in conn.execute(_STATE_DURATIONS, chosen.params())
            ]
