"""Writes and lookups on the catalogue that the core needs (queries live in query.py)."""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache, partial
from typing import Any

from sqlalchemy import Connection, Engine, String, bindparam, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from ..identity.national import Issuer
from ..identity.organisations import Organisation
from ..identity.patients import Identifier, current_person, person_of, resolve_identity
from .metadata_schema import instance_json
from .schema import (
    archive_state,
    conflicts,
    inline_blobs,
    instances_with_parents,
    instances,
    nodes,
    patients,
    series,
    studies,
    superseded_instances,
)


def utcnow() -> datetime:
    return datetime.now(UTC)


@cache
def _lengths(table) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """The length of each of ``table``'s sized string columns."""
    return {c.name: c.type.length for c in table.c if isinstance(c.type, String) and c.type.length}


def _clip(table, values: dict[str, Any]) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Cut over-long strings to the column's length (non-conformant senders exist)."""
    lengths = _lengths(table)
    return {key: value[: lengths[key]] if key in lengths and isinstance(value, str) else value for key, value in values.items()}


class PatientConflict(Exception):
    """The study is already filed under another patient."""

    def __init__(self, existing_patient_id: str, existing_issuer: str) -> None:
        super().__init__(existing_patient_id)
        self.existing_patient_id = existing_patient_id
        self.existing_issuer = existing_issuer


class _Isolate(Exception):
    """The batch cannot be written together (Catalog._commit_together)."""


class InstanceExists(Exception):
    """Another writer committed the same SOP Instance UID first."""


@dataclass(frozen=True)
class StoredInstance:
    pk: int
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    blob_key: str
    size: int
    sha256: str
    study_instance_uid: str
    series_instance_uid: str


_STORED_COLUMNS = (
    instances.c.pk,
    instances.c.sop_instance_uid,
    instances.c.sop_class_uid,
    instances.c.transfer_syntax_uid,
    instances.c.blob_key,
    instances.c.size,
    instances.c.sha256,
    studies.c.study_instance_uid,
    series.c.series_instance_uid,
)


# built once: a statement built per call costs more than its execution (SQLAlchemy's cache key)
_SIZES_BY_UID = select(instances.c.sop_instance_uid, instances.c.size).where(
    instances.c.sop_instance_uid.in_(bindparam("uids", expanding=True))
)


def stored_instances_select():  # type: ignore[no-untyped-def]
    """SELECT of StoredInstance columns, joined up to the study."""
    return select(*_STORED_COLUMNS).select_from(instances_with_parents())


@dataclass
class _Pending:
    """One store waiting for a group commit (Catalog._group_commit)."""

    args: tuple
    done: bool = False
    learned: dict | None = None
    error: BaseException | None = None


class Catalog:
    """The index as the core sees it. All methods are safe to call from many threads."""

    def __init__(self, engine: Engine, writer: Engine | None = None) -> None:
        self.engine = engine
        self.writer = writer or engine
        # (table, key...) -> (pk, parent pk) of patient/study/series rows known
        # to be committed; saves three lookups per stored instance.
        self._known: dict[tuple, Any] = {}
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        self._upserts: dict[str, Any] = {}  # table name -> INSERT .. ON CONFLICT DO NOTHING RETURNING (_upsert_key)
        # SQLite has one writer at a time; a thread that finds the lock taken
        # sleeps in SQLite's busy handler (1, 2, 5, 10 ms ...). Writers of this
        # process queue on a mutex instead and go the moment the lock is free.
        self._sqlite = engine.dialect.name == "sqlite"
        self._writers = threading.Lock() if self._sqlite else nullcontext()
        self._queue: list[_Pending] = []  # stores waiting for the group commit
        self._queue_lock = threading.Lock()
        self._local = threading.local()  # add_instances: what the open batch learned
        # Built once: a statement made per call costs more than its execution.
        self._insert_instance = (
            self._insert(instances)
            .on_conflict_do_nothing(index_elements=["sop_instance_uid"])
            .returning(instances.c.pk)
        )
        self._insert_inline = insert(inline_blobs)

    @property
    def writers(self) -> Any:
        """The mutex this process's index writers queue on (SQLite; a no-op context on
        PostgreSQL): other writers of the same index take it around their transactions."""
        return self._writers

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction (SQLite: BEGIN IMMEDIATE, one writer thread at a time)."""
        with self._writers, self.writer.begin() as conn:
            yield conn

    # --- lookups -------------------------------------------------------------

    def instance(self, sop_instance_uid: str) -> StoredInstance | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                stored_instances_select().where(instances.c.sop_instance_uid == sop_instance_uid)
            ).first()
        return StoredInstance(*row) if row else None

    def digest(self, sop_instance_uid: str) -> str | None:
        """SHA-256 of the stored instance, if any: the cheap check before a store."""
        with self.engine.connect() as conn:
            return conn.execute(
                select(instances.c.sha256).where(instances.c.sop_instance_uid == sop_instance_uid)
            ).scalar()

    def instances_by_uid(self, uids: Sequence[str]) -> dict[str, StoredInstance]:
        found: dict[str, StoredInstance] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(uids), 500):
                chunk = list(uids[start : start + 500])
                query = stored_instances_select().where(instances.c.sop_instance_uid.in_(chunk))
                for row in conn.execute(query):
                    found[row.sop_instance_uid] = StoredInstance(*row)
        return found

    def sizes_by_uid(self, uids: Sequence[str]) -> dict[str, int]:
        """Stored size of each of ``uids`` the archive holds: :meth:`instances_by_uid` without the
        joins and row objects, for callers that ask only which are held (a migration, per study)."""
        found: dict[str, int] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(uids), 500):
                found.update(conn.execute(_SIZES_BY_UID, {"uids": list(uids[start : start + 500])}).all())
        return found

    def all_instances(self, batch: int = 1000) -> Iterator[StoredInstance]:
        """Every stored instance, in primary-key order, read in batches."""
        last = 0
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    stored_instances_select()
                    .where(instances.c.pk > last)
                    .order_by(instances.c.pk)
                    .limit(batch)
                ).all()
            if not rows:
                return
            for row in rows:
                yield StoredInstance(*row)
            last = rows[-1].pk

    def header(self, sop_instance_uid: str) -> bytes | None:
        with self.engine.connect() as conn:
            blob = conn.execute(
                select(instances.c.metadata).where(instances.c.sop_instance_uid == sop_instance_uid)
            ).scalar()
        return zlib.decompress(blob) if blob else None

    def known_blob_keys(self, keys: Iterable[str]) -> set[str]:
        keys = list(keys)
        known: set[str] = set()
        with self.engine.connect() as conn:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                for table in (instances, superseded_instances):
                    known.update(
                        conn.execute(
                            select(table.c.blob_key).where(table.c.blob_key.in_(chunk))
                        ).scalars()
                    )
        return known

    # --- store ---------------------------------------------------------------

    def _upsert_key(self, conn: Connection, table, key: dict[str, Any], values: dict[str, Any]) -> Any:  # type: ignore[no-untyped-def]
        """Insert the row if absent (first writer wins), return the existing row:
        one statement for a new row (callers cache the rows they have seen)."""
        upsert = self._upserts.get(table.name)
        if upsert is None:
            upsert = self._upserts[table.name] = self._insert(table).on_conflict_do_nothing().returning(*table.c)
        row = conn.execute(upsert, _clip(table, {**key, **values})).first()
        if row is None:
            row = conn.execute(select(table).where(*(table.c[k] == v for k, v in key.items()))).first()
        return row

    def add_instance(
        self,
        *,
        patient: dict[str, Any],
        study: dict[str, Any],
        series_values: dict[str, Any],
        instance: dict[str, Any],
        accept_patient_conflict: bool,
        replace: StoredInstance | None = None,
        keep_replaced: bool = False,
        inline: bytes | None = None,
        patient_ids: tuple[tuple[str, Issuer], ...] = (),
        owner: Organisation | None = None,
    ) -> None:
        """Commit the index rows of one instance in one transaction.

        ``inline`` is the object itself, kept in the write-back journal under
        the instance's ``db/`` blob key, in the same transaction.

        ``patient_ids`` (the dataset's Patient ID and Other Patient IDs with
        their issuers) are resolved by the master patient index
        (identity/patients.py) in the same transaction: the patient row is
        keyed by the canonical (Patient ID, issuer), never by a bare Patient ID.

        Raises PatientConflict (nothing written) when the study belongs to
        another patient and conflicts are not accepted, InstanceExists when the
        SOP Instance UID is taken and ``replace`` is not given.
        """
        args = (
            patient, study, series_values, instance, accept_patient_conflict, replace, keep_replaced, inline,
            patient_ids, owner,
        )  # fmt: skip
        commit = self._group_commit if self._sqlite else self._own_transaction
        try:
            learned = commit(args)
        except IntegrityError:
            # A cached patient/study/series row is gone (deleted or merged by
            # another process): forget what we know and try once more.
            self._known.clear()
            learned = commit(args)
        if len(self._known) > 100_000:
            self._known.clear()
        self._known.update(learned)

    def add_instances(self, many: Sequence[dict[str, Any]]) -> list[BaseException | None]:
        """Commit several instances' rows (each :meth:`add_instance`'s keyword arguments) in one
        transaction, each in a savepoint of its own: one WAL sync for all (the migration's
        grouped commit, migrate/deferred.py). Returns each one's error (PatientConflict,
        InstanceExists, or the commit's own failure: nothing of it written) or None."""
        batch = [_Pending((kw["patient"], kw["study"], kw["series_values"], kw["instance"], kw["accept_patient_conflict"],
                           kw.get("replace"), kw.get("keep_replaced", False), kw.get("inline"), kw.get("patient_ids", ()),
                           kw.get("owner"))) for kw in many]  # fmt: skip
        with self._writers:
            self._commit_batch(batch, isolate=True)
        if len(self._known) > 100_000:
            self._known.clear()
        for item in batch:
            if item.error is None:
                self._known.update(item.learned or {})
        return [item.error for item in batch]

    def _own_transaction(self, args: tuple) -> dict:
        with self._write() as conn:
            return self._add_instance(conn, *args)

    def _group_commit(self, args: tuple) -> dict:
        """SQLite group commit: stores that arrive while another commits wait on
        the write mutex; the first to get it commits every waiting store in one
        transaction (a savepoint each, so one store's failure is its own) and
        one WAL sync, and the others find their result ready."""
        pending = _Pending(args)
        with self._queue_lock:
            self._queue.append(pending)
        with self._writers:
            if not pending.done:
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                self._commit_batch(batch)
        if pending.error is not None:
            raise pending.error
        return pending.learned or {}

    def _batch_known(self) -> dict:
        """Rows and identities learned earlier in this thread's open add_instances
        transaction (their savepoints released): valid until that transaction ends."""
        return getattr(self._local, "known", None) or {}

    def _commit_batch(self, batch: list[_Pending], isolate: bool = False) -> None:
        if isolate:
            self._local.known = {}
        try:
            with self.writer.begin() as conn:
                if isolate and len(batch) > 1 and self._commit_together(conn, batch):
                    return
                for item in batch:
                    if len(batch) == 1 and not isolate:  # nothing to isolate it from: no savepoint
                        item.learned = self._add_instance(conn, *item.args)
                        continue
                    try:
                        with conn.begin_nested():
                            item.learned = self._add_instance(conn, *item.args)
                        if isolate:
                            self._local.known.update(item.learned)
                    except Exception as exc:  # noqa: BLE001 - rolled back to its savepoint; the others go on
                        item.error = exc
        except BaseException as exc:  # the commit failed: no store of the batch happened
            for item in batch:
                item.learned, item.error = None, exc
            if not isinstance(exc, Exception):
                raise
        finally:
            self._local.known = None
            for item in batch:
                item.done = True

    def _commit_together(self, conn: Connection, batch: list[_Pending]) -> bool:
        """The fast way for a batch of new instances (a migration's group, a STOW-RS request):
        one savepoint for all and one executemany INSERT per table instead of a savepoint and two
        statements each. False, with nothing of it kept, when any of them needs more (a
        replacement) or fails (a known UID, a patient conflict): the caller then isolates each."""
        known = self._local.known
        written: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
        try:
            with conn.begin_nested():
                for item in batch:
                    item.learned = self._add_instance(conn, *item.args, defer=written)
                    known.update(item.learned)
                rows = [row for row, _inline in written]
                inline_rows = [inline for _row, inline in written if inline is not None]
                if any(row.keys() != rows[0].keys() for row in rows):
                    raise _Isolate
                conn.execute(insert(instances), rows)  # a known UID fails the unique index
                if inline_rows:
                    conn.execute(self._insert_inline, inline_rows)
        except Exception:  # noqa: BLE001 - rolled back to the savepoint; the caller isolates each
            known.clear()
            for item in batch:
                item.learned = None
            return False
        return True

    def _parent_pk(
        self, conn: Connection, table, key: dict[str, Any], values: dict[str, Any], learned: dict
    ) -> tuple[int, int | None]:  # type: ignore[no-untyped-def]
        """(pk, parent pk) of the row with ``key``, inserted if absent; cached after commit."""
        cache_key = (table.name, *key.values())
        hit = self._known.get(cache_key) or self._batch_known().get(cache_key)
        if hit is not None:
            return hit
        row = self._upsert_key(conn, table, key, values)
        parent = getattr(row, "patient_pk", None) if table is studies else None
        learned[cache_key] = (row.pk, parent)
        return row.pk, parent

    def _add_instance(
        self,
        conn: Connection,
        patient: dict[str, Any],
        study: dict[str, Any],
        series_values: dict[str, Any],
        instance: dict[str, Any],
        accept_patient_conflict: bool,
        replace: StoredInstance | None,
        keep_replaced: bool,
        inline: bytes | None,
        patient_ids: tuple[tuple[str, Issuer], ...],
        owner: Organisation | None,
        defer: list[tuple[dict[str, Any], dict[str, Any] | None]] | None = None,
    ) -> dict:
        """Write one instance's rows in the open transaction ``conn``; return the keys learned
        (cached once committed). With ``defer``, its parent rows are written but its instance
        and inline-blob rows appended there, for one INSERT of many (:meth:`_commit_together`)."""
        learned: dict = {}
        now = utcnow()
        instance = dict(instance)
        header = instance.pop("header", None)
        key = self._patient_key(conn, patient_ids, owner, learned) if patient_ids else None
        if key is not None:
            patient_key = {"patient_id": key.value, "issuer_of_patient_id": key.issuer}
        else:
            patient_key = {k: patient[k] for k in ("patient_id", "issuer_of_patient_id")}
        patient_values = {k: v for k, v in patient.items() if k not in patient_key}
        patient_pk, _ = self._parent_pk(
            conn, patients, patient_key, {**patient_values, "created_at": now, "updated_at": now}, learned
        )
        study_values = {k: v for k, v in study.items() if k != "study_instance_uid"}
        study_pk, owner_pk = self._parent_pk(
            conn,
            studies,
            {"study_instance_uid": study["study_instance_uid"]},
            {**study_values, "patient_pk": patient_pk, "created_at": now, "updated_at": now},
            learned,
        )
        if owner_pk != patient_pk:
            keyed = {**patient, **patient_key}
            self._patient_mismatch(conn, owner_pk, keyed, study, instance, accept_patient_conflict, now)
        series_pk, _ = self._parent_pk(
            conn,
            series,
            {"series_instance_uid": series_values["series_instance_uid"]},
            {
                **{k: v for k, v in series_values.items() if k != "series_instance_uid"},
                "study_pk": study_pk,
                "created_at": now,
            },
            learned,
        )
        row = _clip(
            instances,
            {
                **instance,
                "series_pk": series_pk,
                "stored_at": now,
                "metadata": zlib.compress(header, 1) if header else None,
            },
        )
        inline_row = {"key": row["blob_key"], "data": inline, "stored_at": now} if inline is not None else None
        if defer is not None:
            if replace is not None:
                raise _Isolate  # a replacement is written on its own
            defer.append((row, inline_row))
            return learned
        if replace is not None:
            self._replace(conn, replace, row, study, keep_replaced, now)
        else:
            inserted = conn.execute(self._insert_instance, row).first()
            if inserted is None:
                raise InstanceExists(instance["sop_instance_uid"])
        if inline_row is not None:
            conn.execute(self._insert_inline, inline_row)
        return learned

    def _patient_key(
        self,
        conn: Connection,
        patient_ids: tuple[tuple[str, Issuer], ...],
        owner: Organisation | None,
        learned: dict,
    ) -> Identifier:
        """The canonical patient key (identity.patients.resolve_identity), cached
        once committed: a known key never changes (merges move persons, not keys)."""
        cache_key = ("identity", owner.pk if owner is not None else None, patient_ids)
        hit = self._known.get(cache_key) or self._batch_known().get(cache_key)
        if hit is not None:
            return hit
        (value, issuer), others = patient_ids[0], patient_ids[1:]
        resolved = resolve_identity(conn, value, issuer, others, owner)
        if not resolved.linked and not resolved.flagged and not resolved.conflicts:
            learned[cache_key] = resolved.identifier
        return resolved.identifier

    def _same_person(self, conn: Connection, a: Identifier, b: Identifier) -> bool:
        first, second = person_of(conn, a), person_of(conn, b)
        if first is None or second is None:
            return False
        return current_person(conn, first) == current_person(conn, second)

    def _patient_mismatch(
        self,
        conn: Connection,
        owner_pk: int | None,
        patient: dict[str, Any],
        study: dict[str, Any],
        instance: dict[str, Any],
        accept: bool,
        now: datetime,
    ) -> None:
        """Same Study Instance UID, another patient: reject, or file it and report."""
        owner = conn.execute(
            select(patients.c.patient_id, patients.c.issuer_of_patient_id).where(patients.c.pk == owner_pk)
        ).one()
        if self._same_person(
            conn,
            Identifier(owner.patient_id, owner.issuer_of_patient_id),
            Identifier(patient["patient_id"], patient["issuer_of_patient_id"]),
        ):
            return  # one person under two organisations' IDs: file with the study as it is
        if not accept:
            raise PatientConflict(owner.patient_id, owner.issuer_of_patient_id)
        conn.execute(
            insert(conflicts).values(
                kind="patient-mismatch",
                study_instance_uid=study["study_instance_uid"],
                sop_instance_uid=instance["sop_instance_uid"],
                detail=(
                    f"study is filed under Patient ID {owner.patient_id!r}; "
                    f"instance says {patient['patient_id']!r}"
                ),
                action="filed-under-existing-patient",
                detected_at=now,
            )
        )

    def _replace(
        self,
        conn: Connection,
        replace: StoredInstance,
        row: dict[str, Any],
        study: dict[str, Any],
        keep_replaced: bool,
        now: datetime,
    ) -> None:
        """Put a new object under an existing SOP Instance UID (keep-new / keep-both)."""
        if keep_replaced:
            conn.execute(
                insert(superseded_instances).values(
                    sop_instance_uid=replace.sop_instance_uid,
                    blob_key=replace.blob_key,
                    size=replace.size,
                    sha256=replace.sha256,
                    transfer_syntax_uid=replace.transfer_syntax_uid,
                    stored_at=now,
                    superseded_at=now,
                )
            )
        conn.execute(
            insert(conflicts).values(
                kind="duplicate-sop-instance",
                study_instance_uid=study["study_instance_uid"],
                sop_instance_uid=replace.sop_instance_uid,
                detail=f"different object received (sha256 {replace.sha256[:12]}… replaced)",
                action="kept-both" if keep_replaced else "kept-new",
                detected_at=now,
            )
        )
        changed = conn.execute(
            update(instances)
            .where(instances.c.pk == replace.pk, instances.c.sha256 == replace.sha256)
            .values(**row)
        ).rowcount
        if changed != 1:
            raise InstanceExists(replace.sop_instance_uid)

    # --- the write-back journal (schema.inline_blobs) ---------------------------

    def inline_data(self, key: str) -> bytes | None:
        with self.engine.connect() as conn:
            return conn.execute(select(inline_blobs.c.data).where(inline_blobs.c.key == key)).scalar()

    def inline_batch(self, limit: int) -> list[tuple[str, datetime, bytes]]:
        """The oldest journalled objects (key, stored_at, data), oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(inline_blobs.c.key, inline_blobs.c.stored_at, inline_blobs.c.data)
                .order_by(inline_blobs.c.seq)
                .limit(limit)
            )
            return [(row.key, row.stored_at, row.data) for row in rows]

    @contextmanager
    def claim_inline(self, limit: int) -> Iterator[tuple[list[tuple[str, datetime, bytes]], Any]]:
        """Several processes on one PostgreSQL: the oldest journalled objects no
        other process is moving, locked for one transaction (``SELECT ... FOR
        UPDATE SKIP LOCKED``), and a ``relocate(moves)`` that commits their move
        in that same transaction. A process that dies meanwhile loses its
        connection, PostgreSQL rolls back and releases the rows, and another
        process moves them. Yields ([(key, stored_at, data)], relocate)."""
        with self._write() as conn:
            rows = conn.execute(
                select(inline_blobs.c.key, inline_blobs.c.stored_at, inline_blobs.c.data)
                .order_by(inline_blobs.c.seq)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            yield [(row.key, row.stored_at, row.data) for row in rows], partial(self._relocate, conn)

    def inline_backlog(self) -> tuple[int, int]:
        """(objects, bytes) waiting in the journal."""
        with self.engine.connect() as conn:
            count, size = conn.execute(
                select(func.count(), func.coalesce(func.sum(func.length(inline_blobs.c.data)), 0))
            ).one()
        return int(count), int(size)

    def relocate(self, moves: Sequence[tuple[str, str]]) -> list[str]:
        """Point the rows naming each journal key at its new blob key and drop the
        journal copies, in one transaction; return the new keys nothing names
        (their objects were replaced meanwhile, so the caller deletes them)."""
        with self._write() as conn:
            return self._relocate(conn, moves)

    def _relocate(self, conn: Connection, moves: Sequence[tuple[str, str]]) -> list[str]:
        unreferenced = []
        for old, new in moves:
            named = 0
            for table in (instances, superseded_instances):
                named += conn.execute(update(table).where(table.c.blob_key == old).values(blob_key=new)).rowcount
            conn.execute(delete(inline_blobs).where(inline_blobs.c.key == old))
            if not named and not self._names(conn, new):
                # replaced meanwhile (and not moved to the same key by another mover)
                unreferenced.append(new)
        return unreferenced

    @staticmethod
    def _names(conn: Connection, key: str) -> bool:
        return any(
            conn.execute(select(table.c.pk).where(table.c.blob_key == key).limit(1)).first() is not None
            for table in (instances, superseded_instances)
        )

    def delete_inline(self, key: str) -> None:
        with self._write() as conn:
            conn.execute(delete(inline_blobs).where(inline_blobs.c.key == key))

    def blob_key_of(self, pk: int) -> str | None:
        """The current blob key of instance ``pk`` (it changes when the journal moves it)."""
        with self.engine.connect() as conn:
            return conn.execute(select(instances.c.blob_key).where(instances.c.pk == pk)).scalar()

    # --- conflicts, nodes, state -------------------------------------------------

    def conflicts(self, limit: int = 100) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(conflicts).order_by(conflicts.c.pk.desc()).limit(limit))
            return [dict(r._mapping) for r in rows]

    def nodes(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(nodes).order_by(nodes.c.aet))]

    def add_node(self, aet: str, host: str, port: int, description: str = "") -> None:
        with self._write() as conn:
            conn.execute(delete(nodes).where(nodes.c.aet == aet))
            conn.execute(insert(nodes).values(aet=aet, host=host, port=port, description=description))

    def remove_node(self, aet: str) -> bool:
        with self._write() as conn:
            return conn.execute(delete(nodes).where(nodes.c.aet == aet)).rowcount > 0

    def state(self, key: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(select(archive_state.c.value).where(archive_state.c.key == key)).scalar()

    def set_state(self, key: str, value: str) -> None:
        with self._write() as conn:
            conn.execute(
                self._insert(archive_state)
                .values(key=key, value=value)
                .on_conflict_do_update(index_elements=["key"], set_={"value": value})
            )

    # --- prepared WADO-RS metadata (metadata_schema.instance_json) ---------------

    def unprepared_instances(self, after_pk: int, limit: int) -> tuple[list[Any], int]:
        """Up to ``limit`` instances above primary key ``after_pk`` whose metadata is
        not prepared for their current object (no row, or one of a replaced
        object), oldest first, as rows of (pk, sha256, study_instance_uid,
        series_instance_uid, sop_instance_uid, metadata); and the primary key up
        to which every instance was looked at (the next call's ``after_pk``)."""
        with self.engine.connect() as conn:
            top = conn.execute(select(func.max(instances.c.pk))).scalar() or 0
            rows = conn.execute(
                select(
                    instances.c.pk,
                    instances.c.sha256,
                    studies.c.study_instance_uid,
                    series.c.series_instance_uid,
                    instances.c.sop_instance_uid,
                    instances.c.metadata,
                )
                .select_from(instances_with_parents())
                .outerjoin(
                    instance_json,
                    (instance_json.c.instance_pk == instances.c.pk) & (instance_json.c.sha256 == instances.c.sha256),
                )
                .where(instances.c.pk > after_pk, instances.c.pk <= top, instance_json.c.instance_pk.is_(None))
                .order_by(instances.c.pk)
                .limit(limit)
            ).all()
        return rows, (rows[-1].pk if len(rows) >= limit else max(top, after_pk))

    def save_instance_json(self, rows: Sequence[tuple[int, str, bytes]]) -> None:
        """Insert or overwrite prepared metadata rows of (instance pk, sha256, data);
        rows of instances deleted meanwhile are skipped (the foreign key)."""
        if not rows:
            return
        statement = self._insert(instance_json)
        statement = statement.on_conflict_do_update(
            index_elements=["instance_pk"],
            set_={"sha256": statement.excluded.sha256, "data": statement.excluded.data},
        )
        with self._write() as conn:
            existing = set(
                conn.execute(
                    select(instances.c.pk).where(instances.c.pk.in_([pk for pk, _sha, _data in rows]))
                ).scalars()
            )
            values = [{"instance_pk": pk, "sha256": sha, "data": data} for pk, sha, data in rows if pk in existing]
            if values:
                conn.execute(statement, values)

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            result = {
                name: conn.execute(select(func.count()).select_from(table)).scalar_one()
                for name, table in (
                    ("patients", patients),
                    ("studies", studies),
                    ("series", series),
                    ("instances", instances),
                    ("conflicts", conflicts),
                )
            }
            result["bytes"] = int(conn.execute(select(func.coalesce(func.sum(instances.c.size), 0))).scalar_one())
        return result
