"""``kadeploy --custom-steps FILE`` on the user's side: checked, its files uploaded.

The file is checked as the daemon would check it (every mistake as ``FILE:LINE: key: what is
wrong; what is valid``), then each local file of its ``send`` and ``run`` operations (relative
to the custom-steps file) is checked and streamed to ``/v1/uploads``; the request carries the
document with each ``file`` replaced by the plain name of its upload. Nothing is sent when the
document or a file is wrong; uploads already made are deleted if a later one fails.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kadeploy_cli.client import Client
from kadeploy_cli.envfiles import upload_name
from kadeploy_cli.errors import ApiFailure, ServerFailure, UsageProblem
from kadeployd.errors import InputError, Problem
from kadeployd.workflow.custom_ops import CustomOperation, CustomSteps, parse_custom_steps
from kadeployd.yamldoc import YamlDocument, YamlLoadError, dotted, load_yaml_file

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LocalSteps:
    """A checked custom-steps file and the local file behind each ``file`` it names."""

    document: YamlDocument
    steps: CustomSteps
    files: dict[str, Path]
    """``file`` as written -> the local path."""


def load(path: Path) -> LocalSteps:
    """Check ``path`` and the files it names; UsageProblem listing every mistake."""
    try:
        document = load_yaml_file(path)
        steps = parse_custom_steps(document.data, str(path), document.line_of)
    except (YamlLoadError, InputError) as exc:
        _fail(list(exc.problems))
    problems: list[Problem] = []
    files: dict[str, Path] = {}
    for op in steps.operations():
        if op.file and op.file not in files:
            local = _local(path, op.file)
            problem = _unreadable(local)
            if problem is not None:
                problems.append(_at(document, op, f"{problem}: {local}"))
            files[op.file] = local
    if problems:
        _fail(problems)
    return LocalSteps(document, steps, files)


def upload(local: LocalSteps, client: Client) -> dict[str, Any]:
    """Upload the files; the ``custom_steps`` request body."""
    taken: set[str] = set()
    names: dict[str, str] = {}
    uploads: dict[str, str] = {}
    try:
        for op in local.steps.operations():
            if not op.file or op.file in names:
                continue
            name = upload_name(local.files[op.file], taken)
            try:
                uploads[name] = str(client.upload(local.files[op.file], name)["id"])
            except ApiFailure as exc:
                if isinstance(exc, ServerFailure):
                    raise
                raise UsageProblem(str(_at(local.document, op, exc.format_message()))) from None
            names[op.file] = name
    except BaseException:
        for upload_id in uploads.values():
            try:
                client.delete(f"/v1/uploads/{upload_id}")
            except ApiFailure:
                logger.warning("could not delete upload %s", upload_id)
        raise
    steps = local.steps.shown()
    for shown in _operations(steps):
        if "file" in shown:
            shown["file"] = names[shown["file"]]
    return {"steps": steps, "files": uploads}


def _operations(shown: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for micros in shown.values():
        for phases in micros.values():
            for ops in phases.values():
                yield from ops


def _local(path: Path, file: str) -> Path:
    local = Path(file).expanduser()
    return local if local.is_absolute() else path.parent / local


def _unreadable(local: Path) -> str | None:
    """What is wrong with a file to upload, if anything (its size is the server's to judge:
    daemon.max_upload_mib)."""
    if not local.exists():
        return "no such file"
    if not local.is_file():
        return "not a regular file"
    if not os.access(local, os.R_OK):
        return "cannot read the file (permission denied)"
    return None


def _at(document: YamlDocument, op: CustomOperation, message: str) -> Problem:
    key = (*op.where, "file")
    return Problem(document.source, message, dotted(key), document.line_of(key))


def _fail(problems: list[Problem]) -> Any:
    texts = [str(p) for p in problems]
    raise UsageProblem(texts[0], texts[1:])
