"""Timeouts given as seconds or as an arithmetic expression of ``n``, the number of nodes.

Kadeploy3 lets admins scale a step's timeout with the size of the deployment
(``timeout: "120 + 10 * n"``). The expression is parsed once with :mod:`ast` and evaluated by
walking a small whitelist of node types: numbers, ``n``, ``+ - * / // %``, unary minus, and
``min``/``max`` calls. Nothing else is accepted, so no code from a config file ever runs.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass

_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_FUNCTIONS: dict[str, Callable[..., float]] = {"min": min, "max": max}
HINT = "seconds (a positive number) or an expression of n such as '120 + 10 * n'"


class TimeoutSyntaxError(ValueError):
    """The expression uses something other than numbers, n, + - * / // %, min and max."""


@dataclass(frozen=True, slots=True)
class Timeout:
    """A step timeout; ``seconds(n)`` gives its value for a deployment of ``n`` nodes."""

    text: str
    _tree: ast.expr

    @classmethod
    def parse(cls, value: object) -> Timeout:
        """Build from a YAML value (a number or an expression string); check it is positive."""
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise TimeoutSyntaxError(f"expected {HINT}; got {value!r}")
        text = str(value).strip()
        try:
            tree = ast.parse(text, mode="eval").body
        except SyntaxError:
            raise TimeoutSyntaxError(f"expected {HINT}; got {text!r}") from None
        _check(tree, text)
        timeout = cls(text, tree)
        for n in (1, 2, 1000):
            seconds = timeout.seconds(n)
            if not seconds > 0 or not math.isfinite(seconds):
                raise TimeoutSyntaxError(
                    f"must be positive for every n; {text!r} is {seconds} at n={n}"
                )
        return timeout

    def seconds(self, n: int) -> float:
        """Value in seconds for ``n`` nodes."""
        try:
            return float(_evaluate(self._tree, n))
        except (ZeroDivisionError, OverflowError):
            return math.nan

    def __str__(self) -> str:
        return self.text


def _check(node: ast.expr, text: str) -> None:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return
    if isinstance(node, ast.Name) and node.id == "n":
        return
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        _check(node.left, text)
        _check(node.right, text)
        return
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        _check(node.operand, text)
        return
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and node.args
        and not node.keywords
    ):
        for arg in node.args:
            _check(arg, text)
        return
    raise TimeoutSyntaxError(
        f"expected {HINT}; {ast.unparse(node)!r} in {text!r} is not allowed "
        "(only numbers, n, + - * / // %, min() and max())"
    )


def _evaluate(node: ast.expr, n: int) -> float:
    match node:
        case ast.Constant(value=int() | float() as value):
            return float(value)
        case ast.Name():
            return float(n)
        case ast.BinOp(left=left, op=op, right=right):
            return _BINARY[type(op)](_evaluate(left, n), _evaluate(right, n))
        case ast.UnaryOp(op=ast.USub(), operand=operand):
            return -_evaluate(operand, n)
        case ast.UnaryOp(operand=operand):
            return _evaluate(operand, n)
        case ast.Call(func=ast.Name(id=name), args=args):
            return _FUNCTIONS[name](*(_evaluate(a, n) for a in args))
    raise TimeoutSyntaxError(f"cannot evaluate {ast.unparse(node)!r}")  # _check forbids this
