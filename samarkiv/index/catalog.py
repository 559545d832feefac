"""Writes and lookups on the catalogue that the core needs (queries live in query.py)."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, String, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from .schema import (
    archive_state,
    conflicts,
    instances,
    nodes,
    patients,
    series,
    studies,
    superseded_instances,
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _clip(table, values: dict[str, Any]) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Cut over-long strings to the column's length (non-conformant senders exist)."""
    out = {}
    for key, value in values.items():
        column_type = table.c[key].type
        if isinstance(value, str) and isinstance(column_type, String) and column_type.length:
            value = value[: column_type.length]
        out[key] = value
    return out


class PatientConflict(Exception):
    """The study is already filed under another patient."""

    def __init__(self, existing_patient_id: str, existing_issuer: str) -> None:
        super().__init__(existing_patient_id)
        self.existing_patient_id = existing_patient_id
        self.existing_issuer = existing_issuer


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


def stored_instances_select():  # type: ignore[no-untyped-def]
    """SELECT of StoredInstance columns, joined up to the study."""
    return (
        select(*_STORED_COLUMNS)
        .select_from(instances)
        .join(series, instances.c.series_pk == series.c.pk)
        .join(studies, series.c.study_pk == studies.c.pk)
    )


class Catalog:
    """The index as the core sees it. All methods are safe to call from many threads."""

    def __init__(self, engine: Engine, writer: Engine | None = None) -> None:
        self.engine = engine
        self.writer = writer or engine
        # (table, key...) -> (pk, parent pk) of patient/study/series rows known
        # to be committed; saves three lookups per stored instance.
        self._known: dict[tuple, tuple[int, int | None]] = {}
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

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
        """Insert the row if absent (first writer wins), return the existing row."""
        where = [table.c[k] == v for k, v in key.items()]
        row = conn.execute(select(table).where(*where)).first()
        if row is None:
            conn.execute(
                self._insert(table).values(**_clip(table, {**key, **values})).on_conflict_do_nothing()
            )
            row = conn.execute(select(table).where(*where)).first()
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
    ) -> None:
        """Commit the index rows of one instance in one transaction.

        Raises PatientConflict (nothing written) when the study belongs to
        another patient and conflicts are not accepted, InstanceExists when the
        SOP Instance UID is taken and ``replace`` is not given.
        """
        args = (patient, study, series_values, instance, accept_patient_conflict, replace, keep_replaced)
        try:
            learned = self._add_instance(*args)
        except IntegrityError:
            # A cached patient/study/series row is gone (deleted or merged by
            # another process): forget what we know and try once more.
            self._known.clear()
            learned = self._add_instance(*args)
        if len(self._known) > 100_000:
            self._known.clear()
        self._known.update(learned)

    def _parent_pk(
        self, conn: Connection, table, key: dict[str, Any], values: dict[str, Any], learned: dict
    ) -> tuple[int, int | None]:  # type: ignore[no-untyped-def]
        """(pk, parent pk) of the row with ``key``, inserted if absent; cached after commit."""
        cache_key = (table.name, *key.values())
        hit = self._known.get(cache_key)
        if hit is not None:
            return hit
        row = self._upsert_key(conn, table, key, values)
        parent = getattr(row, "patient_pk", None) if table is studies else None
        learned[cache_key] = (row.pk, parent)
        return row.pk, parent

    def _add_instance(
        self,
        patient: dict[str, Any],
        study: dict[str, Any],
        series_values: dict[str, Any],
        instance: dict[str, Any],
        accept_patient_conflict: bool,
        replace: StoredInstance | None,
        keep_replaced: bool,
    ) -> dict:
        now = utcnow()
        learned: dict = {}
        instance = dict(instance)
        header = instance.pop("header", None)
        with self.writer.begin() as conn:
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
                self._patient_mismatch(conn, owner_pk, patient, study, instance, accept_patient_conflict, now)
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
            if replace is not None:
                self._replace(conn, replace, row, study, keep_replaced, now)
            else:
                inserted = conn.execute(
                    self._insert(instances)
                    .values(**row)
                    .on_conflict_do_nothing(index_elements=["sop_instance_uid"])
                    .returning(instances.c.pk)
                ).first()
                if inserted is None:
                    raise InstanceExists(instance["sop_instance_uid"])
        return learned

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

    # --- conflicts, nodes, state -------------------------------------------------

    def conflicts(self, limit: int = 100) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(conflicts).order_by(conflicts.c.pk.desc()).limit(limit))
            return [dict(r._mapping) for r in rows]

    def nodes(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(nodes).order_by(nodes.c.aet))]

    def add_node(self, aet: str, host: str, port: int, description: str = "") -> None:
        with self.writer.begin() as conn:
            conn.execute(delete(nodes).where(nodes.c.aet == aet))
            conn.execute(insert(nodes).values(aet=aet, host=host, port=port, description=description))

    def remove_node(self, aet: str) -> bool:
        with self.writer.begin() as conn:
            return conn.execute(delete(nodes).where(nodes.c.aet == aet)).rowcount > 0

    def state(self, key: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(select(archive_state.c.value).where(archive_state.c.key == key)).scalar()

    def set_state(self, key: str, value: str) -> None:
        with self.writer.begin() as conn:
            conn.execute(
                self._insert(archive_state)
                .values(key=key, value=value)
                .on_conflict_do_update(index_elements=["key"], set_={"value": value})
            )

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
