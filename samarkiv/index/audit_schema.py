"""Tables of the append-only, hash-chained audit trail (samarkiv/audit/).

They share ``metadata`` with index/schema.py; migration 0009_audit creates them.

- ``audit_events``: one row per audited access. ``seq`` is dense and
  monotonic (1, 2, 3, ...); ``hash`` is SHA-256 over ``prev_hash`` and the
  canonical encoding of every other column except the review columns
  (samarkiv/audit/events.py). Review columns change when an auditor closes a
  review; the closing itself is a new (hashed) ``review`` record.
- ``audit_patients``: the patient keys (persons of the master patient index,
  identity_schema.persons) of each record, for lookups by patient; the same
  keys are inside the hashed record, and ``audit verify`` checks both agree.
- ``audit_head``: one row (``id`` 1), the chain's head. Every append locks it
  (an UPDATE first, so SQLite takes its write lock and PostgreSQL a row lock),
  which serialises appends across processes sharing one database.
- ``audit_anchors``: periodic anchors (seq, hash, time) of the chain.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, DateTime, Index, Integer, String, Table, Text, false

from .schema import UID, metadata

GENESIS_HASH = "0" * 64

audit_events = Table(
    "audit_events",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("time", DateTime(timezone=True), nullable=False),
    Column("action", String(32), nullable=False),
    Column("outcome", String(16), nullable=False),  # allowed, denied, error
    Column("outcome_detail", Text, nullable=False, server_default=""),
    # who
    Column("principal_kind", String(16), nullable=False, server_default=""),
    Column("user_name", String(255), nullable=False, server_default=""),
    Column("user_pk", Integer),
    Column("org_code", String(64)),
    Column("roles", String(255), nullable=False, server_default=""),  # sorted, comma-separated
    Column("auth_method", String(32), nullable=False, server_default=""),
    Column("address", String(128)),
    # what
    Column("patient_keys", String(255), nullable=False, server_default=""),  # sorted, comma-separated
    Column("owner_org", String(64)),  # the organisation owning the data, when known
    Column("study_uid", UID),
    Column("series_uid", UID),
    Column("instance_uid", UID),
    Column("object_count", Integer),
    # why
    Column("purpose", String(16)),  # HL7 v3 PurposeOfUse code: TREAT, ETREAT, PATRQT, ...
    Column("care_relationship", Integer),
    Column("reason", Text, nullable=False, server_default=""),
    Column("detail", Text, nullable=False, server_default=""),  # canonical JSON, or ""
    Column("flagged", Boolean, nullable=False, server_default=false()),
    # the chain
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    # review (not hashed: closing a review appends a ``review`` record)
    Column("review_status", String(16)),  # pending, closed
    Column("review_note", Text),
    Column("reviewed_by", String(255)),
    Column("reviewed_at", DateTime(timezone=True)),
)
Index("ix_audit_events_time", audit_events.c.time)
Index("ix_audit_events_review", audit_events.c.review_status)
Index("ix_audit_events_study", audit_events.c.study_uid)

audit_patients = Table(
    "audit_patients",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("patient_key", Integer, primary_key=True, autoincrement=False),
)
Index("ix_audit_patients_patient", audit_patients.c.patient_key, audit_patients.c.seq)

audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("anchor_seq", BigInteger, nullable=False),
    Column("anchor_time", DateTime(timezone=True)),
)

audit_anchors = Table(
    "audit_anchors",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", String(64), nullable=False),
    Column("time", DateTime(timezone=True), nullable=False),
)

__all__ = ["GENESIS_HASH", "audit_anchors", "audit_events", "audit_head", "audit_patients"]
