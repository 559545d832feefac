"""Tables of organisations and the master patient index (samarkiv/identity/).

They share ``metadata`` with index/schema.py; migration 0004 (versions/0004_identity.py) creates them.

- ``organisations`` and ``organisation_aets``: who sends, and under which
  Issuer of Patient ID (PS3.3 C.7.1.1, 10.14) their Patient IDs are keyed.
- ``persons``: one row per real person; a merged person points to the one it
  was merged into.
- ``patient_identifiers``: every (Patient ID, issuer) the archive has seen,
  each on one person (NULL only for a flagged national number that was seen
  but not linked). ``value`` and ``issuer`` are the same key the catalogue's
  ``patients`` rows use, so patients join on (patient_id,
  issuer_of_patient_id) = (value, issuer). National numbers also carry their
  kind, normalised form and validity.
- ``identity_history``: every link, unlink, merge, unmerge and automatic link,
  with who, when and why, and what it moved (so each can be reversed).
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, DateTime, ForeignKey, Index, Integer, String, Table, Text, UniqueConstraint, false

from .schema import CS, DA, LO, metadata

organisations = Table(
    "organisations",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("code", String(64), nullable=False, unique=True),
    Column("name", String(255), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("issuer_of_patient_id", LO),
    Column("issuer_ueid", String(64)),
    Column("issuer_ueid_type", CS),
    # "config" (the config file owns it), "cli", or "default" (made at start).
    Column("source", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

organisation_aets = Table(
    "organisation_aets",
    metadata,
    Column("aet", String(16), primary_key=True),
    Column("organisation_pk", ForeignKey("organisations.pk", ondelete="CASCADE"), nullable=False),
)
Index("ix_organisation_aets_org", organisation_aets.c.organisation_pk)

persons = Table(
    "persons",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("merged_into_pk", ForeignKey("persons.pk")),
    # From a valid national number, when the person has one.
    Column("birth_date", DA),
    Column("sex", CS),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

patient_identifiers = Table(
    "patient_identifiers",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("value", LO, nullable=False),
    Column("issuer", LO, nullable=False),
    Column("person_pk", ForeignKey("persons.pk")),
    # The organisation that first sent it.
    Column("organisation_pk", ForeignKey("organisations.pk")),
    Column("national_kind", String(32)),
    Column("national_normalised", String(16)),
    Column("national_valid", Boolean),
    Column("national_reason", Text),
    # An administrator separated it (unlink, unmerge): automatic linking
    # records a conflict instead of merging its person again.
    Column("pinned", Boolean, nullable=False, server_default=false()),
    # For a flagged (unlinked) number: the identifier it arrived with.
    Column("seen_with_pk", ForeignKey("patient_identifiers.pk")),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("value", "issuer", name="uq_patient_identifiers_value_issuer"),
)
Index("ix_patient_identifiers_person", patient_identifiers.c.person_pk)
Index(
    "ix_patient_identifiers_national",
    patient_identifiers.c.national_kind,
    patient_identifiers.c.national_normalised,
)

identity_history = Table(
    "identity_history",
    metadata,
    Column("pk", Integer, primary_key=True),
    # auto-link, link, unlink, merge, unmerge, conflict
    Column("action", String(16), nullable=False),
    Column("identifier_pk", Integer),
    Column("from_person_pk", Integer),
    Column("to_person_pk", Integer),
    Column("detail", Text, nullable=False, server_default=""),  # JSON
    Column("actor", String(128), nullable=False),
    Column("reason", Text, nullable=False, server_default=""),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("reverted_by_pk", Integer),
)
Index("ix_identity_history_from", identity_history.c.from_person_pk)
Index("ix_identity_history_to", identity_history.c.to_person_pk)
Index("ix_identity_history_identifier", identity_history.c.identifier_pk)

__all__ = ["identity_history", "organisation_aets", "organisations", "patient_identifiers", "persons"]
