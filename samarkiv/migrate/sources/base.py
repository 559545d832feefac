"""The interface every migration source implements."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from ...core.archive import StoreResult
from ...core.ingest import ParsedInstance
from ...storage.filesystem import StagedFile
from ..job import PlannedInstance, PlannedStudy


class Deliver(Protocol):
    """Where a source hands what it pulls (the runner's Deliverer)."""

    def __call__(self, item: bytes | Path) -> StoreResult:
        """Store a pulled object now: Part 10 bytes, or a file the source names (filesystem sources)."""
        ...

    def defer(self, data: bytes | None, parsed: ParsedInstance | None = None, staged: StagedFile | None = None) -> None:
        """Hand over Part 10 bytes for the run's grouped commit (deferred.py): the source may
        answer the sender at once; the runner waits for the commit before it reads the index.
        ``parsed``, ``staged``: the bytes already parsed for the index and written into the blob
        store's staging folder (a C-GET worker's, getproc.py); ``data`` is None when ``staged``
        holds them."""
        ...


class SourceError(RuntimeError):
    """The source answered with an error that a retry will not fix."""


class SourceBusy(SourceError):
    """Refused, aborted or timed-out association, or a busy answer: retry later, with backoff."""


class SourceTimeout(SourceBusy):
    """The source did not answer within the job's timeout (an association request, a DIMSE
    message, a C-GET/C-MOVE sub-operation): retried like a refusal."""


class Source(Protocol):
    #: True when pulled objects come back to this process (``deliver``); False
    #: for C-MOVE, where the source sends them to a running ``samarkiv serve``.
    in_process: bool

    def studies(self) -> Iterator[tuple[str, str | None, str | None]]:
        """(Study Instance UID, Study Date, source ref) of every study to migrate."""
        ...

    def instances(self, study: PlannedStudy) -> list[PlannedInstance]:
        """What the source holds for ``study`` (SERIES/IMAGE level)."""
        ...

    def pull(self, study: PlannedStudy, wanted: list[PlannedInstance], everything: bool, deliver: Deliver) -> str:
        """Pull ``wanted`` (all of the study when ``everything``); return a note for the log/report."""
        ...

    def fetch(self, study: PlannedStudy, instance: PlannedInstance) -> bytes | None:
        """The object's bytes after the File Meta (dataset bytes), or None if the source cannot serve them."""
        ...
