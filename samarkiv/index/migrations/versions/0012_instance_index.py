"""Drop ix_instances_series: ix_instances_series_org (series_pk, org_pk) serves
every lookup by series, and each index is one more page a store writes.

Revision ID: 0012_instance_index
Revises: 0011_user_person
"""

from alembic import op

revision = "0012_instance_index"
down_revision = "0011_user_person"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_instances_series", "instances")


def downgrade() -> None:
    op.create_index("ix_instances_series", "instances", ["series_pk"])
