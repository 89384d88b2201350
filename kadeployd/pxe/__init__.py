"""PXE boot of the nodes: pxelinux profiles, the TFTP server, and the PxeActor owning both."""

from kadeployd.pxe.actor import PxeActor
from kadeployd.pxe.errors import PxeError
from kadeployd.pxe.files import PxeFiles, atomic_write
from kadeployd.pxe.profiles import (
    BootTarget,
    ChainPartition,
    DeployKernel,
    LocalBoot,
    NetworkKernel,
    normalise_mac,
    profile_path,
    render_profile,
)
from kadeployd.pxe.tftp import ServedFile, TftpService

__all__ = [
    "BootTarget",
    "ChainPartition",
    "DeployKernel",
    "LocalBoot",
    "NetworkKernel",
    "PxeActor",
    "PxeError",
    "PxeFiles",
    "ServedFile",
    "TftpService",
    "atomic_write",
    "normalise_mac",
    "profile_path",
    "render_profile",
]
