"""Entry points of tools whose issue has not landed yet: they exist, say so, and exit 1."""

from __future__ import annotations

import click


def not_implemented(tool: str, summary: str) -> click.Command:
    """A click command named ``tool`` that reports it is not implemented yet."""

    @click.command(
        name=tool,
        help=f"{summary}\n\nNot implemented yet: arrives with the command-line tools issue.",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )
    def command() -> None:
        raise click.ClickException(f"{tool} is not implemented yet")

    return command
