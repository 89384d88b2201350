"""``--breakpoint`` and ``--custom-steps`` in a deployment request, as the API checks them.

The custom-steps document is checked again here (the client checked it, but the API is the
boundary): every mistake is answered at once, 422, with its ``body.custom_steps.steps...`` key
path. The files of its ``send`` and ``run`` operations come as uploads (``names`` gives
each the user's own file name, which ``send`` writes on the node); they are taken into a
private directory under the state dir, ``custom-steps/<uuid>``, which holds a ``deployment``
file with the deployment's id once it started. Directories of deployments no longer running
are swept at the next request (an unmarked one, of a request that died half-way, after an hour).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

from kadeploy_core.breakpoint import Breakpoint, parse_breakpoint
from kadeploy_core.custom_ops import CustomSteps, check_send_name, parse_custom_steps
from kadeploy_core.errors import InputError, Problem
from kadeploy_core.schemas import CustomStepsIn
from kadeploy_core.stepnames import UnknownStep
from kadeploy_core.yamldoc import dotted
from kadeployd.api import environments
from kadeployd.api.auth import Caller
from kadeployd.api.context import ApiContext
from kadeployd.api.errors import ApiError
from kadeployd.api.uploads import UploadInfo

logger = logging.getLogger(__name__)

CUSTOM_STEPS_DIR = "custom-steps"
MARKER = "deployment"
UNMARKED_GRACE = 3600.0
"""Seconds an unmarked directory (a request still being handled) is kept."""
_PREFIX = ("body", "custom_steps", "steps")


def check_breakpoint(text: str | None) -> Breakpoint | None:
    """The request's breakpoint; 422 naming the valid steps."""
    if text is None:
        return None
    try:
        return parse_breakpoint(text)
    except (UnknownStep, ValueError) as exc:
        problem = Problem("request", str(exc), "body.breakpoint")
        raise ApiError(422, "invalid_breakpoint", f"breakpoint: {exc}", [problem]) from None


def check_custom_steps(spec: CustomStepsIn) -> CustomSteps:
    """The document checked, and each operation's file among ``spec.files``; 422 otherwise."""
    try:
        steps = parse_custom_steps(spec.steps, "request", prefix=_PREFIX)
    except InputError as exc:
        raise ApiError(
            422, "invalid_custom_steps", str(exc.problems[0]), list(exc.problems)
        ) from None
    problems = [
        Problem(
            "request",
            f"{op.file!r} is not among custom_steps.files (upload it and name it there)",
            dotted((*_PREFIX, *op.where, "file")),
        )
        for op in steps.operations()
        if op.file and op.file not in spec.files
    ]
    named = set(steps.file_names())
    problems += [
        Problem("request", "no operation names this file", f"body.custom_steps.files.{name}")
        for name in spec.files
        if name not in named
    ]
    problems += [
        Problem("request", "not among custom_steps.files", f"body.custom_steps.names.{name}")
        for name in spec.names
        if name not in spec.files
    ]
    for name, node_name in spec.names.items():
        wrong = check_send_name(node_name)
        if wrong is not None:
            problems.append(Problem("request", wrong, f"body.custom_steps.names.{name}"))
    if problems:
        raise ApiError(422, "invalid_custom_steps", str(problems[0]), problems)
    return steps


def take_files(
    context: ApiContext, caller: Caller, steps: CustomSteps, spec: CustomStepsIn
) -> tuple[CustomSteps, Path | None, list[tuple[UploadInfo, Path]]]:
    """Move the uploads into a fresh directory; the steps naming them, the directory (None
    without files) and what was taken (for :func:`give_back`)."""
    if not spec.files:
        return steps, None, []
    directory = environments.new_directory(root(context))
    try:
        taken = environments.take_uploads(context, caller, spec.files, directory)
    except BaseException:
        environments.remove_directory(directory)
        raise
    files = {name: directory / name for name in spec.files}
    names = dict(spec.names)
    return dataclasses.replace(steps, files=files, names=names), directory, taken


def give_back(context: ApiContext, taken: list[tuple[UploadInfo, Path]], directory: Path) -> None:
    """The request failed: the uploads back to the user, the directory removed."""
    environments.give_back(context, taken)
    environments.remove_directory(directory)


def root(context: ApiContext) -> Path:
    """Where the directories of custom-steps files are."""
    path = context.state_dir / CUSTOM_STEPS_DIR
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def mark(directory: Path | None, deployment_id: str) -> None:
    """Say which deployment uses ``directory``."""
    if directory is not None:
        (directory / MARKER).write_text(deployment_id)


def sweep(context: ApiContext, now: float | None = None) -> None:
    """Remove the directories no running deployment uses (call under the deploy lock)."""
    now = time.time() if now is None else now
    running = {v.id for v in context.reader.deployments(status="running", limit=1_000_000)}
    for directory in root(context).iterdir():
        marker = directory / MARKER
        try:
            owner = marker.read_text().strip()
        except OSError:
            try:
                young = now - directory.stat().st_mtime < UNMARKED_GRACE
            except OSError:
                continue
            if young:
                continue
            owner = ""
        if owner not in running:
            logger.info("removing custom-steps files %s (deployment %s)", directory, owner)
            environments.remove_directory(directory)
