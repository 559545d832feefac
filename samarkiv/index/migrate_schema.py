"""Tables of migration jobs (samarkiv/migrate/): the plan and the progress live in the index.

They share ``metadata`` with index/schema.py; migration 0005_migrate creates them.

- ``migration_jobs``: one named job, its source and options (JSON), and state.
- ``migration_studies``: the studies the source holds (from C-FIND/QIDO or a
  folder walk), each with its own state, so a rerun resumes where it stopped.
- ``migration_instances``: the instances expected per study (the plan at
  SERIES/IMAGE level) with what became of each: pending, migrated, present
  (already in the archive when planned), failed or mismatched, and why.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, DateTime, ForeignKey, Index, Integer, String, Table, Text, UniqueConstraint, false

from .schema import DA, UID, metadata

migration_jobs = Table(
    "migration_jobs",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("source_kind", String(16), nullable=False),
    Column("options", Text, nullable=False),
    Column("state", String(16), nullable=False),
    Column("enumerated", Boolean, nullable=False, server_default=false()),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

migration_studies = Table(
    "migration_studies",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("job_pk", Integer, ForeignKey("migration_jobs.pk", ondelete="CASCADE"), nullable=False),
    Column("study_instance_uid", UID, nullable=False),
    Column("study_date", DA),
    Column("source_ref", Text),
    Column("state", String(16), nullable=False),
    Column("planned", Boolean, nullable=False, server_default=false()),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("message", Text),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("job_pk", "study_instance_uid", name="uq_migration_studies_job_study"),
)
Index("ix_migration_studies_job_state", migration_studies.c.job_pk, migration_studies.c.state)

migration_instances = Table(
    "migration_instances",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("job_pk", Integer, ForeignKey("migration_jobs.pk", ondelete="CASCADE"), nullable=False),
    Column("study_pk", Integer, ForeignKey("migration_studies.pk", ondelete="CASCADE"), nullable=False),
    Column("series_instance_uid", UID, nullable=False),
    Column("sop_instance_uid", UID, nullable=False),
    Column("sop_class_uid", UID),
    Column("source_ref", Text),
    Column("state", String(16), nullable=False),
    Column("size", BigInteger),
    Column("source_sha256", String(64)),
    Column("reason", Text),
    UniqueConstraint("job_pk", "sop_instance_uid", name="uq_migration_instances_job_sop"),
)
Index("ix_migration_instances_study", migration_instances.c.study_pk)
