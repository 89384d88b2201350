"""What an emulated node's PXE firmware understands of pxelinux: file search order and syntax.

Pure logic, no I/O. The search order and the keywords follow the syslinux documentation
(``doc/pxelinux.txt`` and ``doc/syslinux.txt``):

- profiles are looked up as ``pxelinux.cfg/01-<mac, lower case, dashes>``, then the IPv4
  address in upper-case hex, shortened one digit at a time, then ``pxelinux.cfg/default``
  (the UUID step of real pxelinux is skipped: emulated nodes have no SMBIOS UUID);
- keywords are case-insensitive; ``#`` starts a comment line; ``LINUX`` is ``KERNEL``;
  ``DEFAULT`` names a label, or, in a file without labels, a kernel and its options;
- without ``DEFAULT`` the first ``LABEL`` boots, and without labels a global ``KERNEL`` does;
- a global ``APPEND`` applies to labels without their own; ``APPEND -`` means "no options";
- ``COM32 chain.c32`` (or ``KERNEL chain.c32``) with ``APPEND hdX Y`` chain-loads partition
  Y of disk X (the testbed's way of booting the deployed system from its disk).

Menus, prompts, timeouts, serial settings and other display keywords are accepted and ignored.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass, field
from typing import Literal

logger = logging.getLogger(__name__)

PROFILE_DIR = "pxelinux.cfg"

BootKind = Literal["kernel", "localboot", "chain"]

_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}$")
_CHAIN_ARGS_RE = re.compile(r"^hd(\d+)(?:\s*[,\s]\s*(\d+))?(?:\s+.*)?$", re.IGNORECASE)
_CHAIN_MODULE = "chain.c32"

# Keywords a node's firmware accepts but which change nothing about what it boots.
_IGNORED_KEYWORDS = frozenset(
    {
        "allowoptions",
        "display",
        "f1",
        "f2",
        "f3",
        "f4",
        "f5",
        "f6",
        "f7",
        "f8",
        "f9",
        "f10",
        "f11",
        "f12",
        "font",
        "implicit",
        "ipappend",
        "sysappend",
        "kbdmap",
        "menu",
        "noescape",
        "nocomplete",
        "nohalt",
        "ontimeout",
        "onerror",
        "prompt",
        "say",
        "serial",
        "text",
        "timeout",
        "totaltimeout",
        "ui",
        "console",
    }
)
# Kernel-like keywords whose image types the emulated firmware cannot boot.
_UNSUPPORTED_IMAGE_KEYWORDS = frozenset({"boot", "bss", "pxe", "fdimage", "comboot", "config"})


class ProfileError(ValueError):
    """A pxelinux profile that the firmware cannot boot from; the message says why and where."""


@dataclass(frozen=True)
class BootEntry:
    """The entry a node boots: a kernel (with initrd), its local disk, or a chained partition."""

    label: str
    """The LABEL name; empty for a profile without labels."""
    kind: BootKind
    kernel: str | None = None
    """TFTP path of the kernel (``kind == "kernel"``)."""
    initrd: str | None = None
    """TFTP path of the initrd, from ``INITRD`` or from ``initrd=`` in ``APPEND``."""
    append: str = ""
    """The kernel command line (what the node shows as ``/proc/cmdline``)."""
    chain_disk: int | None = None
    """Disk index X of ``chain.c32 hdX Y`` (0 is the first disk)."""
    chain_partition: int | None = None
    """Partition number Y of ``chain.c32 hdX Y`` (1 is the first partition)."""


def normalise_mac(mac: str) -> str:
    """``AA:BB:cc:dd:ee:ff`` -> ``aa-bb-cc-dd-ee-ff``; raises ValueError for a malformed MAC."""
    if not _MAC_RE.match(mac.strip()):
        raise ValueError(
            f"invalid MAC address {mac!r}: expected six hex pairs like aa:bb:cc:dd:ee:ff"
        )
    return mac.strip().lower().replace(":", "-")


def hex_ip(ip: str) -> str:
    """``127.0.2.1`` -> ``7F000201``, as pxelinux names per-address profiles."""
    try:
        address = ipaddress.IPv4Address(ip.strip())
    except ValueError as err:
        raise ValueError(f"invalid IPv4 address {ip!r}: {err}") from None
    return f"{int(address):08X}"


def profile_candidates(mac: str, ip: str) -> list[str]:
    """The TFTP paths pxelinux tries, in order, for a node with this MAC and IPv4 address."""
    candidates = [f"{PROFILE_DIR}/01-{normalise_mac(mac)}"]
    address = hex_ip(ip)
    candidates.extend(f"{PROFILE_DIR}/{address[:n]}" for n in range(len(address), 0, -1))
    candidates.append(f"{PROFILE_DIR}/default")
    return candidates


@dataclass
class _Label:
    """A LABEL block (or the global section, with ``name`` None) while it is being read."""

    name: str | None
    line: int
    kernel: str | None = None
    kernel_keyword: str = ""
    kernel_line: int = 0
    initrd: str | None = None
    append: str | None = None
    localboot: bool = False
    options: list[str] = field(default_factory=list)


def _split(line: str) -> tuple[str, str]:
    parts = line.split(None, 1)
    return parts[0].lower(), (parts[1].strip() if len(parts) > 1 else "")


def _read_blocks(text: str, source: str) -> tuple[_Label, list[_Label], str | None, int]:
    """Split the profile into its global section and its labels; returns DEFAULT and its line."""
    top = _Label(name=None, line=0)
    labels: list[_Label] = []
    current = top
    default: str | None = None
    default_line = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, value = _split(line)
        if keyword == "label":
            if not value:
                raise ProfileError(f"{source}:{number}: LABEL without a name")
            current = _Label(name=value, line=number)
            labels.append(current)
        elif keyword == "default":
            if not value:
                raise ProfileError(f"{source}:{number}: DEFAULT without a label or kernel")
            default, default_line = value, number
        else:
            _apply(current, keyword, value, source, number)
    return top, labels, default, default_line


def _apply(block: _Label, keyword: str, value: str, source: str, number: int) -> None:
    """Record one keyword line of a LABEL block (or of the global section) in ``block``."""
    where = f"{source}:{number}"
    if keyword in ("kernel", "linux", "com32", "initrd") and not value:
        raise ProfileError(f"{where}: {keyword.upper()} without a file name")
    if keyword in ("kernel", "linux", "com32"):
        block.kernel, block.kernel_keyword, block.kernel_line = value, keyword, number
    elif keyword == "initrd":
        block.initrd = value
    elif keyword == "append":
        block.append = value
    elif keyword == "localboot":
        block.localboot = True
    elif keyword == "include":
        raise ProfileError(
            f"{where}: INCLUDE is not supported by the testbed firmware; "
            "put the entries in the profile itself"
        )
    elif keyword in _UNSUPPORTED_IMAGE_KEYWORDS:
        raise ProfileError(
            f"{where}: {keyword.upper()} images cannot be booted by the testbed firmware; "
            "use KERNEL/LINUX, LOCALBOOT or COM32 chain.c32"
        )
    elif keyword in _IGNORED_KEYWORDS:
        logger.debug("%s: ignoring %s", where, keyword.upper())
    else:
        logger.warning("%s: unknown pxelinux keyword %r ignored", where, keyword)


def _initrd_from_append(append: str) -> tuple[str | None, str]:
    """Return the first file of an ``initrd=a,b`` option in APPEND, if any."""
    for word in append.split():
        if word.startswith("initrd="):
            first = word[len("initrd=") :].split(",")[0]
            return (first or None), append
    return None, append


def _entry(block: _Label, global_append: str | None, source: str) -> BootEntry:
    label = block.name or ""
    where = f"{source}:{block.line}" if block.name is not None else source
    append = block.append if block.append is not None else (global_append or "")
    if append == "-":
        append = ""
    if block.kernel is None:
        if block.localboot:
            return BootEntry(label=label, kind="localboot", append=append)
        raise ProfileError(
            f"{where}: label {label!r} has neither KERNEL/LINUX, LOCALBOOT nor COM32 chain.c32"
            if block.name is not None
            else f"{where}: no boot entry (no LABEL, no KERNEL and no DEFAULT kernel)"
        )
    module = block.kernel.split()[0].rsplit("/", 1)[-1].lower()
    if module.endswith(".c32"):
        if module != _CHAIN_MODULE:
            raise ProfileError(
                f"{source}:{block.kernel_line}: COM32 module {module!r} is not supported by the "
                f"testbed firmware (only {_CHAIN_MODULE} is)"
            )
        match = _CHAIN_ARGS_RE.match(append.strip())
        if match is None or match.group(2) is None:
            raise ProfileError(
                f"{where}: {_CHAIN_MODULE} needs 'APPEND hdX Y' (disk X from 0, partition Y "
                f"from 1), got {append.strip()!r}"
            )
        return BootEntry(
            label=label,
            kind="chain",
            append=append,
            chain_disk=int(match.group(1)),
            chain_partition=int(match.group(2)),
        )
    if block.kernel_keyword == "com32":
        raise ProfileError(
            f"{source}:{block.kernel_line}: COM32 {block.kernel!r} is not a .c32 module"
        )
    initrd = block.initrd
    if initrd is None:
        initrd, append = _initrd_from_append(append)
    return BootEntry(label=label, kind="kernel", kernel=block.kernel, initrd=initrd, append=append)


def parse_profile(text: str, source: str = "profile") -> BootEntry:
    """Return the entry pxelinux would boot from this profile text.

    ``source`` names the profile in error messages (e.g. its TFTP path).
    Raises ProfileError when nothing bootable can be selected.
    """
    top, labels, default, default_line = _read_blocks(text, source)
    if default is not None:
        name, _, options = default.partition(" ")
        for block in labels:
            if block.name in (default, name):
                return _entry(block, top.append, source)
        if labels:
            known = ", ".join(repr(b.name) for b in labels)
            raise ProfileError(
                f"{source}:{default_line}: DEFAULT names label {default!r}, which is not "
                f"defined (labels: {known})"
            )
        # No labels: DEFAULT is a kernel command line ("DEFAULT vmlinuz initrd=x console=...").
        bare = _Label(
            name=None,
            line=default_line,
            kernel=name,
            kernel_keyword="kernel",
            kernel_line=default_line,
            initrd=top.initrd,
            append=options.strip() if options.strip() else top.append,
        )
        return _entry(bare, None, source)
    if labels:
        return _entry(labels[0], top.append, source)
    if top.kernel is not None or top.localboot:
        return _entry(top, None, source)
    raise ProfileError(f"{source}: no boot entry (no DEFAULT, no LABEL and no KERNEL line)")
