"""hl7: demographics received over HL7 v2 ADT (samarkiv/hl7/demographics.py)

Revision ID: 0006_hl7
Revises: 0006_lifecycle
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_hl7"
down_revision = "0006_lifecycle"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hl7_demographics",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("identifier_pk", sa.Integer(), nullable=False),
        sa.Column("patient_name", sa.String(length=324), nullable=True),
        sa.Column("birth_date", sa.String(length=8), nullable=True),
        sa.Column("sex", sa.String(length=16), nullable=True),
        sa.Column("source", sa.String(length=128), nullable=False),
        sa.Column("event", sa.String(length=16), nullable=False),
        sa.Column("control_id", sa.String(length=199), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["identifier_pk"], ["patient_identifiers.pk"]),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("identifier_pk"),
    )


def downgrade() -> None:
    op.drop_table("hl7_demographics")
