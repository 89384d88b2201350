"""What one deployment event stream has sent, and the server-sent-event text of each event.

An event stream merges two sources: rows read from the database (on connect, and once more
after its subscription lagged or when the deployment ends) and events pushed by the hub. Both
may carry the same state or log line; :class:`StreamCursor` sends each once, in seq order, by
remembering the last history seq and the last log seq it sent. It also keeps each node's
transfer, so that a ``progress`` event is sent when, and only when, the sums change.

No I/O here: the route (:mod:`kadeployd.api.routes_events`) does the reading and the waiting.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from kadeploy_core.schemas import HistoryOut, ProgressOut, TransferOut
from kadeployd.api.convert import HIDDEN, deployment_out, history_out
from kadeployd.events.types import (
    DeploymentEnded,
    Event,
    NodeLogged,
    NodeProgress,
    NodeStateChanged,
)
from kadeployd.store.records import (
    SUCCESS_NODE_STATES,
    DeploymentView,
    HistoryEntry,
    LogLine,
    NodeView,
)

logger = logging.getLogger(__name__)

KEEPALIVE_TEXT = ": keepalive\n\n"


def state_text(state: HistoryOut) -> str:
    """A ``state`` event; its id is the history seq (what ``Last-Event-ID`` resumes from)."""
    return f"id: {state.seq}\nevent: state\ndata: {state.model_dump_json()}\n\n"


def log_text(seq: int, node: str, at: float, stream: str, text: str) -> str:
    """A ``log`` event (no id: a resumed stream resends the logs)."""
    data = {"seq": seq, "node": node, "at": at, "stream": stream, "text": text}
    return f"event: log\ndata: {json.dumps(data)}\n\n"


def end_text(view: DeploymentView, full: bool = True) -> str:
    """The ``end`` event: the deployment's document (without ``full``, as others see it)."""
    return f"event: end\ndata: {deployment_out(view, full=full).model_dump_json()}\n\n"


def progress_event(progress: ProgressOut | None, sent: ProgressOut | None) -> str | None:
    """The ``progress`` event to send for ``progress`` if it differs from the last ``sent``."""
    if progress is None or progress == sent:
        return None
    return f"event: progress\ndata: {progress.model_dump_json()}\n\n"


@dataclass(slots=True)
class _Transfer:
    bytes_done: int
    bytes_total: int | None
    final: bool
    state: str

    def counts(self) -> bool:
        """Same rule as :func:`kadeployd.api.convert.progress_out`: a node that started a
        transfer and did not fail."""
        return self.bytes_total is not None and (
            not self.final or self.state in SUCCESS_NODE_STATES
        )


class Transfers:
    """Each node's image transfer as far as the stream knows: the ``progress`` sums."""

    def __init__(self) -> None:
        self._nodes: dict[str, _Transfer] = {}

    def reset(self, nodes: Iterable[NodeView]) -> None:
        """Start again from the records read from the database."""
        self._nodes = {
            n.node: _Transfer(n.bytes_done or 0, n.bytes_total, n.final, n.state) for n in nodes
        }

    def moved(self, event: NodeProgress) -> None:
        """A node's transfer moved (the store records it only while the node is not final)."""
        known = self._nodes.get(event.node)
        if known is None:
            self._nodes[event.node] = _Transfer(event.bytes_done, event.bytes_total, False, "")
        elif not known.final:
            known.bytes_done, known.bytes_total = event.bytes_done, event.bytes_total

    def entered(self, event: NodeStateChanged) -> None:
        """A node entered a state: a failed final one takes it out of the sums."""
        known = self._nodes.setdefault(event.node, _Transfer(0, None, False, event.state))
        known.state, known.final = event.state, event.final

    def current(self) -> ProgressOut | None:
        """The deployment's transfer; None while no node has started one."""
        transfers = {
            node: TransferOut(bytes_done=t.bytes_done, bytes_total=t.bytes_total)
            for node, t in self._nodes.items()
            if t.counts() and t.bytes_total is not None
        }
        if not transfers:
            return None
        return ProgressOut(
            bytes_done=sum(t.bytes_done for t in transfers.values()),
            bytes_total=sum(t.bytes_total for t in transfers.values()),
            nodes=transfers,
        )


class StreamCursor:
    """What one stream sent; turns database rows and hub events into text, each once."""

    def __init__(self, after: int, logs: bool, full: bool = True) -> None:
        self.full = full
        """The reader sees messages (owner or administrator); see :mod:`..convert`."""
        self.state_seq = after
        """The last history seq sent (or resumed from)."""
        self.log_seq: int | None = 0 if logs else None
        """The last log seq sent; None when the stream sends no logs."""
        self.transfers = Transfers()
        self.end_seen = False
        """The hub said the deployment ended: read the database once more, then end."""
        self._sent: ProgressOut | None = None

    def entries(self, entries: Iterable[HistoryEntry]) -> list[str]:
        """``state`` events of history rows not sent yet."""
        texts = []
        for entry in entries:
            if entry.seq > self.state_seq:
                self.state_seq = entry.seq
                texts.append(state_text(history_out(entry, full=self.full)))
        return texts

    def lines(self, lines: Iterable[LogLine]) -> list[str]:
        """``log`` events of log rows not sent yet (none if the stream sends no logs)."""
        texts = []
        for line in lines:
            if self.log_seq is not None and line.seq > self.log_seq:
                self.log_seq = line.seq
                texts.append(log_text(line.seq, line.node, line.at, line.stream.value, line.text))
        return texts

    def events(self, events: Iterable[Event]) -> list[str]:
        """Text of the hub's events not sent yet, then ``progress`` if the sums changed."""
        texts = []
        for event in events:
            match event:
                case NodeStateChanged() if event.seq > self.state_seq:
                    self.state_seq = event.seq
                    self.transfers.entered(event)
                    texts.append(state_text(_history_out(event, self.full)))
                case NodeLogged() if self.log_seq is not None and event.seq > self.log_seq:
                    self.log_seq = event.seq
                    texts.append(
                        log_text(event.seq, event.node, event.at, event.stream, event.text)
                    )
                case NodeProgress():
                    self.transfers.moved(event)
                case DeploymentEnded():
                    self.end_seen = True
        if (text := self.progress()) is not None:
            texts.append(text)
        return texts

    def progress(self) -> str | None:
        """A ``progress`` event if the transfer changed since the last one sent."""
        current = self.transfers.current()
        text = progress_event(current, self._sent)
        if text is not None:
            self._sent = current
        return text


def _history_out(event: NodeStateChanged, full: bool) -> HistoryOut:
    return HistoryOut(
        seq=event.seq,
        node=event.node,
        state=event.state,
        macrostep=event.macrostep,
        variant=event.variant,
        attempt=event.attempt,
        message=event.message if full or not event.message else HIDDEN,
        at=event.at,
    )
