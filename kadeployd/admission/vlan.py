"""``vlan`` (kadeploy --vlan): a deployment may ask for a VLAN only on nodes that can switch.

A node switches VLAN through its ``vlan.switch`` command (kadeployd/workflow/vlan.py); a
deployment asking for a VLAN on nodes without one is refused at once, naming them, rather
than failing each of them after its whole deployment.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from kadeploy_core.errors import Problem
from kadeployd.admission.refusal import AdmissionRefused, Refusal
from kadeployd.config import Node

logger = logging.getLogger(__name__)

SHOWN = 5
"""Node names a refusal lists before "and N more"."""


def check_vlan(nodes: Sequence[Node], vlan: str | None) -> None:
    """Refuse (INVALID_REQUEST, naming ``vlan``) a VLAN for nodes without ``vlan.switch``."""
    if vlan is None:
        return
    lacking = [node.name for node in nodes if node.settings.vlan.switch is None]
    if not lacking:
        return
    more = f" and {len(lacking) - SHOWN} more" if len(lacking) > SHOWN else ""
    message = (
        f"vlan {vlan}: {', '.join(lacking[:SHOWN])}{more} cannot change VLAN (no vlan.switch "
        "command in the configuration); deploy without vlan"
    )
    raise AdmissionRefused(Refusal.INVALID_REQUEST, message, [Problem("request", message, "vlan")])
