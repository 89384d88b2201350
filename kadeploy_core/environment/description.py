"""The typed, frozen model of an environment description (Kadeploy3 ``kaenv`` YAML).

::

    name: debian-min                  # required: letters, digits, '.', '_', '+', '-'
    version: 1                        # required: integer >= 1
    description: "Minimal busybox"    # optional, default ""
    author: jdoe@example.org          # optional, default ""
    visibility: public                # optional: private (default) | shared | public
    destructive: false                # optional, default false
    os: linux                         # required: linux (the only system kadeployd boots)
    image: {file: debian-min.tar.zst, kind: tar, compression: zstd}   # all three required
    preinstall: {archive: pre.tgz, compression: gzip, script: run.sh} # optional
    postinstalls: [{archive: post.tgz, compression: gzip, script: run.sh}]  # optional
    boot: {kernel: /boot/vmlinuz, initrd: /boot/initrd.img, kernel_params: "console=ttyS0"}
    filesystem: ext4                  # optional: ext2|ext3|ext4|xfs, for tar images; absent:
                                      #   the cluster's disk.filesystem
    partition_type: 0x83              # optional, 0-255, default 0x83 (Linux)
    clusters: [griffon]               # optional: compatible clusters; absent means all

``boot.kernel`` is required for tar and dd images alike: the classical boot loads it over
TFTP. ``boot.initrd`` and ``boot.kernel_params`` are optional. Relative file names
(``image.file``, ``*.archive``) are resolved against the description file's directory, and the
files must exist. ``script`` is a command line run from the extracted archive; its first word
is a path inside the archive; ``none`` (as in Kadeploy3) or no ``script`` means none.

The ``description`` of each field is the phrase used in error messages after "expected".
Loading and error reporting live in :mod:`kadeploy_core.environment.loader`.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import shlex
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from kadeploy_core.errors import Problem
from kadeploy_core.validation import shown
from kadeploy_core.yamldoc import KeyPath, dotted

logger = logging.getLogger(__name__)

CUSTOM_ERROR = "kaenv"
"""Error type of the checks written here; their message is shown to users as is."""

BASE_DIR = "base_dir"
"""Validation context key: the directory relative file names are resolved against."""
CONFINE = "confine"
"""Validation context key: if true, a file name outside ``BASE_DIR`` is refused as it is
written, before anything on the server's disk is looked at (a user's description may only
name the files the user uploaded: whether another path exists is none of the user's business)."""
NOT_UPLOADED = "is not among the uploaded files"
"""Opens the reason a confined description's file name is refused (after the name)."""
MAY_READ = "may_read"
"""Validation context key: a ``Callable[[Path], bool]`` telling whether the requester may
read a file; a file the requester may not read is answered exactly like a missing one."""

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._+-]*$"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Visibility(StrEnum):
    """Who may see and use a registered environment."""

    PRIVATE = "private"
    """Only its owner."""
    SHARED = "shared"
    """Every user, listed only when asked for by owner."""
    PUBLIC = "public"
    """Every user, listed by default."""


class ImageKind(StrEnum):
    """How an image is written to the deploy partition."""

    TAR = "tar"
    """A root file system archive, extracted onto a freshly made file system."""
    DD = "dd"
    """A raw partition image, written byte for byte."""


class Compression(StrEnum):
    """How an image or archive file is compressed."""

    GZIP = "gzip"
    ZSTD = "zstd"
    XZ = "xz"
    NONE = "none"


class OperatingSystem(StrEnum):
    """The deployed system. kadeployd boots Linux kernels only (Kadeploy3's xen is not kept)."""

    LINUX = "linux"


class Filesystem(StrEnum):
    """File systems made for a tar image; the same choice as the cluster's ``disk.filesystem``."""

    EXT2 = "ext2"
    EXT3 = "ext3"
    EXT4 = "ext4"
    XFS = "xfs"


def _fail(message: str) -> PydanticCustomError:
    """An error whose message users see as is (passed as context so braces stay literal)."""
    return PydanticCustomError(CUSTOM_ERROR, "{message}", {"message": message})


def _local_file(value: Any, info: ValidationInfo) -> Path:
    """A file name resolved against the description's directory; the file must exist."""
    if not isinstance(value, str) or not value.strip():
        raise _fail(f"expected a file name; got {shown(value)}")
    if "://" in value:
        raise _fail(f"expected a local file name; got the URL {value!r} (URLs are not supported)")
    if "\x00" in value:
        raise _fail("expected a file name; got a name containing a NUL byte")
    context = info.context or {}
    base = Path(context.get(BASE_DIR) or Path.cwd())
    path = Path(os.path.abspath(base / value))
    if context.get(CONFINE) and not path.is_relative_to(os.path.abspath(base)):
        raise _fail(
            f"{value!r} {NOT_UPLOADED}; upload it and name it relatively "
            "(only administrators may name files on the server)"
        )
    may_read = context.get(MAY_READ)
    if may_read is not None and not may_read(path):
        raise _fail(f"file not found: {str(path)!r}")
    if not path.exists():
        raise _fail(f"file not found: {str(path)!r}")
    if not path.is_file():
        raise _fail(f"not a regular file: {str(path)!r}")
    if not os.access(path, os.R_OK):
        raise _fail(f"file not readable: {str(path)!r}")
    return path


def _path_in_image(value: Any) -> str:
    """An absolute path inside the image, normalised (``/boot//vmlinuz`` -> ``/boot/vmlinuz``)."""
    if not isinstance(value, str):
        raise _fail(f"expected an absolute path inside the image; got {shown(value)}")
    if not value.startswith("/"):
        raise _fail(
            f"expected an absolute path inside the image (like /boot/vmlinuz); got {value!r}"
        )
    if _CONTROL.search(value):
        raise _fail(f"expected a path without control characters; got {value!r}")
    if ".." in value.split("/"):
        raise _fail(f"expected a path that stays inside the image, without '..'; got {value!r}")
    normal = posixpath.normpath("/" + value.lstrip("/"))  # POSIX keeps a leading "//"
    if normal == "/":
        raise _fail("expected the path of a file inside the image; got '/'")
    return normal


def _partition_type(value: Any) -> Any:
    """Accept ``0x83`` written as a string too (YAML already reads a bare 0x83 as 131)."""
    if isinstance(value, str) and re.fullmatch(r"0[xX][0-9a-fA-F]{1,2}", value):
        return int(value, 16)
    return value


LocalFile = Annotated[Path, BeforeValidator(_local_file)]
PathInImage = Annotated[str, BeforeValidator(_path_in_image)]
Name = Annotated[StrictStr, Field(min_length=1, max_length=64, pattern=_NAME)]

_NAME_PHRASE = (
    "a name of letters, digits, '.', '_', '+' or '-' (starting with a letter or digit, at most 64)"
)
_COMPRESSION_PHRASE = "one of gzip, zstd, xz, none"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ImageSpec(_Model):
    """``image``: the file that is deployed."""

    file: LocalFile = Field(description="the image file name")
    kind: ImageKind = Field(description="one of tar, dd")
    compression: Compression = Field(description=_COMPRESSION_PHRASE)


class ScriptArchive(_Model):
    """``preinstall`` or an item of ``postinstalls``: an archive extracted, then a script run."""

    archive: LocalFile = Field(description="the archive file name (a tar archive)")
    compression: Compression = Field(description=_COMPRESSION_PHRASE)
    script: StrictStr | None = Field(
        default=None,
        description="a command line whose first word is a relative path inside the archive",
    )

    @field_validator("script")
    @classmethod
    def _check_script(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "none":
            return None
        if _CONTROL.search(value):
            raise _fail(f"expected one command line without control characters; got {value!r}")
        try:
            words = shlex.split(value)
        except ValueError as exc:
            raise _fail(f"expected a command line with balanced quotes; {exc}: {value!r}") from None
        if not words:
            raise _fail("expected a command line; got an empty one (write none for no script)")
        program = words[0]
        if program.startswith("/") or ".." in program.split("/"):
            raise _fail(
                f"expected the script as a relative path inside the archive; got {program!r}"
            )
        return value

    @property
    def argv(self) -> tuple[str, ...]:
        """The script as an argument list (never passed through a shell)."""
        return tuple(shlex.split(self.script)) if self.script else ()


class BootSpec(_Model):
    """``boot``: what the classical boot loads, taken out of the image."""

    kernel: PathInImage = Field(description="an absolute path inside the image (like /vmlinuz)")
    initrd: PathInImage | None = Field(
        default=None, description="an absolute path inside the image (like /initrd.img)"
    )
    kernel_params: StrictStr = Field(
        default="", description="kernel parameters on one line (like console=ttyS0)"
    )

    @field_validator("kernel_params")
    @classmethod
    def _one_line(cls, value: str) -> str:
        # The parameters end up on a PXE APPEND line: a newline would inject configuration.
        if _CONTROL.search(value):
            raise _fail(
                f"expected kernel parameters on one line, without control characters; got {value!r}"
            )
        return value.strip()


class EnvironmentDescription(_Model):
    """A validated environment description; file paths are absolute and exist.

    ``source`` is the file it came from and :meth:`problem` builds an error pointing at one of
    its keys, for checks made later against the image (e.g. a kernel missing from it).
    """

    name: Name = Field(description=_NAME_PHRASE)
    version: StrictInt = Field(ge=1, description="an integer >= 1")
    description: StrictStr = Field(default="", description="a text")
    author: StrictStr = Field(default="", description="a text (usually an e-mail address)")
    visibility: Visibility = Field(
        default=Visibility.PRIVATE, description="one of private, shared, public"
    )
    destructive: StrictBool = Field(default=False, description="true or false")
    os: OperatingSystem = Field(description="linux (the only system kadeployd boots)")
    image: ImageSpec = Field(description="a mapping with keys file, kind, compression")
    preinstall: ScriptArchive | None = Field(
        default=None, description="a mapping with keys archive, compression, script"
    )
    postinstalls: tuple[ScriptArchive, ...] = Field(
        default=(),
        description="a list of mappings with keys archive, compression, script",
        json_schema_extra={"item": "a mapping with keys archive, compression, script"},
    )
    boot: BootSpec = Field(description="a mapping with keys kernel, initrd, kernel_params")
    filesystem: Filesystem | None = Field(default=None, description="one of ext2, ext3, ext4, xfs")
    partition_type: Annotated[StrictInt, BeforeValidator(_partition_type)] = Field(
        default=0x83, ge=0, le=0xFF, description="an MBR partition type from 0 to 0xff (like 0x83)"
    )
    clusters: tuple[Name, ...] | None = Field(
        default=None,
        description="a list of cluster names",
        json_schema_extra={"item": "a cluster name (" + _NAME_PHRASE[2:] + ")"},
    )

    _source: str = PrivateAttr(default="")
    _lines: Mapping[KeyPath, int] = PrivateAttr(default_factory=dict)

    @field_validator("postinstalls", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return () if value is None else value

    @field_validator("clusters")
    @classmethod
    def _distinct(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        if not value:
            raise _fail("expected at least one cluster name (leave the key out to mean all)")
        repeated = sorted({name for name in value if value.count(name) > 1})
        if repeated:
            raise _fail("expected distinct cluster names; repeated: " + ", ".join(repeated))
        return value

    @property
    def source(self) -> str:
        """The file (or upload name) this description came from."""
        return self._source

    def problem(self, path: KeyPath, message: str) -> Problem:
        """A :class:`Problem` about key ``path`` of this description, with its line."""
        line = None
        for end in range(len(path), 0, -1):
            line = self._lines.get(path[:end])
            if line is not None:
                break
        return Problem(self._source, message, dotted(path), line)

    def runs_on(self, cluster: str) -> bool:
        """Whether the environment may be deployed on ``cluster``."""
        return self.clusters is None or cluster in self.clusters

    def _attach(self, source: str, lines: Mapping[KeyPath, int]) -> None:
        """Remember where the description came from (called once by the loader)."""
        self._source = source
        self._lines = dict(lines)
