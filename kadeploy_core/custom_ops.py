"""``--custom-steps``: user operations run before, after or instead of microsteps (Kadeploy3).

The document (YAML on the user's side, the same structure as JSON in the API)::

    SetDeploymentEnv:                 # a macrostep, or a variant's class name (stepnames)
      format_deploy_partition:        # one of its microsteps
        pre-ops | post-ops | substitute:
          - {action: exec, name: make_tmp, command: "mkdir -p /mnt/dest/tmp"}
          - {action: send, name: motd, file: ./motd.txt, destination: /mnt/dest/etc}
          - {action: run, name: tune, file: ./tune.sh, params: "--fast", timeout: 60}

Pure logic: :func:`parse_custom_steps` checks it all and reports every mistake at once with its
key path (and line, given a ``line_of``); :meth:`CustomSteps.around` says which operations run
around a microstep. Files (``send``, ``run``) are the user's: this module keeps the names as
written; the API maps each to the upload holding its bytes (:attr:`CustomSteps.files`).
"""

from __future__ import annotations

import logging
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kadeploy_core.errors import InputError, Problem
from kadeploy_core.plans import Macrostep
from kadeploy_core.stepnames import UnknownStep, check_microstep, resolve_macrostep
from kadeploy_core.suggest import did_you_mean
from kadeploy_core.validation import problems_from
from kadeploy_core.yamldoc import KeyPath, dotted

logger = logging.getLogger(__name__)

PRE, SUBSTITUTE, POST = "pre-ops", "substitute", "post-ops"
PHASES = (PRE, SUBSTITUTE, POST)
MAX_OPERATIONS = 256
"""At most this many operations in one document."""
MAX_TEXT = 64 * 1024
ACTION_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "exec": (("command",), ()),
    "send": (("file", "destination"), ()),
    "run": (("file",), ("params",)),
}
"""action -> (required fields, optional fields), besides action, name and timeout."""
_WHAT = {
    "command": "the shell command to run on the node",
    "file": "a local file (relative to the custom-steps file)",
    "destination": "a directory on the node to copy the file into",
    "params": "the script's parameters",
}

LineOf = Callable[[KeyPath], int | None]
MAX_SEND_NAME_BYTES = 255
"""A file name on the node (Linux NAME_MAX)."""
_SEND_NAME_FORBIDDEN = re.compile(r"[/\x00-\x1f\x7f]")


def check_send_name(name: str) -> str | None:
    """None if ``send`` may give a file the name ``name`` on the node, else what is wrong.

    Any name a file may have, spaces included (it is a positional parameter of a fixed
    script, never shell code), except control characters, which no log line can show."""
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        size = MAX_SEND_NAME_BYTES + 1  # a lone surrogate: no file name
    if (
        name not in ("", ".", "..")
        and not _SEND_NAME_FORBIDDEN.search(name)
        and size <= MAX_SEND_NAME_BYTES
    ):
        return None
    return (
        f"{name[:140]!r} cannot be the name of the file on the node: expected a file name "
        f"(not '.' or '..', no '/', no control character, at most {MAX_SEND_NAME_BYTES} bytes)"
    )


class OperationSpec(BaseModel):
    """One operation as written (checked field by field; the action's fields are checked
    afterwards so that each mistake points at its key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: Literal["exec", "send", "run"] = Field(
        description="one of exec (a shell command), send (copy a file), run (send a script "
        "and run it)"
    )
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_][\w.-]*$")] = (
        Field(description="a short name of letters, digits, '.', '_' or '-' (shown in the log)")
    )
    command: Annotated[str, Field(min_length=1, max_length=MAX_TEXT)] | None = Field(
        None, description="the shell command to run on the node (text)"
    )
    file: Annotated[str, Field(min_length=1, max_length=4096)] | None = Field(
        None, description="a file name (text)"
    )
    destination: Annotated[str, Field(min_length=1, max_length=4096)] | None = Field(
        None, description="a directory on the node (text)"
    )
    params: Annotated[str, Field(max_length=MAX_TEXT)] | None = Field(
        None, description="the script's parameters (text)"
    )
    timeout: Annotated[float, Field(gt=0, le=86400)] | None = Field(
        None, description="a number of seconds > 0 (default: the node's command timeout)"
    )


@dataclass(frozen=True, slots=True)
class CustomOperation:
    """One operation, checked."""

    action: str
    name: str
    command: str = ""
    file: str = ""
    """As written by the user (a local path) or, in the API, the name of its upload."""
    destination: str = ""
    params: tuple[str, ...] = ()
    timeout: float | None = None
    where: KeyPath = field(default=(), compare=False)
    """Its key path in the document."""

    def shown(self) -> dict[str, Any]:
        """The operation as recorded in the deployment's options."""
        out: dict[str, Any] = {"action": self.action, "name": self.name}
        for key in ("command", "file", "destination"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        if self.params:
            out["params"] = shlex.join(self.params)
        if self.timeout is not None:
            out["timeout"] = self.timeout
        return out


@dataclass(frozen=True, slots=True)
class Around:
    """The operations around one microstep: ``substitute`` None runs the microstep itself."""

    pre: tuple[CustomOperation, ...] = ()
    substitute: tuple[CustomOperation, ...] | None = None
    post: tuple[CustomOperation, ...] = ()


@dataclass(frozen=True, slots=True)
class CustomEntry:
    """The operations of one ``MACROSTEP: microstep:`` block."""

    scope_name: str
    microstep: str
    phases: Mapping[str, tuple[CustomOperation, ...]]

    def matches(self, macrostep: Macrostep, variant: str, microstep: str) -> bool:
        """Whether the block applies to ``microstep`` of ``variant`` of ``macrostep``."""
        return microstep == self.microstep and resolve_macrostep(self.scope_name).matches(
            macrostep, variant
        )


@dataclass(frozen=True, slots=True)
class CustomSteps:
    """Every block of a custom-steps document."""

    entries: tuple[CustomEntry, ...]
    files: Mapping[str, Path] = field(default_factory=dict)
    """``file`` as named by the operations -> where the daemon holds its bytes."""
    names: Mapping[str, str] = field(default_factory=dict)
    """``file`` as named by the operations -> the file name ``send`` gives it on the node
    (the user's own file name; the operations name the upload). Default: ``file`` itself."""

    def around(self, macrostep: Macrostep, variant: str, microstep: str) -> Around | None:
        """The operations to run around ``microstep``; None when there are none. A block
        naming the macrostep and one naming the variant both apply, in document order."""
        chosen = [e for e in self.entries if e.matches(macrostep, variant, microstep)]
        if not chosen:
            return None
        substitutes = [e.phases[SUBSTITUTE] for e in chosen if SUBSTITUTE in e.phases]
        return Around(
            pre=tuple(op for e in chosen for op in e.phases.get(PRE, ())),
            substitute=tuple(op for s in substitutes for op in s) if substitutes else None,
            post=tuple(op for e in chosen for op in e.phases.get(POST, ())),
        )

    def operations(self) -> list[CustomOperation]:
        """Every operation, in document order."""
        return [op for e in self.entries for ops in e.phases.values() for op in ops]

    def file_names(self) -> list[str]:
        """The distinct files the operations name, in document order."""
        return list(dict.fromkeys(op.file for op in self.operations() if op.file))

    def shown(self) -> dict[str, Any]:
        """The document as recorded in the deployment's options."""
        out: dict[str, Any] = {}
        for entry in self.entries:
            block = out.setdefault(entry.scope_name, {}).setdefault(entry.microstep, {})
            for phase, ops in entry.phases.items():
                block[phase] = [op.shown() for op in ops]
        return out


def parse_custom_steps(
    data: Any, source: str, line_of: LineOf | None = None, prefix: KeyPath = ()
) -> CustomSteps:
    """Check a custom-steps document; InputError with every mistake (``source``, line,
    dotted key path with ``prefix`` in front, what would be valid)."""
    parser = _Parser(source, line_of or (lambda _path: None), prefix)
    steps = parser.document(data)
    if parser.problems:
        raise InputError(parser.problems)
    return steps


class _Parser:
    def __init__(self, source: str, line_of: LineOf, prefix: KeyPath) -> None:
        self.source = source
        self.line_of = line_of
        self.prefix = prefix
        self.problems: list[Problem] = []
        self.count = 0

    def problem(self, path: KeyPath, message: str) -> None:
        self.problems.append(
            Problem(self.source, message, dotted((*self.prefix, *path)), self.line_of(path))
        )

    def document(self, data: Any) -> CustomSteps:
        if not isinstance(data, Mapping) or not data:
            self.problem((), "expected a mapping of macrostep: {microstep: {pre-ops: [...]}}")
            return CustomSteps(())
        entries: list[CustomEntry] = []
        for macro, micros in data.items():
            entries += self.macrostep(str(macro), micros)
        if self.count > MAX_OPERATIONS:
            self.problem((), f"{self.count} operations; at most {MAX_OPERATIONS} are allowed")
        return CustomSteps(tuple(entries))

    def macrostep(self, macro: str, micros: Any) -> list[CustomEntry]:
        try:
            scope = resolve_macrostep(macro)
        except UnknownStep as exc:
            self.problem((macro,), str(exc))
            return []
        if not isinstance(micros, Mapping) or not micros:
            self.problem((macro,), "expected a mapping of microstep: {pre-ops: [...], ...}")
            return []
        entries = []
        for micro, phases in micros.items():
            path: KeyPath = (macro, str(micro))
            try:
                check_microstep(scope, str(micro), macro)
            except UnknownStep as exc:
                self.problem(path, str(exc))
                continue
            parsed = self.phases(path, phases)
            if parsed is not None:
                entries.append(CustomEntry(macro, str(micro), parsed))
        return entries

    def phases(self, path: KeyPath, phases: Any) -> dict[str, tuple[CustomOperation, ...]] | None:
        if not isinstance(phases, Mapping) or not phases:
            self.problem(path, f"expected a mapping with {', '.join(PHASES)}")
            return None
        parsed: dict[str, tuple[CustomOperation, ...]] = {}
        for phase, ops in phases.items():
            where = (*path, str(phase))
            if phase not in PHASES:
                hint = did_you_mean(str(phase), PHASES)
                self.problem(where, f"unknown key{hint}; valid keys are {', '.join(PHASES)}")
                continue
            if not isinstance(ops, list):
                self.problem(where, "expected a list of operations ({action: ..., name: ...})")
                continue
            self.count += len(ops)
            checked = [self.operation((*where, i), op) for i, op in enumerate(ops)]
            parsed[phase] = tuple(op for op in checked if op is not None)
        return parsed

    def operation(self, path: KeyPath, data: Any) -> CustomOperation | None:
        try:
            spec = OperationSpec.model_validate(data)
        except ValidationError as exc:
            self.problems += problems_from(
                exc,
                OperationSpec,
                lambda loc: (self.source, self.line_of((*path, *loc))),
                prefix=(*self.prefix, *path),
            )
            return None
        required, optional = ACTION_FIELDS[spec.action]
        ok = True
        for key in required:
            if getattr(spec, key) is None:
                self.problem((*path, key), f"required for action {spec.action}: {_WHAT[key]}")
                ok = False
        for key in ("command", "file", "destination", "params"):
            if key not in required + optional and getattr(spec, key) is not None:
                takes = ", ".join(required + optional)
                self.problem((*path, key), f"not used by action {spec.action} (it takes {takes})")
                ok = False
        params: tuple[str, ...] = ()
        if spec.params:
            try:
                params = tuple(shlex.split(spec.params))
            except ValueError as exc:
                self.problem((*path, "params"), f"cannot split into arguments: {exc}")
                ok = False
        if not ok:
            return None
        return CustomOperation(
            action=spec.action,
            name=spec.name,
            command=spec.command or "",
            file=spec.file or "",
            destination=spec.destination or "",
            params=params,
            timeout=spec.timeout,
            where=path,
        )
