"""The deploy env's SSH host keys, pinned by the configuration.

``boot.deploy_host_key_file`` names a file of OpenSSH public keys (what ``ssh-keygen`` writes
next to a host key, ``ssh_host_ed25519_key.pub``; one key a line, ``#`` comments), and
``boot.deploy_host_key`` gives keys inline (``ssh-ed25519 AAAA... comment``, one a line). Both
layer like any boot setting (node > cluster > global); a node accepts the keys of either. When
a node has some, every SSH connection the daemon makes to that node's deploy env checks that
the server's host key is one of them before it authenticates or sends anything
(kadeployd/adapters/ssh.py); the deployed env, the user's, keeps its own keys and is not
pinned.

Pure: parsing and fingerprints, no SSH. A key is kept as ``"<type> <base64>"``, the form
paramiko and OpenSSH print; the base64 must decode to an SSH key blob naming the same type.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

MAX_FILE_BYTES = 64 * 1024
"""Largest host key file read (an RSA 16384 public key is under 3 KiB)."""
MAX_KEYS = 32
"""Most keys one setting may pin."""
EXAMPLE = "'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA... root@deployenv'"


@dataclass(frozen=True, slots=True)
class PinnedHostKeys:
    """Host keys read from one setting: where from, and the keys (``"<type> <base64>"``)."""

    source: str
    """The file's path, or the inline text's first key as given."""
    keys: tuple[str, ...]


def parse_host_keys(text: str) -> tuple[str, ...]:
    """The public keys of ``text`` (one a line; blank lines and ``#`` comments skipped), each
    once; ValueError naming the line and what is expected."""
    if "PRIVATE KEY" in text:
        raise ValueError("this is a private key: give its public half (the .pub file)")
    keys: dict[str, None] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keys[_parse_line(line, number)] = None
        if len(keys) > MAX_KEYS:
            raise ValueError(f"more than {MAX_KEYS} keys")
    if not keys:
        raise ValueError(f"no public key found; expected a line such as {EXAMPLE}")
    return tuple(keys)


def _parse_line(line: str, number: int) -> str:
    fields = line.split()
    where = f"line {number}"
    if len(fields) < 2:
        raise ValueError(f"{where}: expected '<type> <base64> [comment]' such as {EXAMPLE}")
    kind, encoded = fields[0], fields[1]
    try:
        blob = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{where}: the key of type {kind[:40]!r} is not valid base64") from None
    if _blob_type(blob) != kind:
        raise ValueError(
            f"{where}: not an OpenSSH public key of type {kind[:40]!r} (the base64 does not "
            f"hold a {kind[:40]} key); expected a line such as {EXAMPLE}"
        )
    return f"{kind} {encoded}"


def _blob_type(blob: bytes) -> str | None:
    """The key type an SSH public key blob starts with (a length-prefixed string)."""
    if len(blob) < 4:
        return None
    (length,) = struct.unpack(">I", blob[:4])
    if not 0 < length <= 64 or len(blob) < 4 + length:
        return None
    try:
        return blob[4 : 4 + length].decode("ascii")
    except UnicodeDecodeError:
        return None


def read_host_key_file(path: Path) -> PinnedHostKeys:
    """The keys of the file at ``path``; ValueError saying what is wrong with it."""
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"{path} is larger than {MAX_FILE_BYTES} bytes: not a public key file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not text: not a public key file") from None
    try:
        return PinnedHostKeys(str(path), parse_host_keys(text))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def inline_host_keys(text: str) -> PinnedHostKeys:
    """The keys given inline; ValueError saying what is wrong."""
    keys = parse_host_keys(text)
    return PinnedHostKeys(keys[0][:60], keys)


def fingerprint(key: str) -> str:
    """OpenSSH's ``<type> SHA256:...`` of a ``"<type> <base64>"`` key, for messages."""
    kind, _, encoded = key.partition(" ")
    try:
        blob = base64.b64decode(encoded.split()[0] if encoded else "", validate=True)
    except (binascii.Error, ValueError, IndexError):
        return key[:80]
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"{kind} SHA256:{digest}"


def unpinned_warning(unpinned: list[str], total: int) -> str | None:
    """The warning the daemon logs at start when nodes (``unpinned``, of ``total``) have no
    pinned deploy env host key; None when every node has one."""
    if not unpinned:
        return None
    more = len(unpinned) - 5
    shown = ", ".join(unpinned[:5]) + (f" and {more} more" if more > 0 else "")
    return (
        f"deploy env host keys are not pinned for {len(unpinned)} of {total} nodes ({shown}): "
        "the daemon sends images, users' keys and commands to whatever answers at their "
        "addresses; set boot.deploy_host_key_file (or boot.deploy_host_key) to the deploy "
        "env's public host key"
    )


def fingerprints(keys: Iterable[str]) -> str:
    """The fingerprints of ``keys``, comma separated."""
    return ", ".join(fingerprint(key) for key in keys)
