"""Errors of the reboot service, part of the kadeployd tree::

KadeployError
└── RebootError                 a power or reboot request cannot be carried out
    ├── NoPowerCommand          the node's config defines no template for it
    └── DuplicateRequest        a request id that is already queued or running
"""

from __future__ import annotations

from kadeploy_core.errors import KadeployError


class RebootError(KadeployError):
    """A power or reboot request cannot be carried out."""


class NoPowerCommand(RebootError):
    """The node's configuration defines no command template for what was asked."""


class DuplicateRequest(RebootError):
    """A request id was reused while the first request with it is queued or running."""
