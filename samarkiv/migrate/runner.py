"""Running a migration: enumerate, plan each study, pull what is missing, check, record.

Studies run in parallel on ``associations`` threads (each pull is its own
association). Busy, refused or timed-out associations are retried with
exponential backoff; what is still missing after the retries is recorded as
failed, with the reason. Every step is recorded in the index as it happens,
so a killed run resumes where it stopped and a rerun pulls only what the
archive does not hold (compared by SOP Instance UID).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from contextlib import contextmanager, nullcontext
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..access.gate import StoreAudit
from ..access.principal import Principal
from ..core.archive import Archive, StoreOutcome, StoreResult
from .job import Job, JobStore, PlannedInstance, PlannedStudy
from .mapping import Mapping, Rule
from .sources import Source, SourceBusy, SourceError, open_source
from .throttle import Throttle, Window

log = logging.getLogger(__name__)

PLAN_AHEAD = 2  # studies listed ahead of the pulls, per association
SETTLE_SECONDS = 1.0  # C-MOVE: how long to wait for serve's deferred commits to stop arriving


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


def mapping_of(options: dict[str, Any]) -> Mapping:
    return Mapping(options.get("issuer_of_patient_id"), tuple(Rule.parse(r) for r in options.get("coerce", [])))


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
        self.in_place = bool(options.get("in_place"))
        self.source_aet: str | None = options.get("source_aet")
        self.associations = max(1, int(options.get("associations") or 1))
        self.retries = max(0, int(options.get("retries", 4)))
        self.backoff = float(options.get("backoff_seconds", 1.0))
        self.sleep = sleep
        self.on_study = on_study
        self.stats = RunStats()
        self.slots = SourceSlots(self.associations + 1)  # the pulls, and the listing ahead of them
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
        write-back journal (durable in the index already) to the blob store before returning."""
        self.jobs.set_job(self.job, state="running")
        try:
            self.enumerate()
            todo = self.jobs.studies(self.job, ["pending", "failed"])
            ahead = threading.BoundedSemaphore(self.associations * PLAN_AHEAD)

            def migrate(study: PlannedStudy) -> None:
                try:
                    self.migrate_study(study)
                finally:
                    ahead.release()

            with ThreadPoolExecutor(max_workers=self.associations, thread_name_prefix="migrate") as pool:
                futures = [pool.submit(migrate, study) for study in self._planned_ahead(todo, ahead)]
                for future in futures:
                    future.result()
        finally:
            close = getattr(self.source, "close", None)
            if close is not None:
                close()
            if self.source.in_process and flush:
                self.archive.flush_all()  # objects in the write-back journal go to the blob store
        progress = self.jobs.progress(self.job)
        failed = progress["studies"].get("failed", 0)
        self.jobs.set_job(self.job, state="failed" if failed else "done")
        self.job = self.jobs.get(self.job.name)  # the final report shows the state just set
        return self.jobs.progress(self.job)

    def _planned_ahead(self, todo: list[PlannedStudy], ahead: threading.BoundedSemaphore) -> Iterator[PlannedStudy]:
        """Each study, planned (listed at IMAGE level) on this thread while the pulls of the
        ones before it run: listing and pulling overlap. At most ``ahead``'s count of studies
        wait planned; a study whose listing fails goes on unplanned (its pull plans and records it)."""
        for study in todo:
            ahead.acquire()
            if not study.planned:
                try:
                    self.throttle.wait_for_window()
                    study = replace(self.plan(study, retrying=False), planned=True)
                except Exception as exc:  # noqa: BLE001 - migrate_study tries again, with the retries, and records it
                    log.info("listing study %d ahead failed: %s", study.pk, exc)
            yield study

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

    def plan(self, study: PlannedStudy, retrying: bool = True) -> PlannedStudy:
        if study.planned:
            return study
        if retrying:
            found = self._retrying(f"list study {study.pk}", lambda: self.source.instances(study))
        else:
            with self.slots.held():
                found = self._once(self.source.instances, study)
        present = set(self.archive.catalog.instances_by_uid([i.sop_instance_uid for i in found]))
        self.jobs.plan_study(self.job, study, found, present)
        return study

    def migrate_study(self, study: PlannedStudy) -> None:
        """Plan, pull and check one study; never raises (failures are recorded)."""
        try:
            self.throttle.wait_for_window()
            self.plan(study)
            self._pull_missing(study, previous=study.attempts)
        except Exception as exc:  # noqa: BLE001 - one study's failure must not stop the others
            log.warning("study %d failed: %s", study.pk, exc)
            self.jobs.set_study(study, "failed", f"{exc.__class__.__name__}: {exc}", attempts=study.attempts + 1)
            if self.on_study:
                self.on_study(study, 0, 0)

    def _found(self, study: PlannedStudy, wanted: list[PlannedInstance]) -> tuple[list[PlannedInstance], int, int]:
        """Mark what the archive now holds as migrated; return what is still missing, and count/bytes found."""
        stored = self.archive.catalog.instances_by_uid([i.sop_instance_uid for i in wanted])
        if stored:
            self.jobs.mark_found(study, {uid: s.size for uid, s in stored.items()})
        return [i for i in wanted if i.sop_instance_uid not in stored], len(stored), sum(s.size for s in stored.values())

    def _found_settled(self, study: PlannedStudy, wanted: list[PlannedInstance]) -> tuple[list[PlannedInstance], int, int]:
        """:meth:`_found`, and for C-MOVE, while objects keep arriving in the index, again: ``serve``
        answers a migration's sub-operations before their grouped commit (deferred.py), so the
        last few may be committed just after the C-MOVE response."""
        missing, count, nbytes = self._found(study, wanted)
        quiet_since = time.monotonic()
        while missing and not self.source.in_process and time.monotonic() - quiet_since < SETTLE_SECONDS:
            time.sleep(0.005)
            missing, more, more_bytes = self._found(study, missing)
            if more:
                count, nbytes, quiet_since = count + more, nbytes + more_bytes, time.monotonic()
        return missing, count, nbytes

    def _pull_missing(self, study: PlannedStudy, previous: int = 0) -> None:
        """Pull what is missing, up to ``retries`` + 1 times in this run (``previous``: attempts of earlier runs).

        A busy, refused or timed-out pull (at the association request or mid-transfer) keeps what
        arrived and is retried for the rest after the backoff; when the retries run out, the last
        error is each missing instance's reason."""
        total = len(self.jobs.instances(study))
        missing, count, nbytes = self._found(study, self.jobs.instances(study, ["pending", "failed", "mismatch"]))
        rejected: dict[str, str] = {}
        note = ""
        tries = 0
        with self.slots.held():  # kept through the retries (SourceSlots)
            while missing:
                tries += 1
                everything = len(missing) == total
                deliver = self._deliverer(study, rejected)
                try:
                    note = self._once(self.source.pull, study, missing, everything, deliver)
                except SourceBusy as exc:
                    note = str(exc)
                    missing, more, more_bytes = self._found_settled(study, missing)
                    count, nbytes = count + more, nbytes + more_bytes
                    if not missing:
                        note = ""  # everything had arrived before the error
                        break
                    if tries > self.retries:
                        break
                    self._backoff(f"pull study {study.pk}", exc, tries - 1)
                    continue
                except SourceError as exc:
                    note = str(exc)
                    missing, more, more_bytes = self._found(study, missing)
                    count, nbytes = count + more, nbytes + more_bytes
                    break
                missing, more, more_bytes = self._found_settled(study, missing)
                count, nbytes = count + more, nbytes + more_bytes
                if missing and all(i.sop_instance_uid in rejected for i in missing):
                    break  # the archive refused them: a retry gives the same answer
                if tries > self.retries:
                    break
        if not self.source.in_process and count:
            self.throttle.acquire(count, nbytes)  # C-MOVE: pace the next study
        for instance in missing:
            reason = rejected.get(instance.sop_instance_uid) or note or "not received from the source"
            self.jobs.mark_instances(study, [instance.sop_instance_uid], "failed", reason)
        if missing:
            self.jobs.set_study(study, "failed", f"{len(missing)} instance(s) missing: {note}".strip(": "), attempts=previous + tries)
        else:
            self.jobs.set_study(study, "done", note or None, attempts=previous + tries)
        if count:
            self.audit.note(study.study_instance_uid, count)
        self.stats.add(1, count, nbytes)
        if self.on_study:
            self.on_study(study, count, nbytes)

    def _deliverer(self, study: PlannedStudy, rejected: dict[str, str]) -> Deliverer:
        return Deliverer(self, study, rejected)


class Deliverer:
    """Where a source hands what it pulled: one object (``deliver(item)``) or, for C-GET's
    grouped commit (deferred.py), several at once (``deliver.many(items)``)."""

    def __init__(self, runner: Runner, study: PlannedStudy, rejected: dict[str, str]) -> None:
        self.runner, self.study, self.rejected = runner, study, rejected

    def __call__(self, item: bytes | Path) -> StoreResult:
        runner = self.runner
        if isinstance(item, Path) and runner.in_place:
            runner.throttle.acquire(1, 0)
            return self._noted(runner.archive.store_in_place(item, source_aet=runner.source_aet))
        return self.many([item.read_bytes() if isinstance(item, Path) else item])[0]

    def many(self, items: list[bytes]) -> list[StoreResult]:
        """Map, pace and store ``items`` with one commit (Archive.store_batch)."""
        runner = self.runner
        mapped = [runner.mapping.apply(data) for data in items]
        runner.throttle.acquire(len(mapped), sum(len(m) for m in mapped))
        if len(mapped) == 1:
            results = [runner.archive.store_bytes(mapped[0], source_aet=runner.source_aet)]
        else:
            results = runner.archive.store_batch([(m, None, None) for m in mapped], source_aet=runner.source_aet)
        for data, coerced, result in zip(items, mapped, results, strict=True):
            if coerced is not data and result.sop_instance_uid:
                # coerced: verification compares the source with what it sent, not with what we keep
                digest = hashlib.sha256(_dataset_part(data)).hexdigest()
                runner.jobs.record_source_digest(self.study, result.sop_instance_uid, digest, len(data))
            self._noted(result)
        return results

    def _noted(self, result: StoreResult) -> StoreResult:
        if result.outcome is StoreOutcome.REJECTED and result.sop_instance_uid:
            self.rejected[result.sop_instance_uid] = f"rejected by the archive: {result.reason}: {result.message}"
        return result


def _dataset_part(data: bytes) -> bytes:
    from ..core.structure import inspect_buffer

    return data[inspect_buffer(data).dataset_offset :]
