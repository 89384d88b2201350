"""What the command-line tools report to users, and with which exit status.

::

    click.ClickException
    └── CliError                  one line (plus indented details) on stderr, no traceback
        ├── UsageProblem          exit 2: bad arguments or input files
        │   └── NotSupported      exit 2: the server cannot do that (yet)
        ├── ApiFailure            exit 2: an error answer of the API (4xx)
        │   └── ServerFailure     exit 3: a 5xx answer
        └── ServerUnreachable     exit 3: nothing answers at the server address

Exit statuses (every tool; ``kadeploy`` adds 1 and 4 for deployment outcomes):
0 success, 1 some nodes failed, 2 usage or input error, 3 server unreachable or failing,
4 no node deployed.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import click

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_NONE_DEPLOYED = 4

EXIT_CODES_HELP = """\b
Exit status:
  0  every node done (or --min-nodes reached)
  1  some nodes failed
  2  usage or input error (bad option, nodefile, environment, rights, token)
  3  server unreachable (or failing)
  4  no node deployed"""

TOOLS_EXIT_HELP = """\b
Exit status:
  0  success
  1  some nodes failed (kapower, kareboot)
  2  usage or input error (bad option, unknown node or environment, no right, bad token)
  3  server unreachable (or failing)"""


class CliError(click.ClickException):
    """An error shown as ``tool: message`` (and one indented line per detail)."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, details: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.details = [d for d in details if d and d != message]

    def show(self, file: IO[Any] | None = None) -> None:
        """Print the message without click's "Error:" prefix."""
        tool = Path(sys.argv[0]).name or "kadeploy"
        click.echo(f"{tool}: {self.format_message()}", err=True, file=file)
        for detail in self.details:
            click.echo(f"  {detail}", err=True, file=file)


class UsageProblem(CliError):
    """Bad arguments or input files (exit 2)."""


class NotSupported(UsageProblem):
    """The server cannot do what was asked, or not yet (exit 2)."""


class ServerUnreachable(CliError):
    """Nothing answers at the server address (exit 3)."""

    exit_code = EXIT_UNREACHABLE


class ApiFailure(CliError):
    """An error answer of the API: ``{"error": {"code", "message", "details"}}``; made by
    :func:`api_failure`."""

    def __init__(
        self, status: int, code: str, message: str, details: list[dict[str, Any]] | None = None
    ) -> None:
        self.status = status
        self.code = code
        self.raw_details = details or []
        shown = [_detail(d) for d in self.raw_details]
        super().__init__(message, shown)


class ServerFailure(ApiFailure):
    """A 5xx answer: the server is there but cannot serve (exit 3)."""

    exit_code = EXIT_UNREACHABLE


def api_failure(
    status: int, code: str, message: str, details: list[dict[str, Any]] | None = None
) -> ApiFailure:
    """The error for an API error answer: exit 2 for 4xx (the request is wrong) and 501 (not
    supported), 3 for other 5xx."""
    kind = ServerFailure if status >= 500 and status != 501 else ApiFailure
    return kind(status, code, message, details)


def _detail(detail: dict[str, Any]) -> str:
    """A problem of an error answer: its message, located when it is about a file."""
    message = str(detail.get("message", ""))
    source = str(detail.get("source") or "")
    if not source or source == "request":
        return message
    line = detail.get("line")
    where = f"{source}:{line}" if line is not None else source
    path = str(detail.get("path") or "")
    return f"{where}: {path}: {message}" if path else f"{where}: {message}"
