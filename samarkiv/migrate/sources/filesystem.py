"""A legacy archive's folders or DICOMDIR media (PS3.10 8.6): import, or index in place.

Enumeration reads every file's header once (stopping before Pixel Data) and
groups the files by study; the file path is each instance's source ref, so a
pull (and a verification) reopens exactly that file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from ...importer import discover
from ..job import PlannedInstance, PlannedStudy
from .base import Deliver, SourceError


class FilesystemSource:
    """Options: paths (files, folders, DICOMDIRs), in_place."""

    in_process = True

    def __init__(self, options: dict[str, Any]) -> None:
        self.paths = [Path(p) for p in options.get("paths", [])]
        if not self.paths:
            raise SourceError("a filesystem source needs at least one path")
        self._plan: dict[str, list[PlannedInstance]] | None = None
        self._dates: dict[str, str | None] = {}

    def _walk(self) -> dict[str, list[PlannedInstance]]:
        if self._plan is not None:
            return self._plan
        plan: dict[str, list[PlannedInstance]] = {}
        try:
            items = list(discover(self.paths))
        except ValueError as exc:
            raise SourceError(str(exc)) from None
        for item in items:
            if "!" in item.name:
                continue  # zip members cannot be indexed in place; import them with `samarkiv import`
            path = Path(item.name)
            try:
                ds = dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "StudyDate"])
            except (InvalidDicomError, OSError, ValueError):
                continue  # not DICOM: a legacy folder holds other files too
            study, sop = str(ds.get("StudyInstanceUID", "") or ""), str(ds.get("SOPInstanceUID", "") or "")
            if not study or not sop:
                continue
            self._dates.setdefault(study, str(ds.get("StudyDate", "") or "") or None)
            plan.setdefault(study, []).append(
                PlannedInstance(str(ds.get("SeriesInstanceUID", "")), sop, str(ds.get("SOPClassUID", "") or "") or None, str(path.resolve()), item.size)
            )
        self._plan = plan
        return plan

    def studies(self) -> Iterator[tuple[str, str | None, str | None]]:
        for study in self._walk():
            yield study, self._dates.get(study), None

    def instances(self, study: PlannedStudy) -> list[PlannedInstance]:
        if self._plan is None and study.study_instance_uid not in self._walk():
            return []
        return list(self._walk().get(study.study_instance_uid, []))

    def pull(self, study: PlannedStudy, wanted: list[PlannedInstance], everything: bool, deliver: Deliver) -> str:
        unreadable = 0
        for instance in wanted:
            if instance.source_ref is None or not Path(instance.source_ref).is_file():
                unreadable += 1
                continue
            deliver(Path(instance.source_ref))
        return f"{unreadable} file(s) gone from the source" if unreadable else ""

    def fetch(self, study: PlannedStudy, instance: PlannedInstance) -> bytes | None:
        if instance.source_ref is None:
            return None
        try:
            data = Path(instance.source_ref).read_bytes()
        except OSError:
            return None
        from ...core.structure import inspect_buffer

        return data[inspect_buffer(data).dataset_offset :]


