"""lifecycle: jobs, copies, originals of compressed objects, fixity events, study access

Tables of samarkiv/index/lifecycle_schema.py.

Revision ID: 0006_lifecycle
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_lifecycle"
down_revision = "0005_migrate"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lifecycle_jobs",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("rule", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("instance_pk", sa.Integer(), nullable=False),
        sa.Column("source_key", sa.String(length=255), nullable=False),
        sa.Column("target_tier", sa.String(length=32), nullable=True),
        sa.Column("target_key", sa.String(length=255), nullable=True),
        sa.Column("compress", sa.String(length=64), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("claimed_by", sa.String(length=128), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("bytes_before", sa.BigInteger(), nullable=True),
        sa.Column("bytes_after", sa.BigInteger(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("rule", "instance_pk", "source_key", name="uq_lifecycle_jobs_rule_instance_key"),
    )
    op.create_index("ix_lifecycle_jobs_state", "lifecycle_jobs", ["state", "pk"])
    op.create_table(
        "lifecycle_copies",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("instance_pk", sa.Integer(), nullable=False),
        sa.Column("tier", sa.String(length=32), nullable=False),
        sa.Column("blob_key", sa.String(length=255), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("blob_key"),
        sa.UniqueConstraint("instance_pk", "tier", name="uq_lifecycle_copies_instance_tier"),
    )
    op.create_table(
        "lifecycle_originals",
        sa.Column("instance_pk", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("transfer_syntax_uid", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("compressed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("instance_pk"),
    )
    op.create_table(
        "fixity_events",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("instance_pk", sa.Integer(), nullable=True),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("tier", sa.String(length=32), nullable=True),
        sa.Column("blob_key", sa.String(length=255), nullable=True),
        sa.Column("expected_sha256", sa.String(length=64), nullable=True),
        sa.Column("actual_sha256", sa.String(length=64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("pk"),
    )
    op.create_index("ix_fixity_events_at", "fixity_events", ["at"])
    op.create_table(
        "study_access",
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("last_access_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("study_instance_uid"),
    )


def downgrade() -> None:
    op.drop_table("study_access")
    op.drop_index("ix_fixity_events_at", table_name="fixity_events")
    op.drop_table("fixity_events")
    op.drop_table("lifecycle_originals")
    op.drop_table("lifecycle_copies")
    op.drop_index("ix_lifecycle_jobs_state", table_name="lifecycle_jobs")
    op.drop_table("lifecycle_jobs")
