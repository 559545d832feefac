"""Associations served by our own Upper Layer code: C-ECHO, C-STORE, C-FIND, C-GET.

These are the hot paths (a modality sending, a viewer or PACS pulling a study),
and pynetdicom's 1 ms polling sleeps cap them far below what the archive can
do (see docs/architecture.md). Everything else goes to pynetdicom.

PS3.7 9.1.1 (C-STORE), 9.1.3 (C-GET), 9.1.5 (C-ECHO); PS3.8 section 9;
PS3.4 C.4.3 (C-GET SCP behaviour).

Access (issue 5): associations with a User Identity go to pynetdicom, so here
the principal is always the calling AE's service identity
(``Archive.service_principal``). C-FIND keeps only what it may see; a C-GET
sends only instances of the studies it may retrieve (one audit record per
study): the others are failed sub-operations (0xB000 when some went), or
the request fails with 0xC000 "not authorised" when none may go.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelGet,
)
from sqlalchemy.exc import SQLAlchemyError

from ..access.gate import StoreAudit
from ..access.principal import Principal
from ..core.archive import Archive, StoreResult
from ..core.structure import MalformedDataset, dataset_offset
from ..index.catalog import StoredInstance
from ..index.query import QueryError
from ..index.retrieval import IdentifierError, parse_identifier
from ..storage.blobstore import CHUNK
from . import pdu
from .contexts import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES, VERIFICATION
from .encode import encode_dataset
from .find import MODELS as FIND_MODELS
from .find import PENDING_WARNING, answer
from .retrieve import MODELS as RETRIEVE_MODELS
from .retrieve import transcode
from .store import InFlight, status_for

if TYPE_CHECKING:
    from ..migrate.deferred import MoveJob

log = logging.getLogger(__name__)

MAX_PDU_LENGTH = 1 << 20  # what we accept per P-DATA-TF; bounds memory per association
GET_MODELS = {
    uid: RETRIEVE_MODELS[uid]
    for uid in (PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelGet)
}
FAST_SYNTAXES = frozenset(STORAGE_SOP_CLASSES) | {VERIFICATION} | set(GET_MODELS) | set(FIND_MODELS)
_STORAGE = frozenset(STORAGE_SOP_CLASSES)
_TRANSFER_SYNTAXES = frozenset(TRANSFER_SYNTAXES)
_MAX_IDENTIFIER = 1 << 20

# C-GET statuses (PS3.4 Table C.4-3)
PENDING, SUCCESS, CANCELLED = 0xFF00, 0x0000, 0xFE00
SOME_FAILED, ALL_FAILED = 0xB000, 0xA702
IDENTIFIER_MISMATCH, UNABLE_TO_PROCESS, OUT_OF_RESOURCES = 0xA900, 0xC000, 0xA701
NOT_AUTHORISED = 0xC000  # Failed: Unable to process, with Error Comment "not authorised" (docs/conformance.md)



def _migration_intake(archive: Archive):  # type: ignore[no-untyped-def]
    from ..migrate.deferred import intake_for  # imported late: migrate imports dimse.pdu

    return intake_for(archive)


def is_fast(rq: pdu.AssociateRequest) -> bool:
    """Storage, Verification, C-FIND and C-GET only, role selection only for storage."""
    return (
        bool(rq.contexts)
        and all(cx.abstract_syntax in FAST_SYNTAXES for cx in rq.contexts)
        and all(uid in _STORAGE for uid in rq.roles)
        and not (rq.has_user_identity or rq.has_extended_negotiation)
    )


# When we send (C-GET sub-operations) on a context with several proposed
# syntaxes, the ones most stored objects are in come first, so that they go
# out as stored (re-encoding costs about 10 ms an object); the others follow
# the requestor's order, the retired big endian last. The pynetdicom path
# chooses the same way (contexts.TRANSFER_SYNTAXES).
_SENDING_PREFERENCE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def _choose_transfer_syntax(context: pdu.ProposedContext, *, sending: bool) -> str | None:
    """The requestor's first syntax we know (it knows best what it sends), or,
    when we are the sender, the one most likely to match what is stored."""
    known = [ts for ts in context.transfer_syntaxes if ts in _TRANSFER_SYNTAXES]
    if sending:
        known.sort(
            key=lambda ts: (
                _SENDING_PREFERENCE.index(ts) if ts in _SENDING_PREFERENCE else len(_SENDING_PREFERENCE),
                ts == ExplicitVRBigEndian,
            )
        )
    return known[0] if known else None


class _Spool:
    """A received data set: in memory while it is small enough for the write-back
    journal, spilled to a staging file beyond that."""

    def __init__(self, archive: Archive, head: bytes) -> None:
        self.archive = archive
        self.limit = archive.settings.inline_max_bytes
        self.buffer = bytearray(head)
        self.path: Path | None = None
        self.file: BinaryIO | None = None

    def write(self, data: memoryview) -> None:
        if self.file is not None:
            self.file.write(data)
            return
        self.buffer += data
        if len(self.buffer) > self.limit:
            self.path = self.archive.new_staging_file()
            self.file = open(self.path, "wb")
            self.file.write(self.buffer)
            self.buffer = bytearray()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()

    def discard(self) -> None:
        self.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)


class _Message:
    """A DIMSE message being received: its command and its data set's destination
    (a spool for C-STORE, a small buffer for query and retrieve identifiers)."""

    def __init__(self, context_id: int, command: dict[int, int | str], sink: _Spool | BytesIO) -> None:
        self.context_id = context_id
        self.command = command
        self.sink = sink


class FastAssociation:
    """One association: negotiation, then C-ECHO, C-STORE and C-GET requests."""

    def __init__(self, sock: socket.socket, archive: Archive, inflight: InFlight, admit, release) -> None:  # type: ignore[no-untyped-def]
        self.sock = sock
        self.archive = archive
        self.inflight = inflight
        self._admit, self._release = admit, release
        self.calling_ae = ""
        self.peer_max_pdu = 0
        self.contexts: dict[int, tuple[str, str]] = {}  # id -> (abstract syntax, transfer syntax)
        self.roles: dict[str, tuple[int, int]] = {}
        self._command = bytearray()
        self._message: _Message | None = None
        self._cancelled: set[int] = set()
        self._next_message_id = 1
        self._principal: Principal | None = None
        self._store_audit: StoreAudit | None = None
        self._migration: MoveJob | None = None  # the running C-MOVE migration this association carried
        self._offered = False  # to a worker process, once

    @property
    def principal(self) -> Principal | None:
        """The calling AE's service identity (looked up once per association)."""
        if self._principal is None:
            try:
                address = str(self.sock.getpeername()[0])
            except OSError:
                address = None
            self._principal = self.archive.service_principal(self.calling_ae, address)
        return self._principal

    # --- establishment (PS3.8 9.3.2-9.3.4) ---------------------------------------

    def negotiate(self) -> bool:
        (length,) = struct.unpack(">I", pdu.recv_exact(self.sock, 6)[2:6])
        rq = pdu.parse_associate_rq(bytes(pdu.recv_exact(self.sock, length)))
        self.calling_ae = rq.calling_ae
        self.peer_max_pdu = rq.max_pdu_length
        metrics = self.archive.metrics.associations
        rejection = None
        if rq.application_context != pdu.APPLICATION_CONTEXT:
            rejection = (1, 1, 2)  # permanent, service-user, application context not supported
        elif rq.called_ae != self.archive.settings.aet:
            log.warning("association from %s rejected: called AE title is not ours", rq.calling_ae)
            rejection = (1, 1, 7)  # permanent, service-user, called AE title not recognised
        elif not self._admit():
            rejection = (2, 3, 2)  # transient, service-provider, local limit exceeded
        if rejection:
            self.sock.sendall(pdu.encode_associate_rj(*rejection))
            metrics.labels("rejected").inc()
            return False
        results = []
        for cx in rq.contexts:
            ts = _choose_transfer_syntax(cx, sending=bool(rq.roles.get(cx.abstract_syntax, (0, 0))[1]))
            if ts is None:
                results.append((cx.context_id, pdu.TRANSFER_SYNTAXES_NOT_SUPPORTED, ""))
            else:
                results.append((cx.context_id, pdu.ACCEPTED, ts))
                self.contexts[cx.context_id] = (cx.abstract_syntax, ts)
        self.roles = rq.roles
        self.sock.sendall(pdu.encode_associate_ac(rq, results, MAX_PDU_LENGTH))
        metrics.labels("accepted").inc()
        return True

    def run(self) -> None:
        handed = False
        try:
            if not self.negotiate():
                return
            try:
                while self._serve_one_pdu():
                    if self._migration is not None and not self._offered and self._hand_off():
                        handed = True  # the worker has the association, and releases its slot
                        return
            finally:
                if not handed:
                    self._release()
        except (ConnectionError, TimeoutError, OSError) as exc:
            log.info("association from %s ended: %s", self.calling_ae or "?", exc)
        except Exception as exc:  # noqa: BLE001  (a protocol error, or a bug: abort, never hang)
            if isinstance(exc, pdu.ProtocolError):
                log.warning("aborting association from %s: %s", self.calling_ae or "?", exc)
            else:
                log.error("aborting association from %s: %s", self.calling_ae or "?", type(exc).__name__)
                log.debug("association failure detail", exc_info=True)
                self.archive.metrics.errors.labels("association").inc()
            self.archive.metrics.associations.labels("aborted").inc()
            try:
                self.sock.sendall(pdu.encode_abort())
            except OSError:
                pass
        finally:
            self._drop_partial_message()
            self.sock.close()

    # --- receiving ------------------------------------------------------------------

    def _read_pdu(self) -> tuple[int, bytearray]:
        header = pdu.recv_exact(self.sock, 6)
        (length,) = struct.unpack(">I", header[2:6])
        if length > MAX_PDU_LENGTH + 16:
            raise pdu.ProtocolError(f"PDU of {length} bytes exceeds the negotiated maximum")
        return header[0], pdu.recv_exact(self.sock, length)

    def _serve_one_pdu(self) -> bool:
        """Handle the next PDU; False once the association is over."""
        pdu_type, body = self._read_pdu()
        if pdu_type == pdu.P_DATA_TF:
            for context_id, control, data in pdu.iter_pdvs(body):
                self._on_pdv(context_id, control, data)
            return True
        if pdu_type == pdu.A_RELEASE_RQ:
            self.sock.sendall(pdu.encode_release_rp())
            return False
        if pdu_type == pdu.A_ABORT:
            self.archive.metrics.associations.labels("aborted").inc()
            return False
        raise pdu.ProtocolError(f"unexpected PDU type {pdu_type:#04x}")

    def _on_pdv(self, context_id: int, control: int, data: memoryview) -> None:
        if context_id not in self.contexts:
            raise pdu.ProtocolError(f"PDV on unaccepted presentation context {context_id}")
        last = bool(control & 2)
        if control & 1:
            self._command += data
            if last:
                command = pdu.decode_command(bytes(self._command))
                self._command.clear()
                self._on_command(context_id, command)
            return
        message = self._message
        if message is None:
            raise pdu.ProtocolError("data set fragment without a request")
        message.sink.write(data)
        if isinstance(message.sink, BytesIO) and message.sink.tell() > _MAX_IDENTIFIER:
            raise pdu.ProtocolError("identifier too large")
        if last:
            self._message = None
            field = message.command.get(pdu.COMMAND_FIELD)
            if field == pdu.C_STORE_RQ:
                message.sink.close()
                self._finish_store(message)
            elif field == pdu.C_FIND_RQ:
                self._serve_find(message)
            else:
                self._serve_get(message)

    def _on_command(self, context_id: int, command: dict[int, int | str]) -> None:
        field = command.get(pdu.COMMAND_FIELD)
        if field == pdu.C_ECHO_RQ:
            response = pdu.encode_response(pdu.C_ECHO_RSP, int(command.get(pdu.MESSAGE_ID, 0)), SUCCESS, VERIFICATION)
            self._send_command(context_id, response)
        elif field == pdu.C_CANCEL_RQ:
            self._cancelled.add(int(command.get(pdu.RESPONDED_TO, 0)))
        elif field in (pdu.C_STORE_RQ, pdu.C_GET_RQ, pdu.C_FIND_RQ):
            if command.get(pdu.DATASET_TYPE) == pdu.NO_DATASET:
                raise pdu.ProtocolError("request without its data set")
            if field == pdu.C_STORE_RQ:
                self._start_store(context_id, command)
            else:
                self._message = _Message(context_id, command, BytesIO())
        else:
            raise pdu.ProtocolError(f"command {field!r} is not served on this association")

    def _drop_partial_message(self) -> None:
        message, self._message = self._message, None
        if message is not None and isinstance(message.sink, _Spool):
            message.sink.discard()

    # --- C-STORE SCP ----------------------------------------------------------------

    def _start_store(self, context_id: int, command: dict[int, int | str]) -> None:
        abstract, ts = self.contexts[context_id]
        sop_class = str(command.get(pdu.AFFECTED_SOP_CLASS, abstract))
        sop_instance = str(command.get(pdu.AFFECTED_SOP_INSTANCE, ""))
        spool = _Spool(self.archive, pdu.file_meta(sop_class, sop_instance, ts, self.calling_ae))
        self._message = _Message(context_id, command, spool)

    def _finish_store(self, message: _Message) -> None:
        command = message.command
        sop_class = str(command.get(pdu.AFFECTED_SOP_CLASS, ""))
        sop_instance = str(command.get(pdu.AFFECTED_SOP_INSTANCE, ""))
        spool = message.sink
        assert isinstance(spool, _Spool)
        try:
            data = bytes(spool.buffer) if spool.path is None else None
            status, comment, result = self._store_received(data, spool.path, sop_instance or None, sop_class or None,
                                                           command.get(pdu.MOVE_ORIGINATOR))  # fmt: skip
        finally:
            spool.discard()  # moved into the archive, or rejected
        response = pdu.encode_response(pdu.C_STORE_RSP, int(command.get(pdu.MESSAGE_ID, 0)), status, sop_class, sop_instance, comment)
        self._send_command(message.context_id, response)
        if result is not None:
            self._audit_store(result)  # after the answer, while the sender prepares its next message

    def _store_received(self, data: bytes | None, path: Path | None, uid: str | None, sop_class: str | None,
                        originator: object) -> tuple[int, str | None, StoreResult | None]:  # fmt: skip
        """Store one received object (``data``, or the file at ``path``): (status, error comment,
        result). A running migration's C-MOVE sub-operation is answered before its grouped
        commit, the one exception to fsync-before-ack (samarkiv/migrate/deferred.py): no result."""
        intake = _migration_intake(self.archive) if originator and data is not None else None
        job = intake.job_for(originator) if intake is not None else None
        if job is not None:
            intake.submit(data, self.calling_ae, uid, sop_class, job)  # type: ignore[union-attr,arg-type]
            self._migration = self._migration or job
            return SUCCESS, None, None
        expected = {"source_aet": self.calling_ae, "expected_sop_instance_uid": uid, "expected_sop_class_uid": sop_class}
        with self.inflight:
            result = self.archive.store_bytes(data, **expected) if path is None else self.archive.store_file(path, **expected)  # type: ignore[arg-type]
        status = status_for(result)
        return int(status.Status), status.get("ErrorComment"), result

    def _audit_store(self, result: StoreResult) -> None:
        if self._store_audit is None:
            self._store_audit = StoreAudit(self.archive, self.principal, "C-STORE")
        self._store_audit.note(result.study_uid)  # None for a rejected store

    # --- a migration's association to a worker process (samarkiv/migrate/moveproc.py) -------

    def _hand_off(self) -> bool:
        """Give this association to a worker process, at a PDU boundary, once it carried a running
        C-MOVE migration's sub-operation and if it accepts only storage and verification: the
        worker answers the job's sub-operations and parses them outside this interpreter."""
        if self._message is not None or self._command:
            return False  # mid-message: at a later boundary
        job, self._migration = self._migration, None
        self._offered = True
        if not all(abstract in _STORAGE or abstract == VERIFICATION for abstract, _ts in self.contexts.values()):
            return False
        return _migration_intake(self.archive).adopt(self.sock, self.calling_ae, self.contexts, self.peer_max_pdu, job,
                                                     self._store_for_worker, self._worker_ended)  # fmt: skip

    def _store_for_worker(self, data: bytes | None, path: str | None, uid: str | None, sop_class: str | None,
                          originator: str | None) -> tuple[int, str | None, bool]:  # fmt: skip
        """A C-STORE the worker does not answer itself: stored here (moveproc.StoreNow)."""
        try:
            status, comment, result = self._store_received(data, Path(path) if path else None, uid, sop_class, originator)
        finally:
            if path:
                Path(path).unlink(missing_ok=True)
        if result is not None:
            self._audit_store(result)
        return status, comment, result is None

    def _worker_ended(self, aborted: bool) -> None:
        if aborted:
            self.archive.metrics.associations.labels("aborted").inc()
        self._release()

    # --- C-FIND SCP (PS3.4 C.4.1): samarkiv.dimse.find.answer does the work -------------

    def _serve_find(self, message: _Message) -> None:
        command = message.command
        message_id = int(command.get(pdu.MESSAGE_ID, 0))
        sop_class = str(command.get(pdu.AFFECTED_SOP_CLASS, ""))
        uid = UID(self.contexts[message.context_id][1])

        def identifier() -> Dataset:
            try:
                return read_dataset(BytesIO(message.sink.getvalue()), uid.is_implicit_VR, uid.is_little_endian)  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001  (pydicom on garbled bytes)
                raise QueryError("the identifier cannot be decoded") from None

        def respond(status: int, match: Dataset | None, failure: Dataset | None = None) -> None:
            elements: dict[int, int | str | list[int] | None] = {
                pdu.AFFECTED_SOP_CLASS: sop_class,
                pdu.COMMAND_FIELD: pdu.C_FIND_RSP,
                pdu.RESPONDED_TO: message_id,
                pdu.DATASET_TYPE: pdu.DATASET_PRESENT if match is not None else pdu.NO_DATASET,
                pdu.STATUS: status,
            }
            if failure is not None:
                elements[pdu.ERROR_COMMENT] = failure.get("ErrorComment")
                offending = failure.get("OffendingElement")
                if offending is not None:
                    elements[pdu.OFFENDING_ELEMENT] = [offending] if isinstance(offending, int) else list(offending)
            self._send_command(message.context_id, pdu.encode_command(elements))
            if match is not None:
                self._send_data(message.context_id, [encode_dataset(match, uid)])

        model = FIND_MODELS.get(sop_class)
        if model is None:
            respond(IDENTIFIER_MISMATCH, None)
            return

        def cancelled() -> bool:
            self._poll_for_cancel()
            return message_id in self._cancelled

        for status, match in answer(self.archive, identifier, model, self.calling_ae, cancelled, principal=self.principal):
            if isinstance(status, Dataset):  # a failure: final
                respond(int(status.Status), None, status)
                return
            if status in (PENDING, PENDING_WARNING):
                respond(status, match)
            else:  # cancelled: final
                self._cancelled.discard(message_id)
                respond(status, None)
                return
        respond(SUCCESS, None)

    def _poll_for_cancel(self) -> None:
        """Take in a C-CANCEL-RQ waiting on the socket, without blocking."""
        while select.select([self.sock], [], [], 0)[0]:
            for command in self._commands_in_next_pdu("a query"):
                if command.get(pdu.COMMAND_FIELD) != pdu.C_CANCEL_RQ:
                    raise pdu.ProtocolError("a request arrived before the previous one ended")
                self._cancelled.add(int(command.get(pdu.RESPONDED_TO, 0)))

    def _commands_in_next_pdu(self, during: str) -> list[dict[int, int | str]]:
        """The command sets completed by the next PDU, while an operation runs
        (only commands may arrive then: C-CANCEL, or the peer's responses)."""
        pdu_type, body = self._read_pdu()
        if pdu_type != pdu.P_DATA_TF:
            raise ConnectionError(f"association ended during {during} (PDU {pdu_type:#04x})")
        commands = []
        for _context_id, control, data in pdu.iter_pdvs(body):
            if not control & 1:
                raise pdu.ProtocolError(f"unexpected data set during {during}")
            self._command += data
            if control & 2:
                commands.append(pdu.decode_command(bytes(self._command)))
                self._command.clear()
        return commands

    # --- C-GET SCP (PS3.4 C.4.3) ----------------------------------------------------

    def _serve_get(self, message: _Message) -> None:
        command = message.command
        message_id = int(command.get(pdu.MESSAGE_ID, 0))
        sop_class = str(command.get(pdu.AFFECTED_SOP_CLASS, ""))
        _abstract, ts = self.contexts[message.context_id]
        uid = UID(ts)
        tally = {pdu.COMPLETED: 0, pdu.FAILED: 0, pdu.WARNING: 0}
        failed: list[str] = []

        def respond(status: int, remaining: int | None, comment: str | None = None) -> None:
            identifier = None
            if failed and status != PENDING:
                ds = Dataset()
                ds.FailedSOPInstanceUIDList = failed
                identifier = encode_dataset(ds, uid)
            elements: dict[int, int | str | None] = {
                pdu.AFFECTED_SOP_CLASS: sop_class,
                pdu.COMMAND_FIELD: pdu.C_GET_RSP,
                pdu.RESPONDED_TO: message_id,
                pdu.DATASET_TYPE: pdu.DATASET_PRESENT if identifier else pdu.NO_DATASET,
                pdu.STATUS: status,
                pdu.ERROR_COMMENT: comment,
                pdu.REMAINING: remaining,
                **tally,
            }
            self._send_command(message.context_id, pdu.encode_command(elements))
            if identifier:
                self._send_data(message.context_id, [identifier])

        denied: list[StoredInstance] = []
        try:
            matches = self._resolve(message, sop_class, uid, denied)
            if denied and not matches:
                raise _Refused(NOT_AUTHORISED, "not authorised")
        except _Refused as refused:
            log.warning("C-GET from %s refused (0x%04X): %s", self.calling_ae, refused.status, refused.comment)
            respond(refused.status, None, refused.comment)
            return
        log.info("C-GET from %s: %d instance(s), %d not authorised", self.calling_ae, len(matches), len(denied))
        matches = [*matches, *denied]
        refused_pks = {stored.pk for stored in denied}
        for index, stored in enumerate(matches):
            if message_id in self._cancelled:
                self._cancelled.discard(message_id)
                respond(CANCELLED, len(matches) - index)
                return
            status = None if stored.pk in refused_pks else self._send_instance(stored)
            if status == SUCCESS:
                tally[pdu.COMPLETED] += 1
            elif status is not None and (status & 0xF000) == 0xB000:
                tally[pdu.WARNING] += 1
            else:
                tally[pdu.FAILED] += 1
                failed.append(stored.sop_instance_uid)
            if index + 1 < len(matches):
                respond(PENDING, len(matches) - index - 1)
        if not failed:
            respond(SUCCESS, None)
        elif tally[pdu.COMPLETED] or tally[pdu.WARNING]:
            respond(SOME_FAILED, None)
        else:
            respond(ALL_FAILED, None)
        log.info("C-GET from %s done: %d sent, %d failed", self.calling_ae, tally[pdu.COMPLETED], len(failed))

    def _resolve(self, message: _Message, sop_class: str, uid: UID, denied: list[StoredInstance]) -> list[StoredInstance]:
        model = GET_MODELS.get(sop_class)
        if model is None:
            raise _Refused(IDENTIFIER_MISMATCH, "not a C-GET information model")
        try:
            identifier = read_dataset(BytesIO(message.sink.getvalue()), uid.is_implicit_VR, uid.is_little_endian)  # type: ignore[attr-defined]
            request = parse_identifier(identifier, model)
        except IdentifierError as exc:
            raise _Refused(IDENTIFIER_MISMATCH, str(exc)) from None
        except Exception as exc:  # noqa: BLE001  (pydicom on a garbled identifier)
            raise _Refused(UNABLE_TO_PROCESS, f"identifier cannot be decoded ({type(exc).__name__})") from None
        try:
            principal = self.principal
            if principal is None:
                raise _Refused(NOT_AUTHORISED, "not authorised")
            return self.archive.find_instances(request, principal=principal, refused=denied)
        except SQLAlchemyError as exc:
            self.archive.metrics.errors.labels("retrieve-index").inc()
            log.error("C-GET: index query failed: %s", exc)
            raise _Refused(OUT_OF_RESOURCES, "index unavailable") from None

    def _storage_context(self, stored: StoredInstance) -> tuple[int, bool] | None:
        """(context id, send as stored?) for the stored object, on a context where
        the peer took the SCP role (PS3.4 C.4.3.1.4, PS3.7 D.3.3.4). An uncompressed
        object may be re-encoded in another uncompressed syntax the peer accepted."""
        if not self.roles.get(stored.sop_class_uid, (0, 0))[1]:
            return None
        candidates = {ts: cid for cid, (abstract, ts) in self.contexts.items() if abstract == stored.sop_class_uid}
        if stored.transfer_syntax_uid in candidates:
            return candidates[stored.transfer_syntax_uid], True
        if UID(stored.transfer_syntax_uid).is_compressed:
            return None
        for preferred in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian):
            if preferred in candidates:
                return candidates[preferred], False
        return None

    def _send_instance(self, stored: StoredInstance) -> int | None:
        """One C-STORE sub-operation with the stored bytes as they are; its status,
        or None when it could not be attempted."""
        choice = self._storage_context(stored)
        metrics = self.archive.metrics
        if choice is None:
            log.info("C-GET: no context for %s in %s", stored.sop_class_uid, stored.transfer_syntax_uid)
            metrics.retrieved.labels("failed").inc()
            return None
        message_id = self._next_message_id
        self._next_message_id = message_id % 0xFFFF + 1
        request = pdu.encode_command(
            {
                pdu.AFFECTED_SOP_CLASS: stored.sop_class_uid,
                pdu.COMMAND_FIELD: pdu.C_STORE_RQ,
                pdu.MESSAGE_ID: message_id,
                pdu.PRIORITY: 0,
                pdu.DATASET_TYPE: pdu.DATASET_PRESENT,
                pdu.AFFECTED_SOP_INSTANCE: stored.sop_instance_uid,
            }
        )
        context_id, as_stored = choice
        try:
            with self.archive.open_instance(stored) as blob:
                if as_stored:
                    blob.seek(dataset_offset(blob))
                    chunks = iter(lambda: blob.read(CHUNK), b"")
                else:
                    chunks = iter([self._reencoded(stored, UID(self.contexts[context_id][1]))])
                self._send_command(context_id, request)
                self._send_data(context_id, chunks)
        except (FileNotFoundError, MalformedDataset):
            log.error("C-GET: blob %s is missing or unreadable", stored.blob_key)
            metrics.retrieved.labels("failed").inc()
            metrics.errors.labels("blob-missing").inc()
            return None
        status = self._await_store_response(message_id)
        metrics.retrieved.labels("sent" if status == SUCCESS else "failed").inc()
        if status == SUCCESS:
            metrics.retrieved_bytes.inc(stored.size)
        return status

    def _reencoded(self, stored: StoredInstance, target: UID) -> bytes:
        """The stored uncompressed object encoded in ``target`` (PS3.5 A.1-A.3)."""
        with self.archive.open_instance(stored) as blob:
            return encode_dataset(transcode(blob, target), target)

    def _await_store_response(self, message_id: int) -> int:
        """Read PDUs until the C-STORE-RSP for ``message_id`` (C-CANCELs noted meanwhile)."""
        while True:
            for command in self._commands_in_next_pdu("a C-GET"):
                field = command.get(pdu.COMMAND_FIELD)
                if field == pdu.C_CANCEL_RQ:
                    self._cancelled.add(int(command.get(pdu.RESPONDED_TO, 0)))
                elif field == pdu.C_STORE_RSP and command.get(pdu.RESPONDED_TO) == message_id:
                    return int(command.get(pdu.STATUS, 0xC000))
                else:
                    raise pdu.ProtocolError(f"unexpected command {field!r} during a C-GET")

    # --- sending ------------------------------------------------------------------

    def _send_command(self, context_id: int, command: bytes) -> None:
        self.sock.sendall(pdu.encode_pdata(context_id, command, command=True, last=True))

    def _send_data(self, context_id: int, chunks) -> None:  # type: ignore[no-untyped-def]
        """Send a data set as P-DATA-TF PDUs no larger than the peer accepts
        (PS3.8 9.3.5: the maximum counts the PDU's variable part, PDV headers included)."""
        limit = (self.peer_max_pdu or MAX_PDU_LENGTH) - 6
        carry = b""
        for chunk in chunks:
            data = memoryview(carry + chunk if carry else chunk)
            full = (len(data) - 1) // limit  # the tail waits: it may be the last fragment
            if full:
                self.sock.sendall(
                    b"".join(
                        pdu.encode_pdata(context_id, data[i * limit : (i + 1) * limit], command=False, last=False)
                        for i in range(full)
                    )
                )
            carry = bytes(data[full * limit :])
        self.sock.sendall(pdu.encode_pdata(context_id, carry, command=False, last=True))


class _Refused(Exception):
    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment
