"""Storage Commitment Push Model SCP (PS3.4 Annex J).

An N-ACTION (Action Type ID 1, Request Storage Commitment, PS3.4 J.3.2) is
answered at once; each referenced instance is then checked in a background
thread: it must be stored, under the SOP Class the request names, and its
blob must still hash to the SHA-256 the index recorded. The outcome goes back
in an N-EVENT-REPORT (Event Type ID 1 all committed, 2 some failed; PS3.4
J.3.3), on the requesting association while it is open, otherwise on a new
association to the requester's AE title (a configured node), on which this
archive takes the SCP role by SCP/SCU Role Selection (PS3.4 J.3.3, PS3.7
D.3.3.4).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pynetdicom import AE, build_context, build_role, evt
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ABORT, A_P_ABORT, A_RELEASE
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]
from sqlalchemy.exc import SQLAlchemyError

from ..core.archive import Archive
from ..core.ingest import is_valid_uid
from ..index.catalog import StoredInstance
from ..index.retrieval import resolve_node
from ..storage.blobstore import sha256_of
from .net import NO_DELAY_HANDLERS
from .retrieve import IDENTIFIER_SYNTAXES

log = logging.getLogger(__name__)

WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"  # PS3.4 J.3.5
REQUEST_COMMITMENT = 1  # Action Type ID (PS3.4 Table J.3-1)
ALL_COMMITTED = 1  # Event Type IDs (PS3.4 Table J.3-2)
SOME_FAILED = 2

# N-ACTION statuses (PS3.7 Annex C)
SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT_INSTANCE = 0x0112
INVALID_ARGUMENT_VALUE = 0x0115
NO_SUCH_SOP_CLASS = 0x0118
MISSING_ATTRIBUTE = 0x0120
MISSING_ATTRIBUTE_VALUE = 0x0121
NO_SUCH_ACTION = 0x0123

# Failure Reason values (PS3.3 C.14.1.1)
REASON_PROCESSING_FAILURE = 0x0110
REASON_NO_SUCH_OBJECT = 0x0112
REASON_CLASS_INSTANCE_CONFLICT = 0x0119

# Delays before each attempt to open a new association for the report.
DELIVERY_DELAYS = (0.0, 2.0, 10.0)
# How long a job waits for its N-ACTION response to go out.
RESPONSE_WAIT = 30.0

_message_ids = itertools.count(1)


class BadRequest(Exception):
    """The N-ACTION cannot be accepted; ``status`` is its N-ACTION status."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment


@dataclass
class Job:
    """One commitment request between its N-ACTION and its N-EVENT-REPORT."""

    transaction_uid: str
    references: list[tuple[str, str]]  # (SOP Class UID, SOP Instance UID)
    requester_aet: str
    assoc: Association
    response_sent: threading.Event = field(default_factory=threading.Event)


@dataclass
class Outcome:
    committed: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str, int]] = field(default_factory=list)  # with Failure Reason


# --- request ---------------------------------------------------------------------------


def _text(ds: Dataset, keyword: str) -> str | None:
    """The value of ``keyword``; None if absent, "" if empty."""
    if keyword not in ds:
        return None
    value = ds[keyword].value
    return "" if value is None else str(value).strip(" \x00")


def _required(ds: Dataset, keyword: str) -> str:
    value = _text(ds, keyword)
    if value is None:
        raise BadRequest(MISSING_ATTRIBUTE, f"{keyword} is missing")
    if not value:
        raise BadRequest(MISSING_ATTRIBUTE_VALUE, f"{keyword} is empty")
    return value


def parse_action(event: evt.Event) -> tuple[str, list[tuple[str, str]]]:
    """Transaction UID and references of an N-ACTION (PS3.4 Table J.3-1); raise BadRequest."""
    request = event.request
    if str(request.RequestedSOPClassUID) != StorageCommitmentPushModel:
        raise BadRequest(NO_SUCH_SOP_CLASS, "not a Storage Commitment Push Model request")
    if str(request.RequestedSOPInstanceUID) != WELL_KNOWN_INSTANCE:
        raise BadRequest(NO_SUCH_OBJECT_INSTANCE, "use the well-known instance 1.2.840.10008.1.20.1.1")
    if event.action_type != REQUEST_COMMITMENT:
        raise BadRequest(NO_SUCH_ACTION, f"unknown Action Type ID {event.action_type}")
    if request.ActionInformation is None:
        raise BadRequest(MISSING_ATTRIBUTE, "no Action Information")
    try:
        info = event.action_information
        transaction_uid = _required(info, "TransactionUID")
        if not is_valid_uid(transaction_uid):
            raise BadRequest(INVALID_ARGUMENT_VALUE, "TransactionUID is not a UID")
        if "ReferencedSOPSequence" not in info:
            raise BadRequest(MISSING_ATTRIBUTE, "ReferencedSOPSequence is missing")
        items = list(info.ReferencedSOPSequence or [])
        if not items:
            raise BadRequest(MISSING_ATTRIBUTE_VALUE, "ReferencedSOPSequence is empty")
        references = [
            (_required(item, "ReferencedSOPClassUID"), _required(item, "ReferencedSOPInstanceUID"))
            for item in items
        ]
    except BadRequest:
        raise
    except Exception as exc:  # pydicom decodes lazily; garbage fails here  # noqa: BLE001
        raise BadRequest(PROCESSING_FAILURE, f"Action Information cannot be decoded ({type(exc).__name__})") from None
    return transaction_uid, references


# --- verification ----------------------------------------------------------------------


def _blob_intact(archive: Archive, stored: StoredInstance) -> bool:
    """Re-hash the blob now and compare it with the index (PS3.4 J.3.1: the SCP
    commits only to what it holds intact)."""
    try:
        with archive.open_instance(stored) as f:
            size, digest = sha256_of(f)
    except OSError as exc:
        archive.metrics.errors.labels("blob-missing").inc()
        log.error("storage commitment: blob %s cannot be read: %s", stored.blob_key, exc)
        return False
    if digest != stored.sha256 or size != stored.size:
        archive.metrics.errors.labels("blob-corrupt").inc()
        log.error("storage commitment: blob %s no longer matches its checksum", stored.blob_key)
        return False
    return True


def verify(archive: Archive, references: list[tuple[str, str]]) -> Outcome:
    """Sort the references into committed and failed (with a Failure Reason)."""
    outcome = Outcome()
    try:
        found = archive.catalog.instances_by_uid(list(dict.fromkeys(uid for _c, uid in references)))
    except SQLAlchemyError as exc:
        archive.metrics.errors.labels("commitment-index").inc()
        log.error("storage commitment: index lookup failed: %s", exc)
        outcome.failed = [(c, i, REASON_PROCESSING_FAILURE) for c, i in references]
        return outcome
    intact: dict[str, bool] = {}
    for sop_class, sop_instance in references:
        stored = found.get(sop_instance)
        if stored is None:
            reason: int | None = REASON_NO_SUCH_OBJECT
        elif stored.sop_class_uid != sop_class:
            reason = REASON_CLASS_INSTANCE_CONFLICT
        else:
            if sop_instance not in intact:
                intact[sop_instance] = _blob_intact(archive, stored)
            reason = None if intact[sop_instance] else REASON_PROCESSING_FAILURE
        if reason is None:
            outcome.committed.append((sop_class, sop_instance))
        else:
            outcome.failed.append((sop_class, sop_instance, reason))
            log.debug("storage commitment: %s failed with reason 0x%04X", sop_instance, reason)
    return outcome


def event_report(transaction_uid: str, outcome: Outcome, retrieve_aet: str) -> tuple[int, Dataset]:
    """Event Type ID and Event Information of the report (PS3.4 Tables J.3-2, J.3-3)."""
    info = Dataset()
    info.TransactionUID = transaction_uid
    info.RetrieveAETitle = retrieve_aet
    if outcome.committed:
        info.ReferencedSOPSequence = []
        for sop_class, sop_instance in outcome.committed:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop_instance
            info.ReferencedSOPSequence.append(item)
    if not outcome.failed:
        return ALL_COMMITTED, info
    info.FailedSOPSequence = []
    for sop_class, sop_instance, reason in outcome.failed:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        item.FailureReason = reason
        info.FailedSOPSequence.append(item)
    return SOME_FAILED, info


def _hold_reactor(assoc: Association, timeout: float = 10.0) -> bool:
    """Stop ``assoc``'s reactor at its checkpoint, as pynetdicom's own send_*()
    methods do before a request, so that it neither takes the response nor ends
    the association meanwhile; False if the reactor has ended or does not stop.

    pynetdicom's methods wait for the pause without a limit, and spin for ever
    on a reactor that a release has just ended. The caller must let the reactor
    go with ``assoc._reactor_checkpoint.set()`` in every case.
    """
    assoc._reactor_checkpoint.clear()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and assoc.is_alive():
        if assoc._is_paused:
            time.sleep(0.005)  # the flag lags the reactor by a statement: look again
            if assoc._is_paused:
                return True
        else:
            time.sleep(0.001)
    return False


def _closing(assoc: Association) -> bool:
    """True if the peer's next PDU ends the association (release request or abort).

    Only peeks: ``acse.is_release_requested()`` would take the request away
    from the association's reactor, which must answer it.
    """
    return isinstance(assoc.dul.peek_next_pdu(), (A_RELEASE, A_ABORT, A_P_ABORT))


# --- the service -----------------------------------------------------------------------


class CommitmentService:
    """Accepts commitment requests and delivers their reports."""

    def __init__(self, archive: Archive, ae: AE) -> None:
        self.archive = archive
        self.ae = ae
        self._lock = threading.Lock()
        self._awaiting: dict[tuple[int, int], Job] = {}

    def on_action(self, event: evt.Event) -> tuple[int | Dataset, Dataset | None]:
        """EVT_N_ACTION handler: accept or refuse the request, never wait for the checks."""
        requester = str(event.assoc.requestor.ae_title).strip()
        try:
            transaction_uid, references = parse_action(event)
        except BadRequest as bad:
            log.warning("storage commitment from %s refused (0x%04X): %s", requester, bad.status, bad.comment)
            status = Dataset()
            status.Status = bad.status
            status.ErrorComment = bad.comment[:64]
            return status, None
        log.info(
            "storage commitment %s from %s: %d instance(s)", transaction_uid, requester, len(references)
        )
        job = Job(transaction_uid, references, requester, event.assoc)
        with self._lock:
            self._awaiting[(id(event.assoc), int(event.request.MessageID))] = job
        threading.Thread(target=self._run, args=(job,), name="storage-commitment", daemon=True).start()
        return SUCCESS, None

    def on_sent(self, event: evt.Event) -> None:
        """EVT_DIMSE_SENT handler: the N-ACTION response is out, so the report may follow."""
        message = event.message
        if type(message).__name__ != "N_ACTION_RSP":
            return
        key = (id(event.assoc), int(message.command_set.MessageIDBeingRespondedTo))
        with self._lock:
            job = self._awaiting.pop(key, None)
        if job is not None:
            job.response_sent.set()

    def _run(self, job: Job) -> None:
        try:
            outcome = verify(self.archive, job.references)
            event_type, info = event_report(job.transaction_uid, outcome, self.archive.settings.aet)
            log.info(
                "storage commitment %s: %d committed, %d failed",
                job.transaction_uid,
                len(outcome.committed),
                len(outcome.failed),
            )
            if not job.response_sent.wait(RESPONSE_WAIT):
                log.warning("storage commitment %s: N-ACTION response not sent", job.transaction_uid)
            if not self._report_on_same_association(job, event_type, info):
                self._report_on_new_association(job, event_type, info)
        except Exception:  # a worker thread must not die silently
            self.archive.metrics.errors.labels("commitment").inc()
            log.exception("storage commitment %s: report failed", job.transaction_uid)
        finally:
            with self._lock:
                for key, waiting in list(self._awaiting.items()):
                    if waiting is job:
                        del self._awaiting[key]

    def _report_on_same_association(self, job: Job, event_type: int, info: Dataset) -> bool:
        assoc = job.assoc
        if not assoc.is_established:
            return False
        held = _hold_reactor(assoc)
        try:
            if not held or not assoc.is_established or _closing(assoc):
                return False
            status, _reply = assoc.send_n_event_report(
                info, event_type, StorageCommitmentPushModel, WELL_KNOWN_INSTANCE, next(_message_ids) % 65536
            )
        except (RuntimeError, ValueError) as exc:  # closed meanwhile, or no usable context
            log.info("storage commitment %s: not sent on the request's association: %s", job.transaction_uid, exc)
            return False
        finally:
            assoc._reactor_checkpoint.set()
        return self._delivered(job, status, "the request's association")

    def _report_on_new_association(self, job: Job, event_type: int, info: Dataset) -> None:
        """Open an association to the requester, proposing the SCP role (PS3.4 J.3.3)."""
        for delay in DELIVERY_DELAYS:
            time.sleep(delay)
            try:
                address = resolve_node(self.archive.settings, self.archive.catalog, job.requester_aet)
            except SQLAlchemyError as exc:
                log.error("storage commitment: node lookup failed: %s", exc)
                continue
            if address is None:
                self.archive.metrics.errors.labels("commitment-undeliverable").inc()
                log.warning(
                    "storage commitment %s: requester %s is not a configured node; report not delivered",
                    job.transaction_uid,
                    job.requester_aet,
                )
                return
            assoc = self.ae.associate(
                address[0],
                address[1],
                contexts=[build_context(StorageCommitmentPushModel, IDENTIFIER_SYNTAXES)],
                ae_title=job.requester_aet,
                ext_neg=[build_role(StorageCommitmentPushModel, scp_role=True)],
                evt_handlers=NO_DELAY_HANDLERS,
            )
            if not assoc.is_established:
                log.warning(
                    "storage commitment %s: cannot associate with %s", job.transaction_uid, job.requester_aet
                )
                continue
            try:
                status, _reply = assoc.send_n_event_report(
                    info, event_type, StorageCommitmentPushModel, WELL_KNOWN_INSTANCE, next(_message_ids) % 65536
                )
            except (RuntimeError, ValueError) as exc:
                log.warning("storage commitment %s: report not sent: %s", job.transaction_uid, exc)
                continue
            finally:
                if assoc.is_established:
                    assoc.release()
            if self._delivered(job, status, f"a new association to {job.requester_aet}"):
                return
        self.archive.metrics.errors.labels("commitment-undeliverable").inc()
        log.error("storage commitment %s: report not delivered", job.transaction_uid)

    def _delivered(self, job: Job, status: Dataset, route: str) -> bool:
        """True if the peer answered (whatever it answered: it has the report)."""
        code = status.get("Status")
        if code is None:
            log.warning("storage commitment %s: no response on %s", job.transaction_uid, route)
            return False
        if code != SUCCESS:
            log.warning("storage commitment %s: peer answered 0x%04X on %s", job.transaction_uid, code, route)
        else:
            log.info("storage commitment %s: report delivered on %s", job.transaction_uid, route)
        return True


def handlers(archive: Archive, ae: AE) -> list[tuple[evt.EventType, Callable]]:
    """Add the Storage Commitment Push Model context; return its handlers."""
    # scu_role/scp_role: accept a requester's role selection proposal as it comes.
    ae.add_supported_context(StorageCommitmentPushModel, IDENTIFIER_SYNTAXES, scu_role=True, scp_role=True)
    service = CommitmentService(archive, ae)
    return [(evt.EVT_N_ACTION, service.on_action), (evt.EVT_DIMSE_SENT, service.on_sent)]
