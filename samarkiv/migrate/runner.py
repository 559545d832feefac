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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.archive import Archive, StoreOutcome, StoreResult
from .job import Job, JobStore, PlannedInstance, PlannedStudy
from .mapping import Mapping, Rule
from .sources import Source, SourceBusy, SourceError, open_source
from .throttle import Throttle, Window

log = logging.getLogger(__name__)


@dataclass
class RunStats:
    """Live counters for the progress display (this run only)."""

    studies_done: int = 0
    instances: int = 0
    bytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, studies: int, instances: int, nbytes: int) -> None:
        with self.lock:
            self.studies_done += studies
            self.instances += instances
            self.bytes += nbytes


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

    # --- retries ------------------------------------------------------------------------------

    def _retrying(self, what: str, call: Callable[[], Any]) -> Any:
        for attempt in range(self.retries + 1):
            try:
                return call()
            except SourceBusy as exc:
                if attempt == self.retries:
                    raise
                delay = self.backoff * 2**attempt
                log.warning("%s: %s; retry %d/%d in %.1fs", what, exc, attempt + 1, self.retries, delay)
                self.sleep(delay)
        raise AssertionError("unreachable")

    # --- the run --------------------------------------------------------------------------------

    def enumerate(self) -> None:
        """Record the source's studies (once; ``--refresh`` runs it again to add new ones)."""
        if self.job.enumerated:
            return
        self.jobs.add_studies(self.job, self._retrying("enumerate", lambda: list(self.source.studies())))
        self.jobs.set_job(self.job, enumerated=True)
        self.job = self.jobs.get(self.job.name)

    def run(self) -> dict[str, Any]:
        self.jobs.set_job(self.job, state="running")
        try:
            self.enumerate()
            todo = self.jobs.studies(self.job, ["pending", "failed"])
            with ThreadPoolExecutor(max_workers=self.associations, thread_name_prefix="migrate") as pool:
                list(pool.map(self.migrate_study, todo))
        finally:
            if self.source.in_process:
                self.archive.flush_all()  # objects in the write-back journal go to the blob store
        progress = self.jobs.progress(self.job)
        failed = progress["studies"].get("failed", 0)
        self.jobs.set_job(self.job, state="failed" if failed else "done")
        return self.jobs.progress(self.job)

    def plan(self, study: PlannedStudy) -> PlannedStudy:
        if study.planned:
            return study
        found = self._retrying(f"list study {study.pk}", lambda: self.source.instances(study))
        present = set(self.archive.catalog.instances_by_uid([i.sop_instance_uid for i in found]))
        self.jobs.plan_study(self.job, study, found, present)
        return study

    def migrate_study(self, study: PlannedStudy) -> None:
        """Plan, pull and check one study; never raises (failures are recorded)."""
        try:
            self.throttle.wait_for_window()
            self.plan(study)
            self._pull_missing(study, attempts=study.attempts)
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

    def _pull_missing(self, study: PlannedStudy, attempts: int = 0) -> None:
        total = len(self.jobs.instances(study))
        missing, count, nbytes = self._found(study, self.jobs.instances(study, ["pending", "failed", "mismatch"]))
        rejected: dict[str, str] = {}
        note = ""
        while missing and attempts <= self.retries:
            attempts += 1
            everything = len(missing) == total
            deliver = self._deliverer(study, rejected)
            try:
                note = self._retrying(
                    f"pull study {study.pk}", lambda: self.source.pull(study, missing, everything, deliver)
                )
            except SourceBusy as exc:
                note = str(exc)
            except SourceError as exc:
                note = str(exc)
                missing, more, more_bytes = self._found(study, missing)
                count, nbytes = count + more, nbytes + more_bytes
                break
            missing, more, more_bytes = self._found(study, missing)
            count, nbytes = count + more, nbytes + more_bytes
            if missing and all(i.sop_instance_uid in rejected for i in missing):
                break  # the archive refused them: a retry gives the same answer
        if not self.source.in_process and count:
            self.throttle.acquire(count, nbytes)  # C-MOVE: pace the next study
        for instance in missing:
            reason = rejected.get(instance.sop_instance_uid) or note or "not received from the source"
            self.jobs.mark_instances(study, [instance.sop_instance_uid], "failed", reason)
        if missing:
            self.jobs.set_study(study, "failed", f"{len(missing)} instance(s) missing: {note}".strip(": "), attempts=attempts)
        else:
            self.jobs.set_study(study, "done", note or None, attempts=attempts)
        self.stats.add(1, count, nbytes)
        if self.on_study:
            self.on_study(study, count, nbytes)

    def _deliverer(self, study: PlannedStudy, rejected: dict[str, str]) -> Callable[[bytes | Path], StoreResult]:
        def deliver(item: bytes | Path) -> StoreResult:
            if isinstance(item, Path) and self.in_place:
                self.throttle.acquire(1, 0)
                result = self.archive.store_in_place(item, source_aet=self.source_aet)
            else:
                data = item.read_bytes() if isinstance(item, Path) else item
                mapped = self.mapping.apply(data)
                self.throttle.acquire(1, len(mapped))
                result = self.archive.store_bytes(mapped, source_aet=self.source_aet)
                if mapped is not data and result.sop_instance_uid:
                    # coerced: verification compares the source with what it sent, not with what we keep
                    digest = hashlib.sha256(_dataset_part(data)).hexdigest()
                    self.jobs.record_source_digest(study, result.sop_instance_uid, digest, len(data))
            if result.outcome is StoreOutcome.REJECTED and result.sop_instance_uid:
                rejected[result.sop_instance_uid] = f"rejected by the archive: {result.reason}: {result.message}"
            return result

        return deliver


def _dataset_part(data: bytes) -> bytes:
    from ..core.structure import inspect_buffer

    return data[inspect_buffer(data).dataset_offset :]
