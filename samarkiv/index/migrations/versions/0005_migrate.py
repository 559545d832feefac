"""migrate: migration jobs, their planned studies and instances

Tables of samarkiv/index/migrate_schema.py.

Revision ID: 0005_migrate
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_migrate"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "migration_jobs",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("source_kind", sa.String(length=16), nullable=False),
        sa.Column("options", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("enumerated", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "migration_studies",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("job_pk", sa.Integer(), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("study_date", sa.String(length=8), nullable=True),
        sa.Column("source_ref", sa.Text(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("planned", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_pk"], ["migration_jobs.pk"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("job_pk", "study_instance_uid", name="uq_migration_studies_job_study"),
    )
    op.create_index("ix_migration_studies_job_state", "migration_studies", ["job_pk", "state"])
    op.create_table(
        "migration_instances",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("job_pk", sa.Integer(), nullable=False),
        sa.Column("study_pk", sa.Integer(), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=True),
        sa.Column("source_ref", sa.Text(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("source_sha256", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["job_pk"], ["migration_jobs.pk"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["study_pk"], ["migration_studies.pk"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("job_pk", "sop_instance_uid", name="uq_migration_instances_job_sop"),
    )
    op.create_index("ix_migration_instances_study", "migration_instances", ["study_pk"])


def downgrade() -> None:
    op.drop_index("ix_migration_instances_study", "migration_instances")
    op.drop_table("migration_instances")
    op.drop_index("ix_migration_studies_job_state", "migration_studies")
    op.drop_table("migration_studies")
    op.drop_table("migration_jobs")
