"""``/v1/power`` (kapower: on, off, status) and ``/v1/reboots`` (kareboot).

Both run the nodes' configured power commands through the RebootActor and answer once every
node's command ended or its time ran out (the route awaits the results on the event loop,
bounded, holding none of the server's threads: kadeployd/api/power_wait.py): one result per
node, HTTP 200 even when some failed, so that a client sees each node's outcome. One user has
at most ``daemon.api.max_power_requests_per_user`` such requests waiting; beyond, 429.

A user needs a right on every node (any partition), as for deployments, and a node that a
running deployment holds is refused unless ``force``: the daemon's NodeSupervisor decides
(kadeployd/admission), the route only asks it. ``force`` over another user's running
deployment takes an administrator: 403 ``force_refused`` naming the deployment and its owner
otherwise (kadeployd/admission/owners.py, decided with the busy check).

The kinds of reboot (Kadeploy3's kareboot ``-r``):

- ``simple``: the power commands, answered as above;
- ``set_pxe``: the caller's own PXE profile (``profile``, text sent in the body, checked by
  kadeployd/pxe/user_profiles.py) is written for each node, the ``files`` (uploads) are
  published under ``users/<user>/`` of the TFTP root, then a simple reboot, answered as above;
- ``deploy_env`` and ``recorded_env`` (``environment`` and ``partition``): a reboot
  *operation* run by the deployment workflow (``OPERATION_MACROSTEPS`` of
  kadeploy_core/plans.py) with retries, timeouts, per-node states, events and cancel. It can
  take minutes, so the route does not wait: it answers ``202`` with the operation's
  deployment document, which the client follows like a deployment
  (``/v1/deployments/{id}``, its events, its cancel). They also take Kadeploy3's
  ``block_device``, ``vlan`` (the site's switch command once each node rebooted, as Kadeploy3's
  reboots end with set_vlan) and ``timeout_reboot_classical`` (the reboot's timeout), and
  deploy_env ``authorized_keys`` (put in the deploy env, as Kadeploy3's -k), checked
  as a deployment's (kadeployd/api/deploy_options.py, kadeployd/admission); simple and set_pxe,
  which only run the power commands, refuse them with a 422 naming the field.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from typing import Annotated, Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from starlette.concurrency import run_in_threadpool

from kadeploy_core.errors import InputError, Problem
from kadeploy_core.schemas import (
    MAX_KEYS,
    BlockDevice,
    DeploymentOut,
    EnvironmentRef,
    FileName,
    NodeName,
    TimeoutText,
    UploadId,
    VlanId,
)
from kadeployd.api import deploy_options, environments, power_wait
from kadeployd.api.auth import Caller, CallerDep, Context
from kadeployd.api.context import ApiContext
from kadeployd.api.convert import deployment_out
from kadeployd.api.errors import ApiError
from kadeployd.api.responses import BODY_ERRORS, ERRORS, errors
from kadeployd.config import Node
from kadeployd.environment import EnvironmentDescription
from kadeployd.pxe.errors import PxeError
from kadeployd.pxe.user_profiles import MAX_FILES, MAX_PROFILE_BYTES, UserProfile, check_profile
from kadeployd.reboot import PowerAction, RebootLevel, RebootResult
from kadeployd.workflow.job import DeploymentRequest, NoEnvironment, Operation

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["power"], responses=ERRORS)

MAX_NODES = 10_000
RebootKind = Literal["simple", "set_pxe", "deploy_env", "recorded_env"]
SET_PXE_DIR = "set_pxe"
"""Under the state dir: where a set_pxe request's uploads wait until they are published."""


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
    environment: EnvironmentRef | None = None
    """``recorded_env``: the environment deployed on ``partition`` (one you may see)."""
    partition: Annotated[int, Field(ge=1, le=128)] | None = None
    """``recorded_env``: the partition it was deployed on."""
    profile: Annotated[str, Field(min_length=1, max_length=MAX_PROFILE_BYTES)] | None = None
    """``set_pxe``: the pxelinux profile text (``FILES_PREFIX`` names your TFTP directory)."""
    files: Annotated[dict[FileName, UploadId], Field(max_length=MAX_FILES)] = Field(
        default_factory=dict,
        description="set_pxe: file name under your TFTP directory -> upload id",
    )
    block_device: BlockDevice | None = None
    """deploy_env, recorded_env (``-b``): the disk instead of the cluster's
    ``disk.block_device`` (recorded_env boots ``partition`` of it), checked as a deployment's."""
    vlan: VlanId | None = None
    """deploy_env, recorded_env (``--vlan``): once booted, each node is moved onto this VLAN by
    the site's switch command, as a deployment's nodes after BootNewEnv."""
    timeout_reboot_classical: TimeoutText | None = None
    """deploy_env, recorded_env (``--reboot-classical-timeout``): the timeout of the reboot
    (an expression of n, as a deployment's)."""
    authorized_keys: Annotated[str, Field(max_length=MAX_KEYS)] = ""
    """deploy_env (``-k``, as Kadeploy3 only there): public keys appended to the deploy env's
    root authorized_keys once it answers."""
    authorized_keys_upload: UploadId | None = None
    """deploy_env: the same keys from one of your uploads."""
    check_destructive: StrictBool = False
    """recorded_env (``-c``): refuse (409 ``destructive_environment``) when a node's last
    deployed environment is tagged destructive, as Kadeploy3."""


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


@router.post(
    "/power",
    response_model=list[PowerResultOut],
    responses=BODY_ERRORS | errors(403, 409),
)
async def power(body: PowerRequestIn, context: Context, caller: CallerDep) -> list[PowerResultOut]:
    """Power nodes on or off, or read their power state (``status``)."""
    with _slot(context, caller):
        nodes = await run_in_threadpool(
            context.daemon.check_nodes,
            caller.user,
            body.nodes,
            f"power {body.action}",
            body.force,
        )
        results = await power_wait.power(context.daemon, nodes, PowerAction(body.action))
    logger.info("%s: power %s of %d nodes", caller.user, body.action, len(nodes))
    return [_out(r) for r in results]


def _slot(context: ApiContext, caller: Caller) -> AbstractContextManager[None]:
    """One of the caller's power slots (429 when they are all taken)."""
    limit = context.config.daemon.api.max_power_requests_per_user
    return power_wait.slots_of(context).slot(caller.user, limit)


@router.post(
    "/reboots",
    response_model=list[PowerResultOut] | DeploymentOut,
    responses={
        202: {
            "model": DeploymentOut,
            "description": "deploy_env, recorded_env: the operation started; follow it as a "
            "deployment",
        },
        **BODY_ERRORS,
        **errors(403, 404, 409),
    },
)
async def reboot(
    body: RebootRequestIn, context: Context, caller: CallerDep, response: Response
) -> list[PowerResultOut] | DeploymentOut:
    """Reboot nodes at a level (soft, hard, very_hard): simply, after setting your own PXE
    profile (``set_pxe``), into the deploy environment (``deploy_env``) or into an environment
    already deployed on a partition (``recorded_env``)."""
    _check_kind_fields(body)
    if body.kind in ("deploy_env", "recorded_env"):
        view = await run_in_threadpool(_start_operation, body, context, caller)
        response.status_code = 202
        response.headers["Location"] = f"/v1/deployments/{view.id}"
        return view
    with _slot(context, caller):
        nodes = await run_in_threadpool(
            context.daemon.check_nodes, caller.user, body.nodes, "reboot", body.force
        )
        if body.kind == "set_pxe":
            assert body.profile is not None
            profile = _profile(body.profile, caller)
            await run_in_threadpool(_set_pxe, context, caller, nodes, profile, body.files)
        results = await power_wait.reboot(context.daemon, nodes, RebootLevel(body.level))
    logger.info("%s: %s %s reboot of %d nodes", caller.user, body.kind, body.level, len(nodes))
    return [_out(r) for r in results]


_OPERATIONS = ("deploy_env", "recorded_env")
"""The kinds run as operations of the workflow, which alone wait for the boot and switch
VLANs (kadeployd's simple and set_pxe only run the power commands)."""
_KIND_FIELDS = {
    "environment": ("recorded_env",),
    "partition": ("recorded_env",),
    "profile": ("set_pxe",),
    "files": ("set_pxe",),
    "block_device": _OPERATIONS,
    "vlan": _OPERATIONS,
    "timeout_reboot_classical": _OPERATIONS,
    "authorized_keys": ("deploy_env",),
    "authorized_keys_upload": ("deploy_env",),
    "check_destructive": ("recorded_env",),
}
_REQUIRED = {"recorded_env": ("environment", "partition"), "set_pxe": ("profile",)}


def _check_kind_fields(body: RebootRequestIn) -> None:
    """422 for a field the kind needs but lacks, or one it does not take."""
    problems = [
        Problem("request", f"required with kind {body.kind}", field)
        for field in _REQUIRED.get(body.kind, ())
        if getattr(body, field) is None
    ]
    problems.extend(
        Problem("request", f"only with kind {' or '.join(kinds)}, not {body.kind}", field)
        for field, kinds in _KIND_FIELDS.items()
        if body.kind not in kinds and getattr(body, field) not in (None, {}, "", False)
    )
    if problems:
        raise ApiError(422, "invalid_request", str(problems[0]).removeprefix("request: "), problems)


def _profile(text: str, caller: Caller) -> UserProfile:
    try:
        return check_profile(text, caller.user, source="profile", path="profile")
    except InputError as exc:
        problems = [Problem("request", p.message, p.path, p.line) for p in exc.problems]
        first = problems[0]
        where = f"profile line {first.line}" if first.line is not None else "profile"
        raise ApiError(422, "invalid_profile", f"{where}: {first.message}", problems) from None


def _set_pxe(
    context: ApiContext,
    caller: Caller,
    nodes: list[Node],
    profile: UserProfile,
    files: dict[str, str],
) -> None:
    """Publish the uploads ``files`` and write ``profile`` for ``nodes``."""
    directory = environments.new_directory(context.state_dir / SET_PXE_DIR)
    try:
        taken = environments.take_uploads(context, caller, files, directory)
        try:
            context.daemon.set_pxe(nodes, profile, {name: directory / name for name in files})
        except BaseException as exc:  # any failure: the user keeps their uploads
            environments.give_back(context, taken)
            if isinstance(exc, PxeError):
                raise ApiError(500, "pxe_error", f"cannot write the PXE profile: {exc}") from None
            raise
    finally:
        environments.remove_directory(directory)
    logger.info("%s: own PXE profile set on %d nodes", caller.user, len(nodes))


def _start_operation(body: RebootRequestIn, context: ApiContext, caller: Caller) -> DeploymentOut:
    """Start a deploy_env or recorded_env operation; its deployment document. The nodes are
    checked (known, rights, busy) before the environment is looked up, so that a user without a
    right learns that, not whether an environment exists; the NodeSupervisor admits the
    operation again, with the environment's clusters, as it starts it."""
    nodes = context.daemon.check_nodes(caller.user, body.nodes, "reboot", body.force)
    timeout = deploy_options.parse_timeout(
        "timeout_reboot_classical", body.timeout_reboot_classical
    )
    keys = deploy_options.read_keys(
        context, caller, body.authorized_keys, body.authorized_keys_upload
    )
    target: EnvironmentDescription | NoEnvironment = NoEnvironment(name="deploy_env")
    operation = Operation.DEPLOY_ENV
    if body.kind == "recorded_env":
        assert body.environment is not None
        if body.check_destructive:
            _check_destructive(context, body.nodes)
        record = environments.resolve(context, caller, body.environment)
        target = environments.description_of(context, record)
        operation = Operation.RECORDED_ENV
    request = DeploymentRequest(
        user=caller.user,
        environment=target,
        nodes=tuple(body.nodes),
        deploy_partition=body.partition,
        anonymous=False,
        operation=operation,
        reboot_level=RebootLevel(body.level),
        block_device=body.block_device,
        vlan=body.vlan,
        timeout_reboot_classical=timeout,
        authorized_keys=keys,
    )
    deployment_id = context.daemon.deploy(request, force=body.force, caller=caller.user)
    logger.info("%s: %s of %d nodes: %s", caller.user, body.kind, len(nodes), deployment_id)
    return deployment_out(
        context.reader.deployment(deployment_id), context.reader.nodes(deployment_id)
    )


def _check_destructive(context: ApiContext, names: list[str]) -> None:
    """409 when one of the nodes last deployed an environment tagged ``destructive`` (the
    deployer's own version of that name, else the public one, as ``kadeploy -e`` chose it)."""
    usage = context.reader.node_usage()
    destructive: list[str] = []
    tagged: dict[tuple[str, str, int], bool] = {}  # one lookup per deployer, name, version
    for name in names:
        last = usage.get(name)
        if last is None or last.anonymous or last.environment_version is None:
            continue
        if last.state not in ("deployed", "already_installed"):
            continue
        key = (last.user, last.environment_name, last.environment_version)
        if key not in tagged:
            records = context.reader.environments(name=key[1], version=key[2])
            records.sort(key=lambda r: (r.owner != last.user, r.visibility != "public"))
            tagged[key] = bool(records and records[0].description.get("destructive"))
        if tagged[key]:
            destructive.append(f"{name} ({last.environment_name} v{last.environment_version})")
    if destructive:
        shown = ", ".join(destructive[:5]) + (
            f" and {len(destructive) - 5} more" if len(destructive) > 5 else ""
        )
        message = "Cannot reboot since the last deployed environment was destructive: " + shown
        problem = Problem("request", message, "check_destructive")
        raise ApiError(409, "destructive_environment", message, [problem])


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
