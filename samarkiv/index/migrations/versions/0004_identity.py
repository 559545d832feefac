"""identity: organisations, their AE titles, and the master patient index

Tables of samarkiv/index/identity_schema.py: organisations,
organisation_aets, persons, patient_identifiers (with national number
validity), identity_history (links and merges, reversible).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "organisations",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("issuer_of_patient_id", sa.String(length=64), nullable=True),
        sa.Column("issuer_ueid", sa.String(length=64), nullable=True),
        sa.Column("issuer_ueid_type", sa.String(length=16), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("code"),
    )
    op.create_table(
        "organisation_aets",
        sa.Column("aet", sa.String(length=16), nullable=False),
        sa.Column("organisation_pk", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["organisation_pk"], ["organisations.pk"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("aet"),
    )
    op.create_index("ix_organisation_aets_org", "organisation_aets", ["organisation_pk"])
    op.create_table(
        "persons",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("merged_into_pk", sa.Integer(), nullable=True),
        sa.Column("birth_date", sa.String(length=8), nullable=True),
        sa.Column("sex", sa.String(length=16), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["merged_into_pk"], ["persons.pk"]),
        sa.PrimaryKeyConstraint("pk"),
    )
    op.create_table(
        "patient_identifiers",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("value", sa.String(length=64), nullable=False),
        sa.Column("issuer", sa.String(length=64), nullable=False),
        sa.Column("person_pk", sa.Integer(), nullable=True),
        sa.Column("organisation_pk", sa.Integer(), nullable=True),
        sa.Column("national_kind", sa.String(length=32), nullable=True),
        sa.Column("national_normalised", sa.String(length=16), nullable=True),
        sa.Column("national_valid", sa.Boolean(), nullable=True),
        sa.Column("national_reason", sa.Text(), nullable=True),
        sa.Column("pinned", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("seen_with_pk", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["organisation_pk"], ["organisations.pk"]),
        sa.ForeignKeyConstraint(["person_pk"], ["persons.pk"]),
        sa.ForeignKeyConstraint(["seen_with_pk"], ["patient_identifiers.pk"]),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("value", "issuer", name="uq_patient_identifiers_value_issuer"),
    )
    op.create_index("ix_patient_identifiers_person", "patient_identifiers", ["person_pk"])
    op.create_index(
        "ix_patient_identifiers_national", "patient_identifiers", ["national_kind", "national_normalised"]
    )
    op.create_table(
        "identity_history",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("identifier_pk", sa.Integer(), nullable=True),
        sa.Column("from_person_pk", sa.Integer(), nullable=True),
        sa.Column("to_person_pk", sa.Integer(), nullable=True),
        sa.Column("detail", sa.Text(), server_default="", nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.Text(), server_default="", nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reverted_by_pk", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("pk"),
    )
    op.create_index("ix_identity_history_from", "identity_history", ["from_person_pk"])
    op.create_index("ix_identity_history_to", "identity_history", ["to_person_pk"])
    op.create_index("ix_identity_history_identifier", "identity_history", ["identifier_pk"])


def downgrade() -> None:
    op.drop_table("identity_history")
    op.drop_table("patient_identifiers")
    op.drop_table("persons")
    op.drop_table("organisation_aets")
    op.drop_table("organisations")
