"""C-MOVE migration associations served by worker processes: ``serve``'s side of getproc.py.

Why: a C-MOVE migration's sub-operations (PS3.4 C.4.2.3) arrive at ``serve`` on
associations the source opens. In ``serve``'s one interpreter the thread reading
an association waited for the interpreter lock behind the grouped commits (and
the other associations), and the source waited for each answer: with four
associations only about 1.3 of the 2 cores were busy (0.5 MB CT objects).
With the workers, C-MOVE from Orthanc over four associations went from 40 to
54-57% of DCMTK movescu's rate at 0.5 MB, and from 55 to 60% at 39 KB
(bench/migrate_vs_movescu.py).

Once an association has carried a C-STORE of a running C-MOVE migration and
accepts nothing but storage and verification, ``serve`` hands its socket to a
worker (SCM_RIGHTS over a socket pair, at a PDU boundary). The worker reads the
PDUs, answers each of the job's sub-operations at once (the migration exception
to fsync-before-ack, deferred.py), then, while the source sends the next,
parses the object for the index and writes it into the blob store's staging
folder where ``serve`` asks for that (no mapping to apply, a local first tier),
and writes parse and staged file to the pair; ``serve`` only commits them
(``MigrationIntake``). Every other C-STORE on the association (another Move
Originator, none, a job that no longer runs, an object larger than
``inline_max_bytes``) is sent to ``serve``, which stores it as any store (its
answer after its commit) and says what to answer. The worker checks with
``serve`` at least every RUNNING_CACHE_SECONDS that the job still runs.

A worker is forked on first use, forgets every inherited descriptor (``serve``'s
listening sockets among them) and serves one association at a time; it ends
when its pair closes, and ``serve`` kills the ones still busy when it stops.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..dimse import pdu
from ..storage.filesystem import new_staging_path
from .deferred import RUNNING_CACHE_SECONDS
from .sources.getproc import fork_worker, forget_inherited, prepared, reap

if TYPE_CHECKING:
    from .deferred import MigrationIntake, MoveJob

log = logging.getLogger(__name__)

OBJECT, STORE, END = b"O", b"S", b"E"
SUCCESS = 0x0000


@dataclass(frozen=True)
class Handoff:
    """An association as ``serve`` hands it over: what was negotiated, whose sub-operations the
    worker may answer at once, and where it writes."""

    calling_ae: str
    contexts: dict[int, tuple[str, str]]  # context id -> (abstract syntax, transfer syntax)
    peer_max_pdu: int
    originator: str  # the running job's calling AE title
    inline_max_bytes: int  # larger objects go to serve as files, the ordinary way
    spool: str  # serve's staging folder (large objects)
    staging: str | None  # the blob store's staging folder, where no mapping applies (StagedFile)
    prepare: bool  # parse for the index here (no mapping applies)
    timeout: float


class MoveWorker:
    """One forked worker and ``serve``'s end of its socket pair."""

    def __init__(self) -> None:
        self.pid, self.sock = fork_worker(_serve)
        self.conn = Connection(os.dup(self.sock.fileno()))

    def hand(self, association: socket.socket, handoff: Handoff) -> None:
        """Pass the association's socket and what was negotiated to the worker."""
        body = pickle.dumps(handoff)
        socket.send_fds(self.sock, [struct.pack(">I", len(body)) + body], [association.fileno()])

    def close(self) -> None:
        """Close the pair and reap the worker (getproc.reap)."""
        self.conn.close()
        self.sock.close()
        reap(self.pid)


class MoveWorkers:
    """``serve``'s workers for migration associations (forked when none is idle)."""

    def __init__(self, intake: MigrationIntake) -> None:
        self.intake = intake
        self._idle: list[MoveWorker] = []
        self._all: list[MoveWorker] = []
        self._lock = threading.Lock()
        self._closed = False

    def adopt(self, association: socket.socket, handoff: Handoff, job: MoveJob, store: StoreNow, ended: Callable[[bool], None]) -> bool:
        """Hand ``association`` to a worker; a thread here commits what it hands back, has
        ``store`` store the rest, and calls ``ended(aborted)`` when the association is over.
        False (the caller keeps the association) when no worker can take it."""
        with self._lock:
            if self._closed:
                return False
            worker = self._idle.pop() if self._idle else None
        try:
            if worker is None:
                worker = MoveWorker()
                with self._lock:
                    self._all.append(worker)
            worker.hand(association, handoff)
        except OSError as exc:
            log.warning("cannot hand a migration association to a worker: %s", exc)
            if worker is not None:
                self._discard(worker)
            return False
        log.info("a C-MOVE migration association from %s handed to a worker process (%d)", handoff.calling_ae, worker.pid)
        threading.Thread(target=self._follow, args=(worker, job, handoff.calling_ae, store, ended),
                         name="move-worker", daemon=True).start()  # fmt: skip
        return True

    def _follow(self, worker: MoveWorker, job: MoveJob, calling_ae: str, store: StoreNow, ended: Callable[[bool], None]) -> None:
        """What the worker sends for one association, until it is over."""
        aborted = True
        try:
            while True:
                frame = worker.conn.recv_bytes()
                kind, body = frame[:1], pickle.loads(memoryview(frame)[1:])
                if kind == OBJECT:
                    data, parsed, staged, uid, sop_class = body
                    self.intake.submit(data, calling_ae, uid, sop_class, job, parsed=parsed, staged=staged)
                elif kind == STORE:
                    worker.conn.send_bytes(pickle.dumps(store(*body)))
                else:
                    aborted = bool(body)
                    break
        except (EOFError, OSError) as exc:
            if not self._closed:  # serve stopping closes the pairs
                log.warning("a migration association's worker ended: %s", exc.__class__.__name__)
            self._discard(worker)
            worker = None  # type: ignore[assignment]
        except Exception:  # noqa: BLE001 - a bug: the worker goes, the job pulls again what it lost
            log.exception("a migration association's worker failed")
            self._discard(worker)
            worker = None  # type: ignore[assignment]
        finally:
            ended(aborted)
        if worker is not None:
            with self._lock:
                if not self._closed:
                    self._idle.append(worker)
                    return
            worker.close()

    def _discard(self, worker: MoveWorker) -> None:
        with self._lock:
            if worker in self._all:
                self._all.remove(worker)
            if worker in self._idle:
                self._idle.remove(worker)
        worker.close()

    def close(self) -> None:
        """End every worker: idle ones at once, busy ones killed after CLOSE_SECONDS."""
        with self._lock:
            self._closed = True
            workers, self._all, self._idle = self._all, [], []
        for worker in workers:
            worker.close()


# (data or None, staging file or None, SOP Instance UID, SOP Class UID, Move Originator)
#   -> (status, error comment or None, deferred: whether the job's objects may still be answered at once)
StoreNow = Callable[[bytes | None, str | None, str | None, str | None, str | None], tuple[int, str | None, bool]]


# --- the worker -----------------------------------------------------------------------------------


def _serve(pair: socket.socket) -> None:
    """Associations handed over, one at a time, until the pair closes."""
    conn = Connection(os.dup(pair.fileno()))
    forget_inherited({pair.fileno(), conn.fileno()})
    while True:
        try:
            message, fds, _flags, _address = socket.recv_fds(pair, 1 << 16, 1)
        except OSError:
            return
        if not message or not fds:
            return
        (length,) = struct.unpack(">I", message[:4])
        body = bytes(message[4:])
        while len(body) < length:
            body += pair.recv(length - len(body))
        handoff: Handoff = pickle.loads(body)
        association = socket.socket(fileno=fds[0])
        association.settimeout(handoff.timeout)
        try:
            aborted = _Association(association, handoff, conn).run()
        except (EOFError, OSError):
            return  # serve is gone
        finally:
            association.close()
        try:
            conn.send_bytes(END + pickle.dumps(aborted))
        except OSError:
            return


class _Association:
    """The PDUs of one handed-over association (PS3.8 9.3), C-STORE and C-ECHO (PS3.7 9.1.1, 9.1.5)."""

    def __init__(self, sock: socket.socket, handoff: Handoff, conn: Connection) -> None:
        self.sock, self.handoff, self.conn = sock, handoff, conn
        self.trusted_until = time.monotonic() + RUNNING_CACHE_SECONDS  # serve checked the job just now

    def run(self) -> bool:
        """Serve until the association ends; whether it was aborted."""
        command = bytearray()
        fields: dict[int, Any] | None = None
        data: bytearray | None = None
        spool: Any = None  # the open file of a large object's data set
        try:
            while True:
                header = pdu.recv_exact(self.sock, 6)
                (length,) = struct.unpack(">I", header[2:6])
                if length > (1 << 20) + 16:
                    raise pdu.ProtocolError("PDU larger than the negotiated maximum")
                body = pdu.recv_exact(self.sock, length)
                if header[0] == pdu.A_RELEASE_RQ:
                    self.sock.sendall(pdu.encode_release_rp())
                    return False
                if header[0] == pdu.A_ABORT:
                    return True
                if header[0] != pdu.P_DATA_TF:
                    raise pdu.ProtocolError(f"unexpected PDU type {header[0]:#04x}")
                for context_id, control, value in pdu.iter_pdvs(body):
                    if context_id not in self.handoff.contexts:
                        raise pdu.ProtocolError(f"PDV on unaccepted presentation context {context_id}")
                    if control & 1:
                        command += value
                        if control & 2:
                            fields = pdu.decode_command(bytes(command))
                            command.clear()
                            data, spool = self._on_command(context_id, fields)
                        continue
                    if fields is None or data is None:
                        raise pdu.ProtocolError("data set fragment without a request")
                    if spool is not None:
                        spool.write(value)
                    else:
                        data += value
                        if len(data) > self.handoff.inline_max_bytes:
                            spool = open(new_staging_path(Path(self.handoff.spool)), "wb")
                            spool.write(data)
                            data.clear()
                    if control & 2:
                        path = None
                        if spool is not None:
                            spool.close()
                            path, spool = spool.name, None
                        self._on_store(context_id, fields, data, path)
                        fields, data = None, None
        except (pdu.ProtocolError, TimeoutError) as exc:
            log.debug("aborting a handed-over association: %s", exc)
            try:
                self.sock.sendall(pdu.encode_abort())
            except OSError:
                pass
            return True
        except (pdu.PeerClosed, ConnectionError):
            return True
        finally:
            if spool is not None:
                spool.close()
                Path(spool.name).unlink(missing_ok=True)

    def _on_command(self, context_id: int, fields: dict[int, Any]) -> tuple[bytearray | None, None]:
        """A C-ECHO is answered; a C-STORE's data set follows (assembled behind its File Meta)."""
        kind = fields.get(pdu.COMMAND_FIELD)
        if kind == pdu.C_ECHO_RQ:
            self._answer(context_id, pdu.C_ECHO_RSP, fields, SUCCESS)
            return None, None
        if kind != pdu.C_STORE_RQ or fields.get(pdu.DATASET_TYPE) == pdu.NO_DATASET:
            raise pdu.ProtocolError(f"command {kind!r} is not served on this association")
        ts = self.handoff.contexts[context_id][1]
        meta = pdu.file_meta(str(fields.get(pdu.AFFECTED_SOP_CLASS, "")), str(fields.get(pdu.AFFECTED_SOP_INSTANCE, "")), ts,
                             self.handoff.calling_ae)  # fmt: skip
        return bytearray(meta), None

    def _on_store(self, context_id: int, fields: dict[int, Any], data: bytearray, path: str | None) -> None:
        uid = str(fields.get(pdu.AFFECTED_SOP_INSTANCE, "")) or None
        sop_class = str(fields.get(pdu.AFFECTED_SOP_CLASS, "")) or None
        originator = str(fields.get(pdu.MOVE_ORIGINATOR, "") or "").strip()
        if path is None and originator == self.handoff.originator and time.monotonic() < self.trusted_until:
            self._answer(context_id, pdu.C_STORE_RSP, fields, SUCCESS)  # the migration exception (deferred.py)
            staging = self.handoff.staging if self.handoff.prepare else None
            sent, parsed, staged = prepared(data, staging, uid, sop_class) if self.handoff.prepare else (bytes(data), None, None)
            self.conn.send_bytes(OBJECT + pickle.dumps((sent, parsed, staged, uid, sop_class), protocol=pickle.HIGHEST_PROTOCOL))
            return
        # serve decides: the job's object (and the job still runs), or any other store
        self.conn.send_bytes(STORE + pickle.dumps((bytes(data) if path is None else None, path, uid, sop_class, originator or None),
                                                  protocol=pickle.HIGHEST_PROTOCOL))  # fmt: skip
        status, comment, deferred = pickle.loads(self.conn.recv_bytes())
        if deferred and originator == self.handoff.originator:
            self.trusted_until = time.monotonic() + RUNNING_CACHE_SECONDS
        elif originator == self.handoff.originator:
            self.trusted_until = 0.0  # the job no longer runs: serve decides from now on
        self._answer(context_id, pdu.C_STORE_RSP, fields, status, comment)

    def _answer(self, context_id: int, kind: int, fields: dict[int, Any], status: int, comment: str | None = None) -> None:
        response = pdu.encode_response(kind, int(fields.get(pdu.MESSAGE_ID, 0)), status, str(fields.get(pdu.AFFECTED_SOP_CLASS, "")),
                                       str(fields.get(pdu.AFFECTED_SOP_INSTANCE, "")) or None, comment)  # fmt: skip
        self.sock.sendall(pdu.encode_pdata(context_id, response, command=True, last=True))
