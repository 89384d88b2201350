"""ChainTransfer: one per broadcast round; streams the image into a chain of node relays.

The relays were started by the nodes' own workers (each node's actor runs its relay over SSH
and reports the port it listens on); the DeploymentManager forms a round from the ready nodes
and starts this actor, which runs the blocking sender in a thread it owns and tells the
manager the result. The per-node verdict (cut out, bytes, SHA-256 against the source, writer
status) comes from that result, never from a relay's own word.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pykka

from kadeploy_core.errors import KadeployError
from kadeployd.chain import ChainCancelled, ChainEvent, ChainResult, ChainSender, Hop

logger = logging.getLogger(__name__)

STALL_TIMEOUT = 10.0
"""Seconds a hop may block the stream before it is cut out of the chain."""


@dataclass(frozen=True, slots=True)
class _Finished:
    result: ChainResult | None
    error: str | None


class ChainTransfer(pykka.ThreadingActor):
    """Streams ``image`` through ``hops`` (chain order) and reports to ``manager``."""

    def __init__(
        self, image: Path, hops: list[Hop], secret: bytes, manager: Any, *, digest: bool = True
    ) -> None:
        """``digest`` False: the relays compute no SHA-256 and the source's is not computed
        either (the nodes' decompressors check the stream)."""
        super().__init__()
        self._manager = manager
        self._sender = ChainSender(
            image,
            hops,
            secret,
            stall_timeout=STALL_TIMEOUT,
            on_event=self._observed,
            source_sha256=None if digest else "",
        )
        self._thread = threading.Thread(target=self._send, name="chain-sender", daemon=True)

    def on_start(self) -> None:
        """Start streaming in the sender thread."""
        self._thread.start()

    def cancel(self) -> None:
        """Stop the stream now (deployment cancelled)."""
        self._sender.cancel()

    def on_receive(self, message: Any) -> Any:
        """The sender thread's result: hand it to the manager and end."""
        if isinstance(message, _Finished):
            self._manager.chain_done(message.result, message.error)
            self.stop()

    def on_stop(self) -> None:
        """Make sure the sender thread ends with the actor."""
        self._sender.cancel()
        self._thread.join(timeout=STALL_TIMEOUT)
        self._sender.close()

    def _send(self) -> None:
        try:
            message = _Finished(self._sender.run(), None)
        except ChainCancelled:
            message = _Finished(None, "broadcast cancelled")
        except KadeployError as exc:
            message = _Finished(None, str(exc))
        except OSError as exc:
            message = _Finished(None, f"broadcast failed: {exc}")
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(message)

    @staticmethod
    def _observed(event: ChainEvent) -> None:
        if event.kind == "dead":
            logger.warning("chain: %s cut out: %s", event.node, event.reason)
        else:
            logger.debug("chain: %s %s %d", event.kind, event.node, event.bytes)
