""" "Did you mean" hints for unknown names (config keys, node names, variants)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(word: str, candidates: Iterable[str], count: int = 3) -> list[str]:
    """The candidates nearest to ``word``, best first; empty when none is close."""
    return difflib.get_close_matches(word, list(candidates), n=count, cutoff=0.6)


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` or an empty string, to append to an error message."""
    near = closest(word, candidates)
    if not near:
        return ""
    return "; did you mean " + " or ".join(repr(n) for n in near) + "?"
