"""Fixity: re-read stored objects, compare their SHA-256 with the index, repair.

An object that is missing or does not hash to the index's SHA-256 is reported
(``fixity_events``, the audit trail as security alerts, and the
``samarkiv_fixity_events`` counter at /metrics);
when a copy on another tier (a ``copy`` rule, e.g. a replica site) reads back
with the right SHA-256, the object is written again from it under a new key
on its tier, the index switched to it only if it still names the bad key, and
the bad object removed. A bad copy is rewritten from a good primary the same
way. Reading is rate-limited (``fixity_mib_per_second``).

Several processes share one pass: each claims the next batch of instances by
advancing a cursor in ``archive_state`` with a compare-and-set update.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from io import BytesIO
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from ..core.archive import Archive
from ..access.principal import SYSTEM
from ..audit import AuditEvent
from ..index.lifecycle_schema import fixity_events, lifecycle_copies
from ..index.schema import archive_state, instances
from ..storage.blobstore import sha256_of
from .metrics import lifecycle_metrics
from .mover import Throttle
from .rules import INLINE_PREFIX, new_key, tier_of

log = logging.getLogger(__name__)

CURSOR = "fixity_cursor"
LAST_PASS = "fixity_last_pass"
BATCH = 100


@dataclass
class FixityReport:
    checked: int = 0
    checked_bytes: int = 0
    corrupt: list[str] = field(default_factory=list)  # SOP Instance UIDs
    missing: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    unrepairable: list[str] = field(default_factory=list)
    pass_complete: bool = False

    @property
    def ok(self) -> bool:
        return not self.unrepairable


def utcnow() -> datetime:
    return datetime.now(UTC)


class FixityChecker:
    def __init__(self, archive: Archive, *, mib_per_second: float | None = None,
                 stop: threading.Event | None = None) -> None:  # fmt: skip
        self.archive = archive
        rate = archive.settings.fixity_mib_per_second if mib_per_second is None else mib_per_second
        self.throttle = Throttle(rate * (1 << 20))
        self.stop = stop or threading.Event()
        self.first = next(iter(archive.tiers))
        self.metrics = lifecycle_metrics(archive)

    # --- the shared pass ---------------------------------------------------------------

    def _claim_batch(self) -> list[int] | None:
        """The next batch of instance pks of the current pass; None when the pass is over."""
        writer = self.archive.catalog.writer
        for _attempt in range(20):
            with self.archive.engine.connect() as conn:
                cursor = conn.execute(select(archive_state.c.value).where(archive_state.c.key == CURSOR)).scalar()
                start = int(cursor) if cursor else 0
                pks = list(
                    conn.execute(
                        select(instances.c.pk).where(instances.c.pk > start).order_by(instances.c.pk).limit(BATCH)
                    ).scalars()
                )
            end = str(pks[-1]) if pks else "0"  # the pass is over: the next one starts afresh
            with writer.begin() as conn:
                if cursor is None:
                    insert_ = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
                    changed = conn.execute(
                        insert_(archive_state).values(key=CURSOR, value=end).on_conflict_do_nothing()
                    ).rowcount
                else:
                    changed = conn.execute(
                        update(archive_state)
                        .where(archive_state.c.key == CURSOR, archive_state.c.value == cursor)
                        .values(value=end)
                    ).rowcount
            if changed == 1:
                return pks or None
        return []  # busy: others are advancing the cursor

    def run_pass(self, *, progress: Callable[[Any], None] | None = None, limit: int | None = None) -> FixityReport:
        """Check instances until the shared pass completes (or ``limit`` objects)."""
        report = FixityReport()
        while not self.stop.is_set() and (limit is None or report.checked < limit):
            pks = self._claim_batch()
            if pks is None:
                report.pass_complete = True
                self._pass_done(report)
                break
            for pk in pks:
                self.check(pk, report)
                if progress is not None:
                    progress(pk)
        return report

    def run_all(self, *, progress: Callable[[Any], None] | None = None) -> FixityReport:
        """Check every instance once, on this process alone (the CLI)."""
        report = FixityReport()
        last = 0
        while not self.stop.is_set():
            with self.archive.engine.connect() as conn:
                pks = list(
                    conn.execute(
                        select(instances.c.pk).where(instances.c.pk > last).order_by(instances.c.pk).limit(BATCH)
                    ).scalars()
                )
            if not pks:
                report.pass_complete = True
                self._pass_done(report)
                break
            for pk in pks:
                self.check(pk, report)
                if progress is not None:
                    progress(pk)
            last = pks[-1]
        return report

    def _pass_done(self, report: FixityReport) -> None:
        now = utcnow()
        self.archive.catalog.set_state(LAST_PASS, now.isoformat())
        self.metrics.fixity_last_pass.set(now.timestamp())
        self._event(
            "pass", detail=f"checked {report.checked} object(s), {report.checked_bytes} bytes; "
            f"{len(report.corrupt)} corrupt, {len(report.missing)} missing, {len(report.repaired)} repaired, "
            f"{len(report.unrepairable)} unrepairable",
        )  # fmt: skip

    def last_pass(self) -> datetime | None:
        value = self.archive.catalog.state(LAST_PASS)
        return datetime.fromisoformat(value) if value else None

    # --- one instance -------------------------------------------------------------------

    def _row(self, pk: int) -> Any:
        with self.archive.engine.connect() as conn:
            return conn.execute(
                select(instances.c.pk, instances.c.sop_instance_uid, instances.c.blob_key, instances.c.size,
                       instances.c.sha256).where(instances.c.pk == pk)
            ).first()  # fmt: skip

    def _digest(self, key: str) -> tuple[int, str] | None:
        """(size, SHA-256) of the object at ``key``; None when it is missing."""
        try:
            store, name = self.archive._store_for(key)
            with store.open(name) as f:
                return sha256_of(f)
        except FileNotFoundError:
            return None

    def check(self, pk: int, report: FixityReport) -> None:
        row = self._row(pk)
        if row is None or row.blob_key.startswith(INLINE_PREFIX):
            return  # gone, or still in the index's journal (checked by the database)
        found = self._digest(row.blob_key)
        size = found[0] if found else 0
        report.checked += 1
        report.checked_bytes += size
        self.metrics.fixity_checked.inc()
        self.metrics.fixity_checked_bytes.inc(size)
        if found is None or found[1] != row.sha256:
            current = self._row(pk)
            if current is None or current.blob_key != row.blob_key:
                return  # moved or replaced while we read: not a finding
            outcome = "missing" if found is None else "corrupt"
            (report.missing if found is None else report.corrupt).append(row.sop_instance_uid)
            self._event(outcome, row=row, key=row.blob_key, actual=found[1] if found else None)
            self._repair_primary(row, report)
        self._check_copies(row, report, primary_ok=found is not None and found[1] == row.sha256)
        self.throttle(size, self.stop)

    def _copies(self, pk: int) -> list[Any]:
        with self.archive.engine.connect() as conn:
            return conn.execute(select(lifecycle_copies).where(lifecycle_copies.c.instance_pk == pk)).all()

    def _read_good(self, key: str, digest: str) -> bytes | None:
        try:
            store, name = self.archive._store_for(key)
            with store.open(name) as f:
                data = f.read()
        except FileNotFoundError:
            return None
        return data if hashlib.sha256(data).hexdigest() == digest else None

    def _write(self, tier: str, data: bytes, digest: str) -> str:
        key = new_key(tier, self.first, utcnow())
        store, name = self.archive._store_for(key)
        written = store.put_stream(name, BytesIO(data))
        if written.sha256 != digest:
            store.delete(name)
            raise OSError(f"the repaired object {key} did not write back correctly")
        return key

    def _repair_primary(self, row: Any, report: FixityReport) -> None:
        for copy in self._copies(row.pk):
            data = self._read_good(copy.blob_key, row.sha256)
            if data is None:
                continue
            tier = tier_of(row.blob_key, self.first) or self.first
            try:
                key = self._write(tier, data, row.sha256)
            except OSError as exc:
                log.error("fixity repair of instance %d failed: %s", row.pk, exc)
                break
            with self.archive.catalog.writer.begin() as conn:
                changed = conn.execute(
                    update(instances)
                    .where(instances.c.pk == row.pk, instances.c.blob_key == row.blob_key)
                    .values(blob_key=key)
                ).rowcount
            store, name = self.archive._store_for(key if changed != 1 else row.blob_key)
            store.delete(name)  # the bad object, or our new one if the row changed meanwhile
            if changed == 1:
                report.repaired.append(row.sop_instance_uid)
                self._event("repaired", row=row, key=key, detail=f"from the copy on tier {copy.tier} ({copy.blob_key})")
                return
        report.unrepairable.append(row.sop_instance_uid)
        self._event("unrepairable", row=row, key=row.blob_key, detail="no good copy on another tier")

    def _check_copies(self, row: Any, report: FixityReport, primary_ok: bool) -> None:
        for copy in self._copies(row.pk):
            found = self._digest(copy.blob_key)
            if found is not None and found[1] == copy.sha256:
                continue
            outcome = "missing" if found is None else "corrupt"
            self._event(outcome, row=row, key=copy.blob_key, actual=found[1] if found else None,
                        detail=f"the copy on tier {copy.tier}")  # fmt: skip
            data = self._read_good(row.blob_key, copy.sha256) if primary_ok else None
            if data is None:
                self._event("unrepairable", row=row, key=copy.blob_key, detail=f"the copy on tier {copy.tier}")
                continue
            key = self._write(copy.tier, data, copy.sha256)
            with self.archive.catalog.writer.begin() as conn:
                conn.execute(delete(lifecycle_copies).where(lifecycle_copies.c.pk == copy.pk))
                conn.execute(
                    insert(lifecycle_copies).values(
                        instance_pk=row.pk, tier=copy.tier, blob_key=key, size=copy.size, sha256=copy.sha256,
                        created_at=utcnow(),
                    )
                )  # fmt: skip
            store, name = self.archive._store_for(copy.blob_key)
            store.delete(name)
            self._event("repaired", row=row, key=key, detail=f"the copy on tier {copy.tier}, from the primary")

    def _event(self, outcome: str, *, row: Any = None, key: str | None = None, actual: str | None = None,
               detail: str | None = None) -> None:  # fmt: skip
        if outcome != "pass":
            self.metrics.fixity_problems.labels(outcome).inc()
            log.warning("fixity: %s object %s%s", outcome, key, f" ({detail})" if detail else "")
        try:
            with self.archive.catalog.writer.begin() as conn:
                conn.execute(
                    insert(fixity_events).values(
                        at=utcnow(), outcome=outcome, instance_pk=row.pk if row else None,
                        sop_instance_uid=row.sop_instance_uid if row else None,
                        tier=tier_of(key, self.first) if key else None, blob_key=key,
                        expected_sha256=row.sha256 if row else None, actual_sha256=actual, detail=detail,
                    )
                )  # fmt: skip
        except SQLAlchemyError as exc:
            log.error("cannot record a fixity event: %s", type(exc).__name__)
        if outcome != "pass":  # and in the audit trail, as a security alert (PS3.15 A.5.3.11)
            self.archive.audit.record(
                AuditEvent(
                    "fixity", SYSTEM, outcome="allowed" if outcome == "repaired" else "error",
                    outcome_detail=outcome, instance_uid=row.sop_instance_uid if row else None,
                    detail={"tier": tier_of(key, self.first) if key else None, "detail": detail or ""},
                )  # fmt: skip
            )


def recent_events(archive: Archive, limit: int = 100) -> list[dict[str, Any]]:
    with archive.engine.connect() as conn:
        rows = conn.execute(select(fixity_events).order_by(fixity_events.c.pk.desc()).limit(limit))
        return [dict(r._mapping) for r in rows]
