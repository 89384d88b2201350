"""Turn pydantic validation errors into :class:`Problem` s a user can act on.

Each error gets the file and line it comes from (through a ``locate`` callback, since merged
configuration values come from several files), its dotted key path, and a message saying what
would be valid, with a "did you mean" for unknown keys and unknown choices. Pydantic's own
wording ("Input should be ...") never reaches users.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from kadeployd.errors import Problem
from kadeployd.suggest import did_you_mean
from kadeployd.yamldoc import KeyPath, dotted

Locator = Callable[[KeyPath], tuple[str, int | None]]
"""Maps a key path to (file name, line) of the value found there."""

_TYPE_NAMES = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "string": "a string",
    "list": "a list",
    "tuple": "a list",
    "dict": "a mapping (key: value)",
    "model": "a mapping (key: value)",
    "path": "a path",
}


def problems_from(
    error: ValidationError, model: type[BaseModel], locate: Locator, prefix: KeyPath = ()
) -> list[Problem]:
    """One Problem per pydantic error; ``prefix`` is prepended to every key path."""
    problems = []
    for detail in error.errors(include_url=False):
        loc = tuple(detail["loc"])
        source, line = locate(loc)
        path = dotted((*prefix, *loc))
        problems.append(Problem(source, describe(detail, model, loc), path, line))
    return problems


def describe(detail: ErrorDetails, model: type[BaseModel], loc: KeyPath) -> str:
    """A message for one pydantic error: what was expected, what was given."""
    kind = detail["type"]
    given = detail.get("input")
    ctx: dict[str, Any] = dict(detail.get("ctx") or {})
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        known = sorted(fields_at(model, loc[:-1]))
        hint = did_you_mean(str(loc[-1]), known)
        return f"unknown key{hint}" if hint else f"unknown key; valid keys: {', '.join(known)}"
    if kind in ("literal_error", "enum"):
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        return f"expected one of {', '.join(choices)}; got {given!r}" + did_you_mean(
            str(given), choices
        )
    for bound, word in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if bound in ctx and kind.startswith(("greater", "less")):
            return f"expected a number {word} {ctx[bound]}; got {given!r}"
    if kind in ("too_short", "too_long"):
        return f"expected {detail['msg'].lower()}"
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", detail["msg"]))
    for prefix, name in _TYPE_NAMES.items():
        if kind.startswith(prefix):
            return f"expected {name}; got {_describe_value(given)}"
    return str(detail["msg"])


def _describe_value(value: object) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    return f"{type(value).__name__} {value!r}"


def fields_at(model: type[BaseModel], loc: KeyPath) -> set[str]:
    """Field names of the model reached by following ``loc`` from ``model`` (empty if unknown)."""
    current: Any = model
    for step in loc:
        if isinstance(step, int):
            continue  # list items: _model_in already looked inside tuple[X, ...]
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(step)
            current = _model_in(field.annotation) if field else None
        else:
            current = None
        if current is None:
            return set()
    if isinstance(current, type) and issubclass(current, BaseModel):
        return set(current.model_fields)
    return set()


def _model_in(annotation: Any) -> Any:
    """The BaseModel class inside an annotation (``X | None``, ``tuple[X, ...]``...)."""
    for candidate in _walk(annotation):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _walk(annotation: Any) -> Iterator[Any]:
    yield annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is not None:
        for arg in typing.get_args(annotation):
            yield from _walk(arg)
