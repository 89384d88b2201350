"""Turn pydantic validation errors into :class:`Problem` s a user can act on.

Pydantic says "Input should be a valid integer"; a user wants the file, the line, the key and
what to write instead: ``env.yaml:4: version: expected an integer >= 1; got 'one'``. Each
error gets:

- the file and line of the value, through a ``locate`` callback (merged configuration values
  come from several files; an environment description comes from one YAML document);
- its dotted key path;
- a message saying what would be valid. The "expected ..." phrase is the ``description`` of
  the model field when it has one (for a list item, the field's ``json_schema_extra["item"]``),
  else a generic wording per pydantic error type. Unknown keys and unknown choices get a
  "did you mean"; an unknown key that misspells a missing required key is reported once, not
  also as "missing". Error types raised by the models' own validators (``custom_types``,
  ``ValueError``) keep their message, which is already written for users.

Pydantic's own wording ("Input should be ...") never reaches users.
"""

from __future__ import annotations

import logging
import re
import types
import typing
from collections.abc import Callable, Collection, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from kadeploy_core.errors import Problem
from kadeploy_core.suggest import closest, did_you_mean
from kadeploy_core.yamldoc import KeyPath, dotted

logger = logging.getLogger(__name__)

Locator = Callable[[KeyPath], tuple[str, int | None]]
"""Maps a key path (relative to the validated model) to (file name, line) of its value."""

MISSING = "required key is missing"
"""The message of a missing key whose field has no description (callers may add a hint)."""

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
"""Generic "expected" phrases, by prefix of the pydantic error type (``int_parsing``...)."""

_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
_PYDANTIC_PREFIX = "Input should be "


def problems_from(
    error: ValidationError,
    model: type[BaseModel],
    locate: Locator,
    prefix: KeyPath = (),
    custom_types: Collection[str] = (),
) -> list[Problem]:
    """One Problem per pydantic error of ``error``, ordered by file then line.

    ``locate`` and the model walk see key paths relative to ``model``; ``prefix`` is only
    prepended to the dotted path shown to users.
    """
    details = error.errors(include_url=False)
    typos = _typo_targets(details, model)
    problems = []
    for detail in details:
        loc: KeyPath = tuple(detail["loc"])
        if detail["type"] == "missing" and loc in typos:
            continue  # "unknown key; did you mean 'compression'?" already says it
        source, line = locate(loc)
        message = describe(detail, model, loc, custom_types)
        problems.append(Problem(source, message, dotted((*prefix, *loc)), line))
    problems.sort(key=lambda p: (p.source, p.line is None, p.line or 0))
    return problems


def describe(
    detail: ErrorDetails, model: type[BaseModel], loc: KeyPath, custom_types: Collection[str] = ()
) -> str:
    """A message for one pydantic error: what was expected, what was given."""
    kind = detail["type"]
    given = detail.get("input")
    ctx: dict[str, Any] = dict(detail.get("ctx") or {})
    if kind in custom_types:
        return detail["msg"]
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", detail["msg"]))
    if kind == "extra_forbidden":
        return _unknown_key(model, loc)
    if kind == "invalid_key":
        return f"expected a text key; got {shown(given)}"
    choices = _choices(kind, ctx)
    expected = expected_at(model, loc)
    if kind == "missing":
        return f"{MISSING}: expected {expected}" if expected else MISSING
    if expected is None:
        return _generic(detail, kind, ctx, choices)
    return f"expected {expected}; got {shown(given)}" + did_you_mean(str(given), choices)


def _generic(detail: ErrorDetails, kind: str, ctx: dict[str, Any], choices: list[str]) -> str:
    """The message for a field without a description, from the error type and context."""
    given = detail.get("input")
    got = f"; got {shown(given)}"
    if choices:
        return f"expected one of {', '.join(choices)}{got}" + did_you_mean(str(given), choices)
    if kind.startswith(("greater", "less")):
        for bound, word in _BOUNDS:
            if bound in ctx:
                return f"expected a number {word} {ctx[bound]}{got}"
    if kind == "string_pattern_mismatch":
        return f"expected a string matching {ctx.get('pattern')}{got}"
    if kind in ("string_too_short", "string_too_long", "too_short", "too_long"):
        return f"expected {_length(kind, ctx)}{got}"
    for type_prefix, name in _TYPE_NAMES.items():
        if kind.startswith(type_prefix):
            return f"expected {name}{got}"
    msg = detail["msg"]
    return (
        f"expected {msg.removeprefix(_PYDANTIC_PREFIX)}{got}"
        if msg.startswith(_PYDANTIC_PREFIX)
        else msg
    )


def _choices(kind: str, ctx: dict[str, Any]) -> list[str]:
    """The valid values of a literal or enum error (pydantic lists them as ``'a', 'b' or 'c'``)."""
    if kind not in ("literal_error", "enum"):
        return []
    return re.findall(r"'([^']*)'", str(ctx.get("expected", "")))


def _length(kind: str, ctx: dict[str, Any]) -> str:
    unit = "character" if kind.startswith("string") else "item"
    if kind.endswith("short"):
        least = ctx.get("min_length", 1)
        return f"at least {least} {unit}{'' if least == 1 else 's'}"
    most = ctx.get("max_length", 0)
    return f"at most {most} {unit}{'' if most == 1 else 's'}"


def _unknown_key(model: type[BaseModel], loc: KeyPath) -> str:
    owner = model_at(model, loc[:-1])
    if owner is None:
        return "unknown key"
    valid = list(owner.model_fields)
    hint = did_you_mean(str(loc[-1]), valid)
    return f"unknown key{hint}" if hint else "unknown key; valid keys are " + ", ".join(valid)


def _typo_targets(details: list[ErrorDetails], model: type[BaseModel]) -> set[KeyPath]:
    """The missing keys that an unknown key next to them is a misspelling of."""
    targets: set[KeyPath] = set()
    for detail in details:
        if detail["type"] != "extra_forbidden":
            continue
        loc: KeyPath = tuple(detail["loc"])
        owner = model_at(model, loc[:-1])
        if owner is not None:
            near = closest(str(loc[-1]), owner.model_fields, count=1)
            targets.update((*loc[:-1], name) for name in near)
    return targets


def shown(value: Any) -> str:
    """A short rendering of a YAML value for a message (``'zip'``, ``a mapping``, ``true``)."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, str | int | float):
        return repr(value)
    return f"a {type(value).__name__}"


def expected_at(model: type[BaseModel], loc: KeyPath) -> str | None:
    """The "expected ..." phrase declared for the value at ``loc``; None if there is none."""
    if not loc:
        return "a mapping of keys " + ", ".join(model.model_fields)
    item = isinstance(loc[-1], int)
    field_loc = loc[:-1] if item else loc
    if not field_loc or not isinstance(field_loc[-1], str):
        return None
    owner = model_at(model, field_loc[:-1])
    field = owner.model_fields.get(field_loc[-1]) if owner is not None else None
    if field is None:
        return None
    return _item_phrase(field) if item else field.description


def _item_phrase(field: FieldInfo) -> str | None:
    extra = field.json_schema_extra
    if isinstance(extra, dict):
        phrase = extra.get("item")
        if isinstance(phrase, str):
            return phrase
    return None


def model_at(model: type[BaseModel], loc: KeyPath) -> type[BaseModel] | None:
    """The model class that validates the mapping at ``loc``, if any."""
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None:
            return None
        if isinstance(part, int):
            continue  # an item of a list field: the item model was already selected
        field = current.model_fields.get(part)
        current = _model_in(field.annotation) if field is not None else None
    return current


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model class inside ``annotation`` (``M``, ``M | None``, ``tuple[M, ...]``...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is not None:
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None
