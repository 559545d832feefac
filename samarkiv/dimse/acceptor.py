"""The DICOM listener: hot associations on our fast path, the rest to pynetdicom.

Each connection's A-ASSOCIATE-RQ is read with MSG_PEEK, so nothing is
consumed while deciding. An association that proposes only Verification,
Storage and C-GET (a modality or PACS sending, a workstation pulling a study)
is served by :class:`~samarkiv.dimse.fastpath.FastAssociation`; any other goes,
untouched, to pynetdicom, which serves C-FIND, C-MOVE, storage commitment and
the rest.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading

from pynetdicom.transport import ThreadedAssociationServer

from ..access.dimse import DimseIdentity
from ..core.archive import Archive
from . import pdu
from .fastpath import FastAssociation, is_fast
from .store import InFlight

log = logging.getLogger(__name__)

_MAX_RQ_LENGTH = 1 << 16  # an A-ASSOCIATE-RQ larger than this goes to pynetdicom


def peek_associate_rq(sock: socket.socket) -> pdu.AssociateRequest | None:
    """The A-ASSOCIATE-RQ waiting on ``sock``, read without consuming it; None
    when the first PDU is something else or too large to be one we serve."""
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


class DicomListener:
    """Accepts TCP connections and routes each association (see module docstring)."""

    def __init__(
        self, archive: Archive, inflight: InFlight, fallback: ThreadedAssociationServer, identity: DimseIdentity | None = None
    ) -> None:
        self.archive = archive
        self.identity = identity
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
        if rq is not None and self.archive.owner_for(rq.calling_ae) is None:
            # PS3.8 9.3.4: rejected-permanent, service-user, calling AE title not recognised
            log.warning("association refused: calling AE title belongs to no organisation")
            self.archive.metrics.associations.labels("rejected").inc()
            try:
                conn.sendall(pdu.encode_associate_rj(1, 1, 3))
            finally:
                conn.close()
            return
        if rq is not None and self.identity is not None and self.identity.refuses(rq.has_user_identity):
            # PS3.7 D.3.3.7: this archive requires User Identity Negotiation
            # (PS3.8 9.3.4: rejected-permanent, service-user, no reason given)
            log.warning("association from %s refused: no user identity offered", rq.calling_ae)
            self.archive.metrics.associations.labels("rejected").inc()
            try:
                conn.sendall(pdu.encode_associate_rj(1, 1, 1))
            finally:
                conn.close()
            return
        if rq is not None and is_fast(rq):
            conn.settimeout(120)
            FastAssociation(conn, self.archive, self.inflight, self.admit, self.release).run()
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
