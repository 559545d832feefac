"""Tables of the access policy (samarkiv/access/policy.py); migration 0010_policy creates them.

They share ``metadata`` with index/schema.py. Times are UTC; a NULL
``expires_at`` never expires, a set ``ended_at``/``revoked_at`` ends a row
(rows are never deleted: they explain past audit records).

- ``care_relationships``: a person's care by an organisation (``user_pk``
  NULL: its whole staff) or by one of its users; from a referral, an HL7 ADT
  admission, or declared by a clinician with a reason.
- ``shares``: one study shared with an organisation or a user, with rights
  (``view``, ``download``, ``annotate``; comma-separated, sorted).
- ``share_links`` + ``share_link_studies``: a bearer link for an external
  party; only the SHA-256 of its token is kept.
- ``break_glass``: emergency access of one user to one person, time-limited,
  reviewed later (``reviewed``).
- ``patient_blocks`` ("sperre"): a person blocks an organisation
  (``blocked_org_pk`` NULL: every organisation but the owner) from one study
  (``study_instance_uid`` NULL: from everything).

The index ``ix_instances_series_org`` lets the policy's ownership test
(EXISTS an instance of the study owned by the organisation) be an index probe;
``ix_persons_merged_into`` finds the persons merged into one.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    false,
)

from .access_schema import users  # noqa: F401  (FK target)
from .identity_schema import organisations, persons  # noqa: F401  (FK targets)
from .schema import UID, instances, metadata

CARE_SOURCES = ("referral", "adt", "declared")
RIGHTS = ("view", "download", "annotate")

care_relationships = Table(
    "care_relationships",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("person_pk", ForeignKey("persons.pk"), nullable=False),
    Column("org_pk", ForeignKey("organisations.pk"), nullable=False),
    Column("user_pk", ForeignKey("users.pk")),  # NULL: the whole organisation
    Column("source", String(16), nullable=False),
    Column("reason", Text, nullable=False, server_default=""),
    Column("created_by", String(255), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True)),
    Column("ended_at", DateTime(timezone=True)),
)
Index("ix_care_relationships_person", care_relationships.c.person_pk)
Index("ix_care_relationships_org", care_relationships.c.org_pk, care_relationships.c.ended_at)

shares = Table(
    "shares",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("study_instance_uid", UID, nullable=False),
    Column("grantee_org_pk", ForeignKey("organisations.pk")),
    Column("grantee_user_pk", ForeignKey("users.pk")),
    Column("rights", String(64), nullable=False),
    Column("reason", Text, nullable=False, server_default=""),
    Column("created_by", String(255), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
)
Index("ix_shares_study", shares.c.study_instance_uid)
Index("ix_shares_org", shares.c.grantee_org_pk)
Index("ix_shares_user", shares.c.grantee_user_pk)

share_links = Table(
    "share_links",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("token_sha256", String(64), nullable=False, unique=True),
    Column("rights", String(64), nullable=False),
    Column("reason", Text, nullable=False, server_default=""),
    Column("created_by", String(255), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
)

share_link_studies = Table(
    "share_link_studies",
    metadata,
    Column("link_pk", ForeignKey("share_links.pk", ondelete="CASCADE"), primary_key=True),
    Column("study_instance_uid", UID, primary_key=True),
)

break_glass = Table(
    "break_glass",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("user_name", String(255), nullable=False),
    Column("user_pk", ForeignKey("users.pk")),
    Column("org_pk", ForeignKey("organisations.pk")),
    Column("person_pk", ForeignKey("persons.pk"), nullable=False),
    Column("reason", Text, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("reviewed", Boolean, nullable=False, server_default=false()),
)
Index("ix_break_glass_user", break_glass.c.user_name, break_glass.c.expires_at)
Index("ix_break_glass_person", break_glass.c.person_pk)

patient_blocks = Table(
    "patient_blocks",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("person_pk", ForeignKey("persons.pk"), nullable=False),
    Column("blocked_org_pk", ForeignKey("organisations.pk")),  # NULL: every organisation but the owner
    Column("study_instance_uid", UID),  # NULL: everything
    Column("reason", Text, nullable=False, server_default=""),
    Column("created_by", String(255), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
)
Index("ix_patient_blocks_person", patient_blocks.c.person_pk)

Index("ix_instances_series_org", instances.c.series_pk, instances.c.org_pk)
Index("ix_persons_merged_into", persons.c.merged_into_pk)
