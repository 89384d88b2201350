"""Command templates: argument lists whose items may hold ``{placeholder}`` fields.

Power and reboot commands are configured as argument lists (``[ipmitool, -H, "{bmc}", ...]``),
never as shell strings, so a node name or address can never change the shape of the command.
Only plain ``{name}`` fields are allowed: ``{node.__class__}`` or ``{x[0]}`` would let a config
reach Python object attributes through :meth:`str.format`.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

NODE_FIELDS = ("node", "address", "mac", "bmc", "cluster", "ssh_user", "ssh_port", "ssh_key")
"""Placeholders every template may use; the keys of ``vars`` come on top."""


class TemplateError(ValueError):
    """A template item is malformed or names an unknown field."""


def placeholders(item: str) -> list[str]:
    """Field names used in one template item; raises TemplateError for anything but ``{name}``."""
    names = []
    try:
        parsed = list(string.Formatter().parse(item))
    except ValueError as exc:
        raise TemplateError(f"{item!r}: {exc} (write a literal brace as {{{{ or }}}})") from None
    for _literal, field, spec, conversion in parsed:
        if field is None:
            continue
        if not field.isidentifier() or spec or conversion:
            raise TemplateError(
                f"{item!r}: only plain {{name}} fields are allowed, not {{{field}}}"
            )
        names.append(field)
    return names


@dataclass(frozen=True, slots=True)
class CommandTemplate:
    """An argument list; ``render`` fills its fields and returns the argv to execute."""

    argv: tuple[str, ...]

    def fields(self) -> set[str]:
        """Every field name the template uses."""
        return {name for item in self.argv for name in placeholders(item)}

    def unknown_fields(self, known: Iterable[str]) -> list[str]:
        """Fields the template uses that are not in ``known``, sorted."""
        return sorted(self.fields() - set(known))

    def render(self, values: Mapping[str, object]) -> list[str]:
        """The argument list with every field replaced by ``str(values[field])``."""
        return [item.format_map({k: str(v) for k, v in values.items()}) for item in self.argv]

    def __str__(self) -> str:
        return " ".join(self.argv)
