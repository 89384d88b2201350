"""The names a user may give the files they send (uploads, ``kareboot -x`` boot files)."""

from __future__ import annotations

import re

FILE_NAME = re.compile(r"^[A-Za-z0-9_+][A-Za-z0-9._+-]{0,127}$")
"""A plain file name: no directory, not hidden, not an option, at most 128 characters."""


def check_file_name(name: str) -> str | None:
    """None if ``name`` is a plain file name, else what is wrong with it."""
    if FILE_NAME.match(name):
        return None
    return (
        f"expected a plain file name (letters, digits, '.', '_', '+', '-', no '/', not starting "
        f"with '.' or '-', at most 128 characters); got {name[:140]!r}"
    )
