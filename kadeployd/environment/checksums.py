"""md5 checksums of an environment's files, as Kadeploy3 records them (``kaenv3
--update-image-checksum``, ``--update-preinstall-checksum``, ``--update-postinstalls-checksum``).

Keys name the file by its place in the description: ``image.file``, ``preinstall.archive``,
``postinstalls[N].archive``. Files are read in 1 MiB chunks: memory stays bounded whatever the
image size.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from kadeploy_core.environment import EnvironmentDescription

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
PARTS = ("image", "preinstall", "postinstalls")
"""What a checksum update names (Kadeploy3's option names without update- and -checksum)."""


def file_md5(path: Path) -> str:
    """The md5 hex digest of a file."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def files_of_part(env: EnvironmentDescription, part: str) -> dict[str, Path]:
    """The files of one part (:data:`PARTS`) by key."""
    if part == "image":
        return {"image.file": env.image.file}
    if part == "preinstall":
        return {"preinstall.archive": env.preinstall.archive} if env.preinstall else {}
    if part == "postinstalls":
        return {f"postinstalls[{i}].archive": p.archive for i, p in enumerate(env.postinstalls)}
    raise ValueError(f"unknown part {part!r}: expected one of {', '.join(PARTS)}")


def checksums(env: EnvironmentDescription, parts: tuple[str, ...] = PARTS) -> dict[str, str]:
    """md5 of every file of ``parts``, by key."""
    found: dict[str, str] = {}
    for part in parts:
        for key, path in files_of_part(env, part).items():
            found[key] = file_md5(path)
    return found
