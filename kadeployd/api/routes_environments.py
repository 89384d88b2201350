"""``/v1/environments``: the catalogue (kaenv): add, list, show, change visibility, delete.

An environment's files are uploads (``POST /v1/uploads``) named in the request's ``files``;
they are moved to ``<state_dir>/environments/<owner>/<name>/<version>/``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path as FsPath
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from kadeploy_core.schemas import EnvironmentCreate, EnvironmentOut, VisibilityChange
from kadeployd.api import environments
from kadeployd.api.auth import Caller, CallerDep, Context
from kadeployd.api.context import ApiContext
from kadeployd.api.errors import ApiError
from kadeployd.api.responses import BODY_ERRORS, ERRORS, errors
from kadeployd.api.uploads import UploadInfo
from kadeployd.environment import EnvironmentDescription, checksums
from kadeployd.store.catalogue import EnvironmentExists, EnvironmentRecord, UnknownEnvironment

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/environments", tags=["environments"], responses=ERRORS)

Owner = Annotated[str, Path(max_length=64)]
Name = Annotated[str, Path(max_length=64)]
Version = Annotated[int, Path(ge=1, le=2**31)]


@router.post(
    "",
    status_code=201,
    response_model=EnvironmentOut,
    responses=BODY_ERRORS | errors(403, 404, 409),
)
def add_environment(
    body: EnvironmentCreate, context: Context, caller: CallerDep, response: Response
) -> EnvironmentOut:
    """Register a description and its uploaded files under your name."""
    staging = environments.new_directory(context.environments_dir / ".staging")
    taken: list[tuple[UploadInfo, FsPath]] = []
    try:
        taken = environments.take_uploads(context, caller, body.files, staging)
        env = environments.parse_in(staging, body.description, "description", caller)
        visibility = body.visibility or env.visibility.value
        _may_publish(caller, visibility)
        if context.reader.environments(name=env.name, owner=caller.user, version=env.version):
            raise EnvironmentExists(caller.user, env.name, env.version)
        final = context.environment_dir(caller.user, env.name, env.version)
        if final.exists():  # left by a failed attempt or a deleted version
            shutil.rmtree(final)
        final.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        staging.rename(final)
    except BaseException:
        environments.give_back(context, taken)
        environments.remove_directory(staging)
        raise
    try:
        env = environments.parse_in(final, body.description, "description", caller)
        record = _register(context, caller, env, visibility)
    except BaseException:
        environments.remove_directory(final)
        raise
    response.headers["Location"] = f"/v1/environments/{caller.user}/{env.name}/{env.version}"
    return _out(record)


@router.get("", response_model=list[EnvironmentOut], responses=errors(422))
def list_environments(
    *,
    context: Context,
    caller: CallerDep,
    user: Annotated[str | None, Query(max_length=64, description="owner")] = None,
    name: Annotated[str | None, Query(max_length=64)] = None,
    all_versions: bool = False,
    pattern: Annotated[
        str | None,
        Query(max_length=64, description="names LIKE this: % any text, _ one character"),
    ] = None,
) -> list[EnvironmentOut]:
    """Your environments and public ones; with ``user``, what you may see of theirs."""
    records = context.reader.environments(name=name, owner=user, pattern=pattern)
    shown = [r for r in records if environments.visible(r, caller, owner_named=user is not None)]
    if user is None and not caller.admin:
        shown = [r for r in shown if r.owner == caller.user or r.visibility == "public"]
    if not all_versions:
        shown = environments.latest_only(shown)
    return [_out(r) for r in shown]


@router.get("/{owner}/{name}", response_model=EnvironmentOut, responses=errors(404, 422))
def show_latest(owner: Owner, name: Name, context: Context, caller: CallerDep) -> EnvironmentOut:
    """The latest version you may see."""
    return _out(_visible_record(context, caller, owner, name, None))


@router.get("/{owner}/{name}/{version}", response_model=EnvironmentOut, responses=errors(404, 422))
def show_version(
    owner: Owner, name: Name, version: Version, context: Context, caller: CallerDep
) -> EnvironmentOut:
    """One version."""
    return _out(_visible_record(context, caller, owner, name, version))


@router.patch(
    "/{owner}/{name}/{version}",
    response_model=EnvironmentOut,
    responses=BODY_ERRORS | errors(403, 404, 409),
)
def change_visibility(
    *,
    owner: Owner,
    name: Name,
    version: Version,
    body: VisibilityChange,
    context: Context,
    caller: CallerDep,
) -> EnvironmentOut:
    """Make a version private, shared or (administrators) public; flip its destructive tag;
    record the checksums of its files as they are now (409 ``nothing_modified`` when they
    are the recorded ones, as Kadeploy3 answers)."""
    record = _owned_record(context, caller, owner, name, version)
    if body.visibility is not None:
        _may_publish(caller, body.visibility)
    sums: dict[str, str] = {}
    if body.update_checksums:
        env = environments.description_of(context, record)
        sums = checksums.checksums(env, tuple(dict.fromkeys(body.update_checksums)))
        if not sums or all(record.checksums.get(k) == v for k, v in sums.items()):
            raise ApiError(
                409,
                "nothing_modified",
                f"the checksums of {', '.join(body.update_checksums)} of {name} version "
                f"{version} are the recorded ones: no element has been modified",
            )
    visibility = body.visibility
    if visibility is not None:
        context.daemon.store_call(
            lambda s: s.set_environment_visibility(owner, name, version, visibility)
        )
    if body.toggle_destructive or sums:
        context.daemon.store_call(
            lambda s: s.change_environment(
                owner, name, version, toggle_destructive=body.toggle_destructive, checksums=sums
            )
        )
    return _out(context.reader.environment(record.owner, record.name, record.version))


@router.delete(
    "/{owner}/{name}/{version}",
    status_code=204,
    response_class=Response,
    responses=errors(403, 404, 409, 422),
)
def delete_environment(
    owner: Owner, name: Name, version: Version, context: Context, caller: CallerDep
) -> Response:
    """Remove a version and its files (refused while a deployment uses it)."""
    _owned_record(context, caller, owner, name, version)
    directory = context.environment_dir(owner, name, version)
    for view in context.reader.deployments(status="running", limit=1_000_000):
        image = str(view.environment.get("image", {}).get("file", ""))
        if image.startswith(str(directory) + "/"):
            raise ApiError(
                409,
                "environment_in_use",
                f"deployment {view.id} of {view.user} is deploying {name} version {version}",
            )
    context.daemon.store_call(lambda s: s.delete_environment(owner, name, version))
    environments.remove_directory(directory)
    return Response(status_code=204)


def _register(
    context: ApiContext, caller: Caller, env: EnvironmentDescription, visibility: str
) -> EnvironmentRecord:
    sums = checksums.checksums(env)
    record: EnvironmentRecord = context.daemon.store_call(
        lambda s: s.add_environment(
            name=env.name,
            version=env.version,
            owner=caller.user,
            visibility=visibility,
            description=env.model_dump(mode="json"),
            checksums=sums,
        )
    )
    logger.info("%s registered %s version %d (%s)", caller.user, env.name, env.version, visibility)
    return record


def _may_publish(caller: Caller, visibility: str) -> None:
    if visibility == "public" and not caller.admin:
        raise ApiError(
            403,
            "admin_only",
            "only administrators make environments public; use shared to let others deploy it",
        )


def _visible_record(
    context: ApiContext, caller: Caller, owner: str, name: str, version: int | None
) -> EnvironmentRecord:
    try:
        record = context.reader.environment(owner, name, version)
    except UnknownEnvironment as exc:
        raise ApiError(404, "unknown_environment", str(exc)) from None
    if not environments.visible(record, caller, owner_named=True):
        raise ApiError(404, "unknown_environment", str(UnknownEnvironment(owner, name, version)))
    return record


def _owned_record(
    context: ApiContext, caller: Caller, owner: str, name: str, version: int
) -> EnvironmentRecord:
    record = _visible_record(context, caller, owner, name, version)
    if record.owner != caller.user and not caller.admin:
        raise ApiError(403, "forbidden", f"environment {name} version {version} is {owner}'s")
    return record


def _out(record: EnvironmentRecord) -> EnvironmentOut:
    return EnvironmentOut(
        name=record.name,
        version=record.version,
        owner=record.owner,
        visibility=record.visibility,
        created_at=record.created_at,
        description=dict(record.description),
        checksums=dict(record.checksums),
    )
