"""The archive service: store, look up and open instances, sweep and verify.

Every front door (DIMSE, import, later DICOMweb) stores through
:meth:`Archive.store_file`, which implements the store sequence of
docs/architecture.md: parse once, write the blob durably, commit the index,
then answer.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import cached_property, partial
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from sqlalchemy.exc import SQLAlchemyError

from ..access.principal import Principal
from ..config import ConflictPolicy, DuplicatePolicy, Settings
from ..identity.organisations import (
    Organisation,
    default_organisation,
    organisation_for_aet,
    sync_from_settings,
)
from ..identity.patients import IdentityError
from ..identity.query import PatientScope, scope_patient_keys
from ..index.catalog import Catalog, InstanceExists, PatientConflict, StoredInstance
from ..index.engine import create_index_engine, migrate
from ..index.query import PreparedQuery, Query, prepare
from ..index.retrieval import RetrieveRequest, find_instances
from ..storage.blobstore import BlobStore, sha256_of
from ..storage.filesystem import StagedFile, new_staging_path
from ..storage.tiers import open_tiers
from .ingest import ParsedInstance, RejectedDataset, parse_buffer, parse_instance
from .metrics import Metrics

if TYPE_CHECKING:
    from ..access.gate import Gate
    from ..audit import AuditTrail

log = logging.getLogger(__name__)

SWEEP_WATERMARK = "orphan_sweep_watermark"
OWNER_CACHE_SECONDS = 10
INLINE_PREFIX = "db/"  # blob keys of objects held in the write-back journal
IN_PLACE_PREFIX = "file:"  # blob keys of files indexed where they lie (migrate); never moved or deleted
MAX_BLOB_KEY = 255  # instances.blob_key


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
    NOT_AUTHORISED = "not-authorised"  # the sender belongs to no organisation


@dataclass(frozen=True)
class StoreResult:
    outcome: StoreOutcome
    sop_instance_uid: str | None = None
    reason: RejectReason | None = None
    message: str = ""
    size: int = 0
    study_uid: str | None = None  # of a stored (or already stored) instance, for the doors' audit; None if rejected


def _patient_conflict(uid: str) -> StoreResult:
    # the message is sent to the peer and logged: no patient data in it
    return StoreResult(
        StoreOutcome.REJECTED, uid, RejectReason.PATIENT_CONFLICT, "the study is filed under another Patient ID"
    )


def _staged_bytes(staged: Sequence[StagedFile | None] | None, n: int) -> bytes:
    """Item ``n``'s bytes from its staged file (``store_batch`` was given no bytes for it)."""
    ready = staged[n] if staged is not None else None
    if ready is None:
        raise ValueError(f"store_batch: item {n} has neither bytes nor a staged file")
    return ready.path.read_bytes()


def _read_back(blobs: BlobStore, key: str, ready: StagedFile | None) -> bytes | None:
    """A staged object's bytes after its batch failed: from the blob it was renamed to, else from
    staging (``put_many`` failed before the rename); None when neither holds them any more."""
    try:
        with blobs.open(key) as blob:
            return blob.read()
    except OSError:
        pass
    try:
        return ready.path.read_bytes() if ready is not None else None
    except OSError:
        return None


def _not_authorised(uid: str | None) -> StoreResult:
    return StoreResult(
        StoreOutcome.REJECTED, uid, RejectReason.NOT_AUTHORISED, "the sender belongs to no organisation"
    )


def _busy(uid: str) -> StoreResult:
    return StoreResult(StoreOutcome.REJECTED, uid, RejectReason.OUT_OF_RESOURCES, "concurrent updates; retry")


def _blob_key(now: datetime) -> str:
    """Keys are partitioned by hour, so the startup sweep reads only recent folders."""
    return f"{now:%Y/%m/%d/%H}/{uuid.uuid4().hex}.dcm"


def _journal_target(journal_key: str, stored_at: datetime) -> str:
    """The blob key a journalled object moves to: its journal name under the hour
    it was stored, the same whichever process moves it, however often."""
    if stored_at.tzinfo is not None:
        stored_at = stored_at.astimezone(UTC)
    return f"{stored_at:%Y/%m/%d/%H}/{journal_key[len(INLINE_PREFIX):]}.dcm"


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
        # Named tiers in configured order; the first receives new objects.
        self.tiers: dict[str, BlobStore] = open_tiers(settings.tiers, data)
        self.blobs = next(iter(self.tiers.values()))
        self.staging = Path(getattr(self.blobs, "staging", data / "tmp"))
        self.metrics = Metrics()
        # time.monotonic() of the last store (begun or ended) and of the last query or
        # retrieve: idle-time work (core/writeback.py) waits until both are quiet, counted
        # from the start (time.monotonic() is the machine's uptime, not the process's).
        self.last_store = self.last_request = time.monotonic()
        if run_migrations:
            sync_from_settings(writer or self.engine, settings)
        self._owners: dict[str | None, tuple[float, Organisation | None]] = {}

    def owner_for(self, source_aet: str | None) -> Organisation | None:
        """The organisation owning what ``source_aet`` stores (None for HTTP and
        import: the default organisation); None when the sender is not accepted.
        Cached for a few seconds: one lookup per association, not per instance."""
        now = time.monotonic()
        cached = self._owners.get(source_aet)
        if cached is not None and now - cached[0] < OWNER_CACHE_SECONDS:
            return cached[1]
        with self.engine.connect() as conn:
            if source_aet:
                owner = organisation_for_aet(conn, source_aet, self.settings)
            else:
                owner = default_organisation(conn, self.settings)
        if len(self._owners) > 10_000:
            self._owners.clear()
        self._owners[source_aet] = (now, owner)
        return owner

    @property
    def shared(self) -> bool:
        """Whether other processes may use this index and these tiers at once
        (PostgreSQL: scale-out); SQLite is one process's, under its data lock."""
        return self.engine.dialect.name != "sqlite"

    @cached_property
    def audit(self) -> AuditTrail:
        """The process's audit trail (samarkiv/audit), opened on first use."""
        from ..audit import open_trail  # the audit trail builds on the index

        return open_trail(self.engine, self.settings)

    @cached_property
    def gate(self) -> Gate:
        """Access policy and audit for the doors (samarkiv/access/gate.py)."""
        from ..access.gate import Gate

        return Gate(self)

    def service_principal(self, aet: str | None, address: str | None = None) -> Principal | None:
        """The service identity of a DIMSE peer: its calling AE title's
        organisation (None: not accepted)."""
        owner = self.owner_for(aet)
        if owner is None:
            return None
        return Principal(name=f"aet:{aet or '-'}", kind="service", org_pk=owner.pk, org_code=owner.code,
                         roles=frozenset({"service"}), auth_method="aet", address=address)  # fmt: skip

    def close(self) -> None:
        if "audit" in self.__dict__:
            self.audit.close()
        self.engine.dispose()
        self.catalog.writer.dispose()

    # --- store -------------------------------------------------------------------

    def new_staging_file(self) -> Path:
        return new_staging_path(self.staging)

    def store_stream(self, stream: BinaryIO, **kwargs) -> StoreResult:  # type: ignore[no-untyped-def]
        """Store a Part 10 file read from ``stream`` (import, uploads)."""
        limit = self.settings.inline_max_bytes
        head = stream.read(limit + 1) if limit else b""
        if limit and len(head) <= limit:
            return self.store_bytes(head, **kwargs)
        staged = self.new_staging_file()
        try:
            with open(staged, "wb") as out:
                out.write(head)
                shutil.copyfileobj(stream, out, 1 << 20)
            return self.store_file(staged, **kwargs)
        finally:
            staged.unlink(missing_ok=True)

    def store_bytes(
        self,
        data: bytes,
        *,
        source_aet: str | None = None,
        expected_sop_instance_uid: str | None = None,
        expected_sop_class_uid: str | None = None,
        owner: Organisation | None = None,
    ) -> StoreResult:
        """Store a Part 10 file held in memory. Objects up to ``inline_max_bytes``
        become durable with their index rows in one transaction (the write-back
        journal); larger ones take the blob-file path of :meth:`store_file`.
        ``owner``: the owning organisation of an authenticated HTTP caller (else
        ``source_aet``'s)."""
        args = (source_aet, expected_sop_instance_uid, expected_sop_class_uid)
        if len(data) <= self.settings.inline_max_bytes:
            return self._observed(partial(self._store_inline, owner=owner), data, *args)
        staged = self.new_staging_file()
        try:
            staged.write_bytes(data)
            return self._observed(partial(self._store_file, owner=owner), staged, *args)
        finally:
            staged.unlink(missing_ok=True)

    def store_file(
        self,
        path: Path,
        *,
        source_aet: str | None = None,
        expected_sop_instance_uid: str | None = None,
        expected_sop_class_uid: str | None = None,
        owner: Organisation | None = None,
    ) -> StoreResult:
        """Store the Part 10 file at ``path`` (a staging file: it is moved, not copied).

        Returns only once the outcome is durable. Never raises for bad input:
        rejections come back as a StoreResult with a reason.
        """
        args = (source_aet, expected_sop_instance_uid, expected_sop_class_uid)
        try:
            small = path.stat().st_size <= self.settings.inline_max_bytes
        except OSError:
            small = False  # _store_file reports it
        if small:
            data = path.read_bytes()
            path.unlink(missing_ok=True)
            return self._observed(partial(self._store_inline, owner=owner), data, *args)
        return self._observed(partial(self._store_file, owner=owner), path, *args)

    def _observed(self, store, source, source_aet, expected_uid, expected_class) -> StoreResult:  # type: ignore[no-untyped-def]
        """Run one store with its metrics, its log line, and I/O errors as rejections."""
        started = time.perf_counter()
        self.last_store = time.monotonic()  # a store in progress is not idle time
        try:
            result = store(source, source_aet, expected_uid, expected_class)
        except (OSError, SQLAlchemyError) as exc:
            log.error("store failed: %s", exc)
            self.metrics.errors.labels("store-io").inc()
            result = StoreResult(StoreOutcome.REJECTED, expected_uid, RejectReason.OUT_OF_RESOURCES, str(exc))
        self.last_store = time.monotonic()
        self.metrics.stores.labels(result.outcome.value).inc()
        self.metrics.store_seconds.observe(time.perf_counter() - started)
        if result.outcome is StoreOutcome.REJECTED:
            log.warning("store rejected (%s) from %s: %s", result.reason, source_aet or "-", result.message)
        elif result.outcome is StoreOutcome.STORED:
            self.metrics.stored_bytes.inc(result.size)
        return result

    def _store_inline(
        self,
        data: bytes,
        source_aet: str | None,
        expected_sop_instance_uid: str | None,
        expected_sop_class_uid: str | None,
        owner: Organisation | None = None,
    ) -> StoreResult:
        """The write-back path: parse, hash, and commit object and rows together.

        No duplicate pre-check: the insert itself finds a known SOP Instance UID
        (InstanceExists), which is rare, and only then is the policy applied.
        """
        owner = owner or self.owner_for(source_aet)
        if owner is None:
            return _not_authorised(expected_sop_instance_uid)
        try:
            parsed = parse_buffer(data, expected_sop_instance_uid, expected_sop_class_uid)
        except RejectedDataset as exc:
            return StoreResult(StoreOutcome.REJECTED, expected_sop_instance_uid, RejectReason.INVALID, str(exc))
        uid, size, digest = parsed.sop_instance_uid, len(data), hashlib.sha256(data).hexdigest()
        key = f"{INLINE_PREFIX}{uuid.uuid4().hex}"
        replace: StoredInstance | None = None
        for _attempt in range(3):
            try:
                self._commit(parsed, key, size, digest, source_aet, owner, replace, inline=data)
            except PatientConflict:
                return _patient_conflict(uid)
            except IdentityError as exc:
                return StoreResult(StoreOutcome.REJECTED, uid, RejectReason.INVALID, str(exc))
            except InstanceExists:
                existing = self.catalog.instance(uid)
                if existing is None:
                    continue  # removed meanwhile: try again as new
                decided = self._duplicate(existing, digest, size)
                if decided is not None:
                    return decided
                replace = existing
                continue
            self.metrics.journal_instances.inc()
            self.metrics.journal_bytes.inc(size)
            return self._stored(uid, size, replace, parsed.study_instance_uid)
        return _busy(uid)

    def store_batch(
        self,
        items: Sequence[tuple[bytes | None, str | None, str | None]],
        *,
        source_aet: str | None = None,
        owner: Organisation | None = None,
        journal: bool = True,
        parsed: Sequence[ParsedInstance | None] | None = None,
        staged: Sequence[StagedFile | None] | None = None,
    ) -> list[StoreResult]:
        """Store several Part 10 objects held in memory, ``(data, expected SOP Instance UID,
        expected SOP Class UID)`` each, with one commit: one transaction and one WAL sync
        (the migration's grouped commit, samarkiv/migrate/deferred.py; a STOW-RS request's
        parts). What needs a decision (a known UID, a patient conflict, a rejection) or is
        larger than ``inline_max_bytes`` takes the one-at-a-time path of :meth:`store_bytes`.
        ``journal``: keep the objects in the write-back journal (the answer waits for one WAL
        sync), else write them to blob files, made durable together before the commit (a
        migration's groups: nothing is left to write back). ``parsed``: each item's
        ``parse_buffer`` result where the caller has it (a C-GET worker's, migrate/sources/getproc.py),
        trusted as it is (the expected UIDs are checked only where this method parses);
        ``staged``: each item's bytes already written into the blob store's staging folder (the
        same worker's), renamed into place instead of written again, removed if not used; an
        item's ``data`` may then be None (read from there only if the one-at-a-time path needs it)."""
        started = time.perf_counter()
        self.last_store = time.monotonic()  # a store in progress is not idle time
        owner = owner or self.owner_for(source_aet)
        results: list[StoreResult | None] = [None] * len(items)
        datas = [data for data, _uid, _cls in items]  # None: in the staged file (read when needed)
        ready_files = list(staged) if staged is not None and not journal else [None] * len(items)
        batch: list[tuple[int, str, int, dict]] = []  # (index, uid, size, add_instance arguments)
        files: list[tuple[str, bytes | Path]] = []
        now = datetime.now(UTC)
        for n, (data, uid, cls) in enumerate(items):
            ready, given = ready_files[n], parsed[n] if parsed is not None else None
            if data is None and (ready is None or given is None):
                datas[n] = data = _staged_bytes(staged, n)  # to parse or to write: the staged file alone will not do
            size = len(data) if data is not None else ready.size  # type: ignore[union-attr]
            if owner is None or size > self.settings.inline_max_bytes:
                continue
            try:
                parse = given if given is not None else parse_buffer(data, uid, cls)  # type: ignore[arg-type]
            except RejectedDataset:
                continue  # store_bytes below says why
            key = f"{INLINE_PREFIX}{uuid.uuid4().hex}" if journal else _blob_key(now)
            digest = ready.sha256 if ready is not None else hashlib.sha256(data).hexdigest()  # type: ignore[arg-type]
            kwargs = self._commit_kwargs(parse, key, size, digest, source_aet, owner, None, inline=data if journal else None)
            batch.append((n, parse.sop_instance_uid, size, kwargs))
            if not journal:
                files.append((key, ready.path if ready is not None else data))  # type: ignore[arg-type]
        used = {path for _key, path in files if isinstance(path, Path)}
        for n, ready in enumerate(staged or ()):
            if ready is not None and ready.path not in used:
                if datas[n] is None:
                    datas[n] = ready.path.read_bytes()  # for the one-at-a-time path below
                ready.path.unlink(missing_ok=True)
        try:
            if files:
                self.blobs.put_many(files)
            errors: list[BaseException | None] = self.catalog.add_instances([b[3] for b in batch]) if batch else []
        except (OSError, SQLAlchemyError) as exc:
            errors = [exc] * len(batch)
        for (n, uid, size, kwargs), error in zip(batch, errors, strict=True):
            if error is not None:
                if not journal:
                    key, ready = kwargs["instance"]["blob_key"], ready_files[n]
                    if datas[n] is None:
                        datas[n] = _read_back(self.blobs, key, ready)
                        if datas[n] is None:
                            results[n] = StoreResult(StoreOutcome.REJECTED, uid, RejectReason.OUT_OF_RESOURCES,
                                                     f"not stored, and its staged file is gone: {error}")  # fmt: skip
                    self.blobs.delete(key)  # the one-at-a-time path below stores it again
                    if ready is not None:
                        ready.path.unlink(missing_ok=True)
                continue
            results[n] = self._stored(uid, size, None, kwargs["study"]["study_instance_uid"])
            if journal:
                self.metrics.journal_instances.inc()
                self.metrics.journal_bytes.inc(size)
            self.metrics.stores.labels(StoreOutcome.STORED.value).inc()
            self.metrics.stored_bytes.inc(size)
        done = sum(r is not None and r.outcome is StoreOutcome.STORED for r in results)
        if done:
            each = (time.perf_counter() - started) / done
            for _ in range(done):
                self.metrics.store_seconds.observe(each)
            self.last_store = time.monotonic()
        return [r if r is not None else self.store_bytes(data, source_aet=source_aet, expected_sop_instance_uid=uid,  # type: ignore[arg-type]
                                                         expected_sop_class_uid=cls, owner=owner)
                for r, data, (_data, uid, cls) in zip(results, datas, items, strict=True)]  # fmt: skip

    def store_in_place(self, path: Path, *, source_aet: str | None = None) -> StoreResult:
        """Index the file at ``path`` where it lies, without copying it (a legacy
        archive's folders): its blob key is ``file:`` + the absolute path; it is
        never moved or deleted, and ``verify`` notices if it changes."""
        path = path.resolve()
        if len(IN_PLACE_PREFIX) + len(str(path)) > MAX_BLOB_KEY:
            return StoreResult(StoreOutcome.REJECTED, None, RejectReason.INVALID, "the path is too long to index in place")
        return self._observed(partial(self._store_file, in_place=True), path, source_aet, None, None)

    def _store_file(
        self,
        path: Path,
        source_aet: str | None,
        expected_sop_instance_uid: str | None,
        expected_sop_class_uid: str | None,
        *,
        in_place: bool = False,
        owner: Organisation | None = None,
    ) -> StoreResult:
        """The blob-file path for large objects: the blob is durable before the commit."""
        owner = owner or self.owner_for(source_aet)
        if owner is None:
            return _not_authorised(expected_sop_instance_uid)
        try:
            parsed = parse_instance(path, expected_sop_instance_uid, expected_sop_class_uid)
        except RejectedDataset as exc:
            return StoreResult(StoreOutcome.REJECTED, expected_sop_instance_uid, RejectReason.INVALID, str(exc))
        uid = parsed.sop_instance_uid
        with open(path, "rb") as f:
            size, digest = sha256_of(f)

        key: str | None = None  # set once the blob is durably in place
        for _attempt in range(3):
            existing = self.catalog.instance(uid) if self.catalog.digest(uid) is not None else None
            replace = None
            if existing is not None:
                decided = self._duplicate(existing, digest, size)
                if decided is not None:
                    self._discard(key)
                    return decided
                replace = existing
            if in_place:
                key = f"{IN_PLACE_PREFIX}{path}"
            elif key is None:
                key = _blob_key(datetime.now(UTC))
                self.blobs.put_file(key, path, digest)
            try:
                self._commit(parsed, key, size, digest, source_aet, owner, replace)
            except PatientConflict:
                self._discard(key)
                return _patient_conflict(uid)
            except IdentityError as exc:
                self._discard(key)
                return StoreResult(StoreOutcome.REJECTED, uid, RejectReason.INVALID, str(exc))
            except InstanceExists:
                continue  # another association committed this UID meanwhile: decide again
            except BaseException:
                self._discard(key)
                raise
            return self._stored(uid, size, replace, parsed.study_instance_uid)
        self._discard(key)
        return _busy(uid)

    def _duplicate(self, existing: StoredInstance, digest: str, size: int) -> StoreResult | None:
        """The outcome when the UID is taken, or None when the policy replaces it."""
        if existing.sha256 == digest:
            return StoreResult(StoreOutcome.DUPLICATE, existing.sop_instance_uid, size=size,
                               study_uid=existing.study_instance_uid)
        if self.settings.duplicate_policy is DuplicatePolicy.REJECT:
            return StoreResult(
                StoreOutcome.REJECTED,
                existing.sop_instance_uid,
                RejectReason.DUPLICATE_CONFLICT,
                "a different object with this SOP Instance UID is already stored",
            )
        return None

    def _stored(self, uid: str, size: int, replaced: StoredInstance | None, study_uid: str) -> StoreResult:
        if replaced is None:
            return StoreResult(StoreOutcome.STORED, uid, size=size, study_uid=study_uid)
        if self.settings.duplicate_policy is DuplicatePolicy.KEEP_NEW:
            self._discard(replaced.blob_key)
            return StoreResult(StoreOutcome.REPLACED, uid, size=size, study_uid=study_uid)
        return StoreResult(StoreOutcome.VERSIONED, uid, size=size, study_uid=study_uid)

    def _discard(self, key: str | None) -> None:
        if key is None or key.startswith(IN_PLACE_PREFIX):
            return
        if key.startswith(INLINE_PREFIX):
            self.catalog.delete_inline(key)
        else:
            store, name = self._store_for(key)
            store.delete(name)

    def _commit(self, *args: Any, **kwargs: Any) -> None:
        """Commit one parsed instance (arguments as :meth:`_commit_kwargs`)."""
        self.catalog.add_instance(**self._commit_kwargs(*args, **kwargs))

    def _commit_kwargs(
        self,
        parsed: ParsedInstance,
        key: str,
        size: int,
        digest: str,
        source_aet: str | None,
        owner: Organisation,
        replace: StoredInstance | None,
        inline: bytes | None = None,
    ) -> dict:
        """Catalog.add_instance's arguments for one parsed instance."""
        series = parsed.series
        if not series.get("institution_name"):
            # filled in from the owner where the source left it empty (the stored
            # object keeps the original)
            series = {**series, "institution_name": owner.name[:64]}
        return dict(
            patient=parsed.patient,
            study=parsed.study,
            series_values=series,
            instance={
                **parsed.instance,
                "blob_key": key,
                "size": size,
                "sha256": digest,
                "source_aet": source_aet,
                "org_pk": owner.pk,
                "header": parsed.header,
            },
            patient_ids=parsed.patient_ids,
            owner=owner,
            accept_patient_conflict=self.settings.conflict_policy is ConflictPolicy.ACCEPT,
            replace=replace,
            keep_replaced=self.settings.duplicate_policy is DuplicatePolicy.KEEP_BOTH,
            inline=inline,
        )

    # --- read ----------------------------------------------------------------------

    def prepare_query(
        self, query: Query, requester_aet: str | None, *, owner: Organisation | None = None,
        principal: Principal | None = None, detail: dict | None = None,
    ) -> tuple[PreparedQuery, PatientScope]:
        """``query`` compiled for the index with its patient keys resolved through
        the master patient index for the requesting organisation (identity/query.py):
        ``owner`` (an authenticated HTTP caller's), else the calling AE's. With a
        ``principal``, only what the access policy lets it see matches (the gate's
        condition, which audits the query with ``detail``).
        Raises QueryError when the query cannot be run."""
        self.last_request = time.monotonic()
        scope = scope_patient_keys(self.engine, query, owner or self.owner_for(requester_aet), self.settings)
        prepared = prepare(scope.query, self.engine.dialect.name)
        if scope.condition is not None:
            prepared.conditions.append(scope.condition)
        if principal is not None:
            visible = self.gate.query_condition(principal, prepared.level.value, detail=detail)
            if visible is not None:
                prepared.conditions.append(visible)
                if any(k.startswith("NumberOfPatientRelated") for k in (*query.keys, *query.return_keys)):
                    # patient-related counts count only the studies the principal may see
                    from ..access.policy import visible_condition

                    with self.engine.connect() as conn:
                        prepared.count_condition = visible_condition(conn, principal, "STUDY")
        return prepared, scope

    def find_instances(
        self, request: RetrieveRequest, *, principal: Principal | None = None, action: str = "retrieve",
        refused: list[StoredInstance] | None = None,
    ) -> list[StoredInstance]:
        """The stored instances a retrieve names (C-GET, C-MOVE, WADO); each
        study read is noted for the lifecycle rules' "not accessed for" test.

        With a ``principal``, only instances of the studies it may ``action``
        (the gate: one decision and one audit record per study, with its
        number of instances); those of the other studies go to ``refused``."""
        from ..lifecycle.access import note_access  # lifecycle builds on the core

        self.last_request = time.monotonic()
        found = find_instances(self.engine, request)
        if principal is not None and found:
            counts: dict[str, int] = {}
            for stored in found:
                counts[stored.study_instance_uid] = counts.get(stored.study_instance_uid, 0) + 1
            authorised = self.gate.authorise(principal, action, counts, counts=counts)
            if authorised.denied:
                if refused is not None:
                    refused.extend(s for s in found if s.study_instance_uid in authorised.denied)
                found = [s for s in found if s.study_instance_uid in authorised.allowed]
        for study_uid in {stored.study_instance_uid for stored in found}:
            note_access(self, study_uid)
        return found

    def open_instance(self, stored: StoredInstance) -> BinaryIO:
        """The stored object's bytes, wherever they are (journal or blob store)."""
        return self.open_blob(stored.blob_key, stored.pk)

    def open_blob(self, key: str, pk: int | None = None) -> BinaryIO:
        if key.startswith(IN_PLACE_PREFIX):
            return open(key[len(IN_PLACE_PREFIX) :], "rb")
        if key.startswith(INLINE_PREFIX):
            data = self.catalog.inline_data(key)
            if data is not None:
                return BytesIO(data)
            # moved to the blob store since the caller looked it up
            moved = self.catalog.blob_key_of(pk) if pk is not None else None
            if moved is None or moved.startswith(INLINE_PREFIX):
                raise FileNotFoundError(key)
            key = moved
        store, name = self._store_for(key)
        try:
            return store.open(name)
        except FileNotFoundError:
            # moved to another tier since the caller looked it up (lifecycle)
            moved = self.catalog.blob_key_of(pk) if pk is not None else None
            if moved is None or moved == key or moved.startswith(INLINE_PREFIX):
                raise
            store, name = self._store_for(moved)
            return store.open(name)

    def _store_for(self, key: str) -> tuple[BlobStore, str]:
        """The tier holding ``key`` and the key within it: ``long:2026/...`` is on
        the tier ``long``; unprefixed keys are on the first tier."""
        tier, colon, rest = key.partition(":")
        if not colon:
            return self.blobs, key
        if tier not in self.tiers:
            raise FileNotFoundError(f"blob {key}: tier {tier!r} is not configured")
        return self.tiers[tier], rest

    def instance_path(self, stored: StoredInstance) -> Path | None:
        """A local file holding the object, if there is one (use open_instance otherwise)."""
        if stored.blob_key.startswith(INLINE_PREFIX):
            return None
        if stored.blob_key.startswith(IN_PLACE_PREFIX):
            return Path(stored.blob_key[len(IN_PLACE_PREFIX) :])
        store, name = self._store_for(stored.blob_key)
        return store.local_path(name)

    # --- the write-back journal --------------------------------------------------------

    def flush_inline(self, batch: int = 200) -> int:
        """Move up to ``batch`` journalled objects to the blob store; return how many.

        Each object is durable in the blob store before its rows name it, and
        its journal copy goes in the same transaction. Its new key follows
        from its journal key (:func:`_journal_target`), so a move retried
        after a crash, here or by another process, writes the same object
        again instead of leaving an orphan. On PostgreSQL the rows are claimed
        with ``FOR UPDATE SKIP LOCKED`` for the move (several processes move
        disjoint batches; a dead process's rows are released with its
        connection); SQLite has one process, and the blobs are written
        outside its single write lock so that stores go on meanwhile.
        """
        if self.shared:
            with self.catalog.claim_inline(batch) as (items, relocate):
                if not items:
                    return 0
                moves = self._write_journalled(items)
                unreferenced = relocate(moves)
        else:
            items = self.catalog.inline_batch(batch)
            if not items:
                return 0
            moves = self._write_journalled(items)
            unreferenced = self.catalog.relocate(moves)
        for key in unreferenced:
            self.blobs.delete(key)
        self.metrics.written_back.inc(len(items))
        return len(items)

    def _write_journalled(self, items: list[tuple[str, datetime, bytes]]) -> list[tuple[str, str]]:
        moves = [(old, _journal_target(old, stored_at)) for old, stored_at, _data in items]
        self.blobs.put_many([(new, data) for (_old, new), (_key, _at, data) in zip(moves, items, strict=True)])
        return moves

    def flush_all(self) -> int:
        moved = total = 0
        while moved := self.flush_inline():
            total += moved
        return total

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
                with self.open_instance(stored) as f:
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
