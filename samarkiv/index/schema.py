"""The SQL catalogue: patients, studies, series and instances.

Columns hold every attribute that C-FIND (PS3.4 C.6.1.1 / C.6.2.1) and QIDO-RS
(PS3.18 Table 10.6.1-5) must match, plus the common optional ones. Person
names are also kept upper-cased in ``*_norm`` columns so that matching can be
case-insensitive (PS3.4 C.2.2.2.1). Strings are stored as received, dates as
``YYYYMMDD`` and times as ``HHMMSS.ffffff``, so range matching is a string
comparison. Counts (instances per series, ...) are computed by aggregate
queries, never cached, so they stay right with several writers.
"""

from __future__ import annotations

from sqlalchemy import (
    Join,
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

# PS3.5 Table 6.2-1 maximum lengths: UI 64, LO 64, SH 16, CS 16, PN 64 per group.
UID = String(64)
LO = String(64)
SH = String(16)
CS = String(16)
PN = String(324)
DA = String(8)
TM = String(16)

patients = Table(
    "patients",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("patient_id", LO, nullable=False),
    Column("issuer_of_patient_id", LO, nullable=False, server_default=""),
    Column("patient_name", PN),
    Column("patient_name_norm", PN),
    Column("patient_birth_date", DA),
    Column("patient_sex", CS),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("patient_id", "issuer_of_patient_id", name="uq_patients_id_issuer"),
)
Index("ix_patients_name_norm", patients.c.patient_name_norm)
# Wildcard matching (PS3.4 C.2.2.2.4) is LIKE 'prefix%' on PostgreSQL, which uses
# a plain index only under the C collation; SQLite's GLOB uses the plain ones.
Index(
    "ix_patients_name_norm_pattern",
    patients.c.patient_name_norm,
    postgresql_ops={"patient_name_norm": "varchar_pattern_ops"},
).ddl_if(dialect="postgresql")
Index(
    "ix_patients_id_pattern", patients.c.patient_id, postgresql_ops={"patient_id": "varchar_pattern_ops"}
).ddl_if(dialect="postgresql")

studies = Table(
    "studies",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("patient_pk", ForeignKey("patients.pk"), nullable=False),
    Column("study_instance_uid", UID, nullable=False, unique=True),
    Column("study_date", DA),
    Column("study_time", TM),
    Column("accession_number", SH),
    Column("study_id", SH),
    Column("study_description", LO),
    Column("referring_physician_name", PN),
    Column("referring_physician_name_norm", PN),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
Index("ix_studies_patient", studies.c.patient_pk)
Index("ix_studies_date", studies.c.study_date)
Index("ix_studies_accession", studies.c.accession_number)
Index(
    "ix_studies_accession_pattern",
    studies.c.accession_number,
    postgresql_ops={"accession_number": "varchar_pattern_ops"},
).ddl_if(dialect="postgresql")

series = Table(
    "series",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("study_pk", ForeignKey("studies.pk"), nullable=False),
    Column("series_instance_uid", UID, nullable=False, unique=True),
    Column("modality", CS),
    Column("series_number", Integer),
    Column("series_description", LO),
    Column("series_date", DA),
    Column("series_time", TM),
    Column("body_part_examined", CS),
    Column("station_name", SH),
    Column("institution_name", LO),
    Column("performed_procedure_step_start_date", DA),
    Column("performed_procedure_step_start_time", TM),
    Column("scheduled_procedure_step_id", SH),
    Column("requested_procedure_id", SH),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
Index("ix_series_study", series.c.study_pk)
Index("ix_series_modality", series.c.modality)

instances = Table(
    "instances",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("series_pk", ForeignKey("series.pk"), nullable=False),
    Column("sop_instance_uid", UID, nullable=False, unique=True),
    Column("sop_class_uid", UID, nullable=False),
    Column("instance_number", Integer),
    Column("content_date", DA),
    Column("content_time", TM),
    Column("number_of_frames", Integer),
    Column("rows", Integer),
    Column("columns", Integer),
    Column("transfer_syntax_uid", UID, nullable=False),
    Column("blob_key", String(255), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("source_aet", String(16)),
    # The organisation that produced the object (identity_schema.organisations)
    Column("org_pk", Integer),
    Column("stored_at", DateTime(timezone=True), nullable=False),
    # The Part 10 header without bulk data (elements over 64 KiB), zlib-compressed;
    # answers return keys that have no column of their own.
    Column("metadata", LargeBinary),
)
# lookups by series use ix_instances_series_org (policy_schema.py)
Index("ix_instances_stored_at", instances.c.stored_at)
Index("ix_instances_blob_key", instances.c.blob_key)
Index("ix_instances_org", instances.c.org_pk)  # the journal mover and the sweeps look up by key

# Earlier versions of an instance kept under the keep-both duplicate policy.
superseded_instances = Table(
    "superseded_instances",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("sop_instance_uid", UID, nullable=False),
    Column("blob_key", String(255), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("transfer_syntax_uid", UID, nullable=False),
    Column("stored_at", DateTime(timezone=True), nullable=False),
    Column("superseded_at", DateTime(timezone=True), nullable=False),
)
Index("ix_superseded_sop", superseded_instances.c.sop_instance_uid)
Index("ix_superseded_blob_key", superseded_instances.c.blob_key)

def instances_with_parents() -> Join:
    """instances joined to their series and study (the join most lookups need)."""
    return instances.join(series, instances.c.series_pk == series.c.pk).join(
        studies, series.c.study_pk == studies.c.pk
    )


# The write-back journal of small objects (docs/architecture.md, "A store"):
# an object up to ``inline_max_bytes`` is made durable in the same transaction
# as its index rows (one sync instead of three), under a ``db/`` blob key, and
# moved to the blob store in the background, which then renames the key.
inline_blobs = Table(
    "inline_blobs",
    metadata,
    Column("seq", Integer, primary_key=True),  # arrival order: the mover takes the oldest
    Column("key", String(64), nullable=False, unique=True),
    Column("stored_at", DateTime(timezone=True), nullable=False),
    Column("data", LargeBinary, nullable=False),  # last: SQLite reads the others without it
)

# Problems found while storing (patient/study mismatch, replaced duplicates).
conflicts = Table(
    "conflicts",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("study_instance_uid", UID),
    Column("sop_instance_uid", UID),
    Column("detail", Text, nullable=False),
    Column("action", String(32), nullable=False),
    Column("detected_at", DateTime(timezone=True), nullable=False),
)

# DICOM peers added with ``samarkiv nodes add`` (the config file may add more).
nodes = Table(
    "nodes",
    metadata,
    Column("aet", String(16), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("port", Integer, nullable=False),
    Column("description", Text, nullable=False, server_default=""),
)

# Small key/value facts about the archive itself (e.g. the orphan-sweep watermark).
archive_state = Table(
    "archive_state",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)
