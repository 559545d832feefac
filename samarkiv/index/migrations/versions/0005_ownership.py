"""ownership: the organisation that produced each instance

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("org_pk", sa.Integer(), nullable=True))
    op.create_index("ix_instances_org", "instances", ["org_pk"])


def downgrade() -> None:
    op.drop_index("ix_instances_org", "instances")
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("org_pk")
