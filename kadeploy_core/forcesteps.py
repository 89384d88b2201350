"""Kadeploy3's ``--force-steps`` text: a whole automata for one deployment.

The text names the variants of the three macrosteps, in order, as Kadeploy3 writes them::

    SetDeploymentEnv|SetDeploymentEnvUntrusted:1:100&BroadcastEnv|BroadcastEnvKascade:1:100&
    BootNewEnv|BootNewEnvKexec:0:60,BootNewEnvClassical:1:100

Each macrostep is ``NAME|VARIANT:RETRIES:TIMEOUT[,VARIANT:RETRIES:TIMEOUT...]``; macrosteps
are joined by ``&``. Variants are Kadeploy3 class names (:func:`~kadeploy_core.stepnames.
variant_class_name`, or an alias such as ``BroadcastEnvKascade``), retries 0 to 100, timeouts
whole seconds. Pure logic: :class:`ForceStepsError` names the part that is wrong and what
would be valid.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from kadeploy_core.errors import KadeployError
from kadeploy_core.plans import VARIANT_PLANS, Macrostep
from kadeploy_core.stepnames import ALIASES, variant_class_name
from kadeploy_core.suggest import did_you_mean

logger = logging.getLogger(__name__)

MAX_TEXT = 2000
"""Longest text accepted (Kadeploy3 has no limit; a real automata is under 300 characters)."""
MAX_VARIANTS = 16
"""Most variants one macrostep may list."""
MAX_RETRIES = 100
MAX_TIMEOUT = 7 * 24 * 3600
"""Largest timeout in seconds (a week)."""

_VARIANT = re.compile(r"^(\w+):(\d{1,9}):(\d{1,9})$")


class ForceStepsError(KadeployError):
    """A ``--force-steps`` text that cannot be read; the message names the bad part."""


@dataclass(frozen=True, slots=True)
class ForcedVariant:
    """One variant of a forced automata."""

    type: str
    """Our name of the variant (``classical``, ``chain``...)."""
    retries: int
    timeout: int
    """Seconds."""


@dataclass(frozen=True, slots=True)
class ForcedSteps:
    """A parsed ``--force-steps``: the variants of each macrostep, in order."""

    text: str
    macrosteps: dict[Macrostep, tuple[ForcedVariant, ...]]


def variant_names(macrostep: Macrostep) -> dict[str, str]:
    """Every class name a variant of ``macrostep`` may be given -> our variant name."""
    names = {variant_class_name(macrostep, v): v for v in VARIANT_PLANS[macrostep]}
    names.update({alias: v for alias, (m, v) in ALIASES.items() if m == macrostep})
    return names


def parse_force_steps(text: str) -> ForcedSteps:
    """Read a ``--force-steps`` text; ForceStepsError naming the bad part."""
    if len(text) > MAX_TEXT:
        raise ForceStepsError(f"at most {MAX_TEXT} characters; got {len(text)}")
    parts = text.strip().split("&")
    expected = [m.value for m in Macrostep]
    if len(parts) != len(expected):
        raise ForceStepsError(
            f"expected the three macrosteps joined by '&' ({' & '.join(expected)}), each "
            f"'NAME|VARIANT:RETRIES:TIMEOUT,...'; got {len(parts)} part(s)"
        )
    chosen: dict[Macrostep, tuple[ForcedVariant, ...]] = {}
    for macrostep, part in zip(Macrostep, parts, strict=True):
        name, bar, variants = part.partition("|")
        if name.strip() != macrostep.value or not bar:
            raise ForceStepsError(
                f"part {part!r}: expected '{macrostep.value}|VARIANT:RETRIES:TIMEOUT' "
                f"(the macrosteps in the order {', '.join(expected)})"
            )
        chosen[macrostep] = _variants(macrostep, variants)
    return ForcedSteps(text.strip(), chosen)


def _variants(macrostep: Macrostep, text: str) -> tuple[ForcedVariant, ...]:
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or len(items) > MAX_VARIANTS:
        raise ForceStepsError(
            f"{macrostep.value}: expected 1 to {MAX_VARIANTS} variants "
            f"'VARIANT:RETRIES:TIMEOUT' separated by ','; got {text!r}"
        )
    names = variant_names(macrostep)
    found: list[ForcedVariant] = []
    for item in items:
        match = _VARIANT.match(item)
        if match is None:
            raise ForceStepsError(
                f"{macrostep.value}: {item!r}: expected VARIANT:RETRIES:TIMEOUT such as "
                f"{variant_class_name(macrostep, next(iter(VARIANT_PLANS[macrostep])))}:1:300"
            )
        name, retries, timeout = match.group(1), int(match.group(2)), int(match.group(3))
        if name not in names:
            raise ForceStepsError(
                f"{macrostep.value}: unknown variant {name!r}{did_you_mean(name, names)}; "
                f"valid: {', '.join(names)}"
            )
        if retries > MAX_RETRIES:
            raise ForceStepsError(f"{item!r}: retries must be 0 to {MAX_RETRIES}")
        if not 1 <= timeout <= MAX_TIMEOUT:
            raise ForceStepsError(f"{item!r}: timeout must be 1 to {MAX_TIMEOUT} seconds")
        found.append(ForcedVariant(names[name], retries, timeout))
    return tuple(found)
