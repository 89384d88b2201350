"""``kadeploy --custom-steps FILE`` on the user's side: checked, its files uploaded.

The file is checked as the daemon would check it (every mistake as ``FILE:LINE: key: what is
wrong; what is valid``), then each local file of its ``send`` and ``run`` operations (relative
to the custom-steps file) is checked and streamed to ``/v1/uploads``; the request carries the
document with each ``file`` replaced by the plain name of its upload, and for each file a
``send`` copies, the file's own name (``./a/my motd`` reaches the node as ``my motd``). Nothing is
sent when the document or a file is wrong (a ``send`` of a file name that cannot be one on the
node, two sends of different files under one name into one destination); uploads already made
are deleted if a later one fails.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from kadeploy_cli.client import Client
from kadeploy_cli.envfiles import upload_name
from kadeploy_cli.errors import ApiFailure, ServerFailure, UsageProblem
from kadeploy_cli.uploads import deleted_on_failure
from kadeploy_core.custom_ops import (
    CustomOperation,
    CustomSteps,
    check_send_name,
    parse_custom_steps,
)
from kadeploy_core.errors import InputError, Problem
from kadeploy_core.yamldoc import YamlDocument, YamlLoadError, dotted, load_yaml_file

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
    misnamed = {op.file for op in steps.operations() if _sends(op) and _misnamed(op.file)}
    for op in steps.operations():
        if op.file and op.file not in files:
            local = _local(path, op.file)
            problem = None if op.file in misnamed else _unreadable(local)  # one problem each
            if problem is not None:
                problems.append(_at(document, op, f"{problem}: {local}"))
            files[op.file] = local
    problems += _send_problems(document, steps, files)
    if problems:
        _fail(problems)
    return LocalSteps(document, steps, files)


def send_name(file: str) -> str:
    """The name ``send`` gives ``file`` (as written) on the node: its own file name."""
    return PurePosixPath(file).name


def upload(local: LocalSteps, client: Client) -> dict[str, Any]:
    """Upload the files; the ``custom_steps`` request body: the document naming the uploads,
    ``files`` (upload name -> id) and ``names`` (upload name -> the name ``send`` gives the
    file on the node)."""
    taken: set[str] = set()
    names: dict[str, str] = {}
    uploads: dict[str, str] = {}
    with deleted_on_failure(client) as made:
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
            made.append(uploads[name])
            names[op.file] = name
    steps = local.steps.shown()
    for shown in _operations(steps):
        if "file" in shown:
            shown["file"] = names[shown["file"]]
    sent = {names[op.file]: send_name(op.file) for op in local.steps.operations() if _sends(op)}
    return {"steps": steps, "files": uploads, "names": sent}


def upload_ids(body: dict[str, Any]) -> list[str]:
    """The uploads a ``custom_steps`` request body names."""
    return [str(i) for i in body.get("files", {}).values()]


def _sends(op: CustomOperation) -> bool:
    return op.action == "send" and bool(op.file)


def _misnamed(file: str) -> str | None:
    return check_send_name(send_name(file))


def _send_problems(
    document: YamlDocument, steps: CustomSteps, files: dict[str, Path]
) -> list[Problem]:
    """A ``send`` whose file name cannot be a file on the node, and two sends of different
    files under one name into one destination (the second would overwrite the first)."""
    problems: list[Problem] = []
    sent: dict[tuple[str, str], tuple[str, CustomOperation]] = {}
    for op in filter(_sends, steps.operations()):
        name = send_name(op.file)
        wrong = _misnamed(op.file)
        if wrong is not None:
            problems.append(_at(document, op, wrong))
            continue
        local = os.path.abspath(files[op.file])
        first = sent.setdefault((op.destination, name), (local, op))
        if first[0] != local:
            key = (*first[1].where, "file")
            line = document.line_of(key)
            where = f"{dotted(key)} (line {line})" if line is not None else dotted(key)
            problems.append(
                _at(
                    document,
                    op,
                    f"sends another file as {name!r} into {op.destination} like {where}: one "
                    "would overwrite the other on the node; rename one of the files",
                )
            )
    return problems


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
