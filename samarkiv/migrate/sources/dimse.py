"""A legacy DIMSE archive: C-FIND to enumerate, C-MOVE or C-GET to pull (PS3.4 Annex C).

Studies are enumerated at STUDY level in Study Date windows (C.6.2.1) that are
halved while an answer reaches ``max_results`` (many archives cap C-FIND
answers), then each study is listed at IMAGE level. C-MOVE sends the objects
to a running ``samarkiv serve`` (the job's ``move_aet``, which the source must
know); C-GET (C.4.3) brings them over the same association, with SCP/SCU role
selection for each storage SOP class (PS3.7 D.3.3.4), run by a worker process
that hands them to this one (getproc.py).
Every association is our own blocking-socket requestor (requestor.py), opened
for one query, one study's pull or one batch of listings and released at once,
so the job never holds more associations than it has threads using them.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator, Sequence
from datetime import date, timedelta
from typing import Any

from pydicom import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind as FIND,
)
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelGet as GET,
)
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelMove as MOVE,
)

from ...core.structure import inspect_buffer
from ..job import PlannedInstance, PlannedStudy
from . import getproc
from .base import Deliver, SourceBusy, SourceError
from .requestor import IMPLICIT_LE, Requestor, RetrieveResult, decode_identifier, encode_identifier

log = logging.getLogger(__name__)

TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLosslessSV1,
    JPEGLSLossless, JPEG2000Lossless, JPEG2000, RLELossless, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
)  # fmt: skip
# Used for C-GET when the source did not say which SOP classes a study holds.
COMMON_STORAGE = (
    "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1",
    "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.128", "1.2.840.10008.5.1.4.1.1.20",
    "1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.88.11", "1.2.840.10008.5.1.4.1.1.88.22",
    "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.104.1", "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.481.2",
    "1.2.840.10008.5.1.4.1.1.481.5", "1.2.840.10008.5.1.4.1.1.481.3", "1.2.840.10008.5.1.4.1.1.6", "1.2.840.10008.5.1.4.1.1.9.1.1",
)  # fmt: skip
MAX_CONTEXTS = 127  # PS3.8 9.3.2.2: odd context IDs 1-255; one is the GET context
SUCCESS = 0x0000  # C-STORE status we answer (PS3.4 B.2.3)


def _windows(start: date, end: date, days: int) -> Iterator[tuple[date, date]]:
    while start <= end:
        stop = min(end, start + timedelta(days=days - 1))
        yield start, stop
        start = stop + timedelta(days=1)


def _values(value: object) -> list[object]:
    """A multi-valued attribute's values (one value or none as a list)."""
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]


SERIES_UID, SOP_INSTANCE_UID, SOP_CLASS_UID = 0x0020000E, 0x00080018, 0x00080016


def _image_uids(data: bytes, transfer_syntax: str) -> tuple[str, str, str]:
    """(Series Instance UID, SOP Instance UID, SOP Class UID) of an IMAGE-level C-FIND answer,
    "" where absent. Read by walking its Implicit VR Little Endian elements (PS3.5 7.1.3):
    a listing has one answer per instance, and pydicom decoding them took most of the listing's
    time. Anything else (another syntax, an element of undefined length) is decoded by pydicom."""
    values: dict[int, str] = {}
    pos, end = 0, len(data)
    while transfer_syntax == IMPLICIT_LE and pos + 8 <= end:
        group, element, length = struct.unpack_from("<HHI", data, pos)
        if length == 0xFFFFFFFF or pos + 8 + length > end:
            break
        values[group << 16 | element] = data[pos + 8 : pos + 8 + length].rstrip(b"\x00 ").decode("ascii", "replace")
        pos += 8 + length
    if pos != end or transfer_syntax != IMPLICIT_LE:
        ds = decode_identifier(data, transfer_syntax)
        values = {tag: str(ds[tag].value or "") for tag in (SERIES_UID, SOP_INSTANCE_UID, SOP_CLASS_UID) if tag in ds}
    return values.get(SERIES_UID, ""), values.get(SOP_INSTANCE_UID, ""), values.get(SOP_CLASS_UID, "")


def _day(text: str) -> date:
    return date(int(text[:4]), int(text[4:6]), int(text[6:8]))


class DimseSource:
    """Options: host, port, called_aet, calling_aet, mode (``move``/``get``),
    move_aet, from_date/to_date (YYYYMMDD), window_days, max_results, timeout."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.host: str = options["host"]
        self.port: int = int(options["port"])
        self.called_aet: str = options.get("called_aet", "ANY-SCP")
        self.calling_aet: str = options.get("calling_aet", "SAMARKIV-MIG")
        self.mode: str = options.get("mode", "move")
        self.move_aet: str | None = options.get("move_aet")
        self.from_date: str | None = options.get("from_date")
        self.to_date: str | None = options.get("to_date")
        self.window_days: int = int(options.get("window_days") or 30)
        self.max_results: int = int(options.get("max_results") or 0)
        self.timeout: float = float(options.get("timeout") or 30)
        self.in_process = self.mode == "get"
        # C-GET pulls run in worker processes where they can be forked (getproc.py); ``staging``: the
        # blob store's staging folder, where they write each object (set by the runner, when it can use them)
        self._workers = getproc.GetWorkers() if self.in_process and getproc.available() else None
        self.staging: str | None = None
        if self.mode not in ("move", "get"):
            raise SourceError(f"mode must be move or get, not {self.mode!r}")
        if self.mode == "move" and not self.move_aet:
            raise SourceError("C-MOVE needs move_aet: the AE title of the samarkiv serve that receives")

    # --- associations ---------------------------------------------------------------------

    def _find(self, query: Dataset) -> list[Dataset]:
        """C-FIND over an association of its own, released at once (a source's
        association limit is shared with the pulls)."""
        assoc = Requestor(self.host, self.port, self.called_aet, self.calling_aet, self.timeout)
        assoc.open([(FIND, [ImplicitVRLittleEndian])], [])
        try:
            return assoc.find(FIND, query)
        finally:
            assoc.release()

    # --- enumerate ------------------------------------------------------------------------

    def _study_query(self, date_range: str) -> Dataset:
        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.StudyInstanceUID = ""
        q.StudyDate = date_range
        return q

    def _window(self, start: date, stop: date) -> Iterator[Dataset]:
        answers = self._find(self._study_query(f"{start:%Y%m%d}-{stop:%Y%m%d}"))
        if self.max_results and len(answers) >= self.max_results and stop > start:
            middle = start + (stop - start) // 2
            yield from self._window(start, middle)
            yield from self._window(middle + timedelta(days=1), stop)
        else:
            yield from answers

    def studies(self) -> Iterator[tuple[str, str | None, str | None]]:
        if self.from_date or self.to_date:
            start = _day(self.from_date or "19000101")
            stop = _day(self.to_date) if self.to_date else date.today()
            answers: Iterator[Dataset] = (a for s, e in _windows(start, stop, self.window_days) for a in self._window(s, e))
        else:
            answers = iter(self._find(self._study_query("")))
        for answer in answers:
            uid = str(answer.get("StudyInstanceUID", "") or "")
            if uid:
                yield uid, str(answer.get("StudyDate", "") or "") or None, None

    def instances(self, study: PlannedStudy) -> list[PlannedInstance]:
        """The study's instances, over one association (:meth:`instances_of`)."""
        found = self.instances_of([study])[0]
        if isinstance(found, SourceError):
            raise found
        return found

    def instances_of(self, studies: Sequence[PlannedStudy]) -> list[list[PlannedInstance] | SourceError]:
        """Each study's instances, all over one association: the run's lister asks for several
        studies at once, and the source sees one association and one STUDY-level query for
        them where it saw one of each per study.

        SOP Classes in Study (0008,0062) is asked first, at STUDY level for all of them (list of
        UID matching on the level's unique key, PS3.4 C.2.2.2.2): when the source names exactly
        one class for a study, every instance has it and its IMAGE-level query (one per study:
        keys above the query level are single-valued, C.4.1.2.2.1) leaves SOP Class UID out
        (Orthanc, for one, reads each file from disk to answer it: nine times slower).
        Otherwise it asks for it. A study whose listing failed comes back as the error; once
        the association is lost, so do the ones after it."""
        results: list[list[PlannedInstance] | SourceError] = []
        assoc = Requestor(self.host, self.port, self.called_aet, self.calling_aet, self.timeout)
        assoc.open([(FIND, [ImplicitVRLittleEndian])], [])
        try:
            try:
                only = self._single_classes(assoc, [s.study_instance_uid for s in studies])
            except SourceBusy:
                raise
            except SourceError as exc:  # e.g. no list of UID matching: each IMAGE level asks for the classes
                log.info("SOP Classes in Study of %d studies not answered: %s", len(studies), exc)
                only = {}
            for study in studies:
                if assoc.sock is None:  # lost with an earlier study's query
                    results.append(SourceBusy(f"listing study {study.study_instance_uid}: the association was lost"))
                    continue
                try:
                    results.append(self._image_level(assoc, study.study_instance_uid, only.get(study.study_instance_uid)))
                except SourceError as exc:
                    results.append(exc)
        finally:
            assoc.release()
        return results

    @staticmethod
    def _single_classes(assoc: Requestor, study_uids: list[str]) -> dict[str, str]:
        """Study Instance UID -> its one SOP class, for the studies where the source names
        exactly one in SOP Classes in Study (none for a source that ignores the attribute)."""
        asked = set(study_uids)
        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.StudyInstanceUID = study_uids if len(study_uids) > 1 else study_uids[0]
        q.SOPClassesInStudy = ""
        only = {}
        for answer in assoc.find(FIND, q):
            classes = {str(c) for c in _values(answer.get("SOPClassesInStudy")) if str(c)}
            uid = str(answer.get("StudyInstanceUID", "") or "")
            if len(classes) == 1 and uid in asked:
                only[uid] = classes.pop()
        return only

    @staticmethod
    def _image_level(assoc: Requestor, study_uid: str, only: str | None) -> list[PlannedInstance]:
        """One study's instances from an IMAGE-level query; ``only``: its one SOP class, if known."""
        q = Dataset()
        q.QueryRetrieveLevel = "IMAGE"
        q.StudyInstanceUID = study_uid
        q.SeriesInstanceUID = ""
        q.SOPInstanceUID = ""
        if only is None:
            q.SOPClassUID = ""
        found = []
        for data, syntax in assoc.find_encoded(FIND, q):
            series, sop, cls = _image_uids(data, syntax)
            if sop:
                found.append(PlannedInstance(series, sop, only or cls or None))
        return found

    # --- pull ---------------------------------------------------------------------------------

    def _identifiers(self, study: PlannedStudy, wanted: list[PlannedInstance], everything: bool) -> list[Dataset]:
        if everything:
            q = Dataset()
            q.QueryRetrieveLevel = "STUDY"
            q.StudyInstanceUID = study.study_instance_uid
            return [q]
        by_series: dict[str, list[str]] = {}
        for i in wanted:
            by_series.setdefault(i.series_instance_uid, []).append(i.sop_instance_uid)
        identifiers = []
        for series, uids in by_series.items():
            for start in range(0, len(uids), 100):  # UID list matching, PS3.4 C.2.2.2.2
                q = Dataset()
                q.QueryRetrieveLevel = "IMAGE"
                q.StudyInstanceUID = study.study_instance_uid
                q.SeriesInstanceUID = series
                q.SOPInstanceUID = uids[start : start + 100]
                identifiers.append(q)
        return identifiers

    def pull(self, study: PlannedStudy, wanted: list[PlannedInstance], everything: bool, deliver: Deliver) -> str:
        identifiers = self._identifiers(study, wanted, everything)
        if self.mode == "move":
            return self._move(identifiers)
        return self._get(identifiers, {i.sop_class_uid for i in wanted if i.sop_class_uid}, deliver)

    def _move(self, identifiers: list[Dataset]) -> str:
        assoc = Requestor(self.host, self.port, self.called_aet, self.calling_aet, self.timeout)
        assoc.open([(MOVE, [ImplicitVRLittleEndian])], [])
        notes = []
        try:
            for identifier in identifiers:
                notes.append(self._note(assoc.move(MOVE, identifier, str(self.move_aet)), "C-MOVE"))
        finally:
            assoc.release()
        return "; ".join(n for n in notes if n)

    def _get_contexts(self, sop_classes: set[str]) -> tuple[list[tuple[str, list[str]]], list[str]]:
        """The C-GET context, then one context per (storage class, syntax): the source keeps its own syntax."""
        classes = sorted(sop_classes) or list(COMMON_STORAGE)
        per_class = max(1, min(len(TRANSFER_SYNTAXES), (MAX_CONTEXTS - 1) // len(classes)))
        contexts: list[tuple[str, list[str]]] = [(GET, [ImplicitVRLittleEndian])]  # the identifier is encoded so
        roles = classes[: MAX_CONTEXTS - 1]
        for cls in roles:
            contexts.extend((cls, [ts]) for ts in TRANSFER_SYNTAXES[:per_class])
        return contexts[:MAX_CONTEXTS], roles

    def _get_association(self, sop_classes: set[str]) -> Requestor:
        assoc = Requestor(self.host, self.port, self.called_aet, self.calling_aet, self.timeout)
        assoc.open(*self._get_contexts(sop_classes))
        return assoc

    @staticmethod
    def _note(result: RetrieveResult, what: str = "C-GET") -> str:
        """A note for the job log from a final C-GET/C-MOVE response (PS3.4 C.4.2.1.5, C.4.3.1.4)."""
        if result.status in (0xA701, 0xA702):  # out of resources
            raise SourceBusy(f"{what}: source out of resources (0x{result.status:04X})")
        if result.status == 0xA801:
            raise SourceError(f"{what}: the source does not know the move destination (0x{result.status:04X})")
        if result.status == 0x0000:
            return ""
        return f"{what} status 0x{result.status:04X}, {result.failed} failed sub-operation(s)"

    def _get(self, identifiers: list[Dataset], sop_classes: set[str], deliver: Deliver) -> str:
        """C-GET over one association, each sub-operation handed to the run's grouped commit as it
        arrives, by a worker process (getproc.py) where there is one.

        Each C-STORE is answered as soon as its bytes are received, before its
        commit (the migration exception, deferred.py): the source keeps its
        copy, and what the job counts as migrated is read from the index after
        the commits.
        """
        if self._workers is not None:
            contexts, roles = self._get_contexts(sop_classes)
            job = getproc.GetJob(self.host, self.port, self.called_aet, self.calling_aet, self.timeout, contexts, roles,
                                 GET, [encode_identifier(i) for i in identifiers], self.staging)  # fmt: skip
            results = self._workers.get(job, deliver)
        else:

            def on_store(data: bytes) -> int:
                deliver.defer(bytes(data))  # the requestor's buffer, made an immutable object
                return SUCCESS

            with self._get_association(sop_classes) as assoc:
                results = [assoc.get(GET, identifier, on_store) for identifier in identifiers]
        return "; ".join(n for n in map(self._note, results) if n)

    def close(self) -> None:
        """End the C-GET worker processes."""
        if self._workers is not None:
            self._workers.close()

    def fetch(self, study: PlannedStudy, instance: PlannedInstance) -> bytes | None:
        """C-GET one instance into memory: the dataset bytes exactly as the source sent them."""
        received: list[bytes] = []

        def on_store(data: bytes) -> int:
            received.append(bytes(data[inspect_buffer(data).dataset_offset :]))
            return SUCCESS

        q = self._identifiers(study, [instance], False)[0]
        assoc = self._get_association({instance.sop_class_uid} if instance.sop_class_uid else set())
        try:
            self._note(assoc.get(GET, q, on_store))
        finally:
            assoc.release()
        return received[0] if received else None
