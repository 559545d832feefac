"""Lifecycle jobs: move, copy or drop one instance's object between tiers.

A job is one row of ``lifecycle_jobs``. Planning inserts a job per selected
instance, idempotently (unique per rule, instance and source key). Workers
claim pending jobs once across processes: ``SELECT ... FOR UPDATE SKIP
LOCKED`` on PostgreSQL, the single-writer lock (``BEGIN IMMEDIATE``) on
SQLite. A claim carries a lease; a job whose worker died (its process is gone
on this host, or its lease ran out) is claimed again and resumes.

A move: read the object and check its SHA-256 against the index; optionally
compress it losslessly (compress.py); write it under a key on the target tier
chosen before the write and kept in the job (so a resumed job reuses it);
read it back and check the SHA-256; then, in one transaction, point the
instance at the new key *only if it still names the old one* (a concurrent
replace wins) and mark the job committed; only then delete the old copy.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from io import BytesIO
from typing import Any

from sqlalchemy import case, delete, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from ..core.archive import Archive
from ..index.lifecycle_schema import lifecycle_copies, lifecycle_jobs, lifecycle_originals
from ..index.schema import instances
from ..storage.blobstore import sha256_of
from .compress import compress
from .metrics import lifecycle_metrics
from .rules import LifecycleRule, candidates, check_rules, new_key, tier_of

log = logging.getLogger(__name__)

OPEN_STATES = ("pending", "claimed", "committed")
MAX_ATTEMPTS = 3


def utcnow() -> datetime:
    return datetime.now(UTC)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


class Throttle:
    """At most ``rate`` bytes per second on average (0: no limit). Time spent
    idle earns at most ``burst_seconds`` of credit, so a runner that waited an
    hour for work (inside ``serve``) does not then copy an hour's worth at full speed."""

    def __init__(self, rate: float, burst_seconds: float = 1.0) -> None:
        self.rate = rate
        self.burst = burst_seconds
        self._next = time.monotonic()  # when the budget is spent up to

    def __call__(self, size: int, stop: threading.Event | None = None) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        self._next = max(self._next, now - self.burst) + size / self.rate
        wait = self._next - now
        if wait > 0:
            (stop.wait(wait) if stop is not None else time.sleep(wait))


@dataclass
class RunReport:
    planned: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    bytes_moved: int = 0
    bytes_before: int = 0  # of compressed objects, before
    bytes_after: int = 0  # and after
    by_rule: dict[str, int] = field(default_factory=dict)

    @property
    def bytes_saved(self) -> int:
        return self.bytes_before - self.bytes_after


class JobFailed(Exception):
    """The job cannot be done now (the message says why; safe to log)."""


class LifecycleRunner:
    """Plans and runs lifecycle jobs for one archive."""

    def __init__(
        self,
        archive: Archive,
        rules: tuple[LifecycleRule, ...] | None = None,
        *,
        mib_per_second: float | None = None,
        lease_seconds: int | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        settings = archive.settings
        self.archive = archive
        self.rules = settings.lifecycle if rules is None else rules
        self.first = next(iter(archive.tiers))
        check_rules(self.rules, list(archive.tiers))
        rate = settings.lifecycle_mib_per_second if mib_per_second is None else mib_per_second
        self.throttle = Throttle(rate * (1 << 20))
        self.lease = timedelta(seconds=settings.lifecycle_lease_seconds if lease_seconds is None else lease_seconds)
        self.stop = stop or threading.Event()
        self.me = worker_id()
        self.writer = archive.catalog.writer
        self.postgres = archive.engine.dialect.name == "postgresql"
        self._insert = postgresql.insert if self.postgres else sqlite.insert
        self.metrics = lifecycle_metrics(archive)

    # --- planning ---------------------------------------------------------------------

    def plan(self, now: datetime | None = None) -> int:
        """Insert a job for every instance a rule selects now; return how many are new."""
        now = now or utcnow()
        new = 0
        for rule in self.rules:
            query = candidates(rule, self.first, now)
            with self.archive.engine.connect() as conn:
                rows = conn.execute(query).all()
            for start in range(0, len(rows), 500):
                new += self._add_jobs(rule.name, rule.action, rule.target, rule.compress, rows[start : start + 500], now)
        return new

    def _add_jobs(self, rule: str, action: str, target: str | None, compress_to: str | None, rows, now) -> int:  # type: ignore[no-untyped-def]
        if not rows:
            return 0
        values = [
            {
                "rule": rule, "action": action, "instance_pk": row.pk, "source_key": row.blob_key,
                "target_tier": target, "compress": compress_to, "state": "pending", "created_at": now,
            }
            for row in rows
        ]  # fmt: skip
        statement = self._insert(lifecycle_jobs).on_conflict_do_nothing(
            index_elements=["rule", "instance_pk", "source_key"]
        )
        with self.writer.begin() as conn:
            result = conn.execute(statement.returning(lifecycle_jobs.c.pk), values)
            return len(result.all())

    def queue_recall(self, study_instance_uid: str) -> int:
        """Queue moves back to the source tier for a study read while on a recall rule's target."""
        from ..index.schema import series, studies
        from .rules import in_tier

        new = 0
        now = utcnow()
        for rule in self.rules:
            if not rule.recall_on_access or rule.target is None:
                continue
            query = (
                select(instances.c.pk, instances.c.blob_key)
                .join(series, instances.c.series_pk == series.c.pk)
                .join(studies, series.c.study_pk == studies.c.pk)
                .where(studies.c.study_instance_uid == study_instance_uid)
                .where(in_tier(instances.c.blob_key, rule.target, self.first))
            )
            with self.archive.engine.connect() as conn:
                rows = conn.execute(query).all()
            new += self._add_jobs(rule.recall_name, "move", rule.source, None, rows, now)
        return new

    # --- claiming ---------------------------------------------------------------------

    def _release_dead(self, conn) -> None:  # type: ignore[no-untyped-def]
        """Jobs claimed by a process of this host that no longer runs become claimable."""
        host = socket.gethostname()
        owners = conn.execute(
            select(lifecycle_jobs.c.claimed_by)
            .where(lifecycle_jobs.c.state.in_(("claimed", "committed")))
            .where(lifecycle_jobs.c.claimed_by.startswith(f"{host}:", autoescape=True))
            .distinct()
        ).scalars()
        dead = [owner for owner in owners if not _alive(owner)]
        if dead:
            conn.execute(
                update(lifecycle_jobs)
                .where(lifecycle_jobs.c.claimed_by.in_(dead))
                .values(claimed_at=datetime(1970, 1, 1, tzinfo=UTC))
            )

    def claim(self, limit: int = 16) -> list[Any]:
        """Claim up to ``limit`` jobs (pending, or abandoned by a dead worker)."""
        jobs = lifecycle_jobs
        now = utcnow()
        with self.writer.begin() as conn:
            self._release_dead(conn)
            query = (
                select(jobs)
                .where(
                    or_(
                        jobs.c.state == "pending",
                        (jobs.c.state.in_(("claimed", "committed"))) & (jobs.c.claimed_at < now - self.lease),
                    )
                )
                .order_by(jobs.c.pk)
                .limit(limit)
            )
            if self.postgres:
                query = query.with_for_update(skip_locked=True)
            rows = conn.execute(query).all()
            if rows:
                conn.execute(
                    update(jobs)
                    .where(jobs.c.pk.in_([r.pk for r in rows]))
                    .values(
                        state=case((jobs.c.state == "committed", "committed"), else_="claimed"),
                        claimed_by=self.me,
                        claimed_at=now,
                        attempts=jobs.c.attempts + 1,
                    )
                )
        return rows

    def pending(self) -> int:
        with self.archive.engine.connect() as conn:
            return conn.execute(
                select(func.count()).select_from(lifecycle_jobs).where(lifecycle_jobs.c.state.in_(OPEN_STATES))
            ).scalar_one()

    # --- running ----------------------------------------------------------------------

    def run(self, *, plan: bool = True, progress: Callable[[Any, str], None] | None = None,
            limit: int | None = None) -> RunReport:  # fmt: skip
        """Plan (unless ``plan`` is false), then work until no job is left (or ``limit``)."""
        report = RunReport()
        if plan:
            report.planned = self.plan()
        handled = 0
        while not self.stop.is_set() and (limit is None or handled < limit):
            batch = self.claim(4 if limit is None else min(4, limit - handled))
            if not batch:
                break
            for job in batch:
                if self.stop.is_set():
                    self._unclaim(job.pk)
                    continue
                outcome = self.run_job(job, report)
                handled += 1
                if progress is not None:
                    progress(job, outcome)
        return report

    def _unclaim(self, pk: int) -> None:
        with self.writer.begin() as conn:
            conn.execute(
                update(lifecycle_jobs)
                .where(lifecycle_jobs.c.pk == pk, lifecycle_jobs.c.state == "claimed")
                .values(state="pending", claimed_by=None, claimed_at=None)
            )

    def run_job(self, job: Any, report: RunReport | None = None) -> str:
        """Do one claimed job; return its outcome (done, skipped, failed, retry)."""
        report = report or RunReport()
        try:
            outcome, detail = self._execute(job, report)
        except JobFailed as exc:
            outcome, detail = "failed", str(exc)
        except (OSError, SQLAlchemyError, ValueError) as exc:
            outcome, detail = "failed", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if outcome == "failed" and job.attempts + 1 < MAX_ATTEMPTS:
            outcome = "retry"
        if outcome in ("failed", "retry"):
            log.warning("lifecycle job %d (%s) %s: %s", job.pk, job.rule, outcome, detail)
            self._finish(job.pk, "pending" if outcome == "retry" else "failed", detail)
            if outcome == "failed":
                report.failed += 1
        elif outcome == "skipped":
            report.skipped += 1
            self._finish(job.pk, "skipped", detail)
        else:
            report.done += 1
            report.by_rule[job.rule] = report.by_rule.get(job.rule, 0) + 1
        self.metrics.jobs.labels(outcome).inc()
        return outcome

    def _finish(self, pk: int, state: str, detail: str | None = None, **values: Any) -> None:
        done = state not in ("pending", "claimed", "committed")
        with self.writer.begin() as conn:
            conn.execute(
                update(lifecycle_jobs)
                .where(lifecycle_jobs.c.pk == pk)
                .values(state=state, detail=detail, finished_at=utcnow() if done else None,
                        **({"claimed_by": None, "claimed_at": None} if state == "pending" else {}), **values)
            )  # fmt: skip

    def _instance(self, pk: int) -> Any:
        with self.archive.engine.connect() as conn:
            return conn.execute(
                select(
                    instances.c.pk, instances.c.sop_instance_uid, instances.c.blob_key, instances.c.size,
                    instances.c.sha256, instances.c.transfer_syntax_uid,
                ).where(instances.c.pk == pk)
            ).first()  # fmt: skip

    def _execute(self, job: Any, report: RunReport) -> tuple[str, str]:
        if job.state == "committed":  # the index names the new copy; the old one may remain
            self._delete_unreferenced(job.source_key)
            self._finish(job.pk, "done")
            return "done", ""
        row = self._instance(job.instance_pk)
        if row is None or row.blob_key != job.source_key:
            if job.target_key:
                self._delete_unreferenced(job.target_key)
            return "skipped", "the object was replaced or moved meanwhile"
        if job.action == "delete":
            return self._drop(job, row)
        data = self._read_verified(row.blob_key, row)
        if job.action == "copy":
            return self._copy(job, row, data)
        return self._move(job, row, data, report)

    def _read_verified(self, key: str, row: Any) -> bytes:
        with self.archive.open_blob(key) as f:
            data = f.read()
        if hashlib.sha256(data).hexdigest() != row.sha256:
            raise JobFailed(f"object {key} does not match its SHA-256 (left in place; see `samarkiv fixity run`)")
        return data

    def _target_key(self, job: Any) -> str:
        """The key to write, chosen once and kept in the job before anything is written."""
        if job.target_key:
            return job.target_key
        key = new_key(job.target_tier, self.first, utcnow())
        with self.writer.begin() as conn:
            conn.execute(update(lifecycle_jobs).where(lifecycle_jobs.c.pk == job.pk).values(target_key=key))
        return key

    def _put_verified(self, key: str, data: bytes, digest: str) -> None:
        """Write ``data`` under ``key`` and read it back against ``digest``."""
        store, name = self.archive._store_for(key)
        written = store.put_stream(name, BytesIO(data))
        if written.sha256 != digest:
            raise JobFailed(f"the copy written to {key} does not match (sent bytes changed)")
        with store.open(name) as f:
            _size, digest_read = sha256_of(f)
        if digest_read != digest:
            store.delete(name)
            raise JobFailed(f"the copy read back from {key} does not match its SHA-256")

    def _move(self, job: Any, row: Any, data: bytes, report: RunReport) -> tuple[str, str]:
        target_key = self._target_key(job)
        new_data, syntax, note = data, row.transfer_syntax_uid, ""
        if job.compress:
            compressed, why = compress(data, job.compress)
            if compressed is not None:
                new_data, syntax = compressed.data, compressed.transfer_syntax_uid
            else:
                note = f"kept uncompressed: {why}"
        digest = row.sha256 if new_data is data else hashlib.sha256(new_data).hexdigest()
        self._put_verified(target_key, new_data, digest)
        self.throttle(len(data), self.stop)
        now = utcnow()
        with self.writer.begin() as conn:
            changed = conn.execute(
                update(instances)
                .where(instances.c.pk == row.pk, instances.c.blob_key == row.blob_key)
                .values(blob_key=target_key, sha256=digest, size=len(new_data), transfer_syntax_uid=syntax)
            ).rowcount
            if changed == 1:
                if new_data is not data:
                    known = conn.execute(
                        select(lifecycle_originals.c.instance_pk).where(lifecycle_originals.c.instance_pk == row.pk)
                    ).first()
                    if known is None:
                        conn.execute(
                            insert(lifecycle_originals).values(
                                instance_pk=row.pk, sop_instance_uid=row.sop_instance_uid,
                                transfer_syntax_uid=row.transfer_syntax_uid, size=row.size, sha256=row.sha256,
                                compressed_at=now,
                            )
                        )  # fmt: skip
                conn.execute(
                    update(lifecycle_jobs)
                    .where(lifecycle_jobs.c.pk == job.pk)
                    .values(state="committed", bytes_before=len(data), bytes_after=len(new_data), detail=note or None)
                )
        if changed != 1:
            self._delete_unreferenced(target_key)
            return "skipped", "the object was replaced meanwhile"
        self._ensure_present(target_key, new_data, digest)
        self._delete_unreferenced(row.blob_key)
        self._finish(job.pk, "done", note or None)
        report.bytes_moved += len(new_data)
        if new_data is not data:
            report.bytes_before += len(data)
            report.bytes_after += len(new_data)
            self.metrics.bytes_saved.inc(len(data) - len(new_data))
        self.metrics.bytes_moved.inc(len(new_data))
        return "done", note

    def _ensure_present(self, key: str, data: bytes, digest: str) -> None:
        """After the commit: an orphan sweep that ran between write and commit may
        have taken the new object (the old copy is still there): write it again."""
        store, name = self.archive._store_for(key)
        if store.stat(name) is None:
            log.warning("the new copy %s vanished before its commit; writing it again", key)
            self._put_verified(key, data, digest)

    def _copy(self, job: Any, row: Any, data: bytes) -> tuple[str, str]:
        target_key = self._target_key(job)
        self._put_verified(target_key, data, row.sha256)
        self.throttle(len(data), self.stop)
        with self.writer.begin() as conn:
            exists = conn.execute(
                select(lifecycle_copies.c.blob_key).where(
                    lifecycle_copies.c.instance_pk == row.pk, lifecycle_copies.c.tier == job.target_tier
                )
            ).scalar()
            if exists is None:
                conn.execute(
                    insert(lifecycle_copies).values(
                        instance_pk=row.pk, tier=job.target_tier, blob_key=target_key, size=len(data),
                        sha256=row.sha256, created_at=utcnow(),
                    )
                )  # fmt: skip
            conn.execute(
                update(lifecycle_jobs).where(lifecycle_jobs.c.pk == job.pk)
                .values(state="done", bytes_before=len(data), bytes_after=len(data), finished_at=utcnow())
            )  # fmt: skip
        if exists is not None and exists != target_key:
            self._delete_unreferenced(target_key)
        self.metrics.bytes_moved.inc(len(data))
        return "done", ""

    def _drop(self, job: Any, row: Any) -> tuple[str, str]:
        """Drop the object from a cache tier: a verified copy elsewhere becomes the primary."""
        with self.archive.engine.connect() as conn:
            copies = conn.execute(
                select(lifecycle_copies).where(
                    lifecycle_copies.c.instance_pk == row.pk, lifecycle_copies.c.sha256 == row.sha256
                )
            ).all()
        source_tier = tier_of(row.blob_key, self.first)
        for copy in copies:
            if copy.tier == source_tier:
                continue
            try:
                self._read_verified(copy.blob_key, row)
            except (OSError, JobFailed):
                continue
            with self.writer.begin() as conn:
                changed = conn.execute(
                    update(instances)
                    .where(instances.c.pk == row.pk, instances.c.blob_key == row.blob_key)
                    .values(blob_key=copy.blob_key)
                ).rowcount
                if changed == 1:
                    conn.execute(delete(lifecycle_copies).where(lifecycle_copies.c.pk == copy.pk))
                    conn.execute(
                        update(lifecycle_jobs).where(lifecycle_jobs.c.pk == job.pk).values(state="committed")
                    )
            if changed != 1:
                return "skipped", "the object was replaced meanwhile"
            self._delete_unreferenced(row.blob_key)
            self._finish(job.pk, "done")
            return "done", ""
        raise JobFailed("no verified copy on another tier: the last copy is never deleted")

    def _delete_unreferenced(self, key: str) -> None:
        """Delete the object at ``key`` unless an index row names it."""
        with self.archive.engine.connect() as conn:
            named = conn.execute(select(instances.c.pk).where(instances.c.blob_key == key).limit(1)).first()
            if named is None:
                named = conn.execute(
                    select(lifecycle_copies.c.pk).where(lifecycle_copies.c.blob_key == key).limit(1)
                ).first()
        if named is None:
            known = self.archive.catalog.known_blob_keys([key])  # superseded versions too
            if key in known:
                return
            store, name = self.archive._store_for(key)
            store.delete(name)


def _alive(owner: str) -> bool:
    """Whether the process named in a claim (host:pid:thread) still runs here."""
    try:
        pid = int(owner.split(":")[1])
    except (IndexError, ValueError):
        return True
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
