"""Macrostep and microstep names as users write them (``--breakpoint``, ``--custom-steps``).

A macrostep is named generically (``BroadcastEnv``: whichever variant runs) or, Kadeploy3
style, with its variant's class name (``BroadcastEnvChain``: only while the ``chain`` variant
runs; ``BroadcastEnvKascade`` is Kadeploy3's name of the chain). Microstep names are those of
:data:`~kadeploy_core.plans.VARIANT_PLANS`: for a generic macrostep, those of any of its
variants; for a variant's class name, those of that variant.

Pure logic: unknown names raise :class:`UnknownStep` with the valid names and a did-you-mean.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from kadeploy_core.errors import KadeployError
from kadeploy_core.plans import SET_VLAN, VARIANT_PLANS, Macrostep
from kadeploy_core.suggest import did_you_mean

logger = logging.getLogger(__name__)

ALIASES: dict[str, tuple[Macrostep, str]] = {
    "BroadcastEnvKascade": (Macrostep.BROADCAST_ENV, "chain"),
    "BroadcastEnvKastafior": (Macrostep.BROADCAST_ENV, "chain"),
}
"""Kadeploy3 class names of variants we implement under another name."""


class UnknownStep(KadeployError):
    """A macrostep or microstep name that does not exist; the message lists the valid ones."""


@dataclass(frozen=True, slots=True)
class StepScope:
    """A macrostep, and the variant it is restricted to (None: any variant)."""

    macrostep: Macrostep
    variant: str | None = None

    def matches(self, macrostep: Macrostep, variant: str) -> bool:
        """Whether the scope covers ``variant`` of ``macrostep``."""
        return self.macrostep == macrostep and self.variant in (None, variant)

    def microsteps(self) -> list[str]:
        """The microstep names valid in this scope, in workflow order, without repeats
        (BootNewEnv's end with ``set_vlan``, which a deployment with ``--vlan`` runs)."""
        variants = VARIANT_PLANS[self.macrostep]
        chosen = [self.variant] if self.variant is not None else list(variants)
        names: list[str] = []
        for variant in chosen:
            names += [m.name for m in variants[variant] if m.name not in names]
        if self.macrostep == Macrostep.BOOT_NEW_ENV:
            names.append(SET_VLAN.name)
        return names


def variant_class_name(macrostep: Macrostep, variant: str) -> str:
    """Kadeploy3's class name of a variant (``BootNewEnvHardReboot``)."""
    return macrostep.value + "".join(part.capitalize() for part in variant.split("_"))


def macrostep_names() -> dict[str, StepScope]:
    """Every name a macrostep may be given, and what it means."""
    names = {m.value: StepScope(m) for m in Macrostep}
    for macrostep, variants in VARIANT_PLANS.items():
        for variant in variants:
            names[variant_class_name(macrostep, variant)] = StepScope(macrostep, variant)
    names.update({alias: StepScope(*target) for alias, target in ALIASES.items()})
    return names


def resolve_macrostep(name: str) -> StepScope:
    """The scope named ``name``; UnknownStep listing the valid names."""
    names = macrostep_names()
    scope = names.get(name)
    if scope is None:
        generic = [m.value for m in Macrostep]
        raise UnknownStep(
            f"unknown macrostep {name!r}{did_you_mean(name, names)}; valid: "
            f"{', '.join(generic)} (or a variant's class name, e.g. "
            f"{variant_class_name(Macrostep.BROADCAST_ENV, 'chain')})"
        )
    return scope


def check_microstep(scope: StepScope, name: str, scope_name: str) -> str:
    """``name`` if it is a microstep of ``scope``; UnknownStep listing the valid names."""
    valid = scope.microsteps()
    if name not in valid:
        raise UnknownStep(
            f"unknown microstep {name!r} of {scope_name}{did_you_mean(name, valid)}; "
            f"valid: {', '.join(valid)}"
        )
    return name
