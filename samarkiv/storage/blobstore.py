"""The blob-store interface: put, open, delete, stat, list.

A back room of the archive: the core writes immutable objects under keys it
chooses and never rewrites one in place. A new backend is a new module.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

CHUNK = 1 << 20


@dataclass(frozen=True)
class BlobInfo:
    key: str
    size: int
    mtime: float
    # The SHA-256 the store keeps beside the object (S3: x-amz-meta-sha256),
    # when it keeps one and was asked (stat); None otherwise.
    sha256: str | None = None


class BlobStoreError(OSError):
    """A blob store failed; the message is safe to show (it holds no secrets)."""


@dataclass(frozen=True)
class Written:
    """What a durable put reports back: enough for the index row."""

    key: str
    size: int
    sha256: str


class BlobStore(Protocol):
    def put_file(self, key: str, path: Path, sha256: str | None = None) -> None:
        """Move the (not yet durable) file at ``path`` under ``key``, durably.

        The caller has hashed the file already (the core checks duplicates
        before it writes) and passes the digest as ``sha256`` where it has it:
        a store that keeps checksums beside objects (S3) stores it, and
        refuses the upload if the bytes sent do not match."""

    def put_stream(self, key: str, stream: BinaryIO) -> Written:
        """Copy ``stream`` under ``key``, durably, hashing in the same pass."""

    def put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Put several small objects (key, bytes) durably; the write-back journal's
        mover uses it to make a batch durable at once."""

    def open(self, key: str) -> BinaryIO:
        """A seekable reader of the whole object; FileNotFoundError if absent."""

    def open_range(self, key: str, start: int, end: int | None = None) -> BinaryIO:
        """A reader of bytes ``[start, end)`` (clipped to the object, like a slice);
        ``end=None`` reads to the end. For HTTP range requests (RFC 9110 14.2)
        and frame access without reading the whole object."""

    def local_path(self, key: str) -> Path | None:
        """A filesystem path for ``key`` when the store has one (zero-copy sends)."""

    def delete(self, key: str) -> None: ...

    def stat(self, key: str) -> BlobInfo | None: ...

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        """Objects under the folder ``prefix`` ("2024/01" lists "2024/01/..."), any order."""


class ByteWindow(io.RawIOBase):
    """Bytes ``[_start, _end)`` of a stored object, readable and seekable within
    them: what ``open_range`` returns. Subclasses fetch the bytes (``readinto``)."""

    _start = 0
    _end = 0
    _pos = 0  # relative to _start

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def _wanted(self, buffer_size: int) -> int:
        """How many bytes the next read may take (0 at the end of the window)."""
        return max(0, min(buffer_size, self._end - self._start - self._pos))

    def _seek_target(self, offset: int, whence: int) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._end - self._start}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        return base + offset


def sha256_of(stream: BinaryIO) -> tuple[int, str]:
    """Size and SHA-256 hex digest of the rest of ``stream``."""
    digest = hashlib.sha256()
    size = 0
    while chunk := stream.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()
