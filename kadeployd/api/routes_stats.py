"""``/v1/stats``: kastat's numbers, from the deployment records."""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query

from kadeploy_core.plans import Macrostep
from kadeploy_core.schemas import (
    DeploymentLogOut,
    FailureRateOut,
    NodeStatsOut,
    StateDurationOut,
)
from kadeployd.api.auth import Caller, CallerDep, Context
from kadeployd.api.context import ApiContext
from kadeployd.api.convert import HIDDEN, sees_details
from kadeployd.api.responses import ERRORS, errors
from kadeployd.store.deploy_log import FIELDS, MAX_RECORDS, LogFilter, LogRecord
from kadeployd.store.usage import StatsFilter

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/stats", tags=["stats"], responses=ERRORS)

Since = Annotated[float | None, Query(ge=0, le=1e11, description="unix time")]
Text = Annotated[str | None, Query(max_length=64)]


def _selection(
    since: Since = None, until: Since = None, environment: Text = None, user: Text = None
) -> StatsFilter:
    """The query parameters both statistics share: which deployments they are computed over."""
    return StatsFilter(since, until, environment, user)


Selection = Annotated[StatsFilter, Depends(_selection)]


@router.get("/nodes", response_model=list[NodeStatsOut], responses=errors(422))
def node_stats(
    *,
    context: Context,
    caller: CallerDep,
    selection: Selection,
    node: Annotated[list[str] | None, Query(max_length=100_000)] = None,
) -> list[NodeStatsOut]:
    """Per node: deployments, deployed, failed, aborted, retries, success rate, mean time."""
    selection = dataclasses.replace(selection, nodes=node)
    return [
        NodeStatsOut(
            node=s.node,
            deployments=s.deployments,
            deployed=s.deployed,
            failed=s.failed,
            aborted=s.aborted,
            retries=s.retries,
            success_rate=s.success_rate,
            mean_duration=s.mean_duration,
            last_at=s.last_at,
        )
        for s in context.reader.node_stats(selection)
    ]


@router.get("/states", response_model=list[StateDurationOut], responses=errors(422))
def state_stats(
    *, context: Context, caller: CallerDep, selection: Selection
) -> list[StateDurationOut]:
    """Per state: how often nodes entered it, mean and longest time spent in it."""
    return [
        StateDurationOut(state=d.state, entered=d.entered, mean=d.mean, longest=d.longest)
        for d in context.reader.state_durations(selection)
    ]


Field = Literal[FIELDS]  # type: ignore[valid-type]


def _log_selection(
    *,
    since: Since = None,
    until: Since = None,
    user: Text = None,
    node: Annotated[list[str] | None, Query(max_length=100_000)] = None,
    wid: Annotated[str | None, Query(max_length=64, description="a deployment id")] = None,
    operation: Literal["deploy", "reboot", "power"] | None = None,
    min_retries: Annotated[int | None, Query(ge=0, le=1000)] = None,
    retry_step: Annotated[list[Literal["1", "2", "3"]] | None, Query(max_length=3)] = None,
) -> LogFilter:
    """kastat3's filters: nodes, dates, user, workflow, operation, retries."""
    return LogFilter(
        nodes=node,
        since=since,
        until=until,
        user=user,
        wid=wid,
        operation=operation,
        min_retries=min_retries,
        retry_steps=tuple(int(step) for step in retry_step or ()),
    )


LogSelection = Annotated[LogFilter, Depends(_log_selection)]


@router.get("/log", response_model=list[DeploymentLogOut], responses=errors(422))
def deployment_log(
    *,
    context: Context,
    caller: CallerDep,
    selection: LogSelection,
    sort: Annotated[list[Field] | None, Query(max_length=20)] = None,
    limit: Annotated[int | None, Query(ge=0, le=MAX_RECORDS)] = None,
) -> list[DeploymentLogOut]:
    """Kadeploy3's deployment log (kastat3): one record per node and finished operation,
    sorted on ``sort`` (default: start), at most ``limit`` (and 100 000). Another user's
    error messages are hidden, as everywhere in the API."""
    records = context.reader.log_records(selection, tuple(sort or ("start",)), limit)
    return [_log_out(context, caller, r) for r in records]


@router.get("/failure-rates", response_model=list[FailureRateOut], responses=errors(422))
def failure_rates(
    *,
    context: Context,
    caller: CallerDep,
    selection: LogSelection,
    min_rate: Annotated[float | None, Query(ge=0, le=1)] = None,
) -> list[FailureRateOut]:
    """kastat3 -b: per node, 1 - succeeded / total over the records; those at ``min_rate`` or
    above."""
    rates = context.reader.failure_rates(selection)
    return [
        FailureRateOut(hostname=r.hostname, rate=r.rate)
        for r in rates
        if min_rate is None or r.rate >= min_rate
    ]


def _log_out(context: ApiContext, caller: Caller, record: LogRecord) -> DeploymentLogOut:
    names = ["", "", ""]
    timeouts = [0, 0, 0]
    node = context.config.nodes.get(record.hostname)
    for index, step in enumerate(record.steps):
        if step is None:
            continue
        macro, variant = step
        names[index] = macro + "".join(w.capitalize() for w in variant.split("_"))
        if node is not None and variant:
            for candidate in node.settings.automata.macrosteps.variants(Macrostep(macro)):
                if candidate.type == variant:
                    seconds = candidate.timeout.seconds(max(record.node_count, 1))
                    timeouts[index] = int(seconds) if math.isfinite(seconds) else 0
                    break
    error = record.error.replace("\n", " ").replace("\r", " ")
    if error and not sees_details(caller, record.user):
        error = HIDDEN
    return DeploymentLogOut(
        wid=record.wid,
        user=record.user,
        hostname=record.hostname,
        step1=names[0],
        step2=names[1],
        step3=names[2],
        timeout_step1=timeouts[0],
        timeout_step2=timeouts[1],
        timeout_step3=timeouts[2],
        retry_step1=record.retries[0],
        retry_step2=record.retries[1],
        retry_step3=record.retries[2],
        start=record.start,
        step1_duration=record.durations[0],
        step2_duration=record.durations[1],
        step3_duration=record.durations[2],
        env=record.env,
        md5=record.md5,
        success=record.success,
        error=error,
    )
