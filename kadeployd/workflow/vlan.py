"""KaVLAN: the microstep that moves a deployed node onto the VLAN its deployment asked for.

``kadeploy --vlan ID`` ends BootNewEnv with ``set_vlan`` (:data:`kadeploy_core.plans.SET_VLAN`),
once the node answers in its new env, as Kadeploy3's ``set_vlan`` microstep does. The site's
command is an argument-list template, ``vlan.switch`` in the node settings, rendered and run
like the power commands (kadeployd/reboot/): never through a shell, bounded in time
(``vlan.command_timeout``), killed with its process group when the step is cancelled, and
shown with secret values as ``***`` (kadeployd/reboot/redact.py) in the node's log and in the
failure it reports. A command that fails fails the step (so the variant, as for any
BootNewEnv step); the node's history shows the step, its log the command and its outcome.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from kadeployd.adapters.commands import CommandResult, RunningCommand
from kadeployd.config import Node
from kadeployd.config.templates import CommandTemplate
from kadeployd.reboot.redact import redact, secret_values, shown_command
from kadeployd.workflow.context import StepContext, StepFailed

logger = logging.getLogger(__name__)

STDERR_LINES = 5
"""Lines of the command's stderr quoted in a failure."""


@dataclass(frozen=True, slots=True)
class VlanSwitch:
    """The switch command for one node: what runs, what is shown, what to mask."""

    argv: tuple[str, ...]
    """May hold secrets: never log it, log ``shown``."""
    shown: str
    secrets: tuple[str, ...]
    timeout: float


def switch_command(node: Node, vlan: str, user: str) -> VlanSwitch | None:
    """The node's ``vlan.switch`` rendered for VLAN ``vlan`` and ``user``; None when the node
    has none (admission refuses such a deployment)."""
    settings = node.settings.vlan
    template = settings.switch
    if not isinstance(template, CommandTemplate):  # None: no switch command
        return None
    values = {**node.template_values(), "vlan": vlan, "user": user}
    configured = node.settings.power.secret_vars
    return VlanSwitch(
        argv=tuple(template.render(values)),
        shown=shown_command(template, values, configured),
        secrets=secret_values(values, configured),
        timeout=settings.command_timeout,
    )


def set_vlan(ctx: StepContext) -> None:
    """Run the node's VLAN switch command for the deployment's VLAN (nothing without one)."""
    vlan = ctx.job.request.vlan
    if vlan is None:
        return
    command = switch_command(ctx.node, vlan, ctx.job.request.user)
    if command is None:
        raise StepFailed(f"VLAN {vlan}: the node has no vlan.switch command configured")
    ctx.check_cancelled()
    ctx.log("cmd", command.shown)
    running = RunningCommand(command.argv, command.timeout, shown=command.shown)

    def stop() -> None:
        running.cancel()

    unregister = ctx.cancelled.on_cancel(stop)
    try:
        result = running.run()
    finally:
        unregister()
    ctx.check_cancelled()
    for stream, text in (("stdout", result.stdout), ("stderr", result.stderr)):
        if text.strip():
            ctx.log(stream, redact(text.rstrip("\n"), command.secrets))
    if not result.ok:
        raise StepFailed(redact(f"VLAN {vlan} switch {_failure(result)}", command.secrets))
    ctx.log("info", f"moved onto VLAN {vlan}")


def _failure(result: CommandResult) -> str:
    """How the command failed, with the last lines of its stderr."""
    tail = result.stderr_tail(STDERR_LINES)
    if result.returncode is None and not result.timed_out and not result.cancelled:
        how = "could not be started"
    else:
        how = result.describe()
        last = result.stderr_tail(1)
        if last and how.endswith(f": {last}"):
            how = how[: -len(last) - 2]
    return f"{how}: {tail}" if tail else how
