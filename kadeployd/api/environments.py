"""Environments as the API handles them: built from uploads, checked so that a user's
description only names files the user uploaded, found in the catalogue with visibility rules.

Visibility (Kadeploy3's): *private* is seen by its owner only, *shared* by everyone who names
the owner, *public* by everyone and listed by default. Administrators see everything and are
the only ones who may make an environment public. An administrator's description may also
name files on the server by absolute path; a user's may not (the daemon would read them with
its own rights).

The daemon runs as root: it says nothing about a path a caller names before deciding whether
the caller may read it. A user's description is confined to the uploaded files (a name
outside is refused as written, whether it exists or not); an administrator's server paths are
checked with the permissions of the administrator's own account (:func:`read_access_of`), and
a path it may not read is answered exactly like a missing one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import stat
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path, PurePosixPath

import yaml

from kadeploy_core.environment.description import NOT_UPLOADED
from kadeploy_core.errors import EnvironmentError_, Problem
from kadeploy_core.schemas import EnvironmentRef
from kadeploy_core.suggest import did_you_mean
from kadeployd.api.auth import Caller
from kadeployd.api.context import ApiContext
from kadeployd.api.errors import ApiError
from kadeployd.api.uploads import UploadError, UploadInfo
from kadeployd.environment import EnvironmentDescription, parse_environment
from kadeployd.store.catalogue import EnvironmentRecord, UnknownEnvironment

logger = logging.getLogger(__name__)


def visible(record: EnvironmentRecord, caller: Caller, owner_named: bool) -> bool:
    """Whether ``caller`` may see (and deploy) ``record``."""
    if caller.admin or record.owner == caller.user or record.visibility == "public":
        return True
    return record.visibility == "shared" and owner_named


def files_of(env: EnvironmentDescription) -> list[tuple[str, Path]]:
    """Every file an environment names, with its key path."""
    found = [("image.file", env.image.file)]
    if env.preinstall is not None:
        found.append(("preinstall.archive", env.preinstall.archive))
    found.extend((f"postinstalls[{i}].archive", p.archive) for i, p in enumerate(env.postinstalls))
    return found


def take_uploads(
    context: ApiContext, caller: Caller, files: Mapping[str, str], directory: Path
) -> list[tuple[UploadInfo, Path]]:
    """Move the uploads named in ``files`` (name -> upload id) into ``directory``; what was
    taken, for :func:`give_back` if the request fails later."""
    problems = []
    for name, upload_id in files.items():
        try:
            context.uploads.get(upload_id, caller.user)
        except UploadError as exc:
            problems.append(Problem("request", str(exc), f"files.{name}"))
    if problems:
        raise ApiError(404, "unknown_upload", problems[0].message, problems)
    return [
        (context.uploads.take(upload_id, caller.user, directory / name), directory / name)
        for name, upload_id in files.items()
    ]


def give_back(context: ApiContext, taken: list[tuple[UploadInfo, Path]]) -> None:
    """Return taken uploads to the user (a failed request must not eat a big upload)."""
    for info, path in taken:
        with contextlib.suppress(OSError):
            context.uploads.restore(info, path)


def parse_in(directory: Path, text: str, source: str, caller: Caller) -> EnvironmentDescription:
    """Validate a description whose relative files are in ``directory``; a non-administrator's
    description may name no file outside it (refused before the path is looked at), an
    administrator's only files the administrator's account may read."""
    if caller.admin:
        env = parse_environment(text, source, directory, may_read=read_access_of(caller.user))
    else:
        try:
            env = parse_environment(text, source, directory, confine=True)
        except EnvironmentError_ as exc:
            confined = [p for p in exc.problems if NOT_UPLOADED in p.message]
            if confined:
                raise ApiError(
                    422, "invalid_environment", confined[0].message, list(exc.problems)
                ) from None
            raise
    if not caller.admin:
        root = directory.resolve()
        outside = [
            Problem(
                source,
                f"{path.name!r} is not among the uploaded files; upload it and name it "
                f"relatively (only administrators may name files on the server)",
                key,
            )
            for key, path in files_of(env)
            if not path.resolve().is_relative_to(root)
        ]
        if outside:
            raise ApiError(422, "invalid_environment", outside[0].message, outside)
    return env


_MAX_LINK_HOPS = 40


def read_access_of(user: str) -> Callable[[Path], bool] | None:
    """Whether the OS account ``user`` may read a file, as the kernel would decide for it
    (search permission on every directory, symbolic links followed, read permission on the
    file; ACLs are not consulted, so they can only make the answer stricter). None for root,
    who may read everything; an account unknown to the system may read nothing."""
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        return lambda path: False
    if account.pw_uid == 0:
        return None
    groups = frozenset(os.getgrouplist(account.pw_name, account.pw_gid))
    return lambda path: _may_read(path, account.pw_uid, groups)


def _permits(info: os.stat_result, uid: int, groups: frozenset[int], bit: int) -> bool:
    """``bit`` is 4 (read) or 1 (search); the owner, group or other class applies, as in
    the kernel (an owner without the bit is refused even if others have it)."""
    if info.st_uid == uid:
        return bool(info.st_mode & (bit << 6))
    if info.st_gid in groups:
        return bool(info.st_mode & (bit << 3))
    return bool(info.st_mode & bit)


def _may_read(path: Path, uid: int, groups: frozenset[int]) -> bool:
    parts = list(PurePosixPath(os.path.abspath(path)).parts[1:])
    current = PurePosixPath("/")
    hops = 0
    try:
        while parts:
            if not _permits(os.stat(current), uid, groups, 1):
                return False
            name = parts.pop(0)
            if name in (".", ""):
                continue
            if name == "..":
                current = current.parent
                continue
            candidate = current / name
            info = os.lstat(candidate)
            if stat.S_ISLNK(info.st_mode):
                hops += 1
                if hops > _MAX_LINK_HOPS:
                    return False
                target = PurePosixPath(os.readlink(candidate))
                if target.is_absolute():
                    current = PurePosixPath("/")
                    parts = list(target.parts[1:]) + parts
                else:
                    parts = list(target.parts) + parts
                continue
            current = candidate
        final = os.stat(current)
    except OSError:
        return False
    return stat.S_ISREG(final.st_mode) and _permits(final, uid, groups, 4)


def new_directory(parent: Path, *, held: bool = False) -> Path:
    """A fresh private directory under ``parent``.

    ``held``: the directory is also registered as being created (see :func:`held_names`)
    until :func:`release`; it is registered before it exists, so a sweep that lists a
    directory, then reads the registry, then the store, cannot miss one being created.
    """
    directory = parent / uuid.uuid4().hex
    if held:
        with _held_lock:
            _held.add(directory)
    try:
        directory.mkdir(mode=0o700, parents=True)
    except BaseException:
        release(directory)
        raise
    return directory


_held_lock = threading.Lock()
_held: set[Path] = set()
"""Directories whose request is still being handled (files being taken, description parsed,
deployment being admitted): no sweep may remove them, whatever the store says yet."""


def held_names(parent: Path) -> set[str]:
    """Names of the directories under ``parent`` being created right now."""
    with _held_lock:
        return {directory.name for directory in _held if directory.parent == parent}


def release(directory: Path | None) -> None:
    """The request that created ``directory`` is over (its deployment recorded, or the
    directory removed): ordinary sweeping rules apply to it from now on."""
    if directory is not None:
        with _held_lock:
            _held.discard(directory)


def remove_directory(directory: Path) -> None:
    """Remove a directory of environment files, quietly."""
    with contextlib.suppress(OSError):
        shutil.rmtree(directory)


def description_of(context: ApiContext, record: EnvironmentRecord) -> EnvironmentDescription:
    """The registered environment as a validated description (its files must still exist)."""
    text = yaml.safe_dump(dict(record.description), sort_keys=False)
    source = f"environment {record.name} version {record.version} of {record.owner}"
    directory = context.environment_dir(record.owner, record.name, record.version)
    return parse_environment(text, source, directory)


def resolve(context: ApiContext, caller: Caller, ref: EnvironmentRef) -> EnvironmentRecord:
    """The environment ``ref`` names, as ``caller`` may see it; 404 or 409 (ambiguous)."""
    reader = context.reader
    if ref.user is not None:
        try:
            record = reader.environment(ref.user, ref.name, ref.version)
        except UnknownEnvironment as exc:
            raise _unknown(context, caller, ref, str(exc)) from None
        if not visible(record, caller, owner_named=True):
            raise _unknown(context, caller, ref, str(UnknownEnvironment(*_key(ref))))
        return record
    own = reader.environments(name=ref.name, owner=caller.user, version=ref.version)
    if own:
        return own[0]
    public = [
        r
        for r in reader.environments(name=ref.name, version=ref.version)
        if r.visibility == "public"
    ]
    owners = sorted({r.owner for r in public})
    if not owners:
        message = f"no environment {ref.name!r}" + (
            f" version {ref.version}" if ref.version is not None else ""
        )
        raise _unknown(context, caller, ref, message + " of yours or public")
    if len(owners) > 1:
        raise ApiError(
            409,
            "ambiguous_environment",
            f"several public environments are named {ref.name!r} (owners: "
            f"{', '.join(owners)}); name the owner (user)",
        )
    return public[0]


def _key(ref: EnvironmentRef) -> tuple[str, str, int | None]:
    return (ref.user or "", ref.name, ref.version)


def _unknown(context: ApiContext, caller: Caller, ref: EnvironmentRef, message: str) -> ApiError:
    names = {
        r.name
        for r in context.reader.environments()
        if visible(r, caller, owner_named=ref.user is not None and r.owner == ref.user)
    }
    hint = did_you_mean(ref.name, names) if ref.name not in names else ""
    return ApiError(404, "unknown_environment", message + hint)


def latest_only(records: Iterable[EnvironmentRecord]) -> list[EnvironmentRecord]:
    """The newest version of each (owner, name); records come newest first per key."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for record in records:
        key = (record.owner, record.name)
        if key not in seen:
            seen.add(key)
            kept.append(record)
    return kept
