"""Personal API tokens (RFC 6750 bearer tokens) and login-page sessions.

A token is ``smk_`` + 32 random bytes (URL-safe base64), shown once; the index
keeps only its SHA-256, so a copy of the index yields no usable token. A token
stops working when it expires, is revoked, or its user is disabled. Sessions
(the login page's cookie) are kept the same way, with a fixed lifetime.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine, delete, insert, select, update

from ..index.access_schema import api_tokens, sessions, users
from .principal import Principal
from .users import UserError, require_user, user_by_pk

TOKEN_PREFIX = "smk_"
LAST_USED_EVERY = 60.0  # seconds: last_used_at is written at most this often per token


class UnknownToken(UserError):
    """No such token (exit status 1)."""


@dataclass(frozen=True)
class TokenInfo:
    pk: int
    username: str
    name: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    @property
    def state(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and _aware(self.expires_at) <= _now():
            return "expired"
        return "active"


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; ours are all UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def looks_like_api_token(value: str) -> bool:
    return value.startswith(TOKEN_PREFIX)


def create_token(conn: Connection, username: str, *, name: str = "", expires_days: float | None = None) -> tuple[str, TokenInfo]:
    """A new token for ``username``: (the token, shown once; its record)."""
    user = require_user(conn, username)
    if expires_days is not None and expires_days <= 0:
        raise UserError("--expires must be a positive number of days")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = _now()
    expires = now + timedelta(days=expires_days) if expires_days is not None else None
    pk = conn.execute(
        insert(api_tokens).values(
            user_pk=user.pk, token_sha256=digest(token), name=name or f"token {now:%Y-%m-%d %H:%M}",
            created_at=now, expires_at=expires,
        ).returning(api_tokens.c.pk)
    ).scalar_one()  # fmt: skip
    return token, _token_info(conn, pk)


_INFO = (
    api_tokens.c.pk, users.c.username, api_tokens.c.name, api_tokens.c.created_at,
    api_tokens.c.expires_at, api_tokens.c.last_used_at, api_tokens.c.revoked_at,
)  # fmt: skip


def _info(row) -> TokenInfo:  # type: ignore[no-untyped-def]
    return TokenInfo(*row)


def _token_info(conn: Connection, pk: int) -> TokenInfo:
    row = conn.execute(select(*_INFO).join(users, users.c.pk == api_tokens.c.user_pk).where(api_tokens.c.pk == pk)).first()
    if row is None:
        raise UnknownToken(f"no token {pk}")
    return _info(row)


def list_tokens(conn: Connection, username: str) -> list[TokenInfo]:
    user = require_user(conn, username)
    rows = conn.execute(
        select(*_INFO).join(users, users.c.pk == api_tokens.c.user_pk)
        .where(api_tokens.c.user_pk == user.pk).order_by(api_tokens.c.pk)
    )  # fmt: skip
    return [_info(row) for row in rows]


def revoke_token(conn: Connection, token_pk: int) -> TokenInfo:
    info = _token_info(conn, token_pk)
    if info.revoked_at is None:
        conn.execute(update(api_tokens).where(api_tokens.c.pk == token_pk).values(revoked_at=_now()))
    return _token_info(conn, token_pk)


class TokenChecker:
    """Resolves bearer API tokens and session cookies to principals."""

    def __init__(self, engine: Engine, writer: Engine | None = None) -> None:
        self.engine = engine
        self.writer = writer or engine
        self._last_used: dict[int, float] = {}

    def authenticate(self, token: str, address: str | None = None) -> Principal | None:
        if not looks_like_api_token(token) or len(token) > 200:
            return None
        now = _now()
        with self.engine.connect() as conn:
            row = conn.execute(
                select(api_tokens.c.pk, api_tokens.c.user_pk, api_tokens.c.expires_at, api_tokens.c.revoked_at)
                .where(api_tokens.c.token_sha256 == digest(token))
            ).first()  # fmt: skip
            if row is None or row.revoked_at is not None:
                return None
            if row.expires_at is not None and _aware(row.expires_at) <= now:
                return None
            user = user_by_pk(conn, row.user_pk)
        if user is None or user.disabled:
            return None
        self._note_use(row.pk, now)
        return user.principal("token", address)

    def _note_use(self, token_pk: int, now: datetime) -> None:
        tick = time.monotonic()
        if tick - self._last_used.get(token_pk, -LAST_USED_EVERY) < LAST_USED_EVERY:
            return
        self._last_used[token_pk] = tick
        with self.writer.begin() as conn:
            conn.execute(update(api_tokens).where(api_tokens.c.pk == token_pk).values(last_used_at=now))

    # --- sessions --------------------------------------------------------------------

    def create_session(self, user_pk: int, hours: float) -> str:
        """A new login session for ``user_pk``: the cookie value (shown once)."""
        session_id = secrets.token_urlsafe(32)
        now = _now()
        with self.writer.begin() as conn:
            conn.execute(delete(sessions).where(sessions.c.expires_at <= now))  # expired ones go
            conn.execute(
                insert(sessions).values(id_sha256=digest(session_id), user_pk=user_pk, created_at=now,
                                        expires_at=now + timedelta(hours=hours))
            )  # fmt: skip
        return session_id

    def session(self, session_id: str, address: str | None = None) -> Principal | None:
        if not session_id or len(session_id) > 200:
            return None
        with self.engine.connect() as conn:
            row = conn.execute(
                select(sessions.c.user_pk, sessions.c.expires_at).where(sessions.c.id_sha256 == digest(session_id))
            ).first()
            if row is None or _aware(row.expires_at) <= _now():
                return None
            user = user_by_pk(conn, row.user_pk)
        if user is None or user.disabled:
            return None
        return user.principal("session", address)

    def end_session(self, session_id: str) -> None:
        with self.writer.begin() as conn:
            conn.execute(delete(sessions).where(sessions.c.id_sha256 == digest(session_id)))
