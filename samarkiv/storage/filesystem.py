"""A blob store on a local (or mounted) filesystem.

Durability: data is written to a staging file, fsynced, renamed into place and
the directory fsynced, so a key either names a whole object or nothing.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .blobstore import CHUNK, BlobInfo, Written


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FilesystemBlobStore:
    """Objects as files under ``root``; staging files under ``staging``."""

    def __init__(self, root: Path, staging: Path) -> None:
        self.root = Path(root)
        self.staging = Path(staging)
        self.root.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir(parents=True, exist_ok=True)
        self._known_dirs: set[Path] = set()

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"invalid blob key {key!r}")
        return self.root / key

    def _install(self, staged: Path, key: str) -> None:
        target = self._path(key)
        parent = target.parent
        if parent not in self._known_dirs:
            parent.mkdir(parents=True, exist_ok=True)
            _fsync_dir(parent.parent)
            self._known_dirs.add(parent)
        os.replace(staged, target)
        _fsync_dir(parent)

    def put_file(self, key: str, path: Path) -> None:
        if Path(path).stat().st_dev != self.staging.stat().st_dev:
            with open(path, "rb") as f:
                self.put_stream(key, f)
            return
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        self._install(Path(path), key)

    def put_stream(self, key: str, stream: BinaryIO) -> Written:
        staged = self.staging / f"{uuid.uuid4().hex}.part"
        digest = hashlib.sha256()
        size = 0
        try:
            with open(staged, "wb") as out:
                while chunk := stream.read(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            self._install(staged, key)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        return Written(key, size, digest.hexdigest())

    def open(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def stat(self, key: str) -> BlobInfo | None:
        try:
            st = self._path(key).stat()
        except FileNotFoundError:
            return None
        return BlobInfo(key, st.st_size, st.st_mtime)

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        start = self.root / prefix if prefix else self.root
        if not start.exists():
            return
        for dirpath, _dirs, files in os.walk(start):
            for name in files:
                full = Path(dirpath) / name
                try:
                    st = full.stat()
                except FileNotFoundError:
                    continue
                yield BlobInfo(full.relative_to(self.root).as_posix(), st.st_size, st.st_mtime)

    def clear_staging(self) -> list[Path]:
        """Remove staging leftovers of an earlier run (never visible, never acknowledged)."""
        removed = []
        for leftover in self.staging.iterdir():
            if leftover.is_file():
                leftover.unlink(missing_ok=True)
                removed.append(leftover)
        return removed
