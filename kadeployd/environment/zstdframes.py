"""Notice a truncated zstd stream, which ``zstandard``'s stream reader ends silently.

``zstandard.ZstdDecompressor().stream_reader`` returns end of stream when its input ends in the
middle of a frame, so a cut image would decompress "successfully" into a short one. The
alternative, ``decompressobj``, does not bound its output (a block of zeros is 4 bytes for
128 KiB), so it is not used either. Instead, :class:`FrameTap` sits between the file and the
decompressor and follows the frame structure of RFC 8878 as the compressed bytes pass: frame
headers, block headers (bodies are skipped by count), checksums, skippable frames. At the end
of the file it raises :class:`EOFError` unless the last frame was complete. The cost is a few
Python operations per 128 KiB block.
"""

from __future__ import annotations

import io
import logging
from enum import Enum, auto
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

logger = logging.getLogger(__name__)

ZSTD_MAGIC = 0xFD2FB528
_SKIPPABLE_MASK = 0xFFFFFFF0
_SKIPPABLE_MAGIC = 0x184D2A50
_DICT_ID_SIZES = (0, 1, 2, 4)
_CONTENT_SIZE_SIZES = (0, 2, 4, 8)
_RLE_BLOCK = 1
_RESERVED_BLOCK = 3


class ZstdFrameError(ValueError):
    """The compressed bytes do not follow the zstd frame format."""


class _State(Enum):
    MAGIC = auto()
    FRAME_HEADER = auto()
    HEADER_REST = auto()
    BLOCK_HEADER = auto()
    SKIPPABLE_SIZE = auto()


class FrameTracker:
    """Follows zstd frames through :meth:`feed`; :meth:`check_end` at the end of input."""

    def __init__(self) -> None:
        self._state = _State.MAGIC
        self._want = 4
        self._pending = bytearray()
        self._skip = 0
        self._checksum = False
        self._frames = 0

    def feed(self, data: ReadableBuffer) -> None:
        """Account for the next compressed bytes."""
        view = memoryview(data).cast("B")
        pos = 0
        size = len(view)
        while pos < size:
            if self._skip:
                taken = min(self._skip, size - pos)
                self._skip -= taken
                pos += taken
                continue
            taken = min(self._want - len(self._pending), size - pos)
            self._pending += view[pos : pos + taken]
            pos += taken
            if len(self._pending) == self._want:
                header = bytes(self._pending)
                self._pending.clear()
                self._step(header)

    def check_end(self) -> None:
        """Raise :class:`EOFError` if the input stopped inside a frame (or held none)."""
        if self._frames == 0 and self._state is _State.MAGIC and not self._pending:
            raise EOFError("no zstd frame: the file is empty")
        if self._state is not _State.MAGIC or self._pending or self._skip:
            raise EOFError("the input ends inside a zstd frame")

    def _step(self, header: bytes) -> None:
        if self._state is _State.MAGIC:
            self._magic(int.from_bytes(header, "little"))
        elif self._state is _State.FRAME_HEADER:
            self._frame_header(header[0])
        elif self._state is _State.SKIPPABLE_SIZE:
            self._skip = int.from_bytes(header, "little")
            self._expect(_State.MAGIC, 4)
        elif self._state is _State.HEADER_REST:
            self._expect(_State.BLOCK_HEADER, 3)
        else:
            self._block_header(int.from_bytes(header, "little"))

    def _magic(self, magic: int) -> None:
        if magic == ZSTD_MAGIC:
            self._frames += 1
            self._expect(_State.FRAME_HEADER, 1)
        elif magic & _SKIPPABLE_MASK == _SKIPPABLE_MAGIC:
            self._frames += 1
            self._expect(_State.SKIPPABLE_SIZE, 4)
        else:
            raise ZstdFrameError(f"expected a zstd frame, found magic number {magic:#010x}")

    def _frame_header(self, descriptor: int) -> None:
        content_size_flag = descriptor >> 6
        single_segment = bool(descriptor & 0x20)
        if descriptor & 0x08:
            raise ZstdFrameError("reserved bit set in a zstd frame header")
        self._checksum = bool(descriptor & 0x04)
        rest = 0 if single_segment else 1  # window descriptor
        rest += _DICT_ID_SIZES[descriptor & 0x03]
        rest += _CONTENT_SIZE_SIZES[content_size_flag]
        if single_segment and content_size_flag == 0:
            rest += 1
        if rest:
            self._expect(_State.HEADER_REST, rest)
        else:
            self._expect(_State.BLOCK_HEADER, 3)

    def _block_header(self, header: int) -> None:
        last = bool(header & 0x01)
        kind = (header >> 1) & 0x03
        size = header >> 3
        if kind == _RESERVED_BLOCK:
            raise ZstdFrameError("reserved block type in a zstd frame")
        self._skip = 1 if kind == _RLE_BLOCK else size
        if last:
            self._skip += 4 if self._checksum else 0
            self._expect(_State.MAGIC, 4)
        else:
            self._expect(_State.BLOCK_HEADER, 3)

    def _expect(self, state: _State, want: int) -> None:
        self._state = state
        self._want = want


class _Source(Protocol):
    def readinto(self, buffer: WriteableBuffer, /) -> int | None: ...

    def close(self) -> None: ...


class FrameTap(io.RawIOBase):
    """A reader of compressed bytes that checks their zstd frames as they pass."""

    def __init__(self, source: _Source) -> None:
        super().__init__()
        self._source = source
        self._tracker = FrameTracker()
        self._ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        if self._ended:
            return 0
        count = self._source.readinto(buffer) or 0
        if count:
            self._tracker.feed(memoryview(buffer)[:count])
        else:
            self._ended = True
            self._tracker.check_end()
        return count

    def close(self) -> None:
        if not self.closed:
            self._source.close()
        super().close()
