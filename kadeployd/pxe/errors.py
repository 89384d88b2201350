"""The PXE piece's own error: bad boot targets, bad paths and keys, TFTP server failures."""

from __future__ import annotations

import logging

from kadeploy_core.errors import KadeployError

logger = logging.getLogger(__name__)


class PxeError(KadeployError):
    """A PXE profile, a TFTP path or the TFTP server failed; the message says what and where."""
