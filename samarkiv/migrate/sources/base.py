"""The interface every migration source implements."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from ...core.archive import StoreResult
from ..job import PlannedInstance, PlannedStudy

# A pulled object: Part 10 bytes, or a file the source names (filesystem sources).
Deliver = Callable[[bytes | Path], StoreResult]


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
