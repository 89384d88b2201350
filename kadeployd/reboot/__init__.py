"""The reboot service: power and reboot commands of nodes, windowed, with escalation.

``levels`` says which configured command serves a request (pure), ``jobs`` renders it and
reads its outcome (pure), ``window`` decides what may start (pure), ``actor`` runs it all.
"""

from kadeployd.reboot.actor import RebootActivity, RebootActor
from kadeployd.reboot.errors import DuplicateRequest, NoPowerCommand, RebootError
from kadeployd.reboot.jobs import RebootResult, ReplyTo
from kadeployd.reboot.levels import (
    PowerAction,
    PowerState,
    RebootLevel,
    available_level,
    escalate,
    parse_power_state,
)
from kadeployd.reboot.window import RebootWindow

__all__ = [
    "DuplicateRequest",
    "NoPowerCommand",
    "PowerAction",
    "PowerState",
    "RebootActivity",
    "RebootActor",
    "RebootError",
    "RebootLevel",
    "RebootResult",
    "RebootWindow",
    "ReplyTo",
    "available_level",
    "escalate",
    "parse_power_state",
]
