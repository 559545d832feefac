"""Patient demographics received over HL7 v2 ADT (A01, A04, A08, A40).

Where they live: ``hl7_demographics`` holds, per patient identifier, what the
last ADT message said (name, birth date, sex, who sent it and when): the
identifier may not have reached the archive in any DICOM object yet, and the
catalogue has no row for it then. The catalogue's ``patients`` rows keyed by
the same (Patient ID, issuer) are updated as well, so C-FIND and QIDO-RS
answer with the registration system's current demographics (IHE Radiology
Patient Update, RAD-12); the stored DICOM objects are never rewritten.
A field the message left empty keeps its value; ``""`` deletes it.

The table is created by migration 0006_hl7 (index/migrations/versions).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Column, Connection, DateTime, ForeignKey, Integer, String, Table, insert, select, update

from ..index.schema import CS, DA, PN, metadata, patients
from .message import Demographics

hl7_demographics = Table(
    "hl7_demographics",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("identifier_pk", ForeignKey("patient_identifiers.pk"), nullable=False, unique=True),
    Column("patient_name", PN),
    Column("birth_date", DA),
    Column("sex", CS),
    Column("source", String(128), nullable=False),  # hl7:<sending application>^<sending facility>
    Column("event", String(16), nullable=False),  # e.g. ADT^A08
    Column("control_id", String(199), nullable=False),  # MSH-10 of the last message
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


def _changes(demographics: Demographics) -> dict[str, str | None]:
    """Column -> new value (None: delete) for the fields the message sent."""
    values = {"patient_name": demographics.name, "birth_date": demographics.birth_date, "sex": demographics.sex}
    return {column: value or None for column, value in values.items() if value is not None}


def record(
    conn: Connection,
    identifier_pk: int,
    value: str,
    issuer: str,
    demographics: Demographics,
    *,
    source: str,
    event: str,
    control_id: str,
) -> None:
    """Upsert the identifier's demographics and update its catalogue row."""
    now = datetime.now(UTC)
    changes = _changes(demographics)
    meta = {"source": source[:128], "event": event[:16], "control_id": control_id[:199], "updated_at": now}
    existing = conn.execute(
        select(hl7_demographics.c.pk).where(hl7_demographics.c.identifier_pk == identifier_pk)
    ).scalar()
    if existing is None:
        conn.execute(insert(hl7_demographics).values(identifier_pk=identifier_pk, **changes, **meta))
    else:
        conn.execute(update(hl7_demographics).where(hl7_demographics.c.pk == existing).values(**changes, **meta))
    if not changes:
        return
    catalogue: dict[str, object] = {"updated_at": now}
    if "patient_name" in changes:
        name = changes["patient_name"]
        catalogue["patient_name"] = name
        catalogue["patient_name_norm"] = name.upper() if name else None
    if "birth_date" in changes:
        catalogue["patient_birth_date"] = changes["birth_date"]
    if "sex" in changes:
        catalogue["patient_sex"] = changes["sex"]
    conn.execute(
        update(patients)
        .where(patients.c.patient_id == value, patients.c.issuer_of_patient_id == issuer)
        .values(**catalogue)
    )


def current(conn: Connection, identifier_pk: int) -> Demographics | None:
    """What ADT last said about an identifier (None: nothing)."""
    row = conn.execute(select(hl7_demographics).where(hl7_demographics.c.identifier_pk == identifier_pk)).first()
    if row is None:
        return None
    return Demographics(row.patient_name, row.birth_date, row.sex)
