"""What kanodes3, kastat3, kaenv3 and karights3 add to :mod:`kadeploy_cli.k3.common`: the
Kadeploy3 error numbers of the catalogue and rights answers, the error of a resource that is
not found, and the workflow ids they print and take.

Kadeploy3's client exits 1 on a 404 (``Resource not found PATH``); a 400 carrying a Kadeploy
error number exits with that number after ``[Kadeploy Error #N]``: 10 for an environment that
is already recorded, 14 when nothing was modified (a checksum update on an unchanged file).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import click
import yaml

from kadeploy_cli.client import Client
from kadeploy_cli.errors import ApiFailure
from kadeploy_cli.k3.common import EXIT_ERROR, K3Error, Session

logger = logging.getLogger(__name__)

INVALID_WORKFLOW_ID = 1
INVALID_RIGHTS = 6
EXISTING_ELEMENT = 10
CONFLICTING_ELEMENTS = 11
NOTHING_MODIFIED = 14

EXTRA_ERRNO = {
    "environment_exists": EXISTING_ELEMENT,
    "conflicting_elements": CONFLICTING_ELEMENTS,
    "admin_only": INVALID_RIGHTS,
    "nothing_modified": NOTHING_MODIFIED,
}
"""API error codes of the catalogue -> Kadeploy3's error numbers (the others: common.ERRNO)."""


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Stop with Kadeploy3's error line and status."""
    raise K3Error(message, code)


@contextmanager
def kadeploy_errors() -> Iterator[None]:
    """API errors of the catalogue with Kadeploy3's numbers; the rest go to K3Command."""
    try:
        yield
    except ApiFailure as exc:
        errno = EXTRA_ERRNO.get(exc.code)
        if errno is None:
            raise
        lines = [exc.format_message(), *(f"  {d}" for d in exc.details)]
        raise K3Error("\n".join([*lines, f"[Kadeploy Error #{errno}]"]), errno) from None


def open_client(options: dict[str, Any]) -> Client:
    """The generic options answered (``-v``, ``-I`` print and exit); the chosen server's
    client."""
    session = Session.open(options)
    session.answer_generic(options)
    return session.client()


def deployment_id_of(wid: str) -> str:
    """A workflow id as given to ``-w``: a ``D-``/``R-``/``P-`` prefix (Kadeploy3's wids) is
    dropped, the rest is the deployment id."""
    for prefix in ("D-", "R-", "P-"):
        if wid.startswith(prefix):
            return wid[len(prefix) :]
    return wid


class _RubyDumper(yaml.SafeDumper):
    """Ruby's ``to_yaml`` look: ``---`` first, lists not indented under their key, nil as an
    empty value."""


def _nil(dumper: yaml.SafeDumper, _value: None) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:null", "")


_RubyDumper.add_representer(type(None), _nil)


def ruby_yaml(document: Any) -> str:
    """``document`` as Kadeploy3 (Ruby's Psych) writes it; keys in the order given (a Ruby
    symbol key is written as the string ``:name``)."""
    text: str = yaml.dump(
        document,
        Dumper=_RubyDumper,
        explicit_start=True,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
    )
    return text


def echo_lines(lines: list[str]) -> None:
    """Lines that already end with their newline, as one write."""
    click.echo("".join(lines), nl=False)
