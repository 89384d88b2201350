"""Environment descriptions (Kadeploy3 ``kaenv`` YAML) and reading their images.

- :func:`load_environment`, :func:`parse_environment`: a validated, frozen
  :class:`EnvironmentDescription`, or one :class:`~kadeploy_core.errors.EnvironmentError_`
  listing every mistake with its file, line and key.
- :func:`open_image_stream`, :func:`image_sha256`, :func:`decompressed_sha256`: streaming
  access to image files.
- :func:`read_boot_files`: the kernel and initrd out of a tar image, nothing extracted.
"""

from kadeploy_core.environment import (
    BootSpec,
    Compression,
    EnvironmentDescription,
    Filesystem,
    ImageKind,
    ImageSpec,
    OperatingSystem,
    ScriptArchive,
    Visibility,
    load_environment,
    parse_environment,
)
from kadeployd.environment.bootfiles import MAX_BOOT_FILE_BYTES, BootFiles, read_boot_files
from kadeployd.environment.image import (
    StreamDigest,
    decompressed_sha256,
    image_sha256,
    open_image_stream,
    sniff_compression,
)

__all__ = [
    "MAX_BOOT_FILE_BYTES",
    "BootFiles",
    "BootSpec",
    "Compression",
    "EnvironmentDescription",
    "Filesystem",
    "ImageKind",
    "ImageSpec",
    "OperatingSystem",
    "ScriptArchive",
    "StreamDigest",
    "Visibility",
    "decompressed_sha256",
    "image_sha256",
    "load_environment",
    "open_image_stream",
    "parse_environment",
    "read_boot_files",
    "sniff_compression",
]
