"""``/v1/deployments/{id}/events``: server-sent events of a deployment.

The stream is pushed, not polled. On connect it subscribes to the daemon's event hub *first*,
then sends from the database what came after ``Last-Event-ID`` / ``after``, then the hub's
events as the store commits them, each state once (by seq). The store is the record and
publishes only what it committed, so a client that reconnects with ``Last-Event-ID`` misses
nothing. A stream whose subscription lagged (a slow client) re-reads the database once from
its last seq; when the deployment ends it reads it once more, then sends ``end``. It sends::

    id: 42              <- the history seq: resume from here
    event: state
    data: {"seq": 42, "node": "n-1", "state": "transferring", ...}

    event: log          <- only with ?logs=true
    data: {"seq": 7, "node": "n-1", "stream": "stdout", "text": "..."}

    event: progress     <- when the image transfer moved (at most once per delivery)
    data: {"bytes_done": 1048576, "bytes_total": 4194304,
           "nodes": {"n-1": {"bytes_done": 1048576, "bytes_total": 2097152}, ...}}

    event: end          <- once the deployment is over and every state was sent
    data: {"id": "...", "status": "succeeded", ...}

and a ``: keepalive`` comment every 15 s of silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
import anyio.to_thread
from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from kadeployd.api.auth import CallerDep, Context
from kadeployd.api.context import ApiContext
from kadeployd.api.convert import sees_details
from kadeployd.api.errors import ApiError
from kadeployd.api.event_stream import KEEPALIVE_TEXT, StreamCursor, end_text, progress_event
from kadeployd.api.responses import ERRORS, errors
from kadeployd.events import EVENT_TYPES, NodeLogged
from kadeployd.store.records import DeploymentStatus

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/deployments", tags=["deployments"], responses=ERRORS)

KEEPALIVE = 15.0
"""Seconds of silence after which the stream sends a ``: keepalive`` comment."""
MAX_SEQ = 2**62
"""Largest seq a client may resume from (SQLite integers are 64-bit)."""
PAGE = 10_000
"""Rows read from the database at once when (re)playing."""

__all__ = ["progress_event", "router"]


@router.get(
    "/{deployment_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "The event stream"},
        **errors(400, 403, 404, 422),
    },
)
def deployment_events(
    *,
    deployment_id: str,
    context: Context,
    caller: CallerDep,
    after: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
    logs: bool = False,
    last_event_id: Annotated[str | None, Header(max_length=32)] = None,
) -> StreamingResponse:
    """Follow a deployment: its nodes' state changes (and logs), then its end."""
    view = context.reader.deployment(deployment_id)
    full = sees_details(caller, view.user)
    if logs and not full:
        raise ApiError(403, "forbidden", f"the logs of deployment {view.id} are {view.user}'s")
    start = after
    if last_event_id is not None:
        start = max(start, _resume_seq(last_event_id))
    return StreamingResponse(
        _stream(context, deployment_id, start, logs, full),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _resume_seq(last_event_id: str) -> int:
    """The history seq of a ``Last-Event-ID`` header (an ``id:`` the stream sent), or 400."""
    text = last_event_id.strip()
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_SEQ:
        shown = last_event_id if last_event_id.isprintable() else ascii(last_event_id)
        raise ApiError(
            400,
            "bad_request",
            f"header Last-Event-ID: expected a history seq (an id: the stream sent, "
            f"a number from 0 to {MAX_SEQ}); got {shown!r}",
        )
    return int(text)


async def _stream(
    context: ApiContext, deployment_id: str, after: int, logs: bool, full: bool
) -> AsyncIterator[str]:
    """Subscribe, replay from the database, then follow the hub until the deployment ends;
    without ``full`` (not the owner's nor an administrator's), messages hidden."""
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()

    def wake() -> None:  # the StoreActor's thread: must not block
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(ready.set)

    kinds = EVENT_TYPES if logs else EVENT_TYPES - {NodeLogged}
    cursor = StreamCursor(after, logs, full)
    with context.events.subscribe(deployment_id, kinds=kinds, waker=wake) as subscription:
        # Subscribed before reading: what commits from now on is queued, what committed
        # before is read; the overlap is sent once (seqs).
        text, ended = await _replay(context, deployment_id, cursor)
        if text:
            yield text
        quiet_since = time.monotonic()
        while not ended:
            ready.clear()  # before take(): a wake after it is not lost
            delivery = subscription.take()
            if delivery.closed or context.stopping.is_set():
                return
            if delivery.lagged or delivery.events:
                text = "".join(cursor.events(delivery.events))
                if delivery.lagged or cursor.end_seen:
                    more, ended = await _replay(context, deployment_id, cursor)
                    text += more
                if text:
                    quiet_since = time.monotonic()
                    yield text
                continue
            silence = KEEPALIVE - (time.monotonic() - quiet_since)
            with anyio.move_on_after(max(silence, 0.0)):
                await ready.wait()
            if time.monotonic() - quiet_since >= KEEPALIVE:
                quiet_since = time.monotonic()
                yield KEEPALIVE_TEXT


async def _replay(
    context: ApiContext, deployment_id: str, cursor: StreamCursor
) -> tuple[str, bool]:
    """What the database has that the stream did not send, and whether the deployment is over
    (then the text ends with ``end``). One read of each kind, by pages: never a poll."""
    reader = context.reader
    # The view first: if it says finished, the rows read after it are complete.
    view = await anyio.to_thread.run_sync(reader.deployment, deployment_id)
    texts: list[str] = []
    while True:
        entries = await anyio.to_thread.run_sync(
            reader.state_changes, deployment_id, cursor.state_seq, PAGE
        )
        texts.extend(cursor.entries(entries))
        if len(entries) < PAGE:
            break
    while cursor.log_seq is not None:
        lines = await anyio.to_thread.run_sync(
            reader.log, deployment_id, None, cursor.log_seq, PAGE
        )
        texts.extend(cursor.lines(lines))
        if len(lines) < PAGE:
            break
    nodes = await anyio.to_thread.run_sync(reader.nodes, deployment_id)
    cursor.transfers.reset(nodes)
    if (progress := cursor.progress()) is not None:
        texts.append(progress)
    ended = view.status != DeploymentStatus.RUNNING
    if ended:
        texts.append(end_text(view, cursor.full))
    return "".join(texts), ended
