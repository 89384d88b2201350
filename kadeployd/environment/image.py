"""Streaming access to image files: decompression and SHA-256, never the whole file in memory.

Errors of the decompressors (gzip, lzma, zstandard) and of the file system are translated into
:class:`~kadeploy_core.errors.ImageError` as they happen, including in the middle of a read, so a
truncated or corrupt image gives one clear message and never a traceback.
"""

from __future__ import annotations

import _compression
import gzip
import hashlib
import io
import logging
import lzma
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, cast

import zstandard

from kadeploy_core.environment.description import Compression
from kadeploy_core.errors import ImageError
from kadeployd.environment.zstdframes import FrameTap, ZstdFrameError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
"""Read size for hashing and copying: 1 MiB."""
MAX_WINDOW_BYTES = 1 << 27
"""Largest history a decompressor may keep (zstd window, xz dictionary): 128 MiB, zstd's own
default bound, and twice what ``xz -9`` uses. An image needing more is refused as corrupt
rather than growing the daemon by what its header declares."""

_MAGIC: tuple[tuple[bytes, Compression], ...] = (
    (b"\x1f\x8b", Compression.GZIP),
    (b"\x28\xb5\x2f\xfd", Compression.ZSTD),
    (b"\xfd7zXZ\x00", Compression.XZ),
)

DECOMPRESSION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # includes gzip.BadGzipFile
    EOFError,  # gzip and lzma: the stream ends before its end marker
    zlib.error,
    lzma.LZMAError,
    zstandard.ZstdError,
    ZstdFrameError,
)
"""What reading a decompressed stream may raise on a bad file."""


class _Reader(Protocol):
    """What the decompressors and plain files have in common."""

    def read(self, size: int = -1, /) -> bytes: ...

    def readinto(self, buffer: WriteableBuffer, /) -> int | None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class StreamDigest:
    """SHA-256 (hex) and length of a byte stream."""

    sha256: str
    size: int


def sniff_compression(path: Path) -> Compression | None:
    """The compression ``path`` starts like (by magic number), or None if unknown or none."""
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
    except OSError:
        return None
    for magic, compression in _MAGIC:
        if head.startswith(magic):
            return compression
    return None


_ZSTD_MAGIC = 0xFD2FB528
_ZSTD_SKIPPABLE = 0x184D2A50  # the 16 magic numbers 0x184D2A50 to 0x184D2A5F
_XZ_NO_CHECK = 0


def checks_itself(path: Path, compression: Compression) -> bool:
    """Whether decompressing ``path`` checks every byte, at no cost beyond the decompression:
    gzip (a CRC-32, always), xz (unless its stream declares no check), zstd (if its first
    frame carries a content checksum; images from the zstd tool do by default). The chain
    relays then need no digest of their own: a node's decompressor fails on a corrupted
    stream. False for an uncompressed image, or one that cannot be read."""
    if compression is Compression.GZIP:
        return True
    try:
        with path.open("rb") as handle:
            if compression is Compression.XZ:
                header = handle.read(12)
                return len(header) == 12 and header[7] & 0x0F != _XZ_NO_CHECK
            if compression is Compression.ZSTD:
                return _zstd_first_frame_has_checksum(handle)
    except OSError:
        return False
    return False


def _zstd_first_frame_has_checksum(handle: BinaryIO) -> bool:
    """Bit 2 of the first data frame's Frame_Header_Descriptor (RFC 8878, 3.1.1.1.1)."""
    for _ in range(16):  # skippable frames before it, if any
        header = handle.read(8)
        if len(header) < 5:
            return False
        magic = int.from_bytes(header[:4], "little")
        if magic == _ZSTD_MAGIC:
            return bool(header[4] & 0x04)
        if magic & 0xFFFFFFF0 != _ZSTD_SKIPPABLE:
            return False
        handle.seek(int.from_bytes(header[4:8], "little"), 1)
    return False


def open_image_stream(path: Path, compression: Compression) -> BinaryIO:
    """``path`` decompressed as a stream; close it when done.

    Raises :class:`ImageError` if the file cannot be opened, and from ``read`` if the data is
    truncated or corrupt.
    """
    try:
        raw = path.open("rb")
    except OSError as exc:
        raise ImageError(f"image {str(path)!r}: cannot open: {exc.strerror}") from None
    inner: _Reader
    try:
        if compression is Compression.GZIP:
            inner = gzip.GzipFile(fileobj=raw, mode="rb")
        elif compression is Compression.XZ:
            inner = _xz_reader(raw)
        elif compression is Compression.ZSTD:
            # The tap raises at a cut frame, which the stream reader would end silently.
            inner = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_BYTES).stream_reader(
                cast(BinaryIO, FrameTap(raw)),
                read_size=CHUNK,
                read_across_frames=True,
                closefd=False,
            )
        else:
            inner = raw
    except DECOMPRESSION_ERRORS as exc:
        raw.close()
        raise _translate(path, compression, exc) from None
    return cast(BinaryIO, _DecompressedStream(path, compression, raw, inner))


def _xz_reader(raw: BinaryIO) -> _Reader:
    """``raw`` decompressed as xz with the decoder's memory bounded by
    :data:`MAX_WINDOW_BYTES` (``lzma.LZMAFile`` has no memory limit: an image whose header
    declares a 1 GiB dictionary made the daemon's RSS grow by as much while reading it)."""
    reader = _compression.DecompressReader(
        raw,
        lzma.LZMADecompressor,
        trailing_error=lzma.LZMAError,
        format=lzma.FORMAT_XZ,
        memlimit=MAX_WINDOW_BYTES + (16 << 20),  # the dictionary plus the decoder's own
    )
    return cast(_Reader, io.BufferedReader(reader, CHUNK))


class _DecompressedStream(io.RawIOBase):
    """A read-only stream that turns decompression errors into :class:`ImageError`."""

    def __init__(self, path: Path, compression: Compression, raw: _Reader, inner: _Reader) -> None:
        super().__init__()
        self._path = path
        self._compression = compression
        self._raw = raw
        self._inner = inner

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        try:
            return self._inner.read(-1 if size is None else size)
        except DECOMPRESSION_ERRORS as exc:
            raise _translate(self._path, self._compression, exc) from None

    def readinto(self, buffer: WriteableBuffer) -> int | None:
        try:
            return self._inner.readinto(buffer)
        except DECOMPRESSION_ERRORS as exc:
            raise _translate(self._path, self._compression, exc) from None

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self._inner is not self._raw:
                self._inner.close()
        except DECOMPRESSION_ERRORS:
            logger.debug("closing %s", self._path, exc_info=True)
        finally:
            self._raw.close()
            super().close()


def _translate(path: Path, compression: Compression, exc: BaseException) -> ImageError:
    """An :class:`ImageError` saying what is wrong with ``path`` in words."""
    if isinstance(exc, EOFError):
        what = f"truncated: the compressed data ends too early ({exc})"
    elif "memory" in str(exc).lower():  # xz: "Memory usage limit"; zstd: "too much memory"
        what = (
            f"its {compression.value} data needs a history (window, dictionary) larger than the "
            f"{MAX_WINDOW_BYTES >> 20} MiB kadeployd accepts ({exc}); recompress it with a "
            "smaller one"
        )
    elif isinstance(exc, OSError) and exc.strerror:
        what = f"cannot read: {exc.strerror}"
    else:
        what = f"corrupt {compression.value} data ({exc})"
    message = f"image {str(path)!r}: {what}"
    actual = sniff_compression(path)
    if actual is not None and actual is not compression:
        message += (
            f"; the file looks like {actual.value} data but compression says {compression.value}"
        )
    elif actual is None and compression is not Compression.NONE:
        message += f"; the file does not start like {compression.value} data"
    return ImageError(message)


def image_sha256(path: Path) -> str:
    """SHA-256 (hex) of the image file as stored (compressed), read in 1 MiB chunks."""
    try:
        with path.open("rb") as handle:
            return _digest(handle).sha256
    except OSError as exc:
        raise ImageError(f"image {str(path)!r}: cannot read: {exc.strerror}") from None


def decompressed_sha256(path: Path, compression: Compression) -> StreamDigest:
    """SHA-256 and length of the image's decompressed bytes (what lands on the disk for dd)."""
    with open_image_stream(path, compression) as stream:
        return _digest(cast(_Reader, stream))


def _digest(stream: _Reader) -> StreamDigest:
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    size = 0
    while True:
        count = stream.readinto(view)
        if not count:
            break
        digest.update(view[:count])
        size += count
    return StreamDigest(digest.hexdigest(), size)
