"""Pydantic validation errors rewritten as :class:`Problem` lines a user understands.

Pydantic says "Input should be a valid integer"; a user wants the file, the line, the key and
what to write instead: ``env.yaml:4: version: expected an integer >= 1; got 'one'``. The
"expected" phrase of a key is the ``description`` of its model field (for a list item, the
field's ``json_schema_extra["item"]``); unknown keys get a "did you mean".
"""

from __future__ import annotations

import logging
import types
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from kadeployd.errors import Problem
from kadeployd.suggest import closest, did_you_mean
from kadeployd.yamldoc import KeyPath, YamlDocument, dotted

logger = logging.getLogger(__name__)

_PYDANTIC_PREFIX = "Input should be "


def validation_problems(
    error: ValidationError, model: type[BaseModel], doc: YamlDocument, custom_types: set[str]
) -> list[Problem]:
    """One :class:`Problem` per error of ``error``, in document order.

    ``custom_types`` are the error types raised by the models' own validators, whose message
    is already written for users.
    """
    details = error.errors(include_url=False)
    typos = _typo_targets(details, model)
    problems = []
    for detail in details:
        loc: KeyPath = tuple(detail["loc"])
        if detail["type"] == "missing" and loc in typos:
            continue  # "unknown key 'compresion'; did you mean 'compression'?" says it all
        message = _message(detail, model, loc, custom_types)
        problems.append(Problem(doc.source, message, dotted(loc), doc.line_of(loc)))
    problems.sort(key=lambda p: (p.line is None, p.line or 0))
    return problems


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


def _message(detail: ErrorDetails, model: type[BaseModel], loc: KeyPath, custom: set[str]) -> str:
    kind = detail["type"]
    value = detail.get("input")
    if kind in custom:
        return detail["msg"]
    if kind == "extra_forbidden":
        return _unknown_key(model, loc)
    if kind == "invalid_key":
        return f"expected a text key; got {shown(value)}"
    expected = expected_at(model, loc) or _fallback(detail)
    if kind == "missing":
        return f"required key missing: expected {expected}"
    return f"expected {expected}; got {shown(value)}"


def _unknown_key(model: type[BaseModel], loc: KeyPath) -> str:
    key = str(loc[-1])
    owner = model_at(model, loc[:-1])
    if owner is None:
        return "unknown key"
    valid = list(owner.model_fields)
    hint = did_you_mean(key, valid)
    return f"unknown key{hint}" if hint else "unknown key; valid keys are " + ", ".join(valid)


def _fallback(detail: ErrorDetails) -> str:
    """Pydantic's own wording, reworded, for a field declared without a description."""
    msg = detail["msg"]
    return msg.removeprefix(_PYDANTIC_PREFIX) if msg.startswith(_PYDANTIC_PREFIX) else msg


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


def expected_at(model: type[BaseModel], loc: KeyPath) -> str | None:
    """The "expected ..." phrase for the value at ``loc``."""
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


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model class inside ``annotation`` (``M``, ``M | None``, ``tuple[M, ...]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, tuple, list, typing.Annotated):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None
