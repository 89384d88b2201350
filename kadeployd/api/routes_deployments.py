"""``/v1/deployments``: create (kadeploy), list, read, per-node states and logs, cancel."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Query, Response

from kadeploy_core.schemas import (
    CancelRequest,
    DeploymentCreate,
    DeploymentOut,
    LogLineOut,
    NodeDetailOut,
    NodeStateOut,
)
from kadeployd.api import custom_steps, deploy_options, environments
from kadeployd.api.auth import Caller, CallerDep, Context
from kadeployd.api.context import ApiContext
from kadeployd.api.convert import deployment_out, history_out, node_state_out, sees_details
from kadeployd.api.errors import ApiError
from kadeployd.api.responses import BODY_ERRORS, ERRORS, errors
from kadeployd.api.uploads import UploadInfo
from kadeployd.workflow.job import DeploymentRequest

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/deployments", tags=["deployments"], responses=ERRORS)


LogAfter = Annotated[int, Query(ge=0, le=2**62)]
LogLimit = Annotated[int, Query(ge=1, le=100_000)]


@router.post(
    "",
    status_code=201,
    response_model=DeploymentOut,
    responses=BODY_ERRORS | errors(403, 404, 409),
)
def create_deployment(
    body: DeploymentCreate, context: Context, caller: CallerDep, response: Response
) -> DeploymentOut:
    """Deploy an environment (registered, or anonymous from uploads) on nodes. The daemon's
    NodeSupervisor admits it (nodes, disk, clusters, rights, busy nodes, min_nodes); a refusal
    is answered by kadeployd/api/errors.py."""
    breakpoint = custom_steps.check_breakpoint(body.breakpoint)
    steps = custom_steps.check_custom_steps(body.custom_steps) if body.custom_steps else None
    options = deploy_options.request_options(body, caller, context.config)
    pxe = deploy_options.check_pxe(body, caller)
    pxe_taken: deploy_options.TakenPxe | None = None
    keys = deploy_options.read_keys(
        context, caller, body.authorized_keys, body.authorized_keys_upload
    )
    anonymous_dir: Path | None = None
    taken: list[tuple[UploadInfo, Path]] = []
    steps_dir: Path | None = None
    steps_taken: list[tuple[UploadInfo, Path]] = []
    started = False
    try:
        if pxe is not None:
            pxe_taken = deploy_options.take_pxe(context, caller, pxe, body)
        if steps is not None and body.custom_steps is not None:
            steps, steps_dir, steps_taken = custom_steps.take_files(
                context, caller, steps, body.custom_steps
            )
        if body.anonymous_environment is not None:
            anonymous_dir = environments.new_directory(context.anonymous_dir, held=True)
            taken = environments.take_uploads(
                context, caller, body.anonymous_environment.files, anonymous_dir
            )
            env = environments.parse_in(
                anonymous_dir,
                body.anonymous_environment.description,
                "anonymous_environment.description",
                caller,
            )
        else:
            assert body.environment is not None
            record = environments.resolve(context, caller, body.environment)
            env = environments.description_of(context, record)
        request = DeploymentRequest(
            user=caller.user,
            environment=env,
            nodes=tuple(body.nodes),
            authorized_keys=keys,
            min_nodes=body.min_nodes,
            deploy_partition=body.partition,
            block_device=body.block_device,
            anonymous=anonymous_dir is not None,
            breakpoint=breakpoint,
            custom_steps=steps,
            vlan=body.vlan,
            pxe=pxe,
            **options,
        )
        deployment_id = context.daemon.deploy(request, force=body.force, caller=caller.user)
        started = True
        deploy_options.release_pxe(context, pxe_taken, deployment_id=deployment_id)
        _tidy_after_start(context, deployment_id, anonymous_dir, steps_dir)
    except BaseException:
        if started:  # the deployment runs: its files stay
            raise
        if anonymous_dir is not None:
            environments.give_back(context, taken)
            environments.remove_directory(anonymous_dir)
        if steps_dir is not None:
            custom_steps.give_back(context, steps_taken, steps_dir)
        deploy_options.release_pxe(context, pxe_taken, deployment_id=None)
        raise
    finally:  # recorded in the store as running, or removed: no longer held
        environments.release(anonymous_dir)
    logger.info("deployment %s of %s created by %s", deployment_id, env.name, caller.user)
    response.headers["Location"] = f"/v1/deployments/{deployment_id}"
    view = context.reader.deployment(deployment_id)
    return deployment_out(view, context.reader.nodes(deployment_id))


@router.get("", response_model=list[DeploymentOut], responses=errors(422))
def list_deployments(
    context: Context,
    caller: CallerDep,
    status: Literal["running", "succeeded", "failed", "aborted"] | None = None,
    user: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> list[DeploymentOut]:
    """Latest deployments first (everyone's, as kastat shows them; others' custom steps
    hidden)."""
    return [
        deployment_out(v, full=sees_details(caller, v.user))
        for v in context.reader.deployments(status, user, limit)
    ]


@router.get("/{deployment_id}", response_model=DeploymentOut, responses=errors(404, 422))
def get_deployment(deployment_id: str, context: Context, caller: CallerDep) -> DeploymentOut:
    """One deployment, with how many nodes are in each state."""
    view = context.reader.deployment(deployment_id)
    full = sees_details(caller, view.user)
    return deployment_out(view, context.reader.nodes(deployment_id), full=full)


@router.get("/{deployment_id}/nodes", response_model=list[NodeStateOut], responses=errors(404, 422))
def get_nodes(deployment_id: str, context: Context, caller: CallerDep) -> list[NodeStateOut]:
    """Every node's current record, in deployment order (others' error messages hidden)."""
    full = sees_details(caller, context.reader.deployment(deployment_id).user)
    return [node_state_out(n, full=full) for n in context.reader.nodes(deployment_id)]


@router.get(
    "/{deployment_id}/nodes/{node}", response_model=NodeDetailOut, responses=errors(404, 422)
)
def get_node(deployment_id: str, node: str, context: Context, caller: CallerDep) -> NodeDetailOut:
    """One node's record and the states it went through (others' messages hidden)."""
    full = sees_details(caller, context.reader.deployment(deployment_id).user)
    view = node_state_out(context.reader.node(deployment_id, node), full=full)
    history = [history_out(h, full=full) for h in context.reader.history(deployment_id, node)]
    return NodeDetailOut(**view.model_dump(), history=history)


@router.get(
    "/{deployment_id}/nodes/{node}/log",
    response_model=list[LogLineOut],
    responses=errors(403, 404, 422),
)
def get_node_log(
    *,
    deployment_id: str,
    node: str,
    context: Context,
    caller: CallerDep,
    after: LogAfter = 0,
    limit: LogLimit = 10_000,
) -> list[LogLineOut]:
    """A node's log (commands, output, notes); page with ``after`` = the last ``seq`` seen."""
    return _log(context, caller, deployment_id, node, after=after, limit=limit)


@router.get(
    "/{deployment_id}/log", response_model=list[LogLineOut], responses=errors(403, 404, 422)
)
def get_log(
    deployment_id: str,
    context: Context,
    caller: CallerDep,
    after: LogAfter = 0,
    limit: LogLimit = 10_000,
) -> list[LogLineOut]:
    """Every node's log, in recording order."""
    return _log(context, caller, deployment_id, None, after=after, limit=limit)


@router.post(
    "/{deployment_id}/cancel",
    status_code=202,
    response_model=DeploymentOut,
    responses=BODY_ERRORS | errors(403, 404, 409),
)
def cancel_deployment(
    deployment_id: str,
    context: Context,
    caller: CallerDep,
    body: Annotated[CancelRequest | None, Body()] = None,
) -> DeploymentOut:
    """Abort every node still working; the deployment ends ``aborted``."""
    view = context.reader.deployment(deployment_id)
    if view.user != caller.user and not caller.admin:
        raise ApiError(
            403, "forbidden", f"deployment {deployment_id} belongs to {view.user}, not to you"
        )
    if view.status != "running":
        raise ApiError(409, "not_running", f"deployment {deployment_id} is already {view.status}")
    reason = body.reason if body is not None else CancelRequest().reason
    if caller.user != view.user:
        reason = f"{reason} (by {caller.user})"
    if not context.daemon.cancel(deployment_id, reason):
        raise ApiError(409, "not_running", f"deployment {deployment_id} is not running any more")
    return deployment_out(context.reader.deployment(deployment_id))


# ------------------------------------------------------------------ checks


def _tidy_after_start(
    context: ApiContext, deployment_id: str, anonymous_dir: Path | None, steps_dir: Path | None
) -> None:
    """Mark the custom-steps files of the deployment just started, sweep the files of ended
    ones. The deployment already runs: a failure here is logged, never taken for a failure of
    the request (which would remove the files the deployment uses)."""
    try:
        custom_steps.mark(steps_dir, deployment_id)
    except OSError as exc:
        logger.error(
            "deployment %s: cannot mark its custom-steps files %s (%s); a later request may "
            "sweep them after %.0f s",
            deployment_id,
            steps_dir,
            exc,
            custom_steps.UNMARKED_GRACE,
        )
    for what, sweep in (
        ("anonymous environments", partial(_sweep_anonymous, context, keep=anonymous_dir)),
        ("custom-steps files", partial(custom_steps.sweep, context)),
    ):
        try:
            sweep()
        except OSError as exc:
            logger.warning(
                "deployment %s started; cannot sweep old %s: %s", deployment_id, what, exc
            )


def _sweep_anonymous(context: ApiContext, keep: Path | None) -> None:
    """Remove the files of anonymous environments no deployment uses any more.

    A directory is kept while its request is being handled (held, see
    :func:`environments.new_directory`) and while its deployment is running in the store. The
    order matters: the directories are listed first, so each was held before it was listed;
    the registry is read next, so a request that released it had already recorded its
    deployment, which the store query that follows sees (running, or finished: then unused).
    """
    parent = context.anonymous_dir
    present = list(parent.iterdir())
    used = environments.held_names(parent)
    if keep is not None:
        used.add(keep.name)
    for view in context.reader.deployments(status="running", limit=1_000_000):
        if view.anonymous:
            image = Path(str(view.environment.get("image", {}).get("file", "")))
            used.add(image.parent.name)
    for directory in present:
        if directory.name not in used:
            logger.debug("sweeping %s: no running deployment uses it", directory)
            environments.remove_directory(directory)


def _log(
    context: ApiContext,
    caller: Caller,
    deployment_id: str,
    node: str | None,
    *,
    after: int,
    limit: int,
) -> list[LogLineOut]:
    """The log of ``node`` (None: every node), if ``caller`` may read it (owner or admin)."""
    view = context.reader.deployment(deployment_id)
    if view.user != caller.user and not caller.admin:
        raise ApiError(403, "forbidden", f"the logs of deployment {view.id} are {view.user}'s")
    return [
        LogLineOut(
            seq=line.seq, node=line.node, at=line.at, stream=line.stream.value, text=line.text
        )
        for line in context.reader.log(deployment_id, node, after, limit)
    ]
