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
to write back after the migration).
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
from .job import JobStore
from .mapping import Mapping, dataset_sha256, mapping_of

if TYPE_CHECKING:
    from ..core.archive import Archive

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
    mapping: Mapping
    source_aet: str | None


class MigrationIntake:
    """``serve``'s side of C-MOVE migration pulls (see the module docstring)."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self._running: tuple[float, dict[str, MoveJob]] = (0.0, {})
        self._lock = threading.Lock()
        self._stores: DeferredStores | None = None

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

    def accepts(self, move_originator: object) -> bool:
        """Whether a C-STORE with this Move Originator AE Title may be answered before its commit."""
        return self.job_for(move_originator) is not None

    def submit(self, data: bytes, source_aet: str | None, uid: str | None, sop_class: str | None, job: MoveJob) -> None:
        """Queue one received object of ``job`` for the grouped commit (the caller answers Success at once)."""
        with self._lock:
            if self._stores is None:
                # no drain at the end of a C-MOVE here: a shorter lull ends its last group
                self._stores = DeferredStores(self._store_group, lull=0.002, name="move-intake")
        self._stores.submit((data, source_aet, uid, sop_class, job), len(data))

    def _store_group(self, items: list[tuple[bytes, str | None, str | None, str | None, MoveJob]]) -> None:
        """The group's objects, mapped as their job says, stored by job and sender with one commit
        each; the source's digest is recorded for each object the mapping changed (verify.py)."""
        by_owner: dict[tuple[MoveJob, str | None], list[tuple[bytes, str | None, str | None]]] = {}
        for data, source_aet, uid, sop_class, job in items:
            by_owner.setdefault((job, job.source_aet or source_aet), []).append((data, uid, sop_class))
        for (job, source_aet), group in by_owner.items():
            kept = [job.mapping.apply(data) for data, _uid, _cls in group]
            results = self.archive.store_batch([(k, uid, cls) for k, (_d, uid, cls) in zip(kept, group, strict=True)],
                                               source_aet=source_aet, journal=False)  # fmt: skip
            coerced = [(result.sop_instance_uid, dataset_sha256(data), len(data))
                       for (data, _uid, _cls), k, result in zip(group, kept, results, strict=True)
                       if k is not data and result.outcome is StoreOutcome.STORED and result.sop_instance_uid]  # fmt: skip
            if coerced:
                JobStore(self.archive.engine, self.archive.catalog.writer, self.archive.catalog.writers).record_source_digests(job.pk, coerced)

    def drain(self) -> None:
        if self._stores is not None:
            self._stores.drain()


def _running_move_jobs(archive: Archive) -> dict[str, MoveJob]:
    return {
        str(job.options.get("calling_aet") or "SAMARKIV-MIG").strip(): MoveJob(job.pk, mapping_of(job.options), job.options.get("source_aet"))
        for job in JobStore(archive.engine).jobs()
        if job.state == "running" and job.source_kind == "dimse" and job.options.get("mode", "move") == "move"
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
