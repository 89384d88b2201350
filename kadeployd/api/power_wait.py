"""Power and reboot requests awaited on the event loop, never in one of the API's threads.

A power command may last as long as its ``command_timeout`` (tens of seconds); a route that
waited for it in the server's thread pool held one of its ~40 threads meanwhile: 42
concurrent power-offs of one user made ``/v1/health`` wait 16 s. Here the requests are
submitted to the RebootActor (short, bounded asks, in the thread pool), and each result it
delivers (from a worker thread) is handed to the event loop with ``call_soon_threadsafe``;
the route awaits an asyncio future and holds no thread while the commands run.

``PowerSlots`` bounds one user's requests waiting that way
(``daemon.api.max_power_requests_per_user``): beyond it, ``429`` with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import weakref
from collections import Counter
from collections.abc import Iterator, Sequence

from starlette.concurrency import run_in_threadpool

from kadeployd.api.context import ApiContext
from kadeployd.api.errors import ApiError
from kadeployd.config import Node
from kadeployd.daemon import CANCEL_GRACE, Daemon
from kadeployd.reboot import PowerAction, RebootLevel, RebootResult
from kadeployd.reboot.jobs import not_run
from kadeployd.reboot.levels import LEVELS, stronger_level

logger = logging.getLogger(__name__)

RETRY_AFTER = "5"
"""Seconds a user over the cap is told to wait (a power command takes seconds)."""


class PowerSlots:
    """Power and reboot requests in flight, per user."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._taken: Counter[str] = Counter()

    @contextlib.contextmanager
    def slot(self, user: str, limit: int) -> Iterator[None]:
        """Hold one of ``user``'s ``limit`` slots for the block; ApiError 429 if none is free."""
        with self._lock:
            if self._taken[user] >= limit:
                raise ApiError(
                    429,
                    "too_many_requests",
                    f"{user} already has {self._taken[user]} power or reboot requests waiting "
                    f"for their commands, the limit per user "
                    f"(daemon.api.max_power_requests_per_user); wait for one to end",
                    headers={"Retry-After": RETRY_AFTER},
                )
            self._taken[user] += 1
        try:
            yield
        finally:
            with self._lock:
                self._taken[user] -= 1
                if self._taken[user] <= 0:
                    del self._taken[user]


_SLOTS: weakref.WeakKeyDictionary[ApiContext, PowerSlots] = weakref.WeakKeyDictionary()
_SLOTS_LOCK = threading.Lock()


def slots_of(context: ApiContext) -> PowerSlots:
    """The power slots of one API (one per context, made on first use)."""
    with _SLOTS_LOCK:
        slots = _SLOTS.get(context)
        if slots is None:
            slots = _SLOTS[context] = PowerSlots()
        return slots


async def power(daemon: Daemon, nodes: Sequence[Node], action: PowerAction) -> list[RebootResult]:
    """Run ``action`` (on, off, status) on ``nodes`` through the RebootActor, awaited: one
    result per node, in order."""
    return await _requests(daemon, nodes, PowerAction(action))


async def reboot(daemon: Daemon, nodes: Sequence[Node], level: RebootLevel) -> list[RebootResult]:
    """Reboot ``nodes`` at ``level``, awaited: a failed reboot command is followed by the
    next stronger one, its failure kept in the result's message as the evidence."""
    results = await _requests(daemon, nodes, RebootLevel(level))
    for _round in LEVELS[1:]:
        failed: dict[RebootLevel, list[int]] = {}
        for index, result in enumerate(results):
            if (stronger := _escalation(nodes[index], result)) is not None:
                failed.setdefault(stronger, []).append(index)
        for stronger, indexes in failed.items():
            again = await _requests(daemon, [nodes[i] for i in indexes], stronger)
            for index, result in zip(indexes, again, strict=True):
                message = f"{results[index].message}; escalated: {result.message}"
                results[index] = dataclasses.replace(result, message=message)
    return results


def _escalation(node: Node, result: RebootResult) -> RebootLevel | None:
    if result.ok or result.cancelled or result.command is None:
        return None
    return stronger_level(node.settings.power, RebootLevel(result.operation))


async def _requests(
    daemon: Daemon, nodes: Sequence[Node], operation: PowerAction | RebootLevel
) -> list[RebootResult]:
    """Submit one request per node and await every result (bounded by ``power_wait``);
    requests unanswered at the deadline are cancelled and reported as such."""
    if not nodes:
        return []
    loop = asyncio.get_running_loop()
    complete: asyncio.Future[None] = loop.create_future()
    results: dict[str, RebootResult] = {}
    lock = threading.Lock()

    def finish() -> None:
        if not complete.done():
            complete.set_result(None)

    def reply(result: RebootResult) -> None:  # a RebootActor thread: must not block
        with lock:
            results[result.node.name] = result
            last = len(results) == len(nodes)
        if last:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(finish)

    wait = daemon.power_wait(nodes)
    ids = await run_in_threadpool(daemon.submit_power, nodes, operation, reply)
    try:
        await asyncio.wait_for(asyncio.shield(complete), wait)
    except TimeoutError:
        with lock:
            missing = [ids[n.name] for n in nodes if n.name not in results]
        for request_id in missing:
            logger.warning("request %s: no answer in %.0f s: cancelling", request_id, wait)
            await run_in_threadpool(daemon.cancel_power, request_id)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(complete), CANCEL_GRACE)
    with lock:
        return [
            results.get(node.name)
            or not_run(ids[node.name], node, operation, f"no answer within {wait:.0f} s")
            for node in nodes
        ]
