"""A blob store on a local (or mounted) filesystem.

Durability: data is written to a staging file, fsynced, renamed into place and
the directory fsynced, so a key either names a whole object or nothing (several
small objects at once: written, renamed, then one syncfs(2), ``put_many``).
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .blobstore import CHUNK, BlobInfo, ByteWindow, Written


def _syncfs_call() -> Callable[[int], int] | None:
    """Linux syncfs(2), or None where the C library has none."""
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs  # ctypes lets go of the GIL during the call
    except (OSError, AttributeError):
        return None


_SYNCFS = _syncfs_call()


def _sync_filesystem(path: Path) -> None:
    """Make everything written to ``path``'s filesystem durable (syncfs(2): data, metadata and
    renames, and since Linux 5.8 any writeback error is reported)."""
    assert _SYNCFS is not None
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _SYNCFS(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs: {os.strerror(err)}")
    finally:
        os.close(fd)


def _fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def new_staging_path(folder: Path) -> Path:
    """A fresh ``.part`` name in a staging folder (``clear_staging`` removes what is left there)."""
    return folder / f"{uuid.uuid4().hex}.part"


def write_staged(folder: Path, data: bytes, *, sync: bool = False) -> Path:
    """``data`` in a new ``.part`` file in ``folder`` (fsynced if ``sync``), removed again if
    the write fails."""
    path = new_staging_path(folder)
    try:
        with open(path, "wb") as out:
            out.write(data)
            if sync:
                out.flush()
                os.fsync(out.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


@dataclass(frozen=True)
class StagedFile:
    """An object written into a store's staging folder by another process (a C-GET worker,
    migrate/sources/getproc.py), not yet durable, with its SHA-256 and size: ``put_many``
    renames it into place and syncs it with the rest instead of writing it again."""

    path: Path
    sha256: str
    size: int


class FilesystemBlobStore:
    """Objects as files under ``root``; staging files under ``staging``."""

    def __init__(self, root: Path, staging: Path) -> None:
        self.root = Path(root)
        self.staging = Path(staging)
        self.root.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir(parents=True, exist_ok=True)
        self._known_dirs: set[str] = set()
        self._root = str(self.root)

    def _path(self, key: str) -> Path:
        return Path(self._name(key))

    def _name(self, key: str) -> str:
        """The file name of ``key`` (a string: retrieves open hundreds a second)."""
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"invalid blob key {key!r}")
        return f"{self._root}/{key}"

    def _install(self, staged: Path, key: str, *, sync: bool = True) -> str:
        """Rename ``staged`` to ``key``'s path; return its folder (fsynced if ``sync``). Names are
        strings: a migration installs hundreds a second, and pathlib parses every Path it makes."""
        target = self._name(key)
        parent = os.path.dirname(target)
        if parent not in self._known_dirs:
            os.makedirs(parent, exist_ok=True)
            _fsync_dir(os.path.dirname(parent))
            self._known_dirs.add(parent)
        os.replace(staged, target)
        if sync:
            _fsync_dir(parent)
        return parent

    def put_many(self, items: Sequence[tuple[str, bytes | Path]]) -> None:
        """Put several small objects durably. On Linux the files are written, renamed into place
        and then synced with one syncfs(2), about half the cost of an fsync per file and folder
        (measured here, writing and syncing 200 objects of 40 KB: 0.20 against 0.41 ms each);
        elsewhere each file is fsynced before its rename and each folder once after. An item
        given as a Path was written into :attr:`staging` already, not synced (by a C-GET worker
        process, migrate/sources/getproc.py): it is renamed into place and synced with the rest."""
        staged: list[tuple[Path, str]] = []
        try:
            for key, data in items:
                if isinstance(data, Path):
                    if _SYNCFS is None:
                        with open(data, "rb") as written:
                            os.fsync(written.fileno())
                    staged.append((data, key))
                    continue
                staged.append((write_staged(self.staging, data, sync=_SYNCFS is None), key))
            folders = {self._install(path, key, sync=False) for path, key in staged}
        except BaseException:
            for path, _key in staged:
                path.unlink(missing_ok=True)
            raise
        if _SYNCFS is not None:
            _sync_filesystem(self.root)
            return
        for folder in folders:
            _fsync_dir(folder)

    def put_file(self, key: str, path: Path, sha256: str | None = None) -> None:
        if Path(path).stat().st_dev != self.staging.stat().st_dev:
            with open(path, "rb") as f:
                self.put_stream(key, f)
            return
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        self._install(Path(path), key)

    def put_stream(self, key: str, stream: BinaryIO) -> Written:
        staged = new_staging_path(self.staging)
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
        return open(self._name(key), "rb")

    def open_range(self, key: str, start: int, end: int | None = None) -> BinaryIO:
        return io.BufferedReader(FileWindow(self._path(key), start, end), CHUNK)  # type: ignore[return-value]

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


class FileWindow(ByteWindow):
    """Bytes ``[start, end)`` of a file (clipped to its size), seekable within them."""

    def __init__(self, path: Path, start: int, end: int | None = None) -> None:
        if start < 0 or (end is not None and end < 0):
            raise ValueError("byte positions must not be negative")
        self._file = open(path, "rb")
        size = os.fstat(self._file.fileno()).st_size
        self._start = min(start, size)
        self._end = max(self._start, size if end is None else min(end, size))
        self._pos = 0

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        count = self._wanted(len(buffer))
        if count <= 0:
            return 0
        data = os.pread(self._file.fileno(), count, self._start + self._pos)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._pos = self._seek_target(offset, whence)
        return self._pos

    def close(self) -> None:
        if (file := getattr(self, "_file", None)) is not None:
            file.close()
        super().close()
