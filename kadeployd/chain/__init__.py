"""Chain transfer: the image goes server -> node1 -> node2 -> ... at the rate of one link.

``relay.py`` is the node-side program (stdlib only, sent over SSH); ``sender.py`` streams the
image from the daemon into the first live relay; ``report.py`` parses what relays print and
judges each node's result; ``command.py`` builds the relay's command line.
"""

from kadeployd.chain.command import relay_arguments, relay_launch, relay_source, relay_stdin
from kadeployd.chain.report import ChainResult, HopResult, RelayEvent, ReportError, parse_report
from kadeployd.chain.sender import (
    ChainCancelled,
    ChainEvent,
    ChainSender,
    Hop,
    new_secret,
    send_chain,
)

__all__ = [
    "ChainCancelled",
    "ChainEvent",
    "ChainResult",
    "ChainSender",
    "Hop",
    "HopResult",
    "RelayEvent",
    "ReportError",
    "new_secret",
    "parse_report",
    "relay_arguments",
    "relay_launch",
    "relay_source",
    "relay_stdin",
    "send_chain",
]
