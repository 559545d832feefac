"""A migration job, its plan and its progress, all in the index (tables of index/migrate_schema.py).

Study states: ``pending`` -> ``done`` | ``failed`` (after retries) | ``mismatch``
(verification found a difference). Instance states: ``pending`` ->
``migrated`` | ``present`` (already in the archive when planned: skipped) |
``failed`` | ``mismatch``. A rerun works only on what is not ``done``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, func, insert, or_, select, update

from ..index.migrate_schema import (
    migration_instances,
    migration_jobs,
    migration_studies,
)

SOURCE_KINDS = ("dimse", "dicomweb", "filesystem")


# The statements run for every study, built once: SQLAlchemy caches their compiled form, and
# building one anew cost more than running it (record_study: 1.4 -> 0.7 ms per study, measured).
# what a study's plan holds already
_PLANNED_UIDS = select(migration_instances.c.study_pk, migration_instances.c.sop_instance_uid).where(
    migration_instances.c.study_pk.in_(bindparam("studies", expanding=True))
)
_MARK_PLANNED = (
    update(migration_studies)
    .where(migration_studies.c.pk.in_(bindparam("studies", expanding=True)))
    .values(planned=True, updated_at=bindparam("now"))
)
# instances the archive now holds: ``migrated``, with their stored size
_MARK_FOUND = (
    update(migration_instances)
    .where(migration_instances.c.study_pk == bindparam("study"), migration_instances.c.sop_instance_uid == bindparam("uid"))
    .where(or_(*(migration_instances.c.state == state for state in ("pending", "failed", "mismatch"))))  # no IN: executemany
    .values(state="migrated", reason=None, size=bindparam("nbytes"))
)
_RECORD_SOURCE_DIGEST = (
    update(migration_instances)
    .where(migration_instances.c.job_pk == bindparam("job"), migration_instances.c.sop_instance_uid == bindparam("uid"))
    .values(source_sha256=bindparam("digest"), size=bindparam("nbytes"))
)
_RECORD_STUDY = (
    update(migration_studies)
    .where(migration_studies.c.pk == bindparam("study"))
    .values(state=bindparam("new_state"), message=bindparam("new_message"), attempts=bindparam("new_attempts"),
            updated_at=bindparam("now"))
)  # fmt: skip


class JobError(ValueError):
    """A job that does not exist, exists already, or has bad options."""


@dataclass(frozen=True)
class Job:
    pk: int
    name: str
    source_kind: str
    options: dict[str, Any]
    state: str
    enumerated: bool


@dataclass(frozen=True)
class PlannedStudy:
    pk: int
    study_instance_uid: str
    study_date: str | None
    source_ref: str | None
    state: str
    planned: bool
    attempts: int


@dataclass(frozen=True)
class PlannedInstance:
    """One expected instance: where the source keeps it (a path, URL or nothing for DIMSE)."""

    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str | None = None
    source_ref: str | None = None
    size: int | None = None


def _now() -> datetime:
    return datetime.now(UTC)


def _job(row: Any) -> Job:
    return Job(row.pk, row.name, row.source_kind, json.loads(row.options), row.state, bool(row.enumerated))


def _study(row: Any) -> PlannedStudy:
    return PlannedStudy(row.pk, row.study_instance_uid, row.study_date, row.source_ref, row.state, bool(row.planned), row.attempts)


class JobStore:
    """Reads on ``engine``, writes on ``writer`` (SQLite's single writer connection)."""

    def __init__(self, engine: Engine, writer: Engine | None = None, lock: AbstractContextManager[Any] | None = None) -> None:
        self.engine = engine
        self.writer = writer or engine
        # the catalog's writer mutex (Catalog.writers): on SQLite a job write then queues
        # behind the grouped commits instead of sleeping in SQLite's busy handler
        self.lock: AbstractContextManager[Any] = lock or nullcontext()

    # --- jobs ---------------------------------------------------------------------------

    def create(self, name: str, source_kind: str, options: dict[str, Any]) -> Job:
        if not name or len(name) > 64:
            raise JobError("a job name is 1-64 characters")
        if source_kind not in SOURCE_KINDS:
            raise JobError(f"unknown source kind {source_kind!r} (one of {', '.join(SOURCE_KINDS)})")
        if self.find(name) is not None:
            raise JobError(f"a migration named {name!r} exists already")
        now = _now()
        with self.lock, self.writer.begin() as conn:
            conn.execute(
                insert(migration_jobs).values(
                    name=name, source_kind=source_kind, options=json.dumps(options), state="new",
                    enumerated=False, created_at=now, updated_at=now,
                )
            )  # fmt: skip
        return self.get(name)

    def find(self, name: str) -> Job | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(migration_jobs).where(migration_jobs.c.name == name)).first()
        return _job(row) if row else None

    def get(self, name: str) -> Job:
        job = self.find(name)
        if job is None:
            raise JobError(f"no migration named {name!r}")
        return job

    def jobs(self) -> list[Job]:
        with self.engine.connect() as conn:
            return [_job(r) for r in conn.execute(select(migration_jobs).order_by(migration_jobs.c.pk))]

    def update_options(self, job: Job, **changes: Any) -> Job:
        """Change some of the job's options for this and later runs; the job as it is now."""
        self.set_job(job, options=json.dumps({**job.options, **changes}))
        return self.get(job.name)

    def set_job(self, job: Job, **values: Any) -> None:
        with self.lock, self.writer.begin() as conn:
            conn.execute(update(migration_jobs).where(migration_jobs.c.pk == job.pk).values(updated_at=_now(), **values))

    # --- the plan -------------------------------------------------------------------------

    def add_studies(self, job: Job, studies: Iterable[tuple[str, str | None, str | None]]) -> int:
        """Record (Study Instance UID, Study Date, source ref) rows not yet known; return how many were new."""
        with self.engine.connect() as conn:
            known = set(conn.scalars(select(migration_studies.c.study_instance_uid).where(migration_studies.c.job_pk == job.pk)))
        rows, now = [], _now()
        for uid, date, ref in studies:
            if uid and uid not in known:
                known.add(uid)
                rows.append(dict(job_pk=job.pk, study_instance_uid=uid, study_date=date, source_ref=ref, state="pending", planned=False, attempts=0, updated_at=now))
        if rows:
            with self.lock, self.writer.begin() as conn:
                conn.execute(insert(migration_studies), rows)
        return len(rows)

    def studies(self, job: Job, states: Sequence[str] | None = None) -> list[PlannedStudy]:
        query = select(migration_studies).where(migration_studies.c.job_pk == job.pk)
        if states is not None:
            query = query.where(migration_studies.c.state.in_(states))
        with self.engine.connect() as conn:
            return [_study(r) for r in conn.execute(query.order_by(migration_studies.c.study_date, migration_studies.c.pk))]

    def plan_study(self, job: Job, study: PlannedStudy, instances: Sequence[PlannedInstance], present: set[str]) -> None:
        """Record the instances the source holds for ``study``; those in ``present`` are skipped."""
        self.plan_studies(job, [(study, instances, present)])

    def plan_studies(self, job: Job, plans: Sequence[tuple[PlannedStudy, Sequence[PlannedInstance], set[str]]]) -> None:
        """:meth:`plan_study` for several studies, in one transaction."""
        known: dict[int, set[str]] = {}
        with self.engine.connect() as conn:
            for study_pk, uid in conn.execute(_PLANNED_UIDS, {"studies": [study.pk for study, _i, _p in plans]}):
                known.setdefault(study_pk, set()).add(uid)
        rows = []
        for study, instances, present in plans:
            rows += [
                dict(job_pk=job.pk, study_pk=study.pk, series_instance_uid=i.series_instance_uid, sop_instance_uid=i.sop_instance_uid,
                     sop_class_uid=i.sop_class_uid, source_ref=i.source_ref, size=i.size,
                     state="present" if i.sop_instance_uid in present else "pending")
                for i in instances if i.sop_instance_uid not in known.get(study.pk, ())
            ]  # fmt: skip
        with self.lock, self.writer.begin() as conn:
            if rows:
                conn.execute(insert(migration_instances), rows)
            conn.execute(_MARK_PLANNED, {"studies": [study.pk for study, _i, _p in plans], "now": _now()})

    def instances(self, study: PlannedStudy, states: Sequence[str] | None = None) -> list[PlannedInstance]:
        query = select(migration_instances).where(migration_instances.c.study_pk == study.pk)
        if states is not None:
            query = query.where(migration_instances.c.state.in_(states))
        with self.engine.connect() as conn:
            return [
                PlannedInstance(r.series_instance_uid, r.sop_instance_uid, r.sop_class_uid, r.source_ref, r.size)
                for r in conn.execute(query.order_by(migration_instances.c.pk))
            ]

    def mark_instances(self, study: PlannedStudy, uids: Iterable[str], state: str, reason: str | None = None) -> None:
        uids = list(uids)
        if uids:
            with self.lock, self.writer.begin() as conn:
                self._mark(conn, study, uids, state, reason)

    @staticmethod
    def _mark(conn: Connection, study: PlannedStudy, uids: list[str], state: str, reason: str | None) -> None:
        for start in range(0, len(uids), 500):
            conn.execute(
                update(migration_instances)
                .where(migration_instances.c.study_pk == study.pk, migration_instances.c.sop_instance_uid.in_(uids[start : start + 500]))
                .values(state=state, reason=reason)
            )

    def record_source_digests(self, job_pk: int, digests: Sequence[tuple[str, str, int]]) -> None:
        """(SOP Instance UID, SHA-256 of the data set the source sent, its size) of objects the
        mapping changed: verification compares the source with these (verify.py)."""
        rows = [{"job": job_pk, "uid": uid, "digest": digest, "nbytes": size} for uid, digest, size in digests]
        with self.lock, self.writer.begin() as conn:
            conn.execute(_RECORD_SOURCE_DIGEST, rows)

    def source_digests(self, study: PlannedStudy) -> dict[str, str]:
        """SHA-256 of the dataset bytes the source sent, recorded where the mapping changed them."""
        query = select(migration_instances.c.sop_instance_uid, migration_instances.c.source_sha256).where(
            migration_instances.c.study_pk == study.pk, migration_instances.c.source_sha256.is_not(None)
        )
        with self.engine.connect() as conn:
            return dict(conn.execute(query).all())

    def set_study(self, study: PlannedStudy, state: str, message: str | None = None, attempts: int | None = None) -> None:
        values: dict[str, Any] = dict(state=state, message=message, updated_at=_now())
        if attempts is not None:
            values["attempts"] = attempts
        with self.lock, self.writer.begin() as conn:
            conn.execute(update(migration_studies).where(migration_studies.c.pk == study.pk).values(**values))

    def record_study(self, study: PlannedStudy, state: str, message: str | None, attempts: int,
                     found: dict[str, int], failed: dict[str, str]) -> None:  # fmt: skip
        """A pulled study's outcome, in one transaction: the instances the archive holds now
        ``migrated``, those still missing ``failed`` with their reasons
        (SOP Instance UID -> reason), and the study's state (:meth:`set_study`)."""
        by_reason: dict[str, list[str]] = {}
        for uid, reason in failed.items():
            by_reason.setdefault(reason, []).append(uid)
        with self.lock, self.writer.begin() as conn:
            if found:
                conn.execute(_MARK_FOUND, [{"study": study.pk, "uid": uid, "nbytes": size} for uid, size in found.items()])
            for reason, uids in by_reason.items():
                self._mark(conn, study, uids, "failed", reason)
            conn.execute(_RECORD_STUDY, {"study": study.pk, "new_state": state, "new_message": message,
                                         "new_attempts": attempts, "now": _now()})  # fmt: skip

    # --- progress ---------------------------------------------------------------------------

    def progress(self, job: Job) -> dict[str, Any]:
        """Counts of studies and instances by state, and bytes of migrated instances."""
        with self.engine.connect() as conn:
            studies = Counter(dict(conn.execute(
                select(migration_studies.c.state, func.count()).where(migration_studies.c.job_pk == job.pk).group_by(migration_studies.c.state)
            ).all()))  # fmt: skip
            rows = conn.execute(
                select(migration_instances.c.state, func.count(), func.coalesce(func.sum(migration_instances.c.size), 0))
                .where(migration_instances.c.job_pk == job.pk)
                .group_by(migration_instances.c.state)
            ).all()
        instances = Counter({state: count for state, count, _size in rows})
        sizes = {state: int(size) for state, _count, size in rows}
        return {
            "job": job.name, "source": job.source_kind, "state": job.state, "enumerated": job.enumerated,
            "studies": dict(studies), "studies_total": sum(studies.values()),
            "instances": dict(instances), "instances_total": sum(instances.values()),
            "bytes_migrated": sizes.get("migrated", 0),
        }  # fmt: skip

    def all_instances(self, job: Job) -> list[dict[str, Any]]:
        """Every planned instance with its study, for reports."""
        query = (
            select(
                migration_studies.c.study_instance_uid, migration_studies.c.state.label("study_state"),
                migration_instances.c.series_instance_uid, migration_instances.c.sop_instance_uid,
                migration_instances.c.state, migration_instances.c.size, migration_instances.c.reason,
            )
            .join(migration_studies, migration_studies.c.pk == migration_instances.c.study_pk)
            .where(migration_instances.c.job_pk == job.pk)
            .order_by(migration_studies.c.pk, migration_instances.c.pk)
        )  # fmt: skip
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

