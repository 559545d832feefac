"""inline blobs: the write-back journal of small objects; blob-key indexes

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "inline_blobs",
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("key"),
    )
    op.create_index("ix_instances_blob_key", "instances", ["blob_key"])
    op.create_index("ix_superseded_blob_key", "superseded_instances", ["blob_key"])


def downgrade() -> None:
    op.drop_index("ix_superseded_blob_key", "superseded_instances")
    op.drop_index("ix_instances_blob_key", "instances")
    op.drop_table("inline_blobs")
