"""C-GET associations run by worker processes: the DIMSE work off the migrating interpreter.

Why: a C-GET sub-operation (PS3.4 C.4.3.3) is answered by the thread that reads
it. In the migrating process that thread shares one interpreter lock with the
grouped commits (parsing, index rows, blob files), so each answer waited for
the lock and the source waited for each answer. A worker process reads the
PDUs, answers every C-STORE sub-operation as soon as the object is received,
then (while the source sends the next) parses it for the index (core/ingest.py
``parse_buffer``), writes it into the blob store's staging folder where the
migrating process asks for that (``StagedFile``) and writes parse and staged
file (the object itself where it could not be staged) to its socket pair; the
migrating process only commits them
(``Deliver.defer``: they are answered before their commit, deferred.py).
The socket pair's buffer bounds how far the worker runs ahead: backpressure on
the source when the commits fall behind.

Each worker is forked on first use (no interpreter start-up), points every
descriptor it inherited at /dev/null (a listening socket of the parent must not
stay open in it) but its end of the pair, and runs one association at a time
for the thread that holds it. It ends when the pair closes: when the source is
closed, or when the migrating process dies (a killed run leaves no workers).
A worker that dies mid-pull fails that pull with SourceBusy, retried as usual.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import select
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from multiprocessing.connection import Connection

from ...core.ingest import ParsedInstance, RejectedDataset, parse_buffer
from ...storage.filesystem import StagedFile, write_staged
from .base import Deliver, SourceBusy, SourceError, SourceTimeout
from .requestor import Requestor, RetrieveResult

SUCCESS = 0x0000
BUFFER = 4 << 20  # bytes the worker may run ahead of the commits, per association
CLOSE_SECONDS = 5.0
OBJECT, DONE, FAILED = b"O", b"K", b"E"
_ERRORS: dict[str, type[SourceError]] = {cls.__name__: cls for cls in (SourceError, SourceBusy, SourceTimeout)}


@dataclass(frozen=True)
class GetJob:
    """One association's C-GETs: where, what to propose, and the encoded identifiers."""

    host: str
    port: int
    called_aet: str
    calling_aet: str
    timeout: float
    contexts: list[tuple[str, list[str]]]
    roles: list[str]
    get_class: str
    identifiers: list[bytes]
    staging: str | None = None  # where to write each object for the blob store (StagedFile), if anywhere


def available() -> bool:
    """Whether worker processes can be forked here (POSIX)."""
    return hasattr(os, "fork")


class WorkerGone(SourceBusy):
    """The worker process died or stopped answering: the pull is retried (a new worker)."""


class GetWorker:
    """One forked worker and the parent's end of its socket pair."""

    def __init__(self) -> None:
        try:
            self.pid, parent = fork_worker(lambda child: _serve(Connection(child.detach())))
        except OSError as exc:
            raise WorkerGone(f"cannot start a C-GET worker: {exc}") from None
        self.conn = Connection(parent.detach())
        self._readable = select.poll()  # made once: Connection.poll builds a selector per call
        self._readable.register(self.conn.fileno(), select.POLLIN)

    def get(self, job: GetJob, deliver: Deliver) -> list[RetrieveResult]:
        """Run ``job`` in the worker, every object to ``deliver.defer``; the final responses, or
        the source's error. The source's timeouts are the worker's; the worker itself gets
        them twice over per frame, else WorkerGone."""
        patience = 2 * job.timeout + 5
        try:
            self.conn.send_bytes(pickle.dumps(job))
            while True:
                if not self._readable.poll(patience * 1000):
                    raise WorkerGone(f"the C-GET worker sent nothing for {patience:g}s")
                frame = self.conn.recv_bytes()
                answer = pickle.loads(memoryview(frame)[1:])
                if frame[:1] == OBJECT:
                    deliver.defer(*answer)
                    continue
                if frame[:1] == DONE:
                    return answer
                name, message = answer
                raise _ERRORS.get(name, SourceError)(message)
        except (EOFError, OSError) as exc:
            raise WorkerGone(f"the C-GET worker process ended: {exc.__class__.__name__}") from None

    def close(self) -> None:
        """Close the pair and reap the worker: an idle one ends at once; one still in a C-GET
        (left mid-job) is killed after CLOSE_SECONDS."""
        self.conn.close()
        reap(self.pid)


class GetWorkers:
    """Idle workers, taken by one pulling thread at a time; a new one is forked when none is idle."""

    def __init__(self) -> None:
        self._idle: list[GetWorker] = []
        self._all: list[GetWorker] = []
        self._lock = threading.Lock()

    def get(self, job: GetJob, deliver: Deliver) -> list[RetrieveResult]:
        with self._lock:
            worker = self._idle.pop() if self._idle else None
        if worker is None:
            worker = GetWorker()
            with self._lock:
                self._all.append(worker)
        try:
            results = worker.get(job, deliver)
        except WorkerGone:
            self._discard(worker)
            raise
        except SourceError:
            self._release(worker)  # the job ended with the source's answer
            raise
        except BaseException:
            self._discard(worker)  # left mid-job
            raise
        self._release(worker)
        return results

    def _release(self, worker: GetWorker) -> None:
        with self._lock:
            self._idle.append(worker)

    def _discard(self, worker: GetWorker) -> None:
        with self._lock:
            if worker in self._all:
                self._all.remove(worker)
        worker.close()

    def close(self) -> None:
        with self._lock:
            workers, self._all, self._idle = self._all, [], []
        for worker in workers:
            worker.close()


def fork_worker(serve: Callable[[socket.socket], None]) -> tuple[int, socket.socket]:
    """Fork a worker process that runs ``serve`` on its end of a new socket pair (BUFFER bytes
    each way: the backpressure) and exits when it returns: (its pid, our end)."""
    parent, child = socket.socketpair()
    try:
        for end in (parent, child):
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)
            end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
        pid = os.fork()
    except OSError:
        parent.close()
        child.close()
        raise
    if pid == 0:  # the worker
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a handler the parent installed is not ours
            parent.close()
            serve(child)
        finally:
            os._exit(0)
    child.close()
    return pid, parent


def reap(pid: int) -> None:
    """Wait for a worker whose pair was closed: an idle one ends at once, a busy one is killed
    after CLOSE_SECONDS."""
    deadline = time.monotonic() + CLOSE_SECONDS
    try:
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return
            time.sleep(0.01)
    except (ChildProcessError, ProcessLookupError):
        pass


def _serve(conn: Connection) -> None:
    """The worker: C-GET jobs until the pair closes."""
    forget_inherited({conn.fileno()})
    while True:
        try:
            job: GetJob = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return

        def answered(data: bytes, staging: str | None = job.staging) -> None:
            conn.send_bytes(OBJECT + pickle.dumps(prepared(data, staging), protocol=pickle.HIGHEST_PROTOCOL))

        try:
            with Requestor(job.host, job.port, job.called_aet, job.calling_aet, job.timeout) as assoc:
                assoc.open(job.contexts, job.roles)
                results = [assoc.get(job.get_class, identifier, _succeed, answered) for identifier in job.identifiers]
            conn.send_bytes(DONE + pickle.dumps(results))
        except (EOFError, OSError):
            return  # the migrating process is gone
        except SourceError as exc:
            conn.send_bytes(FAILED + pickle.dumps((type(exc).__name__, str(exc))))
        except Exception as exc:  # noqa: BLE001 - reported to the pulling thread, which records it
            conn.send_bytes(FAILED + pickle.dumps(("SourceError", f"{exc.__class__.__name__}: {exc}")))


def _succeed(data: bytes) -> int:
    """Every sub-operation is answered Success at once (the migration exception, deferred.py);
    the object is parsed and handed over after the answer, while the source sends the next."""
    return SUCCESS


def prepared(data: bytes | bytearray, staging: str | None, uid: str | None = None, sop_class: str | None = None,
             ) -> tuple[bytes | None, ParsedInstance | None, StagedFile | None]:  # fmt: skip
    """What a worker hands over of a received object for the grouped commit (Archive.store_batch):
    (its bytes, unless staged; its parse for the index, checked against the request's ``uid`` and
    ``sop_class`` where given; the file it was written to in ``staging``). A staged object's
    bytes are not sent: the committing process reads the file if it ever needs them; copying
    them through the pair cost 6% of a C-GET run's CPU."""
    parsed = _parsed(data, uid, sop_class)
    staged = _staged(data, staging) if staging and parsed is not None else None
    return None if staged is not None else bytes(data), parsed, staged


def _parsed(data: bytes | bytearray, uid: str | None, sop_class: str | None) -> ParsedInstance | None:
    """The object parsed for the index (Archive.store_batch), the element spans left out;
    None when it does not parse or differs from the request (the committing process then says why)."""
    try:
        parsed = parse_buffer(data, uid, sop_class)
    except RejectedDataset:
        return None
    return replace(parsed, layout=replace(parsed.layout, spans=[]))


def _staged(data: bytes | bytearray, staging: str) -> StagedFile | None:
    """``data`` written into ``staging``; None if it cannot be (the grouped commit writes it)."""
    try:
        return StagedFile(write_staged(Path(staging), data), hashlib.sha256(data).hexdigest(), len(data))
    except OSError:
        return None


def forget_inherited(keep: set[int]) -> None:
    """Point every inherited descriptor but those in ``keep`` and the standard ones at /dev/null: their
    files and sockets are released here, and their numbers stay taken (objects inherited
    with them may still close them)."""
    null = os.open(os.devnull, os.O_RDWR)
    for name in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else []:
        fd = int(name)
        if fd > 2 and fd != null and fd not in keep:
            try:
                os.dup2(null, fd)
            except OSError:
                pass
