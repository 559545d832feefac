"""the access policy: care relationships, shares, share links, break-glass, patient blocks
(samarkiv/index/policy_schema.py)

Revision ID: 0010_policy
Revises: 0009_audit
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_policy"
down_revision = "0009_audit"
branch_labels = None
depends_on = None

_TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "care_relationships",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("person_pk", sa.Integer(), nullable=False),
        sa.Column("org_pk", sa.Integer(), nullable=False),
        sa.Column("user_pk", sa.Integer(), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), server_default="", nullable=False),
        sa.Column("created_by", sa.String(length=255), nullable=False),
        sa.Column("created_at", _TZ, nullable=False),
        sa.Column("expires_at", _TZ, nullable=True),
        sa.Column("ended_at", _TZ, nullable=True),
        sa.ForeignKeyConstraint(["person_pk"], ["persons.pk"]),
        sa.ForeignKeyConstraint(["org_pk"], ["organisations.pk"]),
        sa.ForeignKeyConstraint(["user_pk"], ["users.pk"]),
        sa.PrimaryKeyConstraint("pk"),
    )
    op.create_index("ix_care_relationships_person", "care_relationships", ["person_pk"])
    op.create_index("ix_care_relationships_org", "care_relationships", ["org_pk", "ended_at"])
    op.create_table(
        "shares",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("grantee_org_pk", sa.Integer(), nullable=True),
        sa.Column("grantee_user_pk", sa.Integer(), nullable=True),
        sa.Column("rights", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.Text(), server_default="", nullable=False),
        sa.Column("created_by", sa.String(length=255), nullable=False),
        sa.Column("created_at", _TZ, nullable=False),
        sa.Column("expires_at", _TZ, nullable=True),
        sa.Column("revoked_at", _TZ, nullable=True),
        sa.ForeignKeyConstraint(["grantee_org_pk"], ["organisations.pk"]),
        sa.ForeignKeyConstraint(["grantee_user_pk"], ["users.pk"]),
        sa.PrimaryKeyConstraint("pk"),
    )
    op.create_index("ix_shares_study", "shares", ["study_instance_uid"])
    op.create_index("ix_shares_org", "shares", ["grantee_org_pk"])
    op.create_index("ix_shares_user", "shares", ["grantee_user_pk"])
    op.create_table(
        "share_links",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("rights", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.Text(), server_default="", nullable=False),
        sa.Column("created_by", sa.String(length=255), nullable=False),
        sa.Column("created_at", _TZ, nullable=False),
        sa.Column("expires_at", _TZ, nullable=True),
        sa.Column("revoked_at", _TZ, nullable=True),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("token_sha256"),
    )
    op.create_table(
        "share_link_studies",
        sa.Column("link_pk", sa.Integer(), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["link_pk"], ["share_links.pk"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("link_pk", "study_instance_uid"),
    )
    op.create_table(
        "break_glass",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("user_name", sa.String(length=255), nullable=False),
        sa.Column("user_pk", sa.Integer(), nullable=True),
        sa.Column("org_pk", sa.Integer(), nullable=True),
        sa.Column("person_pk", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("started_at", _TZ, nullable=False),
        sa.Column("expires_at", _TZ, nullable=False),
        sa.Column("reviewed", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.ForeignKeyConstraint(["user_pk"], ["users.pk"]),
        sa.ForeignKeyConstraint(["org_pk"], ["organisations.pk"]),
        sa.ForeignKeyConstraint(["person_pk"], ["persons.pk"]),
        sa.PrimaryKeyConstraint("pk"),
    )
    op.create_index("ix_break_glass_user", "break_glass", ["user_name", "expires_at"])
    op.create_index("ix_break_glass_person", "break_glass", ["person_pk"])
    op.create_table(
        "patient_blocks",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("person_pk", sa.Integer(), nullable=False),
        sa.Column("blocked_org_pk", sa.Integer(), nullable=True),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.Text(), server_default="", nullable=False),
        sa.Column("created_by", sa.String(length=255), nullable=False),
        sa.Column("created_at", _TZ, nullable=False),
        sa.Column("revoked_at", _TZ, nullable=True),
        sa.ForeignKeyConstraint(["person_pk"], ["persons.pk"]),
        sa.ForeignKeyConstraint(["blocked_org_pk"], ["organisations.pk"]),
        sa.PrimaryKeyConstraint("pk"),
    )
    op.create_index("ix_patient_blocks_person", "patient_blocks", ["person_pk"])
    # The ownership test: EXISTS an instance of the study's series owned by the organisation.
    op.create_index("ix_instances_series_org", "instances", ["series_pk", "org_pk"])
    op.create_index("ix_persons_merged_into", "persons", ["merged_into_pk"])


def downgrade() -> None:
    op.drop_index("ix_persons_merged_into", table_name="persons")
    op.drop_index("ix_instances_series_org", table_name="instances")
    op.drop_index("ix_patient_blocks_person", table_name="patient_blocks")
    op.drop_table("patient_blocks")
    op.drop_index("ix_break_glass_person", table_name="break_glass")
    op.drop_index("ix_break_glass_user", table_name="break_glass")
    op.drop_table("break_glass")
    op.drop_table("share_link_studies")
    op.drop_table("share_links")
    op.drop_index("ix_shares_user", table_name="shares")
    op.drop_index("ix_shares_org", table_name="shares")
    op.drop_index("ix_shares_study", table_name="shares")
    op.drop_table("shares")
    op.drop_index("ix_care_relationships_org", table_name="care_relationships")
    op.drop_index("ix_care_relationships_person", table_name="care_relationships")
    op.drop_table("care_relationships")
