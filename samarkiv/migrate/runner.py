"""Running a migration: enumerate, plan each study, pull what is missing, check, record.

Studies run in parallel on ``associations`` threads (each pull is its own
association). Busy, refused or timed-out associations are retried with
exponential backoff; what is still missing after the retries is recorded as
failed, with the reason. Every step is recorded in the index as it happens,
so a killed run resumes where it stopped and a rerun pulls only what the
archive does not hold (compared by SOP Instance UID).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from contextlib import contextmanager, nullcontext
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..access.gate import StoreAudit
from ..access.principal import Principal
from ..core.archive import Archive, StoreOutcome, StoreResult
from ..core.ingest import ParsedInstance
from ..storage.filesystem import FilesystemBlobStore, StagedFile
from .deferred import DeferredStores
from .job import Job, JobStore, PlannedInstance, PlannedStudy
from .mapping import dataset_sha256, mapping_of
from .sources import Source, SourceBusy, SourceError, open_source
from .throttle import Throttle, Window

log = logging.getLogger(__name__)

PLAN_AHEAD = 3  # studies in flight (listed ahead, pulling, settling), per association
SETTLE_SECONDS = 1.0  # C-MOVE: how long to wait for serve's deferred commits to stop arriving
COMMITTERS = 2  # threads committing the run's groups: one parses while the other commits
LIST_BATCH = 8  # studies listed over one association at most (the run's associations, up to this)


@dataclass
class RunStats:
    """Live counters for the progress display (this run only)."""

    studies_done: int = 0
    instances: int = 0
    bytes: int = 0
    retries: int = 0  # busy/refused/timed-out source calls tried again
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, studies: int, instances: int, nbytes: int) -> None:
        with self.lock:
            self.studies_done += studies
            self.instances += instances
            self.bytes += nbytes


class SourceSlots:
    """How many associations the run opens at once: ``limit`` at most, one fewer after each busy,
    refused or timed-out call (never below one; a source may reject an A-ASSOCIATE-RQ for lack of
    resources, PS3.8 9.3.4), one more after RECOVER calls in a row that went through.

    A caller keeps its slot through its retries and their backoff: against a source with fewer
    associations than the job's, the run's threads then take turns instead of racing for the
    source's slots, where a study that lost often enough failed with its retries spent."""

    RECOVER = 20

    def __init__(self, limit: int) -> None:
        self.limit = self.allowed = max(1, limit)
        self._held = 0
        self._streak = 0
        self._cond = threading.Condition()

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._cond:
            while self._held >= self.allowed:
                self._cond.wait()
            self._held += 1
        try:
            yield
        finally:
            with self._cond:
                self._held -= 1
                self._cond.notify_all()

    def refused(self) -> None:
        with self._cond:
            self.allowed = max(1, self.allowed - 1)
            self._streak = 0

    def succeeded(self) -> None:
        with self._cond:
            self._streak += 1
            if self._streak >= self.RECOVER and self.allowed < self.limit:
                self.allowed += 1
                self._streak = 0
                self._cond.notify_all()


def throttle_of(options: dict[str, Any]) -> Throttle:
    mbps = options.get("max_mbps")
    return Throttle(
        options.get("max_instances_per_second"),
        float(mbps) * 1e6 if mbps else None,
        [Window.parse(w) for w in options.get("windows", [])],
    )


class Runner:
    def __init__(
        self,
        archive: Archive,
        jobs: JobStore,
        job: Job,
        source: Source | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        on_study: Callable[[PlannedStudy, int, int], None] | None = None,
    ) -> None:
        self.archive, self.jobs, self.job = archive, jobs, job
        if isinstance(jobs.lock, nullcontext):
            jobs.lock = archive.catalog.writers  # job writes queue with the store commits
        options = job.options
        self.source = source or open_source(job.source_kind, options)
        self.throttle = throttle_of(options)
        self.mapping = mapping_of(options)
        if isinstance(archive.blobs, FilesystemBlobStore) and not self.mapping.active and hasattr(self.source, "staging"):
            self.source.staging = str(archive.blobs.staging)  # C-GET workers write the blob files (getproc.py)
        self.in_place = bool(options.get("in_place"))
        self.source_aet: str | None = options.get("source_aet")
        self.associations = max(1, int(options.get("associations") or 1))
        self.retries = max(0, int(options.get("retries", 4)))
        self.backoff = float(options.get("backoff_seconds", 1.0))
        self.sleep = sleep
        self.on_study = on_study
        self.stats = RunStats()
        self.slots = SourceSlots(self.associations + 1)  # the pulls, and the listing ahead of them
        self._stores: DeferredStores[_Handed] | None = None
        self._stores_lock = threading.Lock()
        # each study pulled is audited once per run, as stored by the job (access/gate.py)
        principal = Principal(name=f"migration:{job.name}", kind="service", roles=frozenset({"service"}),
                              auth_method="internal")  # fmt: skip
        self.audit = StoreAudit(archive, principal, "migration")

    # --- retries ------------------------------------------------------------------------------

    def _retrying(self, what: str, call: Callable[[], Any]) -> Any:
        with self.slots.held():
            for attempt in range(self.retries + 1):
                try:
                    return self._once(call)
                except SourceBusy as exc:
                    if attempt == self.retries:
                        raise
                    self._backoff(what, exc, attempt)
        raise AssertionError("unreachable")

    def _once(self, call: Callable[..., Any], *args: Any) -> Any:
        """One source call, counted for the association limit (SourceSlots)."""
        try:
            result = call(*args)
        except SourceBusy:
            self.slots.refused()
            raise
        self.slots.succeeded()
        return result

    def _backoff(self, what: str, exc: SourceBusy, attempt: int) -> None:
        """Log a busy, refused or timed-out call and wait before retry ``attempt`` + 1 (exponential backoff)."""
        delay = self.backoff * 2**attempt
        with self.stats.lock:
            self.stats.retries += 1
        log.warning("%s: %s; retry %d/%d in %.1fs", what, exc, attempt + 1, self.retries, delay)
        self.sleep(delay)

    # --- the run --------------------------------------------------------------------------------

    def enumerate(self) -> None:
        """Record the source's studies (once; ``--refresh`` runs it again to add new ones)."""
        if self.job.enumerated:
            return
        self.jobs.add_studies(self.job, self._retrying("enumerate", lambda: list(self.source.studies())))
        self.jobs.set_job(self.job, enumerated=True)
        self.job = self.jobs.get(self.job.name)

    def run(self, flush: bool = True) -> dict[str, Any]:
        """Migrate every study not done. ``flush``: move the objects this process left in the
        write-back journal (durable in the index already) to the blob store before returning.

        A pipeline: the lister thread lists studies ahead (:meth:`_list_ahead`), this thread
        records their plans (:meth:`_planned`), each association's thread makes a study's first
        pull and goes on to the next study while a settling thread waits for the study's commits,
        checks it, retries what is missing and records it (:meth:`_settle`). C-GET and WADO-RS
        objects are committed in groups behind the pulls (:meth:`_deferred`), C-MOVE's by ``serve``."""
        self.jobs.set_job(self.job, state="running")
        try:
            self.enumerate()
            todo = self.jobs.studies(self.job, ["pending", "failed"])
            ahead = threading.BoundedSemaphore(self.associations * PLAN_AHEAD)  # studies in flight
            settling: list[Future] = []
            # C-MOVE under a rate limit is paced when a study is recorded: no overlap then
            overlap = self.source.in_process or not self.throttle.paces

            def settle(pull: _Pull) -> None:
                try:
                    self._settled(pull)
                finally:
                    ahead.release()

            def migrate(listed: _Listed) -> None:
                pull = self._pulled(listed)
                if pull is None:
                    ahead.release()
                elif overlap:
                    settling.append(settlers.submit(settle, pull))
                else:
                    settle(pull)

            listed: queue.Queue[_Listed | BaseException | None] = queue.Queue()
            threading.Thread(target=self._list_ahead, args=(todo, ahead, listed), name="migrate-list", daemon=True).start()
            with ThreadPoolExecutor(max_workers=self.associations, thread_name_prefix="migrate-settle") as settlers:
                with ThreadPoolExecutor(max_workers=self.associations, thread_name_prefix="migrate") as pool:
                    futures = [pool.submit(migrate, item) for item in self._planned(listed)]
                    for future in futures:
                        future.result()
            for future in settling:
                future.result()
        finally:
            self.close()
            if self.source.in_process and flush:
                self.archive.flush_all()  # objects in the write-back journal go to the blob store
        progress = self.jobs.progress(self.job)
        failed = progress["studies"].get("failed", 0)
        self.jobs.set_job(self.job, state="failed" if failed else "done")
        self.job = self.jobs.get(self.job.name)  # the final report shows the state just set
        return self.jobs.progress(self.job)

    def close(self) -> None:
        """Commit what waits in the grouped commit, then let the source go."""
        with self._stores_lock:
            stores, self._stores = self._stores, None
        if stores is not None:
            stores.finish()
        close = getattr(self.source, "close", None)
        if close is not None:
            close()

    def _list_ahead(self, todo: list[PlannedStudy], ahead: threading.BoundedSemaphore, out: queue.Queue) -> None:
        """Each study with its listing (IMAGE level), asked on the lister thread while the pulls
        of the ones before it run: listing and pulling overlap. Studies are listed up to
        ``associations`` at a time over one association (:func:`_instances_of`), once as many
        are allowed in flight (``ahead``). A study whose listing fails goes on unlisted (its
        pull lists it again, with the retries). Ends with None, or the exception that stopped it."""
        batch = max(1, min(self.associations, LIST_BATCH))
        try:
            for start in range(0, len(todo), batch):
                chunk = todo[start : start + batch]
                for _study in chunk:
                    ahead.acquire()
                found = self._listed([study for study in chunk if not study.planned])
                for study in chunk:
                    out.put(_Listed(study, found.get(study.pk)))
            out.put(None)
        except BaseException as exc:  # noqa: BLE001 - the run raises it
            out.put(exc)

    def _listed(self, studies: list[PlannedStudy]) -> dict[int, list[PlannedInstance]]:
        """Study pk -> listing, of those of ``studies`` the source listed (with no retries)."""
        if not studies:
            return {}
        try:
            self.throttle.wait_for_window()
            with self.slots.held():
                listings = self._once(_instances_of, self.source, studies)
        except Exception as exc:  # noqa: BLE001 - the pulls list them again, with the retries
            log.info("listing %d studies ahead failed: %s", len(studies), exc)
            return {}
        for study, found in zip(studies, listings, strict=True):
            if isinstance(found, Exception):
                log.info("listing study %d ahead failed: %s", study.pk, found)
        return {study.pk: found for study, found in zip(studies, listings, strict=True) if not isinstance(found, Exception)}

    def _planned(self, listed: queue.Queue) -> Iterator[_Listed]:
        """The lister's studies, their plans recorded (those waiting together in one transaction:
        the index's writer is shared with the commits, and neither the lister nor the pulls
        should queue for it)."""
        while True:
            batch = [listed.get()]
            while batch[-1] is not None and not isinstance(batch[-1], BaseException):
                try:
                    batch.append(listed.get_nowait())
                except queue.Empty:
                    break
            items = [item for item in batch if isinstance(item, _Listed)]
            yield from self._record_plans(items)
            if not isinstance(batch[-1], _Listed):
                if batch[-1] is not None:
                    raise batch[-1]
                return

    def _record_plans(self, items: list[_Listed]) -> list[_Listed]:
        """Record the plans of the listed studies not planned yet, in one transaction; each comes
        back planned, with the SOP Instance UIDs the archive held when it was recorded."""
        fresh = {n: self._present(item.found) for n, item in enumerate(items) if item.found is not None and not item.study.planned}
        if not fresh:
            return items
        try:
            self.jobs.plan_studies(self.job, [(items[n].study, items[n].found, present) for n, present in fresh.items()])
        except Exception as exc:  # noqa: BLE001 - each pull plans its study again, and records a failure
            log.warning("recording %d listed studies failed: %s", len(fresh), exc)
            return items
        return [_Listed(replace(item.study, planned=True), item.found, fresh[n]) if n in fresh else item
                for n, item in enumerate(items)]  # fmt: skip

    def plan_all(self) -> dict[str, Any]:
        """Enumerate and list every study's instances, pulling nothing (what a run would move)."""
        self.enumerate()
        todo = [s for s in self.jobs.studies(self.job, ["pending", "failed"]) if not s.planned]

        def plan_one(study: PlannedStudy) -> None:
            try:
                self.plan(study)
            except SourceError as exc:
                self.jobs.set_study(study, "failed", f"{exc.__class__.__name__}: {exc}", attempts=study.attempts + 1)

        with ThreadPoolExecutor(max_workers=self.associations, thread_name_prefix="migrate-plan") as pool:
            list(pool.map(plan_one, todo))
        return self.jobs.progress(self.job)

    def plan(self, study: PlannedStudy, found: list[PlannedInstance] | None = None) -> PlannedStudy:
        """Record what the source holds of ``study`` (``found``, else listed now, with the retries)."""
        if study.planned:
            return study
        if found is None:
            found = self._retrying(f"list study {study.pk}", lambda: self.source.instances(study))
        self.jobs.plan_study(self.job, study, found, self._present(found))
        return study

    def _present(self, found: list[PlannedInstance]) -> set[str]:
        """The SOP Instance UIDs of ``found`` the archive holds already."""
        return set(self.archive.catalog.sizes_by_uid([i.sop_instance_uid for i in found]))

    def _pulled(self, listed: _Listed) -> _Pull | None:
        """The study planned and its first pull made; None when that failed (recorded)."""
        study = listed.study
        try:
            self.throttle.wait_for_window()
            if listed.present is not None:
                return self._begin(study, study.attempts, listed.found, listed.present)
            self.plan(study, listed.found)
            return self._begin(study, study.attempts)
        except Exception as exc:  # noqa: BLE001 - one study's failure must not stop the others
            self._failed(study, exc)
            return None

    def _settled(self, pull: _Pull) -> None:
        try:
            self._settle(pull)
        except Exception as exc:  # noqa: BLE001 - one study's failure must not stop the others
            self._failed(pull.study, exc)

    def _failed(self, study: PlannedStudy, exc: Exception) -> None:
        log.warning("study %d failed: %s", study.pk, exc)
        self.jobs.set_study(study, "failed", f"{exc.__class__.__name__}: {exc}", attempts=study.attempts + 1)
        if self.on_study:
            self.on_study(study, 0, 0)

    def _found(self, wanted: list[PlannedInstance]) -> tuple[list[PlannedInstance], dict[str, int]]:
        """What of ``wanted`` the archive does not hold yet, and what it holds (UID -> stored size)."""
        stored = self.archive.catalog.sizes_by_uid([i.sop_instance_uid for i in wanted])
        return [i for i in wanted if i.sop_instance_uid not in stored], stored

    def _found_settled(self, wanted: list[PlannedInstance]) -> tuple[list[PlannedInstance], dict[str, int]]:
        """:meth:`_found`, and for C-MOVE, while objects keep arriving in the index, again: ``serve``
        answers a migration's sub-operations before their grouped commit (deferred.py), so the
        last few may be committed just after the C-MOVE response."""
        missing, found = self._found(wanted)
        quiet_since = time.monotonic()
        while missing and not self.source.in_process and time.monotonic() - quiet_since < SETTLE_SECONDS:
            time.sleep(0.005)
            missing, more = self._found(missing)
            if more:
                found.update(more)
                quiet_since = time.monotonic()
        return missing, found

    def _pull_missing(self, study: PlannedStudy, previous: int = 0) -> None:
        """Pull what is missing, up to ``retries`` + 1 times in this run (``previous``: attempts of
        earlier runs), and record the outcome.

        A busy, refused or timed-out pull (at the association request or mid-transfer) keeps what
        arrived and is retried for the rest after the backoff; when the retries run out, the last
        error is each missing instance's reason."""
        self._settle(self._begin(study, previous))

    def _begin(self, study: PlannedStudy, previous: int, planned: list[PlannedInstance] | None = None,
               present: set[str] | None = None) -> _Pull:  # fmt: skip
        """What the archive lacks of ``study``, and its first pull. A busy, refused or timed-out
        first pull is retried here, keeping the association slot through the backoff (SourceSlots).
        ``planned`` and ``present``: the plan this run recorded a moment ago and what the archive
        held then (the plan's ``pending`` instances are the rest), else both are read again."""
        if planned is not None and present is not None:
            missing, found, total = [i for i in planned if i.sop_instance_uid not in present], {}, len(planned)
        else:
            missing, found = self._found(self.jobs.instances(study, ["pending", "failed", "mismatch"]))
            total = len(self.jobs.instances(study))
        pull = _Pull(study, previous, total, missing, found)
        if missing:
            with self.slots.held():
                self._attempt(pull)
                while isinstance(pull.error, SourceBusy) and self._check(pull):
                    self._attempt(pull)
        return pull

    def _attempt(self, pull: _Pull) -> None:
        """One pull of what is missing; the caller holds an association slot."""
        pull.tries += 1
        pull.checked = False
        pull.deliver = self._deliverer(pull.study, pull.rejected)
        everything = len(pull.missing) == pull.total
        try:
            pull.note, pull.error = self._once(self.source.pull, pull.study, pull.missing, everything, pull.deliver), None
        except SourceError as exc:
            pull.note, pull.error = str(exc), exc

    def _check(self, pull: _Pull) -> bool:
        """After an attempt: wait for its commits and mark what arrived; whether to try again
        (after the backoff, for a busy, refused or timed-out one)."""
        assert pull.deliver is not None
        pull.checked = True
        pull.deliver.wait()
        error = pull.error
        found = self._found if error is not None and not isinstance(error, SourceBusy) else self._found_settled
        pull.missing, more = found(pull.missing)
        pull.found.update(more)
        if isinstance(error, SourceBusy):
            if not pull.missing:
                pull.note = ""  # everything had arrived before the error
                return False
            if pull.tries > self.retries:
                return False
            self._backoff(f"pull study {pull.study.pk}", error, pull.tries - 1)
            return True
        if error is not None or not pull.missing or pull.tries > self.retries:
            return False
        return not all(i.sop_instance_uid in pull.rejected for i in pull.missing)  # refused: the same answer again

    def _settle(self, pull: _Pull) -> None:
        """Check the pull, try again for what is missing, and record the study."""
        while pull.tries and not pull.checked and self._check(pull):
            with self.slots.held():
                self._attempt(pull)
        study, missing = pull.study, pull.missing
        count, nbytes = len(pull.found), sum(pull.found.values())
        if not self.source.in_process and count:
            self.throttle.acquire(count, nbytes)  # C-MOVE: pace the next study
        failed = {i.sop_instance_uid: pull.rejected.get(i.sop_instance_uid) or pull.note or "not received from the source"
                  for i in missing}  # fmt: skip
        if missing:
            state, message = "failed", f"{len(missing)} instance(s) missing: {pull.note}".strip(": ")
        else:
            state, message = "done", pull.note or None
        self.jobs.record_study(study, state, message, pull.previous + pull.tries, pull.found, failed)
        if count:
            self.audit.note(study.study_instance_uid, count)
        self.stats.add(1, count, nbytes)
        if self.on_study:
            self.on_study(study, count, nbytes)

    def _deliverer(self, study: PlannedStudy, rejected: dict[str, str]) -> Deliverer:
        return Deliverer(self, study, rejected)

    # --- the grouped commit of what sources hand over (deferred.py) ------------------------------

    def _deferred(self) -> DeferredStores[_Handed]:
        """The run's grouped commit, started on first use."""
        with self._stores_lock:
            if self._stores is None:
                self._stores = DeferredStores(self._store_group, threads=COMMITTERS)
            return self._stores

    def _store_group(self, items: list[_Handed]) -> None:
        """One group of objects, of any of the run's pulls, mapped, paced and stored with one
        commit (Archive.store_batch). What a source made of an object (its parse, its staged
        file) is used where the mapping left the object alone: the runner asks for staged files
        only when no mapping applies (``__init__``)."""
        try:
            kept = [self.mapping.apply(item.data) if item.data is not None else None for item in items]
            same = [k is item.data for k, item in zip(kept, items, strict=True)]
            self.throttle.acquire(len(kept), sum(item.size if s else len(k) for item, k, s in zip(items, kept, same, strict=True)))
            results = self.archive.store_batch(
                [(k, None, None) for k in kept], source_aet=self.source_aet, journal=False,
                parsed=[item.parsed if s else None for item, s in zip(items, same, strict=True)],
                staged=[item.staged if s else None for item, s in zip(items, same, strict=True)],
            )  # fmt: skip
            for item, k, result in zip(items, kept, results, strict=True):
                item.deliverer.noted(item.data, k, result)
        finally:
            for item in items:
                item.deliverer.settled()

    def _store_one(self, data: bytes) -> tuple[bytes, StoreResult]:
        """Map, pace and store one object now (Archive.store_bytes): (as kept, result)."""
        kept = self.mapping.apply(data)
        self.throttle.acquire(1, len(kept))
        return kept, self.archive.store_bytes(kept, source_aet=self.source_aet)


@dataclass(frozen=True)
class _Listed:
    """A study to migrate, with what the source listed of it ahead of its pull (None: not yet)
    and, once this run recorded that as its plan, what the archive held of it then."""

    study: PlannedStudy
    found: list[PlannedInstance] | None
    present: set[str] | None = None


@dataclass
class _Pull:
    """One study's pull in this run: from its first attempt (Runner._begin) to its record (Runner._settle)."""

    study: PlannedStudy
    previous: int  # attempts of earlier runs
    total: int  # instances the source lists
    missing: list[PlannedInstance]
    found: dict[str, int]  # SOP Instance UID -> stored size, of what the archive holds now
    rejected: dict[str, str] = field(default_factory=dict)  # SOP Instance UID -> why the archive refused it
    deliver: Deliverer | None = None  # the last attempt's
    error: SourceError | None = None  # the last attempt's
    note: str = ""
    tries: int = 0
    checked: bool = False  # the last attempt's outcome is counted


@dataclass(frozen=True)
class _Handed:
    """One object a source handed over for the grouped commit, with what it made of it already."""

    deliverer: Deliverer
    data: bytes | None  # None: in ``staged``
    parsed: ParsedInstance | None = None
    staged: StagedFile | None = None  # written into the blob store's staging folder

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else self.staged.size  # type: ignore[union-attr]


class Deliverer:
    """Where a source hands what one pull brings: one object stored now (``deliver(item)``),
    or objects for the run's grouped commit (``deliver.defer(data)``, then ``wait()``)."""

    def __init__(self, runner: Runner, study: PlannedStudy, rejected: dict[str, str]) -> None:
        self.runner, self.study, self.rejected = runner, study, rejected
        self._handed = self._settled = 0  # objects deferred; of them, committed or refused
        self._lock = threading.Lock()

    def __call__(self, item: bytes | Path) -> StoreResult:
        runner = self.runner
        if isinstance(item, Path) and runner.in_place:
            runner.throttle.acquire(1, 0)
            result = runner.archive.store_in_place(item, source_aet=runner.source_aet)
            self.noted(b"", None, result)
            return result
        data = item.read_bytes() if isinstance(item, Path) else item
        kept, result = runner._store_one(data)
        self.noted(data, kept, result)
        return result

    def defer(self, data: bytes | None, parsed: ParsedInstance | None = None, staged: StagedFile | None = None) -> None:
        self._handed += 1
        handed = _Handed(self, data, parsed, staged)
        self.runner._deferred().submit(handed, handed.size)

    def wait(self) -> None:
        """Until every object deferred so far is committed or refused."""
        if self._handed:
            self.runner._deferred().wait_until(lambda: self._settled >= self._handed)

    def settled(self) -> None:
        with self._lock:
            self._settled += 1

    def noted(self, data: bytes | None, kept: bytes | None, result: StoreResult) -> None:
        """Remember why the archive refused an object, and the digest of one it coerced."""
        if result.outcome is StoreOutcome.REJECTED and result.sop_instance_uid:
            self.rejected[result.sop_instance_uid] = f"rejected by the archive: {result.reason}: {result.message}"
        elif data is not None and kept is not None and kept is not data and result.sop_instance_uid:
            # coerced: verification compares the source with what it sent, not with what we keep
            self.runner.jobs.record_source_digests(self.runner.job.pk, [(result.sop_instance_uid, dataset_sha256(data), len(data))])


def _instances_of(source: Source, studies: list[PlannedStudy]) -> list[list[PlannedInstance] | SourceError]:
    """Each study's listing, or the error that stopped it: over one association where the
    source can (DimseSource.instances_of), else one study after the other."""
    many = getattr(source, "instances_of", None)
    if many is not None:
        return many(studies)
    listings: list[list[PlannedInstance] | SourceError] = []
    for study in studies:
        try:
            listings.append(source.instances(study))
        except SourceError as exc:
            listings.append(exc)
    return listings
