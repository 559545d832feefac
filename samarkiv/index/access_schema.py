"""Tables for users, API tokens and login sessions (samarkiv/access/).

They share ``metadata`` with index/schema.py; migration 0008_access creates them
(0011_user_person adds ``users.person_pk``).

- ``users``: local and OIDC-provisioned identities, each in one organisation,
  with roles (a comma-separated list of samarkiv.access.principal.ROLES) and,
  for local users, an argon2id password hash (PHC string). A patient user's
  ``person_pk`` is their person in the master patient index (migration 0011).
- ``api_tokens``: personal bearer tokens; only the SHA-256 of the token is
  kept, so a leaked index reveals no usable token.
- ``sessions``: login-page sessions (the cookie's SHA-256, never the cookie).
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
    false,
)

from .identity_schema import organisations, persons  # noqa: F401  (the FK targets' tables must be known)
from .schema import metadata

users = Table(
    "users",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("username", String(128), nullable=False, unique=True),
    Column("display_name", String(255)),
    Column("org_pk", ForeignKey("organisations.pk"), nullable=False),
    Column("roles", String(255), nullable=False),
    Column("password_hash", String(255)),  # NULL: no local password (OIDC or token-only)
    Column("disabled", Boolean, nullable=False, server_default=false()),
    Column("source", String(16), nullable=False),  # "local", "oidc", "first-start"
    Column("person_pk", ForeignKey("persons.pk")),  # a patient user's own person (NULL: not linked)
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("user_pk", ForeignKey("users.pk", ondelete="CASCADE"), nullable=False),
    Column("token_sha256", String(64), nullable=False, unique=True),
    Column("name", String(128), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True)),  # NULL: never
    Column("last_used_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
)
Index("ix_api_tokens_user", api_tokens.c.user_pk)

sessions = Table(
    "sessions",
    metadata,
    Column("id_sha256", String(64), primary_key=True),
    Column("user_pk", ForeignKey("users.pk", ondelete="CASCADE"), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)
Index("ix_sessions_user", sessions.c.user_pk)
Index("ix_sessions_expires", sessions.c.expires_at)
