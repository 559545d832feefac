"""The archive service: store, look up and open instances, sweep and verify.

Every front door (DIMSE, import, later DICOMweb) stores through
:meth:`Archive.store_file`, which implements the store sequence of
docs/architecture.md: parse once, write the blob durably, commit the index,
then answer.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

from ..config import ConflictPolicy, DuplicatePolicy, Settings
from ..index.catalog import Catalog, InstanceExists, PatientConflict, StoredInstance
from ..index.engine import create_index_engine, migrate
from ..storage.blobstore import sha256_of
from ..storage.filesystem import FilesystemBlobStore
from .ingest import ParsedInstance, RejectedDataset, parse_instance
from .metrics import Metrics

log = logging.getLogger(__name__)

SWEEP_WATERMARK = "orphan_sweep_watermark"


class StoreOutcome(StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"  # identical object already stored: harmless success
    REPLACED = "replaced"  # keep-new policy
    VERSIONED = "versioned"  # keep-both policy
    REJECTED = "rejected"


class RejectReason(StrEnum):
    INVALID = "invalid"
    DUPLICATE_CONFLICT = "duplicate-conflict"
    PATIENT_CONFLICT = "patient-conflict"
    OUT_OF_RESOURCES = "out-of-resources"


@dataclass(frozen=True)
class StoreResult:
    outcome: StoreOutcome
    sop_instance_uid: str | None = None
    reason: RejectReason | None = None
    message: str = ""
    size: int = 0


def _blob_key(now: datetime) -> str:
    """Keys are partitioned by hour, so the startup sweep reads only recent folders."""
    return f"{now:%Y/%m/%d/%H}/{uuid.uuid4().hex}.dcm"


class Archive:
    """One archive: settings, index, blob store and metrics."""

    def __init__(self, settings: Settings, *, run_migrations: bool = True) -> None:
        self.settings = settings
        url = settings.resolved_index_url
        self.engine = create_index_engine(url)
        writer = create_index_engine(url, writer=True) if url.startswith("sqlite") else None
        if run_migrations:
            migrate(writer or self.engine)
        self.catalog = Catalog(self.engine, writer)
        data = Path(settings.data)
        self.staging = data / "tmp"
        self.blobs = FilesystemBlobStore(data / "blobs", self.staging)
        self.metrics = Metrics()

    def close(self) -> None:
        self.engine.dispose()
        self.catalog.writer.dispose()

    # --- store -------------------------------------------------------------------

    def new_staging_file(self) -> Path:
        return self.staging / f"{uuid.uuid4().hex}.part"

    def store_stream(self, stream: BinaryIO, **kwargs) -> StoreResult:  # type: ignore[no-untyped-def]
        """Store a Part 10 file read from ``stream`` (import, uploads)."""
        staged = self.new_staging_file()
        try:
            with open(staged, "wb") as out:
                shutil.copyfileobj(stream, out, 1 << 20)
            return self.store_file(staged, **kwargs)
        finally:
            staged.unlink(missing_ok=True)

    def store_file(
        self,
        path: Path,
        *,
        source_aet: str | None = None,
        expected_sop_instance_uid: str | None = None,
        expected_sop_class_uid: str | None = None,
    ) -> StoreResult:
        """Store the Part 10 file at ``path`` (a staging file: it is moved, not copied).

        Returns only once the outcome is durable. Never raises for bad input:
        rejections come back as a StoreResult with a reason.
        """
        started = time.perf_counter()
        try:
            result = self._store(path, source_aet, expected_sop_instance_uid, expected_sop_class_uid)
        except OSError as exc:
            log.error("store failed: %s", exc)
            self.metrics.errors.labels("store-io").inc()
            result = StoreResult(
                StoreOutcome.REJECTED, expected_sop_instance_uid, RejectReason.OUT_OF_RESOURCES, str(exc)
            )
        self.metrics.stores.labels(result.outcome.value).inc()
        self.metrics.store_seconds.observe(time.perf_counter() - started)
        if result.outcome is StoreOutcome.REJECTED:
            log.warning(
                "store rejected (%s) from %s: %s", result.reason, source_aet or "-", result.message
            )
        return result

    def _store(
        self,
        path: Path,
        source_aet: str | None,
        expected_sop_instance_uid: str | None,
        expected_sop_class_uid: str | None,
    ) -> StoreResult:
        try:
            parsed = parse_instance(path, expected_sop_instance_uid, expected_sop_class_uid)
        except RejectedDataset as exc:
            return StoreResult(
                StoreOutcome.REJECTED, expected_sop_instance_uid, RejectReason.INVALID, str(exc)
            )
        uid = parsed.sop_instance_uid
        with open(path, "rb") as f:
            size, digest = sha256_of(f)

        key: str | None = None  # set once the blob is durably in place
        for _attempt in range(3):
            known_digest = self.catalog.digest(uid)
            existing = self.catalog.instance(uid) if known_digest is not None else None
            replace = None
            if existing is not None:
                if existing.sha256 == digest:
                    self._discard(key)
                    return StoreResult(StoreOutcome.DUPLICATE, uid, size=size)
                if self.settings.duplicate_policy is DuplicatePolicy.REJECT:
                    self._discard(key)
                    return StoreResult(
                        StoreOutcome.REJECTED,
                        uid,
                        RejectReason.DUPLICATE_CONFLICT,
                        "a different object with this SOP Instance UID is already stored",
                    )
                replace = existing
            if key is None:
                key = _blob_key(datetime.now(UTC))
                self.blobs.put_file(key, path)
            try:
                self._commit(parsed, key, size, digest, source_aet, replace)
            except PatientConflict:
                self._discard(key)
                return StoreResult(
                    StoreOutcome.REJECTED,
                    uid,
                    RejectReason.PATIENT_CONFLICT,
                    "the study is filed under another Patient ID",  # no patient data in logs
                )
            except InstanceExists:
                continue  # another association committed this UID meanwhile: decide again
            except BaseException:
                self._discard(key)
                raise
            if replace is not None:
                if self.settings.duplicate_policy is DuplicatePolicy.KEEP_NEW:
                    self.blobs.delete(replace.blob_key)
                    return StoreResult(StoreOutcome.REPLACED, uid, size=size)
                return StoreResult(StoreOutcome.VERSIONED, uid, size=size)
            self.metrics.stored_bytes.inc(size)
            return StoreResult(StoreOutcome.STORED, uid, size=size)
        self._discard(key)
        return StoreResult(
            StoreOutcome.REJECTED, uid, RejectReason.OUT_OF_RESOURCES, "concurrent updates; retry"
        )

    def _discard(self, key: str | None) -> None:
        if key is not None:
            self.blobs.delete(key)

    def _commit(
        self,
        parsed: ParsedInstance,
        key: str,
        size: int,
        digest: str,
        source_aet: str | None,
        replace: StoredInstance | None,
    ) -> None:
        self.catalog.add_instance(
            patient=parsed.patient,
            study=parsed.study,
            series_values=parsed.series,
            instance={
                **parsed.instance,
                "blob_key": key,
                "size": size,
                "sha256": digest,
                "source_aet": source_aet,
                "header": parsed.header,
            },
            accept_patient_conflict=self.settings.conflict_policy is ConflictPolicy.ACCEPT,
            replace=replace,
            keep_replaced=self.settings.duplicate_policy is DuplicatePolicy.KEEP_BOTH,
        )

    # --- read ----------------------------------------------------------------------

    def open_instance(self, stored: StoredInstance) -> BinaryIO:
        return self.blobs.open(stored.blob_key)

    def instance_path(self, stored: StoredInstance) -> Path | None:
        return self.blobs.local_path(stored.blob_key)

    # --- housekeeping ----------------------------------------------------------------

    def sweep_orphans(self, *, full: bool = False, grace_seconds: int | None = None) -> list[str]:
        """Delete blobs that no index row names (a crash between blob and commit).

        Only partitions written since the last sweep are read unless ``full``.
        Blobs younger than ``grace_seconds`` may belong to a store in flight in
        another process and are left alone. Returns the removed keys.
        """
        grace = self.settings.orphan_grace_seconds if grace_seconds is None else grace_seconds
        now = datetime.now(UTC)
        watermark = self.catalog.state(SWEEP_WATERMARK)
        prefixes = [""]
        if watermark and not full:
            hour = datetime.fromisoformat(watermark).replace(minute=0, second=0, microsecond=0)
            prefixes = []
            while hour <= now:
                prefixes.append(f"{hour:%Y/%m/%d/%H}")
                hour += timedelta(hours=1)
        removed: list[str] = []
        cutoff = time.time() - grace
        for prefix in prefixes:
            batch = [info for info in self.blobs.list(prefix) if info.mtime <= cutoff]
            known = self.catalog.known_blob_keys(info.key for info in batch)
            for info in batch:
                if info.key not in known:
                    self.blobs.delete(info.key)
                    removed.append(info.key)
        self.catalog.set_state(SWEEP_WATERMARK, (now - timedelta(seconds=grace)).isoformat())
        if removed:
            log.warning("removed %d orphan blob(s) left by an interrupted store", len(removed))
        return removed

    def clear_staging(self) -> int:
        """Remove half-received files of an earlier run (call only when no store runs)."""
        return len(self.blobs.clear_staging())

    def verify(self, progress=None) -> VerifyReport:  # type: ignore[no-untyped-def]
        """Re-hash every stored object and compare it with the index."""
        report = VerifyReport()
        for stored in self.catalog.all_instances():
            try:
                with self.blobs.open(stored.blob_key) as f:
                    size, digest = sha256_of(f)
            except FileNotFoundError:
                report.missing.append(stored.sop_instance_uid)
            else:
                if digest != stored.sha256 or size != stored.size:
                    report.corrupt.append(stored.sop_instance_uid)
                report.checked_bytes += size
            report.checked += 1
            if progress is not None:
                progress(stored)
        return report

    def iter_instances(self) -> Iterator[StoredInstance]:
        return self.catalog.all_instances()


@dataclass
class VerifyReport:
    checked: int = 0
    checked_bytes: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.corrupt
