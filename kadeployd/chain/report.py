"""What relays report: their JSON lines on stdout, and the per-node results of a chain.

A relay prints one JSON object per line (see ``relay.py``); the ChainTransfer actor reads
them through SSH output callbacks and turns each into a :class:`RelayEvent` with
:func:`parse_report`. The in-band acknowledgement that reaches the server at the end carries
the same per-node results, as :class:`HopResult`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

EVENT_KINDS = ("listening", "progress", "dead", "done", "error")


class ReportError(ValueError):
    """A relay printed a line that is not one of its reports."""


@dataclass(frozen=True, slots=True)
class RelayEvent:
    """One line of a relay's stdout. Fields that do not apply to ``kind`` stay at defaults."""

    kind: str
    """One of listening, progress, dead, done, error."""
    port: int = 0
    bytes: int = 0
    node: str = ""
    """For ``dead``: the ``host:port`` that was cut out."""
    reason: str = ""
    sha256: str = ""
    writer_status: int | None = None
    """For ``done``: the writer's exit status (negative: killed by that signal; None: the
    relay had to kill it after its timeout)."""


def _field(data: dict[str, Any], name: str, kind: type, line: str) -> Any:
    value = data.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ReportError(
            f"relay report {line!r}: field {name!r} must be a {kind.__name__}, got {value!r}"
        )
    return value


def parse_report(line: str | bytes) -> RelayEvent:
    """Parse one relay stdout line; ReportError (naming the line and field) if malformed."""
    text = line.decode(errors="replace") if isinstance(line, bytes) else line
    text = text.strip()
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ReportError(f"relay report {text!r} is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ReportError(f"relay report {text!r} is not a JSON object")
    kind = data.get("event")
    if kind not in EVENT_KINDS:
        raise ReportError(
            f"relay report {text!r}: event {kind!r} is not one of {', '.join(EVENT_KINDS)}"
        )
    match kind:
        case "listening":
            return RelayEvent(kind, port=_field(data, "port", int, text))
        case "progress":
            return RelayEvent(kind, bytes=_field(data, "bytes", int, text))
        case "dead":
            return RelayEvent(
                kind, node=_field(data, "node", str, text), reason=str(data.get("reason", ""))
            )
        case "done":
            status = data.get("writer_status")
            if status is not None:
                status = _field(data, "writer_status", int, text)
            return RelayEvent(
                kind,
                bytes=_field(data, "bytes", int, text),
                sha256=_field(data, "sha256", str, text),
                writer_status=status,
            )
        case _:
            return RelayEvent(kind, reason=str(data.get("reason", "")))


@dataclass(frozen=True, slots=True)
class HopResult:
    """What one node says it received and wrote, from the chain's final acknowledgement."""

    node: str
    bytes: int
    sha256: str
    writer_status: int | None
    writer_error: str = ""

    @classmethod
    def from_ack(cls, entry: Any) -> HopResult:
        """One entry of an ack's ``results``; ReportError if a relay sent something else."""
        if not isinstance(entry, dict):
            raise ReportError(f"chain ack: result {entry!r} is not an object")
        text = json.dumps(entry)
        status = entry.get("writer_status")
        if status is not None:
            status = _field(entry, "writer_status", int, text)
        return cls(
            node=_field(entry, "node", str, text),
            bytes=_field(entry, "bytes", int, text),
            sha256=_field(entry, "sha256", str, text),
            writer_status=status,
            writer_error=str(entry.get("writer_error", "")),
        )


@dataclass(frozen=True, slots=True)
class ChainResult:
    """The outcome of one chain broadcast, as the server saw it.

    ``results`` holds every node that acknowledged the stream; ``dead`` every node cut out
    (by the server or by a relay), with the reason. :meth:`failures` turns both into the
    per-node verdict, checking each node's bytes and SHA-256 against the source (``sha256``
    empty: a round without digests, whose writers check the stream themselves).
    """

    size: int
    sha256: str
    results: dict[str, HopResult]
    dead: dict[str, str]

    def failures(self, nodes: list[str]) -> dict[str, str]:
        """Node address -> why it failed, for every node of ``nodes`` that did not succeed."""
        failed: dict[str, str] = {}
        for node in nodes:
            result = self.results.get(node)
            if node in self.dead:
                failed[node] = f"cut out of the chain: {self.dead[node]}"
            elif result is None:
                failed[node] = "no result reported"
            elif result.bytes != self.size:
                failed[node] = f"received {result.bytes} bytes of {self.size}"
            elif self.sha256 and result.sha256 != self.sha256:
                failed[node] = f"SHA-256 {result.sha256} differs from the source's {self.sha256}"
            elif result.writer_status != 0:
                detail = f": {result.writer_error}" if result.writer_error else ""
                failed[node] = f"writer exit status {result.writer_status}{detail}"
        return failed
