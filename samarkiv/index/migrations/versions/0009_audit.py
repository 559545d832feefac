"""the append-only, hash-chained audit trail (samarkiv/index/audit_schema.py)

Revision ID: 0009_audit
Revises: 0008_access
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_audit"
down_revision = "0008_access"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("outcome_detail", sa.Text(), server_default="", nullable=False),
        sa.Column("principal_kind", sa.String(length=16), server_default="", nullable=False),
        sa.Column("user_name", sa.String(length=255), server_default="", nullable=False),
        sa.Column("user_pk", sa.Integer(), nullable=True),
        sa.Column("org_code", sa.String(length=64), nullable=True),
        sa.Column("roles", sa.String(length=255), server_default="", nullable=False),
        sa.Column("auth_method", sa.String(length=32), server_default="", nullable=False),
        sa.Column("address", sa.String(length=128), nullable=True),
        sa.Column("patient_keys", sa.String(length=255), server_default="", nullable=False),
        sa.Column("owner_org", sa.String(length=64), nullable=True),
        sa.Column("study_uid", sa.String(length=64), nullable=True),
        sa.Column("series_uid", sa.String(length=64), nullable=True),
        sa.Column("instance_uid", sa.String(length=64), nullable=True),
        sa.Column("object_count", sa.Integer(), nullable=True),
        sa.Column("purpose", sa.String(length=16), nullable=True),
        sa.Column("care_relationship", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), server_default="", nullable=False),
        sa.Column("detail", sa.Text(), server_default="", nullable=False),
        sa.Column("flagged", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("review_status", sa.String(length=16), nullable=True),
        sa.Column("review_note", sa.Text(), nullable=True),
        sa.Column("reviewed_by", sa.String(length=255), nullable=True),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_index("ix_audit_events_time", "audit_events", ["time"])
    op.create_index("ix_audit_events_review", "audit_events", ["review_status"])
    op.create_index("ix_audit_events_study", "audit_events", ["study_uid"])
    op.create_table(
        "audit_patients",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("patient_key", sa.Integer(), autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint("seq", "patient_key"),
    )
    op.create_index("ix_audit_patients_patient", "audit_patients", ["patient_key", "seq"])
    head = op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("anchor_seq", sa.BigInteger(), nullable=False),
        sa.Column("anchor_time", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(head, [{"id": 1, "seq": 0, "hash": "0" * 64, "anchor_seq": 0, "anchor_time": None}])
    op.create_table(
        "audit_anchors",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )


def downgrade() -> None:
    op.drop_table("audit_anchors")
    op.drop_table("audit_head")
    op.drop_index("ix_audit_patients_patient", table_name="audit_patients")
    op.drop_table("audit_patients")
    op.drop_index("ix_audit_events_study", table_name="audit_events")
    op.drop_index("ix_audit_events_review", table_name="audit_events")
    op.drop_index("ix_audit_events_time", table_name="audit_events")
    op.drop_table("audit_events")
