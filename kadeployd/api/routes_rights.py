"""``/v1/rights``: who may deploy which nodes (karights). Administrators grant and revoke;
users read their own."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Path, Query

from kadeploy_core.schemas import (
    MAX_DEVICE,
    PartitionOrAny,
    RightOut,
    RightsChange,
    RightsGrant,
)
from kadeployd.admission import known_nodes
from kadeployd.api.auth import CallerDep, Context, require_admin
from kadeployd.api.context import ApiContext
from kadeployd.api.errors import ApiError
from kadeployd.api.responses import BODY_ERRORS, ERRORS, errors
from kadeployd.store.rights import ANY

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/rights", tags=["rights"], responses=ERRORS)


@router.get("", response_model=list[RightOut], responses=errors(403, 422))
def list_rights(
    context: Context,
    caller: CallerDep,
    user: Annotated[str | None, Query(max_length=64)] = None,
    node: Annotated[str | None, Query(max_length=255)] = None,
) -> list[RightOut]:
    """Rights held (yours; an administrator's view is everyone's)."""
    if not caller.admin:
        if user is not None and user != caller.user:
            raise ApiError(403, "forbidden", "only administrators read other users' rights")
        user = caller.user
    return [
        RightOut(user=r.user, node=r.node, partition=r.partition)
        for r in context.reader.rights(user=user, node=node)
    ]


@router.post(
    "", status_code=201, response_model=RightsChange, responses=BODY_ERRORS | errors(403, 409)
)
def grant_rights(body: RightsGrant, context: Context, caller: CallerDep) -> RightsChange:
    """Grant ``user`` the right to deploy ``nodes`` (or ``*``) on ``partitions`` (or ``*``)."""
    require_admin(caller, "grant rights")
    known_nodes(body.nodes, context.config.nodes, merge_repeats=True, wildcard=ANY)
    if body.others != "keep":
        _other_holders(context, body)
    added: int = context.daemon.store_call(
        lambda s: s.grant_rights(body.user, body.nodes, body.partitions)
    )
    logger.info("%s granted %s rights on %d nodes", caller.user, body.user, len(body.nodes))
    return RightsChange(changed=added)


def _other_holders(context: ApiContext, body: RightsGrant) -> None:
    """Kadeploy3's exclusive rights: other users' rights on the nodes refuse the grant (409),
    or are revoked first; administrators' rights are never in the way."""
    nodes = [n for n in body.nodes if n != ANY]
    holders: dict[str, list[str]] = {}
    for node in nodes:
        for right in context.reader.rights(node=node):
            if right.node == node and right.user != body.user and not context.is_admin(right.user):
                holders.setdefault(right.user, [])
                if node not in holders[right.user]:
                    holders[right.user].append(node)
    if not holders:
        return
    if body.others == "refuse":
        user = sorted(holders)[0]
        raise ApiError(
            409,
            "conflicting_elements",
            f"Some rights are already set for user {user} on nodes {','.join(holders[user])}",
        )
    for user, held in holders.items():
        for node in held:
            _revoke(context, user, node)
        logger.info("rights of %s on %d nodes revoked (overwritten)", user, len(held))


def _revoke(context: ApiContext, user: str, node: str) -> int:
    removed: int = context.daemon.store_call(lambda s: s.revoke_rights(user, node))
    return removed


@router.delete("/{user}", response_model=RightsChange, responses=errors(403, 422))
def revoke_rights(
    user: Annotated[str, Path(max_length=64)],
    context: Context,
    caller: CallerDep,
    node: Annotated[str | None, Query(max_length=255)] = None,
    partition: Annotated[PartitionOrAny | None, Query(max_length=MAX_DEVICE + 8)] = None,
) -> RightsChange:
    """Revoke ``user``'s rights on ``node`` and ``partition`` (absent: all of them)."""
    require_admin(caller, "revoke rights")
    removed: int = context.daemon.store_call(lambda s: s.revoke_rights(user, node, partition))
    return RightsChange(changed=removed)
