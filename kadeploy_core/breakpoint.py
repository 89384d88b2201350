"""``--breakpoint MACROSTEP[:MICROSTEP]``: where each node stops, left as it is for debugging.

A node stops *before* the named microstep (before the macrostep's first microstep when only
the macrostep is named) and ends ``breakpointed``: its PXE profile and its env are left as
they are. A node whose running variant has no such microstep goes on (e.g. a breakpoint at
``send_image_chain`` does not stop a node that fell back to the ``direct`` variant).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from kadeploy_core.plans import Macrostep
from kadeploy_core.stepnames import StepScope, check_microstep, resolve_macrostep

logger = logging.getLogger(__name__)

MAX_LENGTH = 200


@dataclass(frozen=True, slots=True)
class Breakpoint:
    """Stop before ``microstep`` of ``scope`` (None: before the scope's first microstep)."""

    text: str
    """As the user wrote it (shown in the summary and recorded in the options)."""
    scope: StepScope
    microstep: str | None = None

    def __str__(self) -> str:
        return self.text

    def stops_before(self, macrostep: Macrostep, variant: str, index: int, microstep: str) -> bool:
        """Whether a node about to run ``microstep`` (number ``index`` of ``variant`` of
        ``macrostep``) stops here."""
        if not self.scope.matches(macrostep, variant):
            return False
        return index == 0 if self.microstep is None else microstep == self.microstep


def parse_breakpoint(text: str) -> Breakpoint:
    """``BroadcastEnv:send_image_chain`` or ``BroadcastEnv``; UnknownStep (with the valid
    names and a did-you-mean) or ValueError for a malformed text."""
    text = text.strip()
    if not text or len(text) > MAX_LENGTH or text.count(":") > 1 or text.endswith(":"):
        raise ValueError(
            f"expected MACROSTEP or MACROSTEP:MICROSTEP (e.g. BroadcastEnv:send_image_chain); "
            f"got {text[:MAX_LENGTH]!r}"
        )
    macro, _, micro = text.partition(":")
    scope = resolve_macrostep(macro)
    if not micro:
        return Breakpoint(text, scope)
    return Breakpoint(text, scope, check_microstep(scope, micro, macro))
