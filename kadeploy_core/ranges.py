"""Bracket ranges of node names and addresses, as written on clusters: ``node-[1-16]``.

A text holds at most one ``[...]`` group of comma-separated items, each ``N`` or ``A-B``
(``node-[01-10,12]``, ``127.0.2.[1-16]``); the text around the group is kept as is. A number
written with a leading zero sets the width of the range (``[01-10]`` gives ``01`` .. ``10``);
without one, numbers are written plainly. A text without brackets stands for itself.

:func:`fold_names` goes the other way, for output: names that differ only by their last
number fold into one range, as Kadeploy3 prints node lists.

The module is pure (no I/O): the node lists (``-m`` arguments) and the configuration
(``nodes.conf``, where names and addresses expand pairwise) both build on it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)

MAX_EXPANSION = 100_000
"""Largest number of names one range may stand for: a typo like ``[1-1000000]`` is refused
before it fills memory."""
MAX_DIGITS = 18
"""Longest number in a range: node numbers are small, and the arithmetic stays machine-sized."""


class RangeError(ValueError):
    """A range is malformed; ``text`` is the whole range, ``reason`` what is wrong with it."""

    def __init__(self, text: str, reason: str) -> None:
        self.text = text
        self.reason = reason
        super().__init__(f"{text!r}: {reason}")


@dataclass(frozen=True, slots=True)
class _Span:
    """One item of a group: ``start``..``end`` inclusive, zero-padded to ``width``."""

    start: int
    end: int
    width: int

    @property
    def size(self) -> int:
        """How many numbers the item stands for (a plain int: ``len()`` would overflow)."""
        return self.end - self.start + 1


@dataclass(frozen=True, slots=True)
class _Parsed:
    prefix: str
    spans: tuple[_Span, ...]
    suffix: str


def expand_range(text: str, limit: int = MAX_EXPANSION) -> list[str]:
    """Every name ``text`` stands for, in the order written (duplicates kept).

    Raises :class:`RangeError` for an unbalanced or nested bracket, more than one group, an
    empty group or item, a non-numeric item, a decreasing ``A-B``, or more than ``limit`` names.
    """
    parsed = _parse(text, limit)
    if parsed is None:
        return [text]
    return [
        f"{parsed.prefix}{number:0{span.width}d}{parsed.suffix}"
        for span in parsed.spans
        for number in range(span.start, span.end + 1)
    ]


def range_length(text: str, limit: int = MAX_EXPANSION) -> int:
    """How many names ``text`` stands for, without building them; same errors as expanding."""
    parsed = _parse(text, limit)
    if parsed is None:
        return 1
    return sum(span.size for span in parsed.spans)


def has_range(text: str) -> bool:
    """Whether ``text`` contains a bracket group (or a stray bracket)."""
    return "[" in text or "]" in text


def _parse(text: str, limit: int) -> _Parsed | None:
    opens = text.count("[")
    closes = text.count("]")
    if opens == 0 and closes == 0:
        return None
    if opens != closes:
        raise RangeError(text, "unbalanced brackets: every '[' needs one ']'")
    if opens > 1:
        raise RangeError(text, "at most one [...] group is supported")
    start = text.index("[")
    end = text.index("]")
    if end < start:
        raise RangeError(text, "']' comes before '['")
    body = text[start + 1 : end]
    if not body.strip():
        raise RangeError(text, "empty group []: expected numbers like [1-16] or [1,3,5-8]")
    spans = tuple(_parse_item(text, item) for item in body.split(","))
    total = sum(span.size for span in spans)
    if total > limit:
        raise RangeError(text, f"stands for {total} names, more than the limit of {limit}")
    return _Parsed(text[:start], spans, text[end + 1 :])


def _parse_item(text: str, item: str) -> _Span:
    if not item:
        raise RangeError(text, "empty item in the group (two commas in a row, or a trailing one)")
    low, dash, high = item.partition("-")
    if not dash:
        number = _number(text, item)
        return _Span(number, number, _width(item))
    if not low or not high:
        raise RangeError(text, f"item {item!r}: expected A-B with a number on each side")
    first = _number(text, low)
    last = _number(text, high)
    if first > last:
        raise RangeError(
            text, f"item {item!r} goes downwards: the start must not exceed the end ({high}-{low}?)"
        )
    return _Span(first, last, _width(low))


def _number(text: str, digits: str) -> int:
    # str.isdigit() accepts other scripts' digits and superscripts; only ASCII is meant here.
    if not (digits.isascii() and digits.isdigit()):
        raise RangeError(text, f"{digits!r} is not a number: expected items like 3 or 1-16")
    if len(digits) > MAX_DIGITS:
        shown = digits if len(digits) <= 24 else f"{digits[:20]}..."
        raise RangeError(text, f"{shown} is too large a number (at most {MAX_DIGITS} digits)")
    return int(digits)


def _width(digits: str) -> int:
    """Zero padding width: the written width when the number starts with 0, otherwise none."""
    return len(digits) if len(digits) > 1 and digits.startswith("0") else 0


_NUMBERED = re.compile(r"^(.*?)(\d+)(\D*)$")
"""A host part's text before its last number, the number, and what follows it."""


def fold_names(names: Sequence[str]) -> str:
    """Node names folded into ranges, the inverse of :func:`expand_range`, as Kadeploy3
    prints them: ``griffon-[1-3,7].nancy.grid5000.fr``.

    Names alike but for the last number of their host part (same width when zero-padded)
    share one range, in the order their first one came; other names stay as they are."""
    groups: dict[tuple[str, str, int], list[int]] = {}
    for name in names:
        host, dot, domain = name.partition(".")
        found = _NUMBERED.match(host)
        if found is None:
            groups.setdefault((name, "", -1), [])
            continue
        prefix, digits, rest = found.groups()
        suffix = rest + dot + domain
        width = _width(digits)
        groups.setdefault((prefix, suffix, width), []).append(int(digits))
    parts = []
    for (prefix, suffix, width), numbers in groups.items():
        if width < 0:
            parts.append(prefix)
            continue
        spans = _spans(sorted(set(numbers)), width)
        single = len(spans) == 1 and "-" not in spans[0]
        parts.append(f"{prefix}{spans[0] if single else '[' + ','.join(spans) + ']'}{suffix}")
    return ",".join(parts)


def _spans(numbers: list[int], width: int) -> list[str]:
    spans: list[str] = []
    start = previous = numbers[0]
    for number in [*numbers[1:], None]:
        if number is not None and number == previous + 1:
            previous = number
            continue
        first, last = f"{start:0{width}d}", f"{previous:0{width}d}"
        spans.append(first if start == previous else f"{first}-{last}")
        if number is not None:
            start = previous = number
    return spans
