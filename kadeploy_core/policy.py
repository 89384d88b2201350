"""Retry and fallback policy: what a node does after a variant attempt fails.

Pure logic, driven by the variant lists of the configuration (``automata.macrosteps``): a node
retries the variant it is on until its ``retries`` are spent, then falls to the next variant of
the macrostep, and fails when none is left. Each macrostep that succeeds hands over to the next
one starting from its first variant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from kadeploy_core.plans import Macrostep


class Variant(Protocol):
    """A configured variant, as the policy sees it."""

    @property
    def type(self) -> str:
        """The variant's name (``chain``, ``untrusted``...)."""
        ...

    @property
    def retries(self) -> int:
        """How many times a failed attempt is tried again before the next variant."""
        ...


class VariantLists(Protocol):
    """The configured variant list of each macrostep (``automata.macrosteps``)."""

    def variants(self, macrostep: Macrostep) -> Sequence[Variant]:
        """The variants of ``macrostep``, tried in order."""
        ...


@dataclass(frozen=True, slots=True)
class Position:
    """Which attempt of which variant of which macrostep a node is running."""

    macrostep: Macrostep
    variant_index: int
    attempt: int
    """1 for the first try of this variant, 2 for its first retry..."""

    @property
    def variant_attempt_label(self) -> str:
        """E.g. ``SetDeploymentEnv/untrusted#2`` for logs."""
        return f"{self.macrostep.value}[{self.variant_index}]#{self.attempt}"


@dataclass(frozen=True, slots=True)
class Plan:
    """A node's variant lists, and how to move through them."""

    macrosteps: VariantLists
    order: tuple[Macrostep, ...] = tuple(Macrostep)
    """The macrosteps run, in order: all three for a deployment, fewer for a reboot operation."""

    def variant(self, position: Position) -> Variant:
        """The variant running at ``position``."""
        return self.macrosteps.variants(position.macrostep)[position.variant_index]

    def first(self) -> Position:
        """Where every node starts."""
        return Position(self.order[0], 0, 1)

    def after_success(self, position: Position) -> Position | None:
        """The next macrostep's first variant, or None when the deployment of the node is done."""
        index = self.order.index(position.macrostep)
        if index + 1 == len(self.order):
            return None
        return Position(self.order[index + 1], 0, 1)

    def after_failure(self, position: Position) -> Position | None:
        """A retry of the same variant, the next variant, or None when the node has failed."""
        if position.attempt <= self.variant(position).retries:
            return Position(position.macrostep, position.variant_index, position.attempt + 1)
        variants = self.macrosteps.variants(position.macrostep)
        if position.variant_index + 1 < len(variants):
            return Position(position.macrostep, position.variant_index + 1, 1)
        return None
