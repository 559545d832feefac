"""The blob-store interface: put, open, delete, stat, list.

A back room of the archive: the core writes immutable objects under keys it
chooses and never rewrites one in place. A new backend is a new module.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

CHUNK = 1 << 20


@dataclass(frozen=True)
class BlobInfo:
    key: str
    size: int
    mtime: float


@dataclass(frozen=True)
class Written:
    """What a durable put reports back: enough for the index row."""

    key: str
    size: int
    sha256: str


class BlobStore(Protocol):
    def put_file(self, key: str, path: Path) -> None:
        """Move the (not yet durable) file at ``path`` under ``key``, durably.

        The caller has hashed the file already (the core checks duplicates
        before it writes), so this does not read it again."""

    def put_stream(self, key: str, stream: BinaryIO) -> Written:
        """Copy ``stream`` under ``key``, durably, hashing in the same pass."""

    def open(self, key: str) -> BinaryIO: ...

    def local_path(self, key: str) -> Path | None:
        """A filesystem path for ``key`` when the store has one (zero-copy sends)."""

    def delete(self, key: str) -> None: ...

    def stat(self, key: str) -> BlobInfo | None: ...

    def list(self, prefix: str = "") -> Iterator[BlobInfo]: ...


def sha256_of(stream: BinaryIO) -> tuple[int, str]:
    """Size and SHA-256 hex digest of the rest of ``stream``."""
    digest = hashlib.sha256()
    size = 0
    while chunk := stream.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()
