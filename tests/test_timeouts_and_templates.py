"""Pure logic: timeout expressions of n and command templates."""

from __future__ import annotations

import pytest

from kadeployd.config.templates import CommandTemplate, TemplateError, placeholders
from kadeployd.config.timeouts import Timeout, TimeoutSyntaxError


@pytest.mark.parametrize(
    ("text", "n", "seconds"),
    [
        (300, 7, 300.0),
        (2.5, 1, 2.5),
        ("120 + 10 * n", 30, 420.0),
        ("max(60, n // 2)", 300, 150.0),
        ("min(600, 30 + 2 * n) % 1000", 1000, 600.0),
        ("-(-n)", 4, 4.0),
    ],
)
def test_timeout_expressions_are_evaluated(text: object, n: int, seconds: float) -> None:
    assert Timeout.parse(text).seconds(n) == seconds


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('true')",
        "n.__class__",
        "[n]",
        "n if n else 1",
        "abs(n)",
        "max(n, key=1)",
        "max()",
        "10 ** n",
        "'10'",
        "",
        True,
        None,
    ],
)
def test_anything_but_arithmetic_of_n_is_refused(text: object) -> None:
    with pytest.raises(TimeoutSyntaxError):
        Timeout.parse(text)


def test_timeout_that_is_not_positive_for_some_n_is_refused() -> None:
    with pytest.raises(TimeoutSyntaxError, match="positive for every n"):
        Timeout.parse("100 - n")


def test_template_fields_and_rendering() -> None:
    template = CommandTemplate(("ipmitool", "-H", "{bmc}", "-U", "{user}", "literal {{braces}}"))
    assert template.fields() == {"bmc", "user"}
    assert template.unknown_fields({"bmc"}) == ["user"]
    argv = template.render({"bmc": "10.0.0.1; reboot", "user": "admin"})
    # A value with shell syntax stays one argument: templates are never run through a shell.
    assert argv == ["ipmitool", "-H", "10.0.0.1; reboot", "-U", "admin", "literal {braces}"]


@pytest.mark.parametrize(
    "item", ["{node.__class__}", "{node[0]}", "{node!r}", "{node:>10}", "{", "}{"]
)
def test_template_fields_other_than_plain_names_are_refused(item: str) -> None:
    with pytest.raises(TemplateError):
        placeholders(item)
