"""``/v1/power`` (kapower: on, off, status) and ``/v1/reboots`` (kareboot).

Both run the nodes' configured power commands through the RebootActor and answer once every
node's command ended or its time ran out (the route waits in the server's thread pool,
bounded; never in an actor): one result per node, HTTP 200 even when some failed, so that a
client sees each node's outcome. A user needs a right on every node (any partition), as for
deployments, and a node that a running deployment holds is refused unless ``force``. Only
simple reboots are carried out so far; the other kinds of kareboot (set a PXE profile, into
the deploy environment, into a recorded environment) answer ``501 not_supported``.
"""

from __future__ import annotations

import logging
from typing import Annotated, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from kadeployd.api.auth import Caller, CallerDep, Context
from kadeployd.api.context import ApiContext
from kadeployd.api.errors import ApiError
from kadeployd.api.models import ErrorResponse, NodeName
from kadeployd.api.node_checks import refuse_busy, require_known
from kadeployd.api.responses import ERRORS
from kadeployd.config import Node
from kadeployd.errors import Problem
from kadeployd.reboot import PowerAction, RebootLevel, RebootResult
from kadeployd.store.rights import ANY

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["power"], responses=ERRORS)

MAX_NODES = 10_000
RebootKind = Literal["simple", "set_pxe", "deploy_env", "recorded_env"]
SUPPORTED_KINDS = ("simple",)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PowerRequestIn(_In):
    """``kapower``: power nodes on or off, or read their power state."""

    nodes: Annotated[list[NodeName], Field(min_length=1, max_length=MAX_NODES)]
    action: Literal["on", "off", "status"]
    force: StrictBool = False
    """Act on nodes that a running deployment holds."""


class RebootRequestIn(_In):
    """``kareboot``: reboot nodes."""

    nodes: Annotated[list[NodeName], Field(min_length=1, max_length=MAX_NODES)]
    kind: RebootKind = "simple"
    level: Literal["soft", "hard", "very_hard"] = "soft"
    force: StrictBool = False
    """Reboot nodes that a running deployment holds."""


class PowerResultOut(BaseModel):
    """One node's outcome."""

    node: str
    ok: bool
    requested: str
    """What was asked: ``on``, ``off``, ``status`` or a reboot level."""
    operation: str
    """What ran (a stronger reboot level when the asked one is not configured)."""
    message: str
    power_state: Literal["on", "off"] | None
    cancelled: bool


@router.post("/power", response_model=list[PowerResultOut])
def power(body: PowerRequestIn, context: Context, caller: CallerDep) -> list[PowerResultOut]:
    """Power nodes on or off, or read their power state (``status``)."""
    nodes = _checked_nodes(context, caller, body.nodes, body.force, f"power {body.action}")
    results = context.daemon.power(nodes, PowerAction(body.action))
    logger.info("%s: power %s of %d nodes", caller.user, body.action, len(nodes))
    return [_out(r) for r in results]


@router.post(
    "/reboots",
    response_model=list[PowerResultOut],
    responses={501: {"model": ErrorResponse, "description": "Reboot kind not supported yet"}},
)
def reboot(body: RebootRequestIn, context: Context, caller: CallerDep) -> list[PowerResultOut]:
    """Reboot nodes at a level (soft, hard, very_hard); only ``simple`` reboots so far."""
    if body.kind not in SUPPORTED_KINDS:
        raise ApiError(
            501,
            "not_supported",
            f"reboot kind {body.kind} is not supported yet; supported: "
            f"{', '.join(SUPPORTED_KINDS)}",
        )
    nodes = _checked_nodes(context, caller, body.nodes, body.force, "reboot")
    results = context.daemon.reboot(nodes, RebootLevel(body.level))
    logger.info("%s: %s reboot of %d nodes", caller.user, body.level, len(nodes))
    return [_out(r) for r in results]


def _checked_nodes(
    context: ApiContext, caller: Caller, names: list[str], force: bool, what: str
) -> list[Node]:
    """The configured nodes named (unknown: 422 with suggestions), if ``caller`` holds a right
    on each (403 otherwise) and none is in a running deployment (409, unless ``force``)."""
    known = context.config.nodes
    require_known(known, names)
    unique = list(dict.fromkeys(names))
    if not caller.admin:
        held = {r.node for r in context.reader.rights(user=caller.user)}
        refused = [n for n in unique if n not in held and ANY not in held]
        if refused:
            raise ApiError(
                403,
                "no_right",
                f"no right to {what} {', '.join(refused)}; "
                "an administrator grants rights with karights",
                [
                    Problem("request", f"{caller.user} has no right on {n}", "nodes")
                    for n in refused
                ],
            )
    if not force:
        refuse_busy(context, unique, f"in a running deployment; use force to {what} anyway")
    return [known[n] for n in unique]


def _out(result: RebootResult) -> PowerResultOut:
    state = result.power_state.value if result.power_state is not None else None
    return PowerResultOut(
        node=result.node.name,
        ok=result.ok,
        requested=result.requested.value,
        operation=result.operation.value,
        message=result.message,
        power_state=state,
        cancelled=result.cancelled,
    )
