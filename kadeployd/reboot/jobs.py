"""Power and reboot requests turned into commands, and command results turned into answers.

Pure functions: :func:`plan` renders the node's template (or says why nothing can run),
:func:`result_of` reads a finished command (exit status, power state), :func:`not_run` answers a
request that never reached a command. The RebootActor only schedules.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from kadeployd.adapters.commands import CommandResult
from kadeployd.config.model import Node
from kadeployd.reboot.errors import NoPowerCommand
from kadeployd.reboot.levels import (
    PowerAction,
    PowerState,
    RebootLevel,
    available_level,
    parse_power_state,
    power_template,
    reboot_template,
)
from kadeployd.reboot.redact import node_secrets, redact, shown_command

logger = logging.getLogger(__name__)

Operation = RebootLevel | PowerAction


@dataclass(frozen=True, slots=True)
class RebootResult:
    """The answer to one reboot or power request, passed to the requester's ``reply_to``."""

    request_id: str
    node: Node
    operation: Operation
    """What ran: the reboot level actually used (see ``requested``) or the power action."""
    command: CommandResult | None
    """None when no command ran (not configured, cancelled while queued, service stopped)."""
    ok: bool
    message: str
    """One line for logs and the store: what was done and how it ended."""
    requested: Operation
    """What was asked; differs from ``operation`` when a reboot level is not configured."""
    power_state: PowerState | None = None
    """For ``status``: what the command reported; None when it could not be told."""
    cancelled: bool = False
    """True when the request was cancelled (by ``cancel`` or because the service stopped)."""
    stopped: bool = False
    """True when the RebootActor stopped (or crashed) before the request ended: nothing is
    wrong with the node; submit the request again to the actor's next incarnation."""


ReplyTo = Callable[[RebootResult], None]
"""Where a result goes. Called from a worker or the actor's thread: it must not block (tell)."""


@dataclass(frozen=True, slots=True)
class PowerRequest:
    """A request ready to run: the rendered argument list and its time limit."""

    request_id: str
    node: Node
    requested: Operation
    operation: Operation
    argv: tuple[str, ...]
    """What runs; may hold secrets: never log it, log ``shown``."""
    timeout: float
    shown: str = ""
    """The command line with secret values as ``***`` (kadeployd/reboot/redact.py)."""
    secrets: tuple[str, ...] = ()
    """The secret values in ``argv``, masked in whatever the command's output is quoted in."""
    template_name: str = ""
    """The key of the template in the ``power`` section (``power_off``...)."""


def label(operation: Operation) -> str:
    """``hard reboot``, ``power status``..."""
    if isinstance(operation, RebootLevel):
        return f"{operation.value.replace('_', ' ')} reboot"
    return f"power {operation.value}"


def plan(request_id: str, node: Node, requested: Operation) -> PowerRequest | RebootResult:
    """The command serving ``requested`` on ``node``, or a failed result saying why not."""
    power = node.settings.power
    try:
        if isinstance(requested, RebootLevel):
            level = available_level(power, requested)
            operation: Operation = level
            template = reboot_template(power, level)
            assert template is not None  # available_level only returns configured levels
        else:
            operation = requested
            template = power_template(power, requested)
        values = node.template_values()
        argv = tuple(template.render(values))
        shown = shown_command(template, values, power.secret_vars)
    except NoPowerCommand as err:
        return not_run(request_id, node, requested, f"node {node.name}: {err}")
    except KeyError as err:  # the loader checks fields; a template built elsewhere may not be
        message = f"node {node.name}: {label(requested)} template uses unknown field {err}"
        return not_run(request_id, node, requested, message)
    return PowerRequest(
        request_id,
        node,
        requested,
        operation,
        argv,
        power.command_timeout,
        shown=shown,
        secrets=node_secrets(node),
        template_name=operation.setting,
    )


def not_run(
    request_id: str,
    node: Node,
    requested: Operation,
    message: str,
    *,
    operation: Operation | None = None,
    cancelled: bool = False,
    stopped: bool = False,
) -> RebootResult:
    """A failed result for a request whose command never ran."""
    return RebootResult(
        request_id=request_id,
        node=node,
        operation=operation or requested,
        command=None,
        ok=False,
        message=message,
        requested=requested,
        cancelled=cancelled or stopped,
        stopped=stopped,
    )


def result_of(
    request: PowerRequest, command: CommandResult, cancel_reason: str = ""
) -> RebootResult:
    """The answer for a request whose command ran (or was stopped) with outcome ``command``."""
    what = label(request.operation)
    if request.operation != request.requested:
        what += f" (no {request.requested.setting} configured)"
    state: PowerState | None = None
    if command.cancelled:
        ok, message = False, f"{what} cancelled" + (f": {cancel_reason}" if cancel_reason else "")
    elif command.returncode is None and not command.timed_out:
        ok, message = False, f"{what} could not run: {command.describe()}"
    elif not command.ok:
        ok, message = False, f"{what} {command.describe()}"
    elif request.operation == PowerAction.STATUS:
        state = parse_power_state(command.stdout)
        ok = state is not None
        if state is None:
            shown = (command.stdout.strip().splitlines() or ["nothing"])[-1]
            message = f"{what}: cannot tell the power state from the output: {shown!r}"
        else:
            message = f"power is {state.value}"
    else:
        ok, message = True, f"{what} succeeded"
    return RebootResult(
        request_id=request.request_id,
        node=request.node,
        operation=request.operation,
        command=command,
        ok=ok,
        message=redact(message, request.secrets),
        requested=request.requested,
        power_state=state,
        cancelled=command.cancelled,
    )
