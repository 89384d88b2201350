"""Running a microstep with the user's custom operations around it (``--custom-steps``).

Operations run on the node over the step's SSH connection, as argument lists (the SSH
adapter quotes each argument): the user's ``exec`` command is one argument of ``sh -c``, files
are streamed on stdin, and the paths are positional parameters of a fixed script, so no user
text is ever spliced into shell code. Kadeploy3's environment variables are exported to every
operation. A failing operation fails the microstep (the usual retry rules), naming itself.
"""

from __future__ import annotations

import logging
import re
import shlex
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from kadeploy_core.custom_ops import POST, PRE, SUBSTITUTE, CustomOperation
from kadeployd.workflow.context import Again, StepContext, StepFailed
from kadeployd.workflow.job import MOUNT_POINT
from kadeployd.workflow.steps import StepRunner

logger = logging.getLogger(__name__)

_SEND = 'mkdir -p -- "$1" && cat > "$1/$2"'
"""Copy stdin to ``$1/$2`` (destination directory, file name)."""
_INSTALL = 'cat > "$1" && chmod 700 "$1"'
_RUN = '"$0" "$@"; status=$?; rm -f -- "$0"; exit $status'
"""Run the installed script ``$0`` with the user's parameters, then remove it."""
_VARIABLE = re.compile(r"\$(?:\{(KADEPLOY_[A-Z_]+)\}|(KADEPLOY_[A-Z_]+))")


def run_microstep(ctx: StepContext, name: str, runner: StepRunner, first: bool) -> Again | None:
    """Run microstep ``name`` with the custom operations the deployment puts around it.

    A step that answers :class:`Again` runs several times: its pre-operations run before its
    first run (``first``), its post-operations after the run that completes it.
    """
    custom = ctx.job.request.custom_steps
    around = custom.around(ctx.position.macrostep, ctx.variant, name) if custom else None
    if around is None:
        return runner.run(ctx)
    if first:
        for op in around.pre:
            run_operation(ctx, op, PRE, name)
    if around.substitute is None:
        if (again := runner.run(ctx)) is not None:
            return again
    else:
        ctx.log("info", f"custom substitute of {name}: the microstep does not run")
        for op in around.substitute:
            run_operation(ctx, op, SUBSTITUTE, name)
    for op in around.post:
        run_operation(ctx, op, POST, name)
    return None


def environment(ctx: StepContext) -> dict[str, str]:
    """Kadeploy3's variables, exported to every operation."""
    env = ctx.job.environment
    return {
        "KADEPLOY_CLUSTER": ctx.node.cluster,
        "KADEPLOY_ENV": env.name,
        "KADEPLOY_ENV_VERSION": str(env.version),
        "KADEPLOY_USER": ctx.job.request.user,
        "KADEPLOY_DEPLOYMENT": ctx.job.deployment_id,
        "KADEPLOY_BLOCK_DEVICE": ctx.disk.block_device,
        "KADEPLOY_DEPLOY_PART": ctx.deploy_device,
        "KADEPLOY_DEPLOY_PART_NUM": str(ctx.deploy_partition),
        "KADEPLOY_ENV_EXTRACTION_DIR": MOUNT_POINT,
        "KADEPLOY_PREPOST_EXTRACTION_DIR": "/tmp",  # noqa: S108 - on the node
    }


def expand(text: str, variables: dict[str, str]) -> str:
    """``$KADEPLOY_X`` and ``${KADEPLOY_X}`` replaced by their values (plain text
    substitution, for ``destination``; unknown names are left as written)."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return variables.get(name, match.group(0))

    return _VARIABLE.sub(value, text)


def run_operation(ctx: StepContext, op: CustomOperation, phase: str, microstep: str) -> None:
    """Run one operation on the node; StepFailed naming it on failure."""
    label = f"custom {phase} {op.name!r} ({op.action}) of {microstep}"
    ctx.log("info", label)
    variables = environment(ctx)
    env = ["env", *(f"{k}={v}" for k, v in variables.items())]
    if op.action == "exec":
        _remote(ctx, op, label, env, ["sh", "-c", op.command])
        return
    source = _source(ctx, op, label)
    custom = ctx.job.request.custom_steps
    name = (custom.names.get(op.file) if custom else None) or PurePosixPath(op.file).name
    try:
        with source.open("rb") as data:
            if op.action == "send":
                destination = expand(op.destination, variables)
                argv = ["sh", "-c", _SEND, "kadeploy-send", destination, name]
                _remote(ctx, op, label, env, argv, stdin=data)
                return
            script = f"/tmp/kadeploy-custom-{ctx.job.deployment_id[:12]}-{op.name}"  # noqa: S108
            install = ["sh", "-c", _INSTALL, "kadeploy-install", script]
            _remote(ctx, op, label, [], install, stdin=data)
    except OSError as exc:
        raise StepFailed(f"{label}: cannot read {name}: {exc.strerror}") from None
    _remote(ctx, op, label, env, ["sh", "-c", _RUN, script, *op.params])


def _source(ctx: StepContext, op: CustomOperation, label: str) -> Path:
    custom = ctx.job.request.custom_steps
    path = custom.files.get(op.file) if custom else None
    if path is None:
        raise StepFailed(f"{label}: the file {op.file!r} was not uploaded with the request")
    return path


def _remote(
    ctx: StepContext,
    op: CustomOperation,
    label: str,
    env: list[str],
    argv: list[str],
    *,
    stdin: BinaryIO | None = None,
) -> None:
    """Run ``env + argv`` on the node; the log shows ``argv`` (the variables are noise)."""
    ctx.check_cancelled()
    timeout = op.timeout or ctx.command_timeout
    ctx.log("cmd", shlex.join(argv))
    result = ctx.services.shell().run(
        [*env, *argv], timeout=timeout, stdin=stdin, on_output=ctx.log
    )
    ctx.checked(result, label, timeout)
