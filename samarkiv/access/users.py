"""Local users: organisation, roles and an argon2id password hash (RFC 9106).

A user's password is never stored, only its PHC-format argon2id hash
(argon2-cffi's defaults, rehashed on login when the parameters change).
HTTP Basic checks are cached by (user, SHA-256 of the password) against the
hash they were verified with, so a script sending Basic on every request pays
argon2's cost once, and a changed password or disabled user takes effect at once.

A patient user may be linked to their person in the master patient index
(``users.person_pk``, :func:`set_patient`, audited as ``link``/``unlink``): their
principal's ``patient_key`` is that person, followed through merges, so the
policy's ``self`` basis shows them their own record. A patient user not
linked sees nothing.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import Connection, Engine, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from ..audit.events import AuditEvent, row_of
from ..audit.trail import append_rows
from ..config import Settings
from ..identity.organisations import Organisation, default_organisation, get_organisation
from ..identity.patients import (
    Canonical,
    InvalidNationalNumber,
    MalformedIdentifier,
    canonicalise,
    current_person,
    identifier_from_text,
    person_for,
)
from ..index.access_schema import users
from ..index.identity_schema import organisations
from .principal import ROLES, Principal

_hasher = PasswordHasher()
USERNAME_MAX = 128


class UserError(ValueError):
    """A bad username, role, organisation or password (exit status 2)."""


class UnknownUser(UserError):
    """No such user (exit status 1)."""


class UserExists(UserError):
    """The username is taken (exit status 1)."""


@dataclass(frozen=True)
class User:
    pk: int
    username: str
    display_name: str | None
    org_pk: int
    org_code: str
    roles: frozenset[str]
    disabled: bool
    source: str
    has_password: bool
    password_hash: str | None = None
    person_pk: int | None = None  # the person linked (users.person_pk)
    patient_key: int | None = None  # that person now (following merges)

    def principal(self, method: str, address: str | None = None) -> Principal:
        return Principal(
            name=self.username, kind="user", org_pk=self.org_pk, org_code=self.org_code, roles=self.roles,
            user_pk=self.pk, patient_key=self.patient_key, auth_method=method, address=address,
        )  # fmt: skip

    @property
    def patient_link(self) -> str:
        """The link in words: ``person N`` (``now person M`` after a merge),
        ``not linked`` for a patient user without one, else empty."""
        if self.person_pk is None:
            return "not linked" if "patient" in self.roles else ""
        moved = f" (now person {self.patient_key})" if self.patient_key != self.person_pk else ""
        return f"person {self.person_pk}{moved}"


def _now() -> datetime:
    return datetime.now(UTC)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def random_password() -> str:
    """A password of about 128 bits, easy to copy (URL-safe characters)."""
    return secrets.token_urlsafe(16)


def parse_roles(roles: list[str] | tuple[str, ...] | str) -> frozenset[str]:
    items = roles.split(",") if isinstance(roles, str) else [r for item in roles for r in item.split(",")]
    chosen = frozenset(r.strip().lower() for r in items if r.strip())
    unknown = sorted(chosen - set(ROLES))
    if unknown:
        raise UserError(f"unknown role(s) {', '.join(unknown)}; roles are {', '.join(ROLES)}")
    return chosen


def _check_username(username: str) -> str:
    name = username.strip()
    if not name or len(name) > USERNAME_MAX or any(c.isspace() or c in ":," for c in name):
        raise UserError(f"invalid username {username!r}: 1-{USERNAME_MAX} characters, no spaces, ':' or ','")
    return name


def check_password(password: str) -> str:
    if len(password) < 8:
        raise UserError("the password must have at least 8 characters")
    if len(password) > 1024:
        raise UserError("the password is too long (at most 1024 characters)")
    return password


_USER_COLUMNS = (
    users.c.pk, users.c.username, users.c.display_name, users.c.org_pk, organisations.c.code,
    users.c.roles, users.c.disabled, users.c.source, users.c.password_hash, users.c.person_pk,
)  # fmt: skip


def _user(conn: Connection, row) -> User:  # type: ignore[no-untyped-def]
    person = row.person_pk
    return User(
        pk=row.pk, username=row.username, display_name=row.display_name, org_pk=row.org_pk,
        org_code=row.code, roles=frozenset(r for r in row.roles.split(",") if r), disabled=bool(row.disabled),
        source=row.source, has_password=row.password_hash is not None, password_hash=row.password_hash,
        person_pk=person, patient_key=current_person(conn, person) if person is not None else None,
    )  # fmt: skip


def _select():  # type: ignore[no-untyped-def]
    return select(*_USER_COLUMNS).join(organisations, organisations.c.pk == users.c.org_pk)


def get_user(conn: Connection, username: str) -> User | None:
    row = conn.execute(_select().where(users.c.username == username.strip())).first()
    return _user(conn, row) if row is not None else None


def user_by_pk(conn: Connection, pk: int) -> User | None:
    row = conn.execute(_select().where(users.c.pk == pk)).first()
    return _user(conn, row) if row is not None else None


def require_user(conn: Connection, username: str) -> User:
    user = get_user(conn, username)
    if user is None:
        raise UnknownUser(f"no user {username!r}")
    return user


def list_users(conn: Connection) -> list[User]:
    return [_user(conn, row) for row in conn.execute(_select().order_by(users.c.username)).all()]


def count_users(conn: Connection) -> int:
    return conn.execute(select(func.count()).select_from(users)).scalar_one()


def create_user(
    conn: Connection,
    username: str,
    org_code: str,
    roles: list[str] | tuple[str, ...] | str,
    *,
    password: str | None = None,
    display_name: str | None = None,
    source: str = "local",
) -> User:
    """Add a user of organisation ``org_code``; ``password`` None: none (token or OIDC only)."""
    name = _check_username(username)
    chosen = parse_roles(roles)
    if not chosen:
        raise UserError("a user needs at least one role")
    org = get_organisation(conn, org_code)
    if org is None:
        raise UserError(f"no organisation {org_code!r} (samarkiv org list)")
    if get_user(conn, name) is not None:
        raise UserExists(f"user {name!r} exists")
    now = _now()
    password_hash = hash_password(check_password(password)) if password is not None else None
    row = {"username": name, "display_name": display_name, "org_pk": org.pk, "roles": ",".join(sorted(chosen)),
           "password_hash": password_hash, "disabled": False, "source": source, "created_at": now, "updated_at": now}  # fmt: skip
    conn.execute(insert(users).values(**row))
    return require_user(conn, name)


def set_password(conn: Connection, username: str, password: str) -> None:
    user = require_user(conn, username)
    conn.execute(
        update(users).where(users.c.pk == user.pk)
        .values(password_hash=hash_password(check_password(password)), updated_at=_now())
    )  # fmt: skip


def set_disabled(conn: Connection, username: str, disabled: bool = True) -> None:
    """Disable (or enable) a user: passwords, tokens and sessions stop working at once."""
    user = require_user(conn, username)
    conn.execute(update(users).where(users.c.pk == user.pk).values(disabled=disabled, updated_at=_now()))


def patient_person(conn: Connection, canonical: Canonical) -> int:
    """The one person a patient's own identifier names (a national number in
    any written form); an invalid national number names nobody. Raises
    IdentityError (InvalidNationalNumber, UnknownIdentifier)."""
    national = canonical.national
    if national is not None and not national.valid:
        raise InvalidNationalNumber(
            f"{canonical.identifier}: invalid {national.kind or national.country} number ({national.reason})"
        )
    return person_for(conn, canonical)


def person_of_patient_id(conn: Connection, text: str, org: Organisation) -> int:
    """The person ``ID[^ISSUER]`` names: ``VALUE^ISSUER`` as identity's
    ``identifier_from_text`` reads it (an issuer OID or name, an organisation
    code, a national kind such as ``se-personnummer``), or a bare ID under the
    user's organisation ``org``'s issuer of Patient ID."""
    text = text.strip()
    if not text or text.startswith("^"):
        raise MalformedIdentifier(f"{text!r}: give the patient's ID[^ISSUER]")
    canonical = identifier_from_text(conn, text) if "^" in text else canonicalise(conn, text, None, org)
    return patient_person(conn, canonical)


def set_patient(conn: Connection, username: str, patient_id: str | None, by: Principal) -> User:
    """Link the patient user ``username`` to the person ``patient_id`` names
    (:func:`person_of_patient_id`), or unlink it (None). Audited in this
    transaction: ``link`` naming the user and the person (``unlink`` for the
    person left). Raises UserError or IdentityError; nothing is written then."""
    user = require_user(conn, username)
    person = None
    if patient_id is not None:
        if "patient" not in user.roles:
            raise UserError(f"{user.username} has no patient role: only a patient user is linked to a person")
        org = get_organisation(conn, user.org_code)
        if org is None:
            raise UserError(f"no organisation {user.org_code!r}")
        person = person_of_patient_id(conn, patient_id, org)
    if person == user.person_pk:
        return user
    conn.execute(update(users).where(users.c.pk == user.pk).values(person_pk=person, updated_at=_now()))
    detail = {"user": user.username, "user_pk": user.pk}
    events: list[AuditEvent] = []
    if user.person_pk is not None:
        events.append(AuditEvent("unlink", by, patient_keys=[user.patient_key or user.person_pk], purpose="HSYSADMIN",
                                 reason=f"user account {user.username} unlinked", detail=detail))  # fmt: skip
    if person is not None:
        events.append(AuditEvent("link", by, patient_keys=[person], purpose="HSYSADMIN",
                                 reason=f"user account {user.username} linked", detail={**detail, "person": person}))  # fmt: skip
    append_rows(conn, [row_of(e) for e in events])
    return require_user(conn, user.username)


def ensure_first_admin(engine: Engine, settings: Settings) -> str | None:
    """First start: with no users at all, create ``admin`` (administrator of the
    default organisation) with a random password and return it (the caller shows
    it once); else None."""
    try:
        return _first_admin(engine, settings)
    except IntegrityError:  # another node of a shared index made it first
        return None


def _first_admin(engine: Engine, settings: Settings) -> str | None:
    with engine.begin() as conn:
        if count_users(conn) > 0:
            return None
        org = default_organisation(conn, settings)
        if org is None:
            org_row = conn.execute(select(organisations.c.code).order_by(organisations.c.pk)).first()
            if org_row is None:
                raise UserError("no organisation to create the first administrator in (samarkiv org add)")
            org_code = org_row.code
        else:
            org_code = org.code
        password = random_password()
        create_user(conn, "admin", org_code, ["administrator"], password=password,
                    display_name="First administrator", source="first-start")  # fmt: skip
        return password


class PasswordChecker:
    """Verifies local passwords, caching successful checks (see the module docstring)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._ok: dict[tuple[str, str], str] = {}  # (username, sha256(password)) -> verified hash
        self._lock = threading.Lock()

    def authenticate(self, username: str, password: str, method: str = "password", address: str | None = None) -> Principal | None:
        with self.engine.connect() as conn:
            user = get_user(conn, username) if username and len(username) <= USERNAME_MAX else None
        if user is None or user.disabled or user.password_hash is None:
            if user is None:
                verify_password(_DUMMY_HASH, password)  # same cost whether or not the user exists
            return None
        key = (user.username, hashlib.sha256(password.encode()).hexdigest())
        with self._lock:
            cached = self._ok.get(key)
        if cached != user.password_hash:
            if not verify_password(user.password_hash, password):
                return None
            if _hasher.check_needs_rehash(user.password_hash):
                with self.engine.begin() as conn:
                    set_password(conn, user.username, password)
                return self.authenticate(username, password, method, address)
            with self._lock:
                if len(self._ok) > 10_000:
                    self._ok.clear()
                self._ok[key] = user.password_hash
        return user.principal(method, address)


_DUMMY_HASH = _hasher.hash("not a password of anyone")
