"""Kadeploy3's deployment log (``kastat3``): one record per node and finished operation, with
the variant, attempts and duration of each of the three macrosteps. Reads only, mixed into
StoreQueries.

Kadeploy3 wrote a ``log`` row per node at the end of each workflow; here the records are
computed from ``deployment_nodes`` and ``state_history``: ``stepN`` is the macrostep (1
SetDeploymentEnv, 2 BroadcastEnv, 3 BootNewEnv) and the variant of its last attempt,
``retry_stepN`` its attempts beyond the first, ``stepN_duration`` the whole seconds from its
first entry to the next macrostep's (or the node's end). Sorting, the retry filter and the
limit are SQL: a read returns at most :data:`MAX_RECORDS` rows, whatever the history size.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

from kadeployd.store.records import SUCCESS_NODE_STATES

logger = logging.getLogger(__name__)

MAX_RECORDS = 100_000
"""The most records one read returns (Kadeploy3 served its log by batches of 50 000)."""

FIELDS = ("wid", "user", "hostname", "step1", "step2", "step3", "timeout_step1",
          "timeout_step2", "timeout_step3", "retry_step1", "retry_step2", "retry_step3",
          "start", "step1_duration", "step2_duration", "step3_duration", "env", "md5",
          "success", "error")  # fmt: skip
"""Kadeploy3's kastat3 field names, in its order."""

OPERATIONS = ("deploy", "reboot", "power")
MACROSTEP_INDEX = {"SetDeploymentEnv": 1, "BroadcastEnv": 2, "BootNewEnv": 3}

_SUCCESS = ", ".join(f"'{s}'" for s in sorted(SUCCESS_NODE_STATES))

# The selection: finished node records of the deployments matching the filters. Every filter
# is a bound parameter; the node list is a JSON array (json_each) so the query stays constant.
_SELECTED = f"""
sel AS (
    SELECT dn.deployment_id, dn.node, d.user, d.created_at, dn.finished_at, dn.state,
           dn.error_message, d.node_count,
           d.environment_name || CASE
               WHEN coalesce(d.environment_version, json_extract(d.environment, '$.version'))
                    IS NULL THEN ''
               ELSE ':' || coalesce(d.environment_version,
                                    json_extract(d.environment, '$.version')) END AS env,
           dn.state IN ({_SUCCESS}) AS success
    FROM deployment_nodes dn JOIN deployments d ON d.id = dn.deployment_id
    WHERE dn.final = 1
      AND (:since IS NULL OR d.created_at >= :since)
      AND (:until IS NULL OR d.created_at <= :until)
      AND (:user IS NULL OR d.user = :user)
      AND (:wid IS NULL OR d.id = :wid)
      AND (:nodes IS NULL OR dn.node IN (SELECT value FROM json_each(:nodes)))
      AND (:operation IS NULL
           OR (:operation = 'deploy' AND json_extract(d.options, '$.operation') IS NULL)
           OR (:operation = 'reboot'
               AND json_extract(d.options, '$.operation') IN ('deploy_env', 'recorded_env')))
)"""  # noqa: S608 - constants only; every value is a bound parameter

_RECORDS = f"""
WITH {_SELECTED},
steps AS (
    SELECT h.deployment_id, h.node, h.macrostep, min(h.at) AS first_at,
           max(h.attempt) AS attempts, max(h.id) AS last_id
    FROM state_history h
    JOIN sel ON sel.deployment_id = h.deployment_id AND sel.node = h.node
    WHERE h.macrostep IN ('SetDeploymentEnv', 'BroadcastEnv', 'BootNewEnv')
    GROUP BY h.deployment_id, h.node, h.macrostep
),
timed AS (
    SELECT steps.*,
           lead(first_at) OVER (PARTITION BY deployment_id, node ORDER BY first_at) AS next_at,
           (SELECT variant FROM state_history WHERE id = steps.last_id) AS variant
    FROM steps
),
log AS (
    SELECT sel.deployment_id AS wid, sel.user, sel.node AS hostname, sel.node_count,
           sel.created_at, CAST(sel.created_at AS INTEGER) AS start, sel.env, '' AS md5,
           sel.success, coalesce(sel.error_message, '') AS error,
           {{steps}}
    FROM sel LEFT JOIN timed t ON t.deployment_id = sel.deployment_id AND t.node = sel.node
    GROUP BY sel.deployment_id, sel.node
)
SELECT * FROM log
WHERE (:min_retries IS NULL OR {{retries}})
ORDER BY {{order}}
LIMIT :limit
"""  # noqa: S608 - constants and the closed lists of _SORTABLE and MACROSTEP_INDEX

_STEP_COLUMNS = ",\n".join(
    f"max(CASE WHEN t.macrostep = '{macro}' THEN t.macrostep END) AS macro{i},\n"
    f"max(CASE WHEN t.macrostep = '{macro}' THEN t.variant END) AS variant{i},\n"
    f"coalesce(max(CASE WHEN t.macrostep = '{macro}' THEN t.attempts - 1 END), 0)"
    f" AS retry_step{i},\n"
    f"coalesce(max(CASE WHEN t.macrostep = '{macro}' THEN "
    f"CAST(coalesce(t.next_at, sel.finished_at, t.first_at) - t.first_at AS INTEGER) END), 0)"
    f" AS step{i}_duration"
    for macro, i in MACROSTEP_INDEX.items()
)

_FAILURE_RATES = f"""
WITH {_SELECTED}
SELECT node AS hostname, count(*) AS total, sum(success) AS succeeded
FROM sel GROUP BY node ORDER BY node
"""  # noqa: S608 - constants only

_SORTABLE = {
    "wid": "wid", "user": "user", "hostname": "hostname", "step1": "macro1 || variant1",
    "step2": "macro2 || variant2", "step3": "macro3 || variant3",
    "timeout_step1": "start", "timeout_step2": "start", "timeout_step3": "start",
    "retry_step1": "retry_step1", "retry_step2": "retry_step2", "retry_step3": "retry_step3",
    "start": "created_at", "step1_duration": "step1_duration",
    "step2_duration": "step2_duration", "step3_duration": "step3_duration", "env": "env",
    "md5": "md5", "success": "success", "error": "error",
}  # fmt: skip
"""Field -> the SQL expression it sorts on (a closed list: nothing of the request reaches the
query text). The timeouts come from the configuration, not the records: they sort as start."""


@dataclass(frozen=True, slots=True)
class LogFilter:
    """Which records: kastat3's ``-m``, ``-x``, ``-y``, ``-w``, ``-o``, ``-r``, ``-s``."""

    nodes: Sequence[str] | None = None
    since: float | None = None
    until: float | None = None
    user: str | None = None
    wid: str | None = None
    operation: str | None = None
    min_retries: int | None = None
    retry_steps: Sequence[int] = ()

    def params(self) -> dict[str, object]:
        """The bound parameters of the selection."""
        return {
            "since": self.since,
            "until": self.until,
            "user": self.user,
            "wid": self.wid,
            "nodes": None if self.nodes is None else json.dumps(list(self.nodes)),
            "operation": self.operation,
            "min_retries": self.min_retries,
        }


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One node's record of one finished operation (Kadeploy3's ``log`` row)."""

    wid: str
    user: str
    hostname: str
    node_count: int
    steps: tuple[tuple[str, str] | None, ...]
    """(macrostep, variant) of steps 1 to 3; None for a macrostep the node never entered."""
    retries: tuple[int, int, int]
    durations: tuple[int, int, int]
    start: int
    env: str
    md5: str
    success: bool
    error: str


@dataclass(frozen=True, slots=True)
class FailureRate:
    """A node's share of failed records."""

    hostname: str
    total: int
    succeeded: int

    @property
    def rate(self) -> float:
        """1 - succeeded / total, rounded to 3 decimals as Kadeploy3 does."""
        return round(1 - self.succeeded / self.total, 3) if self.total else 0.0


class DeployLogReads:
    """kastat3's records and failure rates; mixed into StoreQueries."""

    def _reading(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError  # provided by StoreQueries

    def log_records(
        self, selection: LogFilter, sort: Sequence[str] = ("start",), limit: int | None = None
    ) -> list[LogRecord]:
        """The records matching ``selection``, sorted on ``sort`` (field names of
        :data:`FIELDS`), at most ``limit`` (and :data:`MAX_RECORDS`)."""
        unknown = [f for f in sort if f not in _SORTABLE]
        if unknown:
            raise ValueError(f"cannot sort on {unknown[0]!r}: expected one of {', '.join(FIELDS)}")
        order = ", ".join([*(_SORTABLE[f] for f in sort), "wid", "hostname"])
        steps = [s for s in selection.retry_steps if s in (1, 2, 3)] or [1, 2, 3]
        joiner = " AND " if selection.retry_steps else " OR "
        retries = "(" + joiner.join(f"retry_step{s} >= :min_retries" for s in steps) + ")"
        query = _RECORDS.format(steps=_STEP_COLUMNS, retries=retries, order=order)
        params = selection.params()
        params["limit"] = min(limit if limit is not None else MAX_RECORDS, MAX_RECORDS)
        if selection.operation == "power":
            return []  # kapower runs no workflow: nothing is recorded
        with self._reading() as conn:
            return [_log_record(row) for row in conn.execute(query, params)]

    def failure_rates(self, selection: LogFilter) -> list[FailureRate]:
        """Per node of the records matching ``selection``: how many, how many succeeded."""
        if selection.operation == "power":
            return []
        with self._reading() as conn:
            return [
                FailureRate(row["hostname"], int(row["total"]), int(row["succeeded"] or 0))
                for row in conn.execute(_FAILURE_RATES, selection.params())
            ]


def _log_record(row: sqlite3.Row) -> LogRecord:
    steps = tuple(
        (row[f"macro{i}"], row[f"variant{i}"] or "") if row[f"macro{i}"] is not None else None
        for i in (1, 2, 3)
    )
    return LogRecord(
        wid=row["wid"],
        user=row["user"],
        hostname=row["hostname"],
        node_count=int(row["node_count"] or 0),
        steps=steps,
        retries=(int(row["retry_step1"]), int(row["retry_step2"]), int(row["retry_step3"])),
        durations=(
            int(row["step1_duration"]),
            int(row["step2_duration"]),
            int(row["step3_duration"]),
        ),
        start=int(row["start"]),
        env=row["env"] or "",
        md5=row["md5"],
        success=bool(row["success"]),
        error=row["error"] or "",
    )
