"""``samarkiv import``: files, folders, zip files and DICOMDIR media, in parallel."""

from __future__ import annotations

import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from .access.gate import StoreAudit
from .access.principal import Principal
from .core.archive import Archive, StoreOutcome, StoreResult


@dataclass(frozen=True)
class Item:
    """One object to import: a name for reports and a way to open its bytes."""

    name: str
    open: Callable[[], AbstractContextManager[BinaryIO]]
    size: int


@dataclass
class ImportSummary:
    outcomes: Counter[str] = field(default_factory=Counter)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    bytes: int = 0

    def add(self, item: Item, result: StoreResult) -> None:
        self.outcomes[result.outcome.value] += 1
        if result.outcome is StoreOutcome.REJECTED:
            self.rejected.append((item.name, result.message))
        else:
            self.bytes += result.size


def _dicomdir_files(dicomdir: Path) -> list[Path]:
    """Files a DICOMDIR references (PS3.10 section 8.6, PS3.3 F.3)."""
    ds = dcmread(dicomdir, stop_before_pixels=True)
    files = []
    for record in ds.get("DirectoryRecordSequence", []):
        ref = record.get("ReferencedFileID")
        if ref:
            parts = [ref] if isinstance(ref, str) else list(ref)
            files.append(dicomdir.parent.joinpath(*parts))
    return files


def _zip_items(path: Path) -> Iterator[Item]:
    with zipfile.ZipFile(path) as archive:
        infos = [info for info in archive.infolist() if not info.is_dir()]
    for info in infos:
        if Path(info.filename).name.upper() == "DICOMDIR":
            continue

        def opener(info: zipfile.ZipInfo = info) -> AbstractContextManager[BinaryIO]:
            return _ZipMember(path, info)

        yield Item(f"{path}!{info.filename}", opener, info.file_size)


class _ZipMember(AbstractContextManager):  # type: ignore[type-arg]
    def __init__(self, path: Path, info: zipfile.ZipInfo) -> None:
        self._zip = zipfile.ZipFile(path)
        self._member = self._zip.open(info)

    def __enter__(self) -> BinaryIO:
        return self._member  # type: ignore[return-value]

    def __exit__(self, *exc: object) -> None:
        self._member.close()
        self._zip.close()


def _file_item(path: Path) -> Item:
    return Item(str(path), lambda: open(path, "rb"), path.stat().st_size)


def discover(paths: list[Path]) -> Iterator[Item]:
    """Every object under ``paths``; DICOMDIR files name their referenced files."""
    for path in paths:
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                if child.name.upper() == "DICOMDIR":
                    continue  # its referenced files are walked anyway
                yield from discover([child])
        elif path.name.upper() == "DICOMDIR":
            try:
                referenced = _dicomdir_files(path)
            except (InvalidDicomError, OSError) as exc:
                raise ValueError(f"{path}: unreadable DICOMDIR ({exc})") from None
            for file in referenced:
                yield _file_item(file)
        elif zipfile.is_zipfile(path):
            yield from _zip_items(path)
        elif path.is_file():
            yield _file_item(path)
        else:
            raise ValueError(f"{path}: no such file or folder")


def import_items(
    archive: Archive,
    items: list[Item],
    workers: int,
    on_done: Callable[[Item, StoreResult], None] | None = None,
    by: Principal | None = None,
) -> ImportSummary:
    """Store ``items``; each study stored is audited once as stored ``by`` the operator."""
    summary = ImportSummary()
    audit = StoreAudit(archive, by, "import")

    def store(item: Item) -> tuple[Item, StoreResult]:
        try:
            with item.open() as stream:
                return item, archive.store_stream(stream, source_aet=None)
        except OSError as exc:
            return item, StoreResult(StoreOutcome.REJECTED, message=f"cannot read: {exc}")

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for item, result in pool.map(store, items):
            summary.add(item, result)
            audit.note(result.study_uid)
            if on_done is not None:
                on_done(item, result)
    # Small objects sit in the write-back journal; a running server would move
    # them when idle, but an import may run alone: move them now.
    archive.flush_all()
    return summary
