"""Load an environment description from a file or an uploaded text, reporting every mistake.

Every problem (broken YAML, a top level that is not a mapping, wrong types, unknown keys,
missing keys, missing files) is collected in one pass and raised as one
:class:`~kadeploy_core.errors.EnvironmentError_`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from kadeploy_core.environment.description import (
    BASE_DIR,
    CONFINE,
    CUSTOM_ERROR,
    MAY_READ,
    EnvironmentDescription,
)
from kadeploy_core.errors import EnvironmentError_, Problem
from kadeploy_core.validation import expected_at, problems_from, shown
from kadeploy_core.yamldoc import (
    YamlDocument,
    YamlLimits,
    YamlLoadError,
    load_yaml_file,
    parse_yaml,
)

logger = logging.getLogger(__name__)

DESCRIPTION_LIMITS = YamlLimits(max_aliases=16, max_expanded_nodes=10_000)
"""A description is a few dozen values; an anchor shared by a few postinstalls is fine, an
alias bomb ("billion laughs") is refused before anything walks the expanded data."""


def load_environment(path: Path) -> EnvironmentDescription:
    """Read and validate the description in ``path``; relative files are beside it."""
    try:
        doc = load_yaml_file(path, limits=DESCRIPTION_LIMITS)
    except YamlLoadError as exc:
        raise EnvironmentError_(exc.problems) from None
    return _validate(doc, path.parent)


def parse_environment(
    text: str,
    source: str,
    base_dir: Path,
    *,
    confine: bool = False,
    may_read: Callable[[Path], bool] | None = None,
) -> EnvironmentDescription:
    """Validate a description given as text (an API upload); ``source`` names it in errors.

    Relative file names are resolved against ``base_dir``. ``confine``: names outside
    ``base_dir`` are refused without looking at them. ``may_read``: whether the requester may
    read a file; one it may not read is reported as missing (the daemon reads as root).
    """
    try:
        doc = parse_yaml(text, source, DESCRIPTION_LIMITS)
    except YamlLoadError as exc:
        raise EnvironmentError_(exc.problems) from None
    return _validate(doc, base_dir, {CONFINE: confine, MAY_READ: may_read})


def _validate(
    doc: YamlDocument, base_dir: Path, checks: dict[str, object] | None = None
) -> EnvironmentDescription:
    if not isinstance(doc.data, dict):
        expected = expected_at(EnvironmentDescription, ())
        got = "an empty document" if doc.data is None else shown(doc.data)
        raise EnvironmentError_(
            [Problem(doc.source, f"expected {expected} at the top level; got {got}", line=1)]
        )
    try:
        env = EnvironmentDescription.model_validate(
            doc.data, context={**(checks or {}), BASE_DIR: base_dir.absolute()}
        )
    except ValidationError as exc:
        problems = problems_from(
            exc,
            EnvironmentDescription,
            lambda loc: (doc.source, doc.line_of(loc)),
            custom_types={CUSTOM_ERROR},
        )
        raise EnvironmentError_(problems) from None
    env._attach(doc.source, doc.lines)
    logger.debug("environment %s version %d loaded from %s", env.name, env.version, doc.source)
    return env
