"""A legacy DIMSE archive: C-FIND to enumerate, C-MOVE or C-GET to pull (PS3.4 Annex C).

Studies are enumerated at STUDY level in Study Date windows (C.6.2.1) that are
halved while an answer reaches ``max_results`` (many archives cap C-FIND
answers), then each study is listed at IMAGE level. C-MOVE sends the objects
to a running ``samarkiv serve`` (the job's ``move_aet``, which the source must
know); C-GET (C.4.3) brings them into this process over the same association,
with SCP/SCU role selection for each storage SOP class (PS3.7 D.3.3.4).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
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
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind as FIND,
)
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelGet as GET,
)
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelMove as MOVE,
)

from ...core.archive import StoreOutcome, StoreResult
from ..job import PlannedInstance, PlannedStudy
from .base import Deliver, SourceBusy, SourceError

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
# C-STORE statuses we answer (PS3.4 B.2.3)
SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000


def _windows(start: date, end: date, days: int) -> Iterator[tuple[date, date]]:
    while start <= end:
        stop = min(end, start + timedelta(days=days - 1))
        yield start, stop
        start = stop + timedelta(days=1)


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
        if self.mode not in ("move", "get"):
            raise SourceError(f"mode must be move or get, not {self.mode!r}")
        if self.mode == "move" and not self.move_aet:
            raise SourceError("C-MOVE needs move_aet: the AE title of the samarkiv serve that receives")

    # --- associations ---------------------------------------------------------------------

    def _ae(self) -> AE:
        ae = AE(ae_title=self.calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        ae.connection_timeout = self.timeout
        ae.maximum_pdu_size = 0
        return ae

    def _associate(self, ae: AE, **kwargs: Any):  # type: ignore[no-untyped-def]
        assoc = ae.associate(self.host, self.port, ae_title=self.called_aet, **kwargs)
        if not assoc.is_established:
            what = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "not established"
            raise SourceBusy(f"association with {self.called_aet}@{self.host}:{self.port} {what}")
        return assoc

    def _find(self, query: Dataset) -> list[Dataset]:
        ae = self._ae()
        ae.add_requested_context(FIND)
        assoc = self._associate(ae)
        answers: list[Dataset] = []
        try:
            for status, identifier in assoc.send_c_find(query, FIND):
                code = getattr(status, "Status", None)
                if code is None:
                    raise SourceBusy("C-FIND: no answer (timeout or abort)")
                if code in (0xFF00, 0xFF01) and identifier is not None:
                    answers.append(identifier)
                elif code not in (0x0000, 0xFF00, 0xFF01):
                    if code == 0xA700:
                        raise SourceBusy(f"C-FIND failed: status 0x{code:04X} (out of resources)")
                    raise SourceError(f"C-FIND failed: status 0x{code:04X}")
        finally:
            assoc.release()
        return answers

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
        q = Dataset()
        q.QueryRetrieveLevel = "IMAGE"
        q.StudyInstanceUID = study.study_instance_uid
        q.SeriesInstanceUID = ""
        q.SOPInstanceUID = ""
        q.SOPClassUID = ""
        found = []
        for answer in self._find(q):
            sop = str(answer.get("SOPInstanceUID", "") or "")
            if sop:
                cls = str(answer.get("SOPClassUID", "") or "") or None
                found.append(PlannedInstance(str(answer.get("SeriesInstanceUID", "")), sop, cls))
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
        ae = self._ae()
        ae.add_requested_context(MOVE)
        assoc = self._associate(ae)
        notes = []
        try:
            for identifier in identifiers:
                notes.append(self._sub_operations(assoc.send_c_move(identifier, self.move_aet, MOVE), "C-MOVE"))
        finally:
            assoc.release()
        return "; ".join(n for n in notes if n)

    @staticmethod
    def _sub_operations(responses, what: str) -> str:  # type: ignore[no-untyped-def]
        final = None
        for status, _identifier in responses:
            if getattr(status, "Status", None) is None:
                raise SourceBusy(f"{what}: no answer (timeout or abort)")
            final = status
        if final is None:
            raise SourceBusy(f"{what}: no answer")
        code = final.Status
        if code == 0xA701 or code == 0xA702:  # out of resources (PS3.4 C.4.2.1.5)
            raise SourceBusy(f"{what}: source out of resources (0x{code:04X})")
        if code == 0xA801:
            raise SourceError(f"{what}: the source does not know the move destination (0x{code:04X})")
        if code == 0x0000:
            return ""
        failed = int(final.get("NumberOfFailedSuboperations", 0) or 0)
        return f"{what} status 0x{code:04X}, {failed} failed sub-operation(s)"

    def _get_ae(self, sop_classes: set[str]) -> tuple[AE, list]:  # type: ignore[type-arg]
        ae = self._ae()
        ae.add_requested_context(GET)
        classes = sorted(sop_classes) or list(COMMON_STORAGE)
        per_class = max(1, min(len(TRANSFER_SYNTAXES), (MAX_CONTEXTS - 1) // len(classes)))
        roles = []
        for cls in classes[: MAX_CONTEXTS - 1]:
            for ts in TRANSFER_SYNTAXES[:per_class]:
                ae.add_requested_context(cls, ts)  # one syntax per context: the source keeps its own
            roles.append(build_role(cls, scp_role=True))
        return ae, roles

    def _get(self, identifiers: list[Dataset], sop_classes: set[str], deliver: Deliver) -> str:
        def on_store(event) -> int:  # type: ignore[no-untyped-def]
            try:
                result = deliver(event.encoded_dataset(include_meta=True))
            except Exception:  # noqa: BLE001 - answer the source, never leave it hanging
                log.exception("storing a C-GET sub-operation failed")
                return OUT_OF_RESOURCES
            return _store_status(result)

        ae, roles = self._get_ae(sop_classes)
        assoc = self._associate(ae, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        notes = []
        try:
            for identifier in identifiers:
                notes.append(self._sub_operations(assoc.send_c_get(identifier, GET), "C-GET"))
        finally:
            assoc.release()
        return "; ".join(n for n in notes if n)

    def fetch(self, study: PlannedStudy, instance: PlannedInstance) -> bytes | None:
        """C-GET one instance into memory: the dataset bytes exactly as the source sent them."""
        received: list[bytes] = []

        def on_store(event) -> int:  # type: ignore[no-untyped-def]
            received.append(event.encoded_dataset(include_meta=False))
            return SUCCESS

        q = self._identifiers(study, [instance], False)[0]
        ae, roles = self._get_ae({instance.sop_class_uid} if instance.sop_class_uid else set())
        assoc = self._associate(ae, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        try:
            self._sub_operations(assoc.send_c_get(q, GET), "C-GET")
        finally:
            assoc.release()
        return received[0] if received else None


def _store_status(result: StoreResult) -> int:
    if result.outcome is not StoreOutcome.REJECTED:
        return SUCCESS
    return OUT_OF_RESOURCES if result.reason == "out-of-resources" else CANNOT_UNDERSTAND


