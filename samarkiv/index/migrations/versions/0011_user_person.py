"""users.person_pk: a patient user's own person in the master patient index
(samarkiv/index/access_schema.py)

Revision ID: 0011_user_person
Revises: 0010_policy
"""

import sqlalchemy as sa
from alembic import op

revision = "0011_user_person"
down_revision = "0010_policy"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite adds a nullable column with its reference in place. Batch mode
        # would copy the table and drop the old one, whose implicit DELETE
        # (foreign_keys=ON) would cascade to api_tokens and sessions.
        op.execute("ALTER TABLE users ADD COLUMN person_pk INTEGER REFERENCES persons (pk)")
    else:
        op.add_column("users", sa.Column("person_pk", sa.Integer(), sa.ForeignKey("persons.pk"), nullable=True))


def downgrade() -> None:
    op.drop_column("users", "person_pk")  # SQLite >= 3.35 drops it in place
