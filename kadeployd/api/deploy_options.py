"""Kadeploy3's deployment options in a ``POST /v1/deployments`` body, as the API checks them.

The body's schema checks each field's shape; this module checks what needs the daemon: the
timeout expressions (:mod:`kadeployd.config.timeouts`), the ``force_steps`` text
(:mod:`kadeploy_core.forcesteps`, administrators only: Kadeploy3 keeps it "for administration
purpose only", since a forced automata bypasses the timeouts and variants the admins chose
for their hardware), and ``reformat_tmp`` against the nodes' ``disk.tmp_partition``. Every
refusal is a 422 (403 for ``force_steps``) naming its ``body.<field>``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kadeploy_core.errors import InputError, Problem
from kadeploy_core.forcesteps import ForceStepsError, parse_force_steps
from kadeploy_core.schemas import MAX_KEYS, DeploymentCreate
from kadeployd.api import environments
from kadeployd.api.auth import Caller
from kadeployd.api.context import ApiContext
from kadeployd.api.errors import ApiError
from kadeployd.api.uploads import UploadError, UploadInfo
from kadeployd.config import Config
from kadeployd.config.timeouts import Timeout, TimeoutSyntaxError
from kadeployd.pxe import held_files, user_profiles
from kadeployd.pxe.errors import PxeError
from kadeployd.pxe.user_profiles import check_profile
from kadeployd.workflow.job import SINGULARITY, CustomPxe

logger = logging.getLogger(__name__)

MAX_NAMED = 10
"""Nodes named at most in a message (the rest are counted)."""
MAX_SINGULARITY_CHECK = 16 << 20
"""Characters of profile lines checked at most for the singularities of one request (each
distinct value is checked in the lines naming ``NODE_SINGULARITY``): about 0.5 s of work."""


def _refuse(field: str, code: str, message: str, status: int = 422) -> ApiError:
    problem = Problem("request", message, f"body.{field}")
    return ApiError(status, code, f"{field}: {message}", [problem])


def parse_timeout(field: str, text: str | None) -> Timeout | None:
    """The timeout expression of ``body.<field>`` (also a reboot's), or 422 invalid_timeout."""
    if text is None:
        return None
    try:
        return Timeout.parse(text)
    except TimeoutSyntaxError as exc:
        raise _refuse(field, "invalid_timeout", str(exc)) from None


def _names(nodes: list[str]) -> str:
    shown = ", ".join(nodes[:MAX_NAMED])
    return shown + (f" and {len(nodes) - MAX_NAMED} more" if len(nodes) > MAX_NAMED else "")


_KEY_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def read_keys(context: ApiContext, caller: Caller, text: str, upload: str | None) -> str:
    """The public keys of ``authorized_keys`` or the caller's upload ``authorized_keys_upload``
    (a deployment's or a deploy_env reboot's): text lines, no control characters."""
    if upload is not None:
        try:
            text = context.uploads.read_text(upload, caller.user, MAX_KEYS)
        except UploadError as exc:
            status = 404 if exc.code == "unknown_upload" else 422
            raise ApiError(status, exc.code, str(exc)) from None
    if _KEY_CONTROL.search(text):
        raise ApiError(
            422, "invalid_keys", "authorized_keys must be text lines without control characters"
        )
    return text


def request_options(body: DeploymentCreate, caller: Caller, config: Config) -> dict[str, Any]:
    """The DeploymentRequest keywords of the body's Kadeploy3 options; ApiError if one is
    wrong."""
    options: dict[str, Any] = {
        "boot_partition": body.boot_partition,
        "reformat_tmp": body.reformat_tmp,
        "disable_disk_partitioning": body.disable_disk_partitioning,
        "disable_bootloader_install": body.disable_bootloader_install,
        "disable_kexec": body.disable_kexec,
        "timeout_reboot_classical": parse_timeout(
            "timeout_reboot_classical", body.timeout_reboot_classical
        ),
        "timeout_reboot_kexec": parse_timeout("timeout_reboot_kexec", body.timeout_reboot_kexec),
    }
    if body.force_steps is not None:
        if not caller.admin:
            raise _refuse(
                "force_steps",
                "forbidden",
                "for administrators only (daemon.almighty_users): it replaces the "
                "configured automata",
                403,
            )
        try:
            options["force_steps"] = parse_force_steps(body.force_steps)
        except ForceStepsError as exc:
            raise _refuse("force_steps", "invalid_force_steps", str(exc)) from None
    if body.reformat_tmp is not None:
        known = [config.nodes[n] for n in body.nodes if n in config.nodes]
        lacking = [node.name for node in known if node.settings.disk.tmp_partition is None]
        if lacking:
            raise _refuse(
                "reformat_tmp",
                "no_tmp_partition",
                f"no /tmp partition is configured (disk.tmp_partition) on {_names(lacking)}",
            )
    return options


@dataclass
class TakenPxe:
    """A request's own PXE profile, its files published; the uploads they came from, kept
    until the deployment started (:func:`release_pxe`)."""

    pxe: CustomPxe
    directory: Path
    taken: list[tuple[UploadInfo, Path]]


PXE_DIR = "deploy-pxe"
"""Under the state dir: where a request's PXE uploads wait while they are published."""


def _profile_problem(exc: InputError, field: str) -> ApiError:
    problems = [Problem("request", p.message, f"body.pxe.{field}", p.line) for p in exc.problems]
    first = problems[0]
    where = f"pxe.{field}" + (f" line {first.line}" if first.line is not None else "")
    return ApiError(422, "invalid_profile", f"{where}: {first.message}", problems)


def check_pxe(body: DeploymentCreate, caller: Caller) -> CustomPxe | None:
    """The request's profile checked as kareboot set_pxe checks it (files inside the user's
    TFTP directory...), once with each distinct singularity substituted; 422 otherwise."""
    if body.pxe is None:
        return None
    try:
        profile = check_profile(body.pxe.profile, caller.user, "request", "profile")
    except InputError as exc:
        raise _profile_problem(exc, "profile") from None
    singularities = body.pxe.singularities
    if singularities is not None:
        _check_singularities(profile.text, set(singularities.values()), caller)
    return CustomPxe(profile, singularities, tuple(body.pxe.files))


def _check_singularities(text: str, values: set[str], caller: Caller) -> None:
    """The profile's lines naming ``NODE_SINGULARITY`` checked with each distinct value in
    them (a value may not make a path leave the user's directory), within
    :data:`MAX_SINGULARITY_CHECK` characters of work."""
    lines = "\n".join(line for line in text.splitlines() if SINGULARITY in line)
    if not lines:
        return
    work = len(lines) * len(values)
    if work > MAX_SINGULARITY_CHECK:
        raise _refuse(
            "pxe.singularities",
            "too_large",
            f"{len(values)} distinct values in {len(lines)} characters of profile lines "
            f"naming {SINGULARITY}: more than {MAX_SINGULARITY_CHECK} characters to check; "
            "use fewer distinct values or shorter lines",
            413,
        )
    for value in sorted(values):
        try:
            check_profile(lines.replace(SINGULARITY, value), caller.user)
        except InputError as exc:
            raise _profile_problem(exc, "singularities") from None


def take_pxe(
    context: ApiContext, caller: Caller, pxe: CustomPxe, body: DeploymentCreate
) -> TakenPxe:
    """Publish the request's PXE files under the user's TFTP directory (bounded by
    ``daemon.max_set_pxe_files_mib``; swept once no profile names them, as set_pxe's)."""
    assert body.pxe is not None
    directory = environments.new_directory(context.state_dir / PXE_DIR)
    taken: list[tuple[UploadInfo, Path]] = []
    try:
        taken = environments.take_uploads(context, caller, body.pxe.files, directory)
        files = {name: directory / name for name in body.pxe.files}
        settings = context.config.daemon
        published = user_profiles.publish_files(
            settings.tftp_root, caller.user, files, settings.max_set_pxe_files_mib << 20
        )
        # Held until the deployment ends: BootNewEnv names them only minutes later.
        held_files.hold(directory.name, published)
    except InputError as exc:
        release_pxe(context, TakenPxe(pxe, directory, taken), deployment_id=None)
        problems = [Problem("request", p.message, "body.pxe.files") for p in exc.problems]
        raise ApiError(413, "too_large", problems[0].message, problems) from None
    except PxeError as exc:
        release_pxe(context, TakenPxe(pxe, directory, taken), deployment_id=None)
        raise ApiError(500, "pxe_error", f"cannot publish the PXE files: {exc}") from None
    except BaseException:
        release_pxe(context, TakenPxe(pxe, directory, taken), deployment_id=None)
        raise
    return TakenPxe(pxe, directory, taken)


def release_pxe(context: ApiContext, taken: TakenPxe | None, *, deployment_id: str | None) -> None:
    """The uploads' directory is no longer needed. The published files are held by the
    deployment started (``deployment_id``) until it ends (kadeployd/pxe/held_files.py); a
    failed request (None) gives the uploads back and removes the files no profile names."""
    if taken is None:
        return
    holder = taken.directory.name
    if deployment_id is None:
        environments.give_back(context, taken.taken)
        unused = held_files.release(holder)
    else:
        unused = held_files.rename(holder, deployment_id)  # it may have ended already
    if unused:
        user_profiles.remove_unreferenced(context.config.daemon.tftp_root, unused)
    environments.remove_directory(taken.directory)
