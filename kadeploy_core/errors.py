"""The exception tree of kadeployd.

::

    KadeployError                 anything the daemon reports to a user or an admin
    ├── InputError                user or admin input is wrong; carries every Problem found
    │   ├── ConfigError           conf/deploy.conf, conf/clusters/*.conf, conf/nodes.conf
    │   ├── EnvironmentError_     an environment description (kaenv YAML) or its image
    │   └── NodeListError         a nodefile or a -m argument
    └── ImageError                an image cannot be read (missing, truncated, corrupt)

Third-party exceptions (yaml, OSError, tarfile, zstandard) are translated into these at the
boundary, so callers catch one family and users never see a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    """One mistake in one input: where it is and what would be valid."""

    source: str
    """File name (or ``-m`` for command-line arguments)."""
    message: str
    path: str = ""
    """Dotted key path inside the document, empty when the problem is about the whole file."""
    line: int | None = None

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class KadeployError(Exception):
    """Base of every error kadeployd reports."""


class InputError(KadeployError):
    """Input is invalid; ``problems`` lists every mistake found in one pass."""

    def __init__(self, problems: list[Problem] | tuple[Problem, ...]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class ConfigError(InputError):
    """The daemon configuration is invalid."""


class EnvironmentError_(InputError):
    """An environment description is invalid or does not match its image."""


class NodeListError(InputError):
    """A node list names unknown nodes or cannot be read."""


class ImageError(KadeployError):
    """An environment image cannot be read."""
