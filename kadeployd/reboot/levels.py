"""Reboot levels, power actions and which configured command serves them (pure logic).

Kadeploy3 escalates a retried reboot: the first attempt asks the running system to reboot
(``soft``), the second cycles the power through the BMC (``hard``), later ones use the
strongest command there is (``very_hard``: a reset, a PDU outlet...). A cluster need not
configure all three; :func:`available_level` picks the command that will actually run.
"""

from __future__ import annotations

import logging
import re
from enum import StrEnum

from kadeployd.config.schema import PowerSettings
from kadeployd.config.templates import CommandTemplate
from kadeployd.reboot.errors import NoPowerCommand

logger = logging.getLogger(__name__)

_CONFIG_FILES = "deploy.conf, the cluster file or the node's entry in nodes.conf"


class RebootLevel(StrEnum):
    """How forcefully a node is rebooted, weakest first."""

    SOFT = "soft"
    """Ask the running system to reboot (``ssh node reboot``)."""
    HARD = "hard"
    """Cycle the power through the BMC."""
    VERY_HARD = "very_hard"
    """The strongest means there is (reset, PDU outlet); for nodes that ignore the others."""

    @property
    def setting(self) -> str:
        """The key of its template in the ``power`` section (``reboot_soft``...)."""
        return f"reboot_{self.value}"


LEVELS: tuple[RebootLevel, ...] = (RebootLevel.SOFT, RebootLevel.HARD, RebootLevel.VERY_HARD)
"""Every level, weakest first."""


class PowerAction(StrEnum):
    """A plain power operation (Kadeploy3's ``kapower``)."""

    ON = "on"
    OFF = "off"
    STATUS = "status"

    @property
    def setting(self) -> str:
        """The key of its template in the ``power`` section (``power_on``...)."""
        return f"power_{self.value}"


class PowerState(StrEnum):
    """A node's power as its status command reports it."""

    ON = "on"
    OFF = "off"


def escalate(attempt: int) -> RebootLevel:
    """The level of reboot attempt number ``attempt`` (1-based): soft, hard, then very_hard."""
    if attempt < 1:
        raise ValueError(f"attempts are numbered from 1, got {attempt}")
    return LEVELS[min(attempt, len(LEVELS)) - 1]


def reboot_template(power: PowerSettings, level: RebootLevel) -> CommandTemplate | None:
    """The template configured for ``level``, or None."""
    template: CommandTemplate | None = getattr(power, level.setting)
    return template


def stronger_level(power: PowerSettings, level: RebootLevel) -> RebootLevel | None:
    """The next level above ``level`` that ``power`` has a command for, if any: where a reboot
    without effect escalates."""
    stronger = LEVELS[LEVELS.index(level) + 1 :]
    return next((lv for lv in stronger if reboot_template(power, lv) is not None), None)


def available_level(power: PowerSettings, wanted: RebootLevel) -> RebootLevel:
    """The level that will serve a ``wanted`` reboot with the commands ``power`` defines.

    A missing level falls to the next stronger one that is defined (soft -> hard ->
    very_hard); when none is defined above, to the strongest one below (a very_hard retry on a
    cluster without a very_hard command still gets its hard reboot). Raises NoPowerCommand
    when no reboot command is configured at all.
    """
    index = LEVELS.index(wanted)
    for level in (*LEVELS[index:], *reversed(LEVELS[:index])):
        if reboot_template(power, level) is not None:
            if level != wanted:
                logger.debug("no %s command configured; using %s", wanted.setting, level.setting)
            return level
    keys = ", ".join(f"power.{level.setting}" for level in LEVELS)
    raise NoPowerCommand(f"no reboot command is configured: set one of {keys} in {_CONFIG_FILES}")


def power_template(power: PowerSettings, action: PowerAction) -> CommandTemplate:
    """The template of ``action``; raises NoPowerCommand when it is not configured."""
    template: CommandTemplate | None = getattr(power, action.setting)
    if template is None:
        raise NoPowerCommand(
            f"no power {action.value} command is configured: set power.{action.setting} "
            f"in {_CONFIG_FILES}"
        )
    return template


_STATE_LINE = re.compile(r"\bpower\s+is\s+(on|off)\b", re.IGNORECASE)


def parse_power_state(output: str) -> PowerState | None:
    """The power state a status command printed, or None when it cannot be told.

    Understands ipmitool's ``Chassis Power is on`` and a bare ``on``/``off`` (custom scripts).
    """
    matches = _STATE_LINE.findall(output)
    if matches:
        return PowerState(matches[-1].lower())
    bare = output.strip().lower()
    if bare in ("on", "off"):
        return PowerState(bare)
    return None
