"""The DICOM listener: storage associations on our fast path, the rest to pynetdicom.

Each connection's A-ASSOCIATE-RQ is read with MSG_PEEK, so nothing is
consumed while deciding. An association that proposes only Verification and
Storage SOP classes (a modality, a PACS forwarding images) and no role
selection, user identity or extended negotiation is served by
:class:`StorageAssociation`; any other goes, untouched, to pynetdicom, which
serves query/retrieve, storage commitment and the rest.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
from pathlib import Path
from typing import BinaryIO

from pynetdicom.transport import ThreadedAssociationServer

from ..core.archive import Archive
from . import pdu
from .contexts import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES, VERIFICATION
from .store import InFlight, status_for

log = logging.getLogger(__name__)

MAX_PDU_LENGTH = 1 << 20  # what we accept per P-DATA-TF; bounds memory per association
_MAX_RQ_LENGTH = 1 << 16  # an A-ASSOCIATE-RQ larger than this is not a modality's
_FAST_SYNTAXES = frozenset(STORAGE_SOP_CLASSES) | {VERIFICATION}
_TRANSFER_SYNTAXES = frozenset(TRANSFER_SYNTAXES)


def _recv_exact(sock: socket.socket, size: int) -> bytearray:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if n == 0:
            raise ConnectionError("peer closed the connection")
        got += n
    return buf


def peek_associate_rq(sock: socket.socket) -> pdu.AssociateRequest | None:
    """The A-ASSOCIATE-RQ waiting on ``sock``, read without consuming it; None
    when the first PDU is something else or too large to be a storage request."""
    header = sock.recv(6, socket.MSG_PEEK | socket.MSG_WAITALL)
    if len(header) < 6 or header[0] != pdu.A_ASSOCIATE_RQ:
        return None
    (length,) = struct.unpack(">I", header[2:6])
    if length > _MAX_RQ_LENGTH:
        return None
    data = sock.recv(6 + length, socket.MSG_PEEK | socket.MSG_WAITALL)
    if len(data) < 6 + length:
        return None
    return pdu.parse_associate_rq(data[6:])


def is_storage_only(rq: pdu.AssociateRequest) -> bool:
    return (
        bool(rq.contexts)
        and all(cx.abstract_syntax in _FAST_SYNTAXES for cx in rq.contexts)
        and not (rq.has_role_selection or rq.has_user_identity or rq.has_extended_negotiation)
    )


class StorageAssociation:
    """Serves C-ECHO and C-STORE on one association (PS3.7 9.1.1, 9.1.5; PS3.8 9)."""

    def __init__(self, sock: socket.socket, archive: Archive, inflight: InFlight, listener: DicomListener) -> None:
        self.sock = sock
        self.archive = archive
        self.inflight = inflight
        self.listener = listener
        self.calling_ae = ""
        self.contexts: dict[int, tuple[str, str]] = {}  # id -> (abstract syntax, transfer syntax)
        self._command = bytearray()
        self._dataset: BinaryIO | None = None
        self._dataset_path: Path | None = None
        self._pending: dict[int, int | str] = {}

    # --- association establishment -------------------------------------------

    def negotiate(self) -> bool:
        (length,) = struct.unpack(">I", _recv_exact(self.sock, 6)[2:6])
        rq = pdu.parse_associate_rq(bytes(_recv_exact(self.sock, length)))
        self.calling_ae = rq.calling_ae
        metrics = self.archive.metrics.associations
        if rq.application_context != pdu.APPLICATION_CONTEXT:
            self.sock.sendall(pdu.encode_associate_rj(1, 1, 2))
            metrics.labels("rejected").inc()
            return False
        if rq.called_ae != self.archive.settings.aet:
            log.warning("association from %s rejected: called AE title %r is not ours", rq.calling_ae, rq.called_ae)
            self.sock.sendall(pdu.encode_associate_rj(1, 1, 7))
            metrics.labels("rejected").inc()
            return False
        if not self.listener.admit():
            self.sock.sendall(pdu.encode_associate_rj(2, 3, 2))  # transient: local limit exceeded
            metrics.labels("rejected").inc()
            return False
        results = []
        for cx in rq.contexts:
            ts = next((t for t in cx.transfer_syntaxes if t in _TRANSFER_SYNTAXES), None)
            if ts is None:
                results.append((cx.context_id, pdu.TRANSFER_SYNTAXES_NOT_SUPPORTED, ""))
            else:
                results.append((cx.context_id, pdu.ACCEPTED, ts))
                self.contexts[cx.context_id] = (cx.abstract_syntax, ts)
        self.sock.sendall(pdu.encode_associate_ac(rq, results, MAX_PDU_LENGTH))
        metrics.labels("accepted").inc()
        return True

    # --- the association's life ------------------------------------------------

    def run(self) -> None:
        try:
            if not self.negotiate():
                return
            try:
                self._serve()
            finally:
                self.listener.release()
        except (ConnectionError, TimeoutError, OSError) as exc:
            log.info("association from %s ended: %s", self.calling_ae or "?", exc)
        except pdu.ProtocolError as exc:
            log.warning("aborting association from %s: %s", self.calling_ae or "?", exc)
            self.archive.metrics.associations.labels("aborted").inc()
            self._send_quietly(pdu.encode_abort())
        finally:
            self._drop_partial_dataset()
            self.sock.close()

    def _serve(self) -> None:
        while True:
            header = _recv_exact(self.sock, 6)
            pdu_type = header[0]
            (length,) = struct.unpack(">I", header[2:6])
            if length > MAX_PDU_LENGTH + 16:
                raise pdu.ProtocolError(f"PDU of {length} bytes exceeds the negotiated maximum")
            body = _recv_exact(self.sock, length)
            if pdu_type == pdu.P_DATA_TF:
                for context_id, control, data in pdu.iter_pdvs(body):
                    self._on_pdv(context_id, control, data)
            elif pdu_type == pdu.A_RELEASE_RQ:
                self.sock.sendall(pdu.encode_release_rp())
                return
            elif pdu_type == pdu.A_ABORT:
                self.archive.metrics.associations.labels("aborted").inc()
                return
            else:
                raise pdu.ProtocolError(f"unexpected PDU type {pdu_type:#04x}")

    def _on_pdv(self, context_id: int, control: int, data: memoryview) -> None:
        if context_id not in self.contexts:
            raise pdu.ProtocolError(f"PDV on unaccepted presentation context {context_id}")
        last = bool(control & 2)
        if control & 1:  # command fragment
            self._command += data
            if last:
                command = pdu.decode_command(bytes(self._command))
                self._command.clear()
                self._on_command(context_id, command)
            return
        if self._dataset is None:
            raise pdu.ProtocolError("data set fragment without a C-STORE request")
        self._dataset.write(data)
        if last:
            self._finish_store(context_id)

    def _on_command(self, context_id: int, command: dict[int, int | str]) -> None:
        field = command.get(0x0100)
        message_id = int(command.get(0x0110, 0))
        if field == pdu.C_ECHO_RQ:
            self._respond(context_id, pdu.encode_response(pdu.C_ECHO_RSP, message_id, 0x0000, VERIFICATION))
        elif field == pdu.C_STORE_RQ:
            if command.get(0x0800) == pdu.NO_DATASET:
                raise pdu.ProtocolError("C-STORE request without a data set")
            abstract, ts = self.contexts[context_id]
            self._pending = command
            self._dataset_path = self.archive.new_staging_file()
            self._dataset = open(self._dataset_path, "wb")
            self._dataset.write(
                pdu.file_meta(
                    str(command.get(0x0002, abstract)), str(command.get(0x1000, "")), ts, self.calling_ae
                )
            )
        elif field == 0x0FFF:  # C-CANCEL-RQ: nothing to cancel in a C-STORE
            return
        else:
            raise pdu.ProtocolError(f"command {field!r} is not served on a storage association")

    def _finish_store(self, context_id: int) -> None:
        assert self._dataset is not None and self._dataset_path is not None
        command, path = self._pending, self._dataset_path
        self._dataset.close()
        self._dataset = None
        sop_class = str(command.get(0x0002, ""))
        sop_instance = str(command.get(0x1000, ""))
        with self.inflight:
            result = self.archive.store_file(
                path,
                source_aet=self.calling_ae,
                expected_sop_instance_uid=sop_instance or None,
                expected_sop_class_uid=sop_class or None,
            )
        path.unlink(missing_ok=True)  # moved into the blob store, or rejected
        self._dataset_path = None
        status = status_for(result)
        self._respond(
            context_id,
            pdu.encode_response(
                pdu.C_STORE_RSP,
                int(command.get(0x0110, 0)),
                int(status.Status),
                sop_class,
                sop_instance,
                status.get("ErrorComment"),
            ),
        )

    def _respond(self, context_id: int, command: bytes) -> None:
        self.sock.sendall(pdu.encode_pdata(context_id, command, command=True, last=True))

    def _send_quietly(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            pass

    def _drop_partial_dataset(self) -> None:
        if self._dataset is not None:
            self._dataset.close()
            self._dataset = None
        if self._dataset_path is not None:
            self._dataset_path.unlink(missing_ok=True)
            self._dataset_path = None


class DicomListener:
    """Accepts TCP connections and routes each association (see module docstring)."""

    def __init__(self, archive: Archive, inflight: InFlight, fallback: ThreadedAssociationServer) -> None:
        self.archive = archive
        self.inflight = inflight
        self.fallback = fallback
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._active = 0
        self._lock = threading.Lock()

    def admit(self) -> bool:
        with self._lock:
            busy = self._active + len(self.fallback.active_associations)
            if busy >= self.archive.settings.max_associations:
                return False
            self._active += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._active -= 1

    @property
    def active(self) -> int:
        return self._active

    def start(self) -> None:
        settings = self.archive.settings
        sock = socket.create_server((settings.host, settings.dicom_port), backlog=64, reuse_port=False)
        self._sock = sock
        self._thread = threading.Thread(target=self._accept_loop, name="dicom-listener", daemon=True)
        self._thread.start()

    def stop_accepting(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _accept_loop(self) -> None:
        while self._sock is not None:
            try:
                conn, address = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._route, args=(conn, address), name="dicom-conn", daemon=True).start()

    def _route(self, conn: socket.socket, address: tuple[str, int]) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(30)
        try:
            rq = peek_associate_rq(conn)
        except (OSError, pdu.ProtocolError):
            rq = None
        if rq is not None and is_storage_only(rq):
            conn.settimeout(120)
            StorageAssociation(conn, self.archive, self.inflight, self).run()
            return
        conn.settimeout(None)
        try:
            self.fallback.finish_request(conn, address)
        except Exception:  # noqa: BLE001  (pynetdicom failed to start the association)
            log.exception("cannot hand association from %s:%d to pynetdicom", *address[:2])
            conn.close()


def detached_pynetdicom_server(ae, handlers) -> ThreadedAssociationServer:  # type: ignore[no-untyped-def]
    """A pynetdicom server that never listens: our listener hands it connections."""
    server = ThreadedAssociationServer(ae, ("127.0.0.1", 0), ae.ae_title, ae.supported_contexts, evt_handlers=handlers)
    server.server_close()
    ae._servers.append(server)  # so ae.active_associations sees its associations
    return server
