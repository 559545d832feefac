"""instance_json: prepared WADO-RS metadata per instance (samarkiv/index/metadata_schema.py)

Revision ID: 0007_instance_json
Revises: 0006_hl7
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_instance_json"
down_revision = "0006_hl7"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "instance_json",
        sa.Column("instance_pk", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["instance_pk"], ["instances.pk"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("instance_pk"),
    )


def downgrade() -> None:
    op.drop_table("instance_json")
