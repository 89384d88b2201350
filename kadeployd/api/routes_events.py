"""``/v1/deployments/{id}/events``: server-sent events of a deployment.

The stream polls the store (the simplest correct approach: the store is the record, so a
client that reconnects with ``Last-Event-ID`` misses nothing) and sends::

    id: 42              <- the history seq: resume from here
    event: state
    data: {"seq": 42, "node": "n-1", "state": "transferring", ...}

    event: log          <- only with ?logs=true
    data: {"seq": 7, "node": "n-1", "stream": "stdout", "text": "..."}

    event: progress     <- when the image transfer moved (at most once per poll)
    data: {"bytes_done": 1048576, "bytes_total": 4194304,
           "nodes": {"n-1": {"bytes_done": 1048576, "bytes_total": 2097152}, ...}}

    event: end          <- once the deployment is over and every state was sent
    data: {"id": "...", "status": "succeeded", ...}

and a ``: keepalive`` comment every 15 s of silence.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from kadeployd.api.auth import CallerDep, Context
from kadeployd.api.context import ApiContext
from kadeployd.api.convert import deployment_out, history_out, progress_out
from kadeployd.api.errors import ApiError
from kadeployd.api.models import ProgressOut
from kadeployd.api.responses import ERRORS
from kadeployd.store.records import DeploymentStatus, DeploymentView, HistoryEntry, LogLine

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/deployments", tags=["deployments"], responses=ERRORS)

POLL_INTERVAL = 0.25
KEEPALIVE = 15.0


@router.get(
    "/{deployment_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "The event stream"}},
)
def deployment_events(
    *,
    deployment_id: str,
    context: Context,
    caller: CallerDep,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    logs: bool = False,
    last_event_id: Annotated[str | None, Header(max_length=32)] = None,
) -> StreamingResponse:
    """Follow a deployment: its nodes' state changes (and logs), then its end."""
    view = context.reader.deployment(deployment_id)
    if logs and view.user != caller.user and not caller.admin:
        raise ApiError(403, "forbidden", f"the logs of deployment {view.id} are {view.user}'s")
    start = after
    if last_event_id is not None:
        if not last_event_id.isdigit():
            raise ApiError(422, "invalid_request", "Last-Event-ID must be a history seq")
        start = max(start, int(last_event_id))
    return StreamingResponse(
        _stream(context, deployment_id, start, logs),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _poll(
    context: ApiContext, deployment_id: str, after: int, log_after: int | None
) -> tuple[DeploymentView, list[HistoryEntry], list[LogLine], ProgressOut | None]:
    # The view first: if it says finished, the entries read after it are complete.
    view = context.reader.deployment(deployment_id)
    entries = context.reader.state_changes(deployment_id, after)
    lines = [] if log_after is None else context.reader.log(deployment_id, None, log_after, 10_000)
    progress = progress_out(context.reader.nodes(deployment_id))
    return view, entries, lines, progress


def progress_event(progress: ProgressOut | None, sent: ProgressOut | None) -> str | None:
    """The ``progress`` event to send for ``progress`` if it differs from the last ``sent``."""
    if progress is None or progress == sent:
        return None
    return f"event: progress\ndata: {progress.model_dump_json()}\n\n"


async def _stream(
    context: ApiContext, deployment_id: str, after: int, logs: bool
) -> AsyncIterator[str]:
    log_after: int | None = 0 if logs else None
    quiet_since = time.monotonic()
    sent: ProgressOut | None = None
    while not context.stopping.is_set():
        view, entries, lines, progress = await anyio.to_thread.run_sync(
            _poll, context, deployment_id, after, log_after
        )
        for entry in entries:
            after = entry.seq
            yield f"id: {entry.seq}\nevent: state\ndata: {history_out(entry).model_dump_json()}\n\n"
        for line in lines:
            log_after = line.seq
            data = {"seq": line.seq, "node": line.node, "at": line.at}
            data.update(stream=line.stream.value, text=line.text)
            yield f"event: log\ndata: {json.dumps(data)}\n\n"
        if (text := progress_event(progress, sent)) is not None:
            sent = progress
            quiet_since = time.monotonic()
            yield text
        if entries or lines:
            quiet_since = time.monotonic()
        if view.status != DeploymentStatus.RUNNING and len(entries) < 10_000 > len(lines):
            yield f"event: end\ndata: {deployment_out(view).model_dump_json()}\n\n"
            return
        if time.monotonic() - quiet_since > KEEPALIVE:
            quiet_since = time.monotonic()
            yield ": keepalive\n\n"
        await anyio.sleep(POLL_INTERVAL)
