"""Whether a request may have the nodes it names: decided once, by the node supervisor.

The checks, in the order users see their refusals (the first kind that fails is answered,
with every problem of that kind):

1. names: each one a configured node (with a "did you mean"); a deployment may not list a
   node twice, power commands and reboot operations merge repeats;
2. the disk: ``block_device`` (``-b``) fits every node's partition naming (:mod:`.disks`);
3. the environment runs on every node's cluster;
4. rights, of the user who asks (the API's authenticated caller; the daemon's own code asks
   as nobody and needs none): an administrator (``daemon.almighty_users``) needs none; a
   deployment needs a right on each node's deploy partition (its number, or its device path
   with ``-b``), a reboot or power command a right on the node, whatever the partition;
5. no running deployment holds a node (:class:`~kadeployd.admission.holds.NodeHolds`),
   unless the request forces; and forcing over a node that another user's running deployment
   holds takes an administrator (:mod:`.owners`: FORCE_REFUSED, 403);
6. ``min_nodes`` between 1 and the number of nodes.

Pure: the configuration, the holds and the store reads come in as arguments, so the rules
are tested without threads. The NodeSupervisor runs them in its own thread and takes the
nodes in the same message, so that two requests for one node never both pass.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Protocol

from kadeploy_core.errors import Problem
from kadeploy_core.nodelist import node_hint
from kadeploy_core.plans import Operation
from kadeployd.admission.disks import check_block_device, rights_key
from kadeployd.admission.holds import NodeHolds
from kadeployd.admission.owners import check_force
from kadeployd.admission.refusal import AdmissionRefused, Refusal
from kadeployd.admission.vlan import check_vlan
from kadeployd.config import Config, Node
from kadeployd.environment import EnvironmentDescription
from kadeployd.store.rights import ANY, Right
from kadeployd.workflow.job import DeploymentRequest

logger = logging.getLogger(__name__)

SOURCE = "request"
"""The ``source`` of every problem admission reports."""
GRANTS = "an administrator grants rights with karights"


class AdmissionReads(Protocol):
    """What admission reads from the store, and only when a check needs it."""

    def rights(self, user: str) -> Sequence[Right]:
        """The rights ``user`` holds (``*`` rows included)."""
        ...

    def node_states(self, deployment_id: str) -> Mapping[str, str]:
        """Each node's current state in ``deployment_id`` (for the busy message)."""
        ...


def admit_deployment(
    request: DeploymentRequest,
    *,
    caller: str | None,
    force: bool,
    config: Config,
    holds: NodeHolds,
    reads: AdmissionReads,
) -> tuple[str, ...]:
    """The nodes ``request`` may take, in its order and each once; AdmissionRefused if not.

    ``caller`` is the authenticated user who asks, whose rights are checked; None is the
    daemon's own in-process code (tests, benchmarks), which has no one to check.

    A deployment (``Operation.DEPLOY``) needs rights on the deploy partition and may not list
    a node twice; a reboot operation (kareboot deploy_env, recorded_env) needs rights on the
    nodes and merges repeats. The messages name what was asked: "deploy" or "reboot"."""
    deploying = request.operation == Operation.DEPLOY
    names = known_nodes(request.nodes, config.nodes, merge_repeats=not deploying)
    if not names:
        _invalid(Problem(SOURCE, "no node to deploy", "nodes"))
    nodes = [config.nodes[name] for name in names]
    check_block_device(nodes, request.block_device, request.deploy_partition)
    check_vlan(nodes, request.vlan)
    if isinstance(request.environment, EnvironmentDescription):
        _check_clusters(request.environment, request.nodes, config.nodes)
    # The user whose rights count: None for an administrator or the daemon's own code.
    checked = None if caller in config.daemon.almighty_users else caller
    if checked is not None:
        if deploying:
            _check_deploy_rights(checked, request, nodes, reads)
        else:
            _check_node_rights(checked, names, "reboot", reads)
    if not force:
        complaint = (
            "already in a running deployment; use force to deploy anyway"
            if deploying
            else "in a running deployment; use force to reboot anyway"
        )
        check_free(names, holds, reads, complaint)
    elif checked is not None:
        check_force(checked, names, holds, "deploy" if deploying else "reboot")
    if request.min_nodes is not None and not 1 <= request.min_nodes <= len(names):
        _invalid(Problem(SOURCE, f"expected 1 to {len(names)}", "min_nodes"))
    return names


def admit_nodes(
    user: str,
    names: Sequence[str],
    *,
    action: str,
    force: bool,
    config: Config,
    holds: NodeHolds,
    reads: AdmissionReads,
) -> tuple[Node, ...]:
    """The configured nodes named (each once) if ``user`` may ``action`` them (kapower,
    kareboot simple and set_pxe: ``power on``, ``reboot``...): a right on each node and,
    unless ``force``, none held by a running deployment (with ``force``, none held by another
    user's, unless ``user`` is an administrator). AdmissionRefused if not."""
    unique = known_nodes(names, config.nodes, merge_repeats=True)
    admin = user in config.daemon.almighty_users
    if not admin:
        _check_node_rights(user, unique, action, reads)
    if not force:
        check_free(unique, holds, reads, f"in a running deployment; use force to {action} anyway")
    elif not admin:
        check_force(user, unique, holds, action)
    return tuple(config.nodes[name] for name in unique)


def known_nodes(
    names: Sequence[str],
    known: Collection[str],
    *,
    merge_repeats: bool,
    wildcard: str | None = None,
) -> tuple[str, ...]:
    """``names`` each once, in order, if each is a configured node (or ``wildcard``), and,
    unless ``merge_repeats``, none is listed twice; else UNKNOWN_NODE with one problem per
    offending ``nodes[i]`` (the index in ``names``, which clients map back to their input)."""
    problems = []
    seen: set[str] = set()
    for index, name in enumerate(names):
        if name in seen and not merge_repeats:
            problems.append(Problem(SOURCE, f"node {name} is listed twice", f"nodes[{index}]"))
        seen.add(name)
        if name != wildcard and name not in known:
            problems.append(
                Problem(SOURCE, f"unknown node {name}{node_hint(name, known)}", f"nodes[{index}]")
            )
    if problems:
        raise AdmissionRefused(Refusal.UNKNOWN_NODE, problems[0].message, problems)
    return tuple(dict.fromkeys(names))


def check_free(
    names: Sequence[str], holds: NodeHolds, reads: AdmissionReads, complaint: str
) -> None:
    """NODE_BUSY if a running deployment holds any of ``names``: the message is their names
    then ``complaint``, with one problem per node saying who deploys it and where it is."""
    holders = holds.holders(names)
    if not holders:
        return
    states: dict[str, Mapping[str, str]] = {}
    problems = []
    for node, hold in holders.items():
        if hold.deployment_id not in states:
            states[hold.deployment_id] = reads.node_states(hold.deployment_id)
        state = states[hold.deployment_id].get(node, "unknown")
        problems.append(
            Problem(
                SOURCE,
                f"{node} is being deployed by {hold.user} (deployment {hold.deployment_id}, "
                f"state {state})",
                "nodes",
            )
        )
    raise AdmissionRefused(Refusal.NODE_BUSY, f"{', '.join(holders)} {complaint}", problems)


def _invalid(problem: Problem) -> None:
    raise AdmissionRefused(Refusal.INVALID_REQUEST, str(problem), [problem])


def _check_clusters(
    environment: EnvironmentDescription, names: Sequence[str], known: Mapping[str, Node]
) -> None:
    problems = [
        Problem(
            SOURCE,
            f"environment {environment.name} does not run on cluster {known[name].cluster} "
            f"of {name} (its clusters: {', '.join(environment.clusters or ())})",
            f"nodes[{index}]",
        )
        for index, name in enumerate(names)
        if not environment.runs_on(known[name].cluster)
    ]
    if problems:
        raise AdmissionRefused(Refusal.INCOMPATIBLE_ENVIRONMENT, problems[0].message, problems)


def _check_deploy_rights(
    user: str, request: DeploymentRequest, nodes: Sequence[Node], reads: AdmissionReads
) -> None:
    """A right on each node's deploy partition: its number, or with ``-b`` its device path."""
    device = request.block_device
    wanted = [
        (node.name, rights_key(node.settings.disk, request.deploy_partition, device))
        for node in nodes
    ]
    held = reads.rights(user)
    missing = [
        (node, partition)
        for node, partition in wanted
        if not any(r.node in (node, ANY) and r.partition in (partition, ANY) for r in held)
    ]
    if not missing:
        return
    problems = [
        Problem(SOURCE, f"{user} has no right to deploy {n} (partition {p})", "nodes")
        for n, p in missing
    ]
    device_note = (
        f" (with block_device {device}, a right on the partition's device path, "
        f"such as {missing[0][1]}, or on * is needed)"
        if device is not None
        else ""
    )
    raise AdmissionRefused(
        Refusal.NO_RIGHT,
        f"no right to deploy {', '.join(n for n, _ in missing)}{device_note}; {GRANTS}",
        problems,
    )


def _check_node_rights(user: str, names: Sequence[str], action: str, reads: AdmissionReads) -> None:
    """A right on each node, on any partition."""
    held = {right.node for right in reads.rights(user)}
    refused = [name for name in names if name not in held and ANY not in held]
    if refused:
        raise AdmissionRefused(
            Refusal.NO_RIGHT,
            f"no right to {action} {', '.join(refused)}; {GRANTS}",
            [Problem(SOURCE, f"{user} has no right on {name}", "nodes") for name in refused],
        )
