"""Tables of storage tiers and lifecycle (samarkiv/lifecycle/): jobs, copies,
originals of compressed objects, fixity events and study access times.

Which tier holds an object is told by its blob key (``long:2026/...`` is on
the tier ``long``; unprefixed keys are on the first tier), so no column of
``instances`` changes when an object moves except ``blob_key`` itself.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, Index, Integer, String, Table, Text, UniqueConstraint

from .schema import UID, metadata

# One move/copy/delete of one instance's object under one rule. Planning
# inserts jobs idempotently (the unique key); a worker claims pending jobs
# (PostgreSQL: FOR UPDATE SKIP LOCKED; SQLite: the single-writer lock), and a
# claim whose lease ran out (a killed process) is taken over by another.
lifecycle_jobs = Table(
    "lifecycle_jobs",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("rule", String(64), nullable=False),
    Column("action", String(16), nullable=False),  # move | copy | delete
    Column("instance_pk", Integer, nullable=False),
    Column("source_key", String(255), nullable=False),
    Column("target_tier", String(32)),
    Column("target_key", String(255)),  # chosen before the copy is written (resumable)
    Column("compress", String(64)),  # transfer syntax UID to compress to, if any
    # pending -> claimed -> (committed ->) done | skipped | failed
    Column("state", String(16), nullable=False),
    Column("claimed_by", String(128)),
    Column("claimed_at", DateTime(timezone=True)),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("bytes_before", BigInteger),
    Column("bytes_after", BigInteger),
    Column("detail", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    UniqueConstraint("rule", "instance_pk", "source_key", name="uq_lifecycle_jobs_rule_instance_key"),
)
Index("ix_lifecycle_jobs_state", lifecycle_jobs.c.state, lifecycle_jobs.c.pk)

# Second copies of an instance's object on other tiers (a ``copy`` rule, e.g.
# a replica at another site); fixity repairs from them.
lifecycle_copies = Table(
    "lifecycle_copies",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("instance_pk", Integer, nullable=False),
    Column("tier", String(32), nullable=False),
    Column("blob_key", String(255), nullable=False, unique=True),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("instance_pk", "tier", name="uq_lifecycle_copies_instance_tier"),
)

# What an instance was before lossless compression on its way to a long tier:
# its transfer syntax is served again by transcoding (core/transcode.py).
lifecycle_originals = Table(
    "lifecycle_originals",
    metadata,
    Column("instance_pk", Integer, primary_key=True),
    Column("sop_instance_uid", UID, nullable=False),
    Column("transfer_syntax_uid", UID, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("compressed_at", DateTime(timezone=True), nullable=False),
)

# Problems found by the fixity job (and one row per completed pass); the audit
# trail will take these over.
fixity_events = Table(
    "fixity_events",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    # corrupt | missing | repaired | unrepairable | pass
    Column("outcome", String(16), nullable=False),
    Column("instance_pk", Integer),
    Column("sop_instance_uid", UID),
    Column("tier", String(32)),
    Column("blob_key", String(255)),
    Column("expected_sha256", String(64)),
    Column("actual_sha256", String(64)),
    Column("detail", Text),
)
Index("ix_fixity_events_at", fixity_events.c.at)

# When a study was last read (at most one update per study per hour).
study_access = Table(
    "study_access",
    metadata,
    Column("study_instance_uid", UID, primary_key=True),
    Column("last_access_at", DateTime(timezone=True), nullable=False),
)
