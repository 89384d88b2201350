"""``/v1/nodes``: the configured nodes, their current state, environment and owner (kanodes).
Reboot and power (kareboot, kapower) come with a later change."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Query

from kadeploy_core.schemas import EnvironmentSummary, NodeOut
from kadeploy_core.suggest import did_you_mean
from kadeployd.api.auth import CallerDep, Context
from kadeployd.api.context import ApiContext
from kadeployd.api.errors import ApiError
from kadeployd.api.responses import ERRORS, errors
from kadeployd.config.model import Node
from kadeployd.store.usage import NodeUsage

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/nodes", tags=["nodes"], responses=ERRORS)


@router.get("", response_model=list[NodeOut], responses=errors(404, 422))
def list_nodes(
    context: Context,
    caller: CallerDep,
    cluster: Annotated[str | None, Query(max_length=64)] = None,
) -> list[NodeOut]:
    """Every configured node (of ``cluster``), in nodes.conf order."""
    config = context.config
    if cluster is not None and cluster not in config.clusters:
        raise ApiError(
            404,
            "unknown_cluster",
            f"unknown cluster {cluster}{did_you_mean(cluster, config.clusters)}",
        )
    usage = context.reader.node_usage()
    owners = _EnvironmentOwners(context)
    return [
        _node_out(node, usage.get(name), owners)
        for name, node in config.nodes.items()
        if cluster is None or node.cluster == cluster
    ]


@router.get("/{name}", response_model=NodeOut, responses=errors(404, 422))
def get_node(name: str, context: Context, caller: CallerDep) -> NodeOut:
    """One node."""
    nodes = context.config.nodes
    if name not in nodes:
        raise ApiError(404, "unknown_node", f"unknown node {name}{did_you_mean(name, nodes)}")
    return _node_out(
        nodes[name], context.reader.node_usage().get(name), _EnvironmentOwners(context)
    )


class _EnvironmentOwners:
    """Who registered the environment a deployment ran (the records keep its name and version,
    as ``kadeploy -e`` resolves it: the deployer's own, else the public one), looked up once
    per (deployer, name, version) of a request."""

    def __init__(self, context: ApiContext) -> None:
        self._context = context
        self._found: dict[tuple[str, str, int], str | None] = {}

    def of(self, usage: NodeUsage) -> str | None:
        if usage.anonymous or usage.environment_version is None:
            return None
        key = (usage.user, usage.environment_name, usage.environment_version)
        if key not in self._found:
            records = self._context.reader.environments(
                name=usage.environment_name, version=usage.environment_version
            )
            owners = [r.owner for r in records if r.owner == usage.user]
            owners += [r.owner for r in records if r.visibility == "public"]
            owners += [r.owner for r in records]
            self._found[key] = owners[0] if owners else None
        return self._found[key]


def _node_out(node: Node, usage: NodeUsage | None, owners: _EnvironmentOwners) -> NodeOut:
    if usage is None:
        return NodeOut(
            name=node.name,
            cluster=node.cluster,
            address=node.address,
            state=None,
            busy=False,
            deployment_id=None,
            owner=None,
            environment=None,
            since=None,
        )
    environment = None
    if usage.state in ("deployed", "already_installed"):
        environment = EnvironmentSummary(
            name=usage.environment_name,
            version=usage.environment_version,
            anonymous=usage.anonymous,
        )
    return NodeOut(
        name=node.name,
        cluster=node.cluster,
        address=node.address,
        state=usage.state,
        busy=usage.busy,
        deployment_id=usage.deployment_id,
        owner=usage.user,
        environment=environment,
        since=usage.since,
        operation=usage.operation,
        environment_owner=owners.of(usage) if environment is not None else None,
    )
