"""C-STORE SCP (PS3.4 Annex B): received bytes go to the core untouched.

Each association's stores are audited once per study, when its first instance
is stored (the ``store`` action, like PS3.15 A.5.3.2 "DICOM Instances
Transferred"; access/gate.py :class:`StoreAudit`, on both C-STORE paths). Senders are
admitted by calling AE title at association time (samarkiv/access/dimse.py).
"""

from __future__ import annotations

import logging
import threading
from weakref import WeakKeyDictionary

from pydicom.dataset import Dataset
from pynetdicom import evt

from ..access.gate import StoreAudit
from ..core.archive import Archive, RejectReason, StoreOutcome, StoreResult
from .find import principal_of

log = logging.getLogger(__name__)

# PS3.4 Table B.2-1 and PS3.7 Annex C; Cxxx codes are ours (see docs/conformance.md).
STATUS_FOR_REASON = {
    RejectReason.INVALID: 0xC000,  # Error: cannot understand
    RejectReason.PATIENT_CONFLICT: 0xC001,  # Error: study belongs to another patient
    RejectReason.DUPLICATE_CONFLICT: 0x0111,  # Failure: duplicate SOP Instance
    RejectReason.OUT_OF_RESOURCES: 0xA700,  # Refused: out of resources
    RejectReason.NOT_AUTHORISED: 0x0124,  # Refused: not authorized (PS3.7 C.5.21)
}
SOP_CLASS_MISMATCH = 0xA900  # Error: data set does not match SOP class


def status_for(result: StoreResult) -> Dataset:
    status = Dataset()
    if result.outcome is not StoreOutcome.REJECTED:
        status.Status = 0x0000
        return status
    code = STATUS_FOR_REASON[result.reason or RejectReason.INVALID]
    if result.reason is RejectReason.INVALID and "SOP Class UID" in result.message:
        code = SOP_CLASS_MISMATCH
    status.Status = code
    status.ErrorComment = result.message[:64]
    return status


_audits: WeakKeyDictionary[object, StoreAudit] = WeakKeyDictionary()


def handle_store(event: evt.Event, archive: Archive, inflight: "InFlight") -> Dataset:
    """EVT_C_STORE handler; the dataset arrives as a staging file (chunked receive)."""
    request = event.request
    with inflight:
        result = archive.store_file(
            event.dataset_path,
            source_aet=event.assoc.requestor.ae_title,
            expected_sop_instance_uid=str(request.AffectedSOPInstanceUID),
            expected_sop_class_uid=str(request.AffectedSOPClassUID),
        )
    audit = _audits.get(event.assoc)
    if audit is None:
        audit = _audits[event.assoc] = StoreAudit(archive, principal_of(archive, event.assoc), "C-STORE")
    audit.note(result.study_uid)  # None for a rejected store
    return status_for(result)


class InFlight:
    """Counts stores in progress, so shutdown can wait for them."""

    def __init__(self) -> None:
        self._count = 0
        self._cond = threading.Condition()

    def __enter__(self) -> None:
        with self._cond:
            self._count += 1

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._count -= 1
            self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._count == 0, timeout)
