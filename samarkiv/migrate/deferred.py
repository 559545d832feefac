"""Migration pulls acknowledged before their commit: the one exception to fsync-before-ack.

Everywhere else a C-STORE is answered only once the object and its index rows
are durable (docs/architecture.md, "A store"). A migration pull may be
answered as soon as its bytes are received, because nothing can be lost:

- the source keeps every object (a migration never changes or deletes there);
- the job records an instance as migrated only after reading it from the
  index, i.e. after its commit (runner.py ``_found``, ``_settle``);
- verification compares the index with the source.

A crash between the answer and the commit therefore leaves the instance
``pending`` and the resumed job pulls it again.

``DeferredStores`` queues them (bounded: backpressure on the association)
and commits what waits, up to 64 objects at a time, in one transaction and
one WAL sync (core/archive.py ``store_batch``, index/catalog.py
``add_instances``). The migrating process has one for its whole run
(runner.py ``Runner._deferred``: C-GET and WADO-RS pulls, straight to blob
files).
``MigrationIntake`` is what ``serve`` asks for C-STORE sub-operations of a
C-MOVE (PS3.7 9.1.1.1.9, Move Originator Application Entity Title
(0000,1030)): only an originator that is the calling AE title of a DIMSE
migration job in state ``running`` is deferred; every other store keeps
the fsync-before-ack rule. Its groups go straight to blob files too, not
through the write-back journal (no byte written three times, nothing left
to write back after the migration). It applies each job's mapping (issuer,
coercion, owning AE title: mapping.py) and commits what the worker processes
of handed-over associations parsed and staged (moveproc.py).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..core.archive import StoreOutcome
from ..core.ingest import ParsedInstance
from ..storage.filesystem import FilesystemBlobStore, StagedFile
from .job import JobStore
from .mapping import Mapping, dataset_sha256, mapping_of
from .sources.getproc import available

if TYPE_CHECKING:
    import socket

    from ..core.archive import Archive
    from .moveproc import MoveWorkers, StoreNow

log = logging.getLogger(__name__)

RUNNING_CACHE_SECONDS = 3.0  # how long serve trusts its list of running migrations
GROUP = 64  # objects per grouped commit at most
LINGER = 0.05  # seconds a group waits for more objects at most
LULL = 0.005  # ... or this long without a new arrival
T = TypeVar("T")


class DeferredStores(Generic[T]):
    """Objects stored in groups by ``threads`` committer threads, behind a bounded queue.

    ``submit`` returns at once, blocking only while ``max_bytes`` (or ``depth``
    objects) wait: backpressure on the association. A committer gathers up to
    ``group`` objects (waiting at most LINGER for them, and no longer once
    LULL passes without an arrival or someone drains) and hands them to
    ``store_group``: one commit, one WAL sync (Archive.store_batch). ``drain`` waits until everything
    submitted so far is committed or rejected.
    """

    def __init__(self, store_group: Callable[[list[T]], Any], *, group: int = GROUP, depth: int = 4 * GROUP,
                 max_bytes: int = 64 << 20, threads: int = 1, lull: float = LULL, name: str = "migrate-store") -> None:  # fmt: skip
        self.store_group = store_group
        self.lull = lull
        self.group, self.depth, self.max_bytes = group, depth, max_bytes
        self.failures = 0
        self._queue: deque[tuple[T, int]] = deque()
        self._bytes = 0
        self._busy = 0  # groups being stored
        self._closed = False
        self._hurry = 0  # callers waiting in drain()
        self._last_arrival = 0.0
        self._cond = threading.Condition()
        self._threads = [threading.Thread(target=self._loop, name=f"{name}-{n}", daemon=True) for n in range(threads)]
        for thread in self._threads:
            thread.start()

    def submit(self, item: T, size: int = 0) -> None:
        """Queue ``item`` (``size`` bytes) for the next group."""
        with self._cond:
            while self._queue and (len(self._queue) >= self.depth or self._bytes + size > self.max_bytes):
                self._cond.wait()
            if self._closed:
                raise RuntimeError("deferred stores closed")
            self._queue.append((item, size))
            self._bytes += size
            self._last_arrival = time.monotonic()
            # a committer needs waking only to begin a group or to end a full one: one gathering
            # wakes at its own deadline and finds what came meanwhile (measured, C-GET with 4
            # associations: 13.6 -> 10.8 context switches per object in the migrating process)
            if len(self._queue) == 1 or len(self._queue) >= self.group:
                self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                # gather a group: up to ``group`` objects, at most LINGER after the first,
                # and at once after a LULL without arrivals or when someone drains
                first = time.monotonic()
                while len(self._queue) < self.group and not self._closed and not self._hurry:
                    now = time.monotonic()
                    left = min(first + LINGER - now, self._last_arrival + self.lull - now)
                    if left <= 0:
                        break
                    self._cond.wait(left)
                taken = [self._queue.popleft() for _ in range(min(self.group, len(self._queue)))]
                self._bytes -= sum(size for _item, size in taken)
                self._busy += 1
                self._cond.notify_all()
            try:
                self.store_group([item for item, _size in taken])
            except Exception:  # noqa: BLE001 - the objects stay missing and are pulled again
                self.failures += 1
                log.exception("a deferred migration group of %d failed (the job pulls them again)", len(taken))
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()

    def drain(self) -> None:
        """Wait until every object submitted so far is stored."""
        self.wait_until(lambda: not self._queue and not self._busy)

    def wait_until(self, done: Callable[[], bool]) -> None:
        """Wait, the committers hurrying meanwhile, until ``done()`` (checked after each group)."""
        with self._cond:
            self._hurry += 1
            self._cond.notify_all()
            try:
                while not done():
                    self._cond.wait()
            finally:
                self._hurry -= 1

    def finish(self) -> None:
        """Drain, then stop the committer threads."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()


@dataclass(frozen=True)
class MoveJob:
    """What ``serve`` needs of a running C-MOVE migration job: how its objects are mapped on the
    way in, and the AE title whose organisation owns them (the sender's where the job names none)."""

    pk: int
    aet: str  # its calling AE title: the Move Originator of its sub-operations
    mapping: Mapping
    source_aet: str | None


class MigrationIntake:
    """``serve``'s side of C-MOVE migration pulls (see the module docstring)."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self._running: tuple[float, dict[str, MoveJob]] = (0.0, {})
        self._lock = threading.Lock()
        self._stores: DeferredStores | None = None
        self._workers: MoveWorkers | None = None

    def running_jobs(self) -> dict[str, MoveJob]:
        """The DIMSE C-MOVE migration jobs now running, by calling AE title, cached a few seconds."""
        now = time.monotonic()
        stamp, jobs = self._running
        if now - stamp < RUNNING_CACHE_SECONDS:
            return jobs
        with self._lock:
            if now - self._running[0] < RUNNING_CACHE_SECONDS:
                return self._running[1]
            try:
                jobs = _running_move_jobs(self.archive)
            except Exception as exc:  # noqa: BLE001 - no answer: nobody is deferred
                log.warning("cannot read the migration jobs: %s", exc)
                jobs = {}
            if jobs.keys() - self._running[1].keys():
                log.info("C-STORE sub-operations of the C-MOVE migrations of %s: answered before their grouped commit",
                         ", ".join(sorted(jobs)))  # fmt: skip
            self._running = (now, jobs)
            return jobs

    def job_for(self, move_originator: object) -> MoveJob | None:
        """The running migration whose C-STORE sub-operations carry this Move Originator AE Title:
        they may be answered before their commit. None for any other store."""
        return self.running_jobs().get(str(move_originator or "").strip())

    def submit(self, data: bytes | None, source_aet: str | None, uid: str | None, sop_class: str | None, job: MoveJob, *,
               parsed: ParsedInstance | None = None, staged: StagedFile | None = None) -> None:  # fmt: skip
        """Queue one received object of ``job`` for the grouped commit (the caller answers Success
        at once); ``parsed``, ``staged``: what a worker made of it (moveproc.py), ``data`` then
        None where it is staged."""
        with self._lock:
            if self._stores is None:
                # no drain at the end of a C-MOVE here: a shorter lull ends its last group
                self._stores = DeferredStores(self._store_group, threads=2, lull=0.002, name="move-intake")
        item = _Received(data, source_aet, uid, sop_class, job, parsed, staged)
        self._stores.submit(item, item.size)

    def _store_group(self, items: list[_Received]) -> None:
        """The group's objects, mapped as their job says, stored by job and sender with one commit
        each; the source's digest is recorded for each object the mapping changed (verify.py)."""
        by_owner: dict[tuple[MoveJob, str | None], list[_Received]] = {}
        for item in items:
            by_owner.setdefault((item.job, item.job.source_aet or item.source_aet), []).append(item)
        for (job, source_aet), group in by_owner.items():
            kept = [job.mapping.apply(item.data) if item.data is not None else None for item in group]
            same = [k is item.data for k, item in zip(kept, group, strict=True)]  # what a worker made of it still holds
            results = self.archive.store_batch(
                [(k, item.uid, item.sop_class) for k, item in zip(kept, group, strict=True)], source_aet=source_aet, journal=False,
                parsed=[item.parsed if s else None for item, s in zip(group, same, strict=True)],
                staged=[item.staged if s else None for item, s in zip(group, same, strict=True)],
            )  # fmt: skip
            coerced = [(result.sop_instance_uid, dataset_sha256(item.data), len(item.data))
                       for item, s, result in zip(group, same, results, strict=True)
                       if not s and result.outcome is StoreOutcome.STORED and result.sop_instance_uid]  # fmt: skip
            if coerced:
                JobStore(self.archive.engine, self.archive.catalog.writer, self.archive.catalog.writers).record_source_digests(job.pk, coerced)

    def adopt(self, sock: socket.socket, calling_ae: str, contexts: dict[int, tuple[str, str]], peer_max_pdu: int, job: MoveJob,
              store: StoreNow, ended: Callable[[bool], None]) -> bool:  # fmt: skip
        """Hand a C-MOVE migration's association to a worker process (moveproc.py); False where
        none can take it (no fork here, or serve stopping): the caller serves it on."""
        if not available():
            return False
        from .moveproc import Handoff, MoveWorkers

        with self._lock:
            if self._workers is None:
                self._workers = MoveWorkers(self)
        archive, prepare = self.archive, not job.mapping.active
        blobs = archive.blobs if prepare and isinstance(archive.blobs, FilesystemBlobStore) else None
        handoff = Handoff(calling_ae, contexts, peer_max_pdu, job.aet, archive.settings.inline_max_bytes, str(archive.staging),
                          str(blobs.staging) if blobs is not None else None, prepare, sock.gettimeout() or 120.0)  # fmt: skip
        return self._workers.adopt(sock, handoff, job, store, ended)

    def close(self) -> None:
        """End the worker processes (serve stopping); what was handed over and not committed is
        pulled again by the job."""
        with self._lock:
            workers, self._workers = self._workers, None
        if workers is not None:
            workers.close()

    def drain(self) -> None:
        if self._stores is not None:
            self._stores.drain()


@dataclass(frozen=True)
class _Received:
    """One C-MOVE sub-operation's object for the grouped commit, with what a worker made of it."""

    data: bytes | None  # None: in ``staged``
    source_aet: str | None
    uid: str | None
    sop_class: str | None
    job: MoveJob
    parsed: ParsedInstance | None = None
    staged: StagedFile | None = None

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else self.staged.size  # type: ignore[union-attr]


def _running_move_jobs(archive: Archive) -> dict[str, MoveJob]:
    return {
        aet: MoveJob(job.pk, aet, mapping_of(job.options), job.options.get("source_aet"))
        for job in JobStore(archive.engine).jobs()
        if job.state == "running" and job.source_kind == "dimse" and job.options.get("mode", "move") == "move"
        for aet in [str(job.options.get("calling_aet") or "SAMARKIV-MIG").strip()]
    }


_intakes: weakref.WeakKeyDictionary[Archive, MigrationIntake] = weakref.WeakKeyDictionary()
_intakes_lock = threading.Lock()


def intake_for(archive: Archive) -> MigrationIntake:
    """The archive's one intake (created on first use)."""
    with _intakes_lock:
        intake = _intakes.get(archive)
        if intake is None:
            intake = _intakes[archive] = MigrationIntake(archive)
        return intake


def close_intake(archive: Archive) -> None:
    """End the archive's intake workers, if it has any (serve stopping)."""
    with _intakes_lock:
        intake = _intakes.get(archive)
    if intake is not None:
        intake.close()
