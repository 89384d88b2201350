"""``/v1/stats``: kastat's numbers, from the deployment records."""

from __future__ import annotations

import dataclasses
import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from kadeploy_core.schemas import NodeStatsOut, StateDurationOut
from kadeployd.api.auth import CallerDep, Context
from kadeployd.api.responses import ERRORS, errors
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
