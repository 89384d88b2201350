"""Boot targets and their pxelinux profiles: pure rendering, no I/O.

A node's PXE firmware fetches ``pxelinux.cfg/01-<mac>`` from the daemon's TFTP server and boots
what it names. The daemon points it at one of four targets:

- ``DeployKernel``: the deploy env's kernel and initrd (served over TFTP), to write the disk;
- ``NetworkKernel``: a deployed environment's kernel and initrd, extracted from its image and
  published over TFTP (``BootNewEnv`` classical);
- ``ChainPartition``: ``chain.c32`` to a partition of the local disk (the prod env, or a
  deployed env with its own boot loader);
- ``LocalBoot``: the disk's own boot loader (``LOCALBOOT 0``).

Every path is relative to the TFTP root: the server refuses absolute paths and ``..``. Values
that would change the meaning of the profile (a newline in kernel parameters, a space in a file
name) are refused when the target is built, so a profile always says exactly one thing.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from kadeployd.pxe.errors import PxeError

logger = logging.getLogger(__name__)

PROFILE_DIR = "pxelinux.cfg"
"""Directory of the per-node profiles under the TFTP root, as pxelinux looks them up."""

_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}([:-])[0-9a-fA-F]{2}(\1[0-9a-fA-F]{2}){4}$")
_LABEL_RE = re.compile(r"^[A-Za-z0-9._-]+$")
# Printable ASCII without space: what a TFTP file name in a pxelinux profile may contain.
_PATH_CHAR_RE = re.compile(r"^[\x21-\x7e]+$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def validate_tftp_path(path: str, what: str = "TFTP path") -> str:
    """Return ``path`` if it is a clean path relative to the TFTP root, else raise PxeError.

    Clean: not empty, printable ASCII without spaces, not absolute, no backslash, no empty,
    ``.`` or ``..`` component. Both the profile renderer and the TFTP server use this rule.
    """
    if not isinstance(path, str) or not path:
        raise PxeError(f"{what}: expected a non-empty path relative to the TFTP root, got {path!r}")
    if not _PATH_CHAR_RE.match(path):
        raise PxeError(
            f"{what}: {path!r} contains spaces, control or non-ASCII characters; "
            "use a plain relative path like envs/debian/vmlinuz"
        )
    if path.startswith("/"):
        raise PxeError(f"{what}: {path!r} is absolute; paths are relative to the TFTP root")
    if "\\" in path:
        raise PxeError(f"{what}: {path!r} contains a backslash; use '/' between components")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise PxeError(
                f"{what}: {path!r} has an empty, '.' or '..' component; "
                "paths must stay inside the TFTP root"
            )
    return path


def normalise_mac(mac: str) -> str:
    """``AA-BB-cc-dd-ee-ff`` -> ``aa:bb:cc:dd:ee:ff``; raises PxeError for a malformed MAC."""
    if not isinstance(mac, str) or not _MAC_RE.match(mac.strip()):
        raise PxeError(
            f"invalid MAC address {mac!r}: expected six hex pairs like aa:bb:cc:dd:ee:ff"
        )
    return mac.strip().lower().replace("-", ":")


def profile_name(mac: str) -> str:
    """The file name pxelinux asks for first: ``01-aa-bb-cc-dd-ee-ff`` (01 = Ethernet)."""
    return "01-" + normalise_mac(mac).replace(":", "-")


def profile_path(mac: str) -> str:
    """TFTP path of a node's profile: ``pxelinux.cfg/01-aa-bb-cc-dd-ee-ff``."""
    return f"{PROFILE_DIR}/{profile_name(mac)}"


def mac_of_profile_name(name: str) -> str | None:
    """Inverse of ``profile_name``: the MAC (``aa:bb:...``) or None for another file name."""
    if not name.startswith("01-"):
        return None
    try:
        mac = normalise_mac(name[3:])
    except PxeError:
        return None
    return mac if profile_name(mac) == name else None


def _check_params(params: str, what: str) -> None:
    if not isinstance(params, str):
        raise PxeError(f"{what}: expected a string of kernel parameters, got {params!r}")
    if _CONTROL_RE.search(params):
        raise PxeError(
            f"{what}: {params!r} contains a newline or control character; "
            "kernel parameters must fit on the APPEND line"
        )
    if params.strip() == "-":
        raise PxeError(f"{what}: '-' means 'no parameters' to pxelinux; use an empty string")


@dataclass(frozen=True, slots=True)
class _KernelTarget:
    """A kernel (and optional initrd) fetched over TFTP, with its command line."""

    kernel: str
    """TFTP path of the kernel, relative to the TFTP root."""
    initrd: str | None = None
    """TFTP path of the initrd, or None."""
    params: str = ""
    """Kernel command line (APPEND)."""

    def __post_init__(self) -> None:
        name = type(self).__name__
        validate_tftp_path(self.kernel, f"{name}.kernel")
        if self.initrd is not None:
            validate_tftp_path(self.initrd, f"{name}.initrd")
        _check_params(self.params, f"{name}.params")


@dataclass(frozen=True, slots=True)
class DeployKernel(_KernelTarget):
    """The deploy env's kernel: the node boots into the minimal system that writes its disk."""


@dataclass(frozen=True, slots=True)
class NetworkKernel(_KernelTarget):
    """A deployed environment's kernel, published over TFTP by the daemon."""


@dataclass(frozen=True, slots=True)
class ChainPartition:
    """``chain.c32`` to partition ``partition`` (from 1) of disk ``disk`` (from 0)."""

    disk: int
    partition: int

    def __post_init__(self) -> None:
        for field, value, low in (("disk", self.disk, 0), ("partition", self.partition, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise PxeError(
                    f"ChainPartition.{field}: expected an integer >= {low}, got {value!r}"
                )


@dataclass(frozen=True, slots=True)
class LocalBoot:
    """Boot from the local disk's own boot loader."""


BootTarget = DeployKernel | NetworkKernel | ChainPartition | LocalBoot
"""Everything a node can be told to boot."""

_DESCRIPTIONS = {
    DeployKernel: "deploy kernel",
    NetworkKernel: "deployed environment's kernel over TFTP",
    ChainPartition: "chain-load a local partition",
    LocalBoot: "local boot",
}


def render_profile(target: BootTarget, label: str = "kadeploy") -> str:
    """The pxelinux profile that boots ``target``: one LABEL, selected by DEFAULT."""
    if not isinstance(label, str) or not _LABEL_RE.match(label):
        raise PxeError(f"profile label: expected letters, digits, '.', '_' or '-', got {label!r}")
    match target:
        case DeployKernel() | NetworkKernel():
            body = [f"KERNEL {target.kernel}"]
            if target.initrd is not None:
                body.append(f"INITRD {target.initrd}")
            if target.params.strip():
                body.append(f"APPEND {target.params.strip()}")
        case ChainPartition(disk=disk, partition=partition):
            body = ["COM32 chain.c32", f"APPEND hd{disk} {partition}"]
        case LocalBoot():
            body = ["LOCALBOOT 0"]
        case _:
            raise PxeError(
                f"unknown boot target {target!r}: expected DeployKernel, NetworkKernel, "
                "ChainPartition or LocalBoot"
            )
    lines = [
        f"# kadeployd: {_DESCRIPTIONS[type(target)]}",
        f"DEFAULT {label}",
        "",
        f"LABEL {label}",
        *(f"  {line}" for line in body),
    ]
    return "\n".join(lines) + "\n"
