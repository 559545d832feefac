"""Changes to the access policy: care relationships, shares, share links,
break-glass and patient blocks (re-exported by samarkiv.access.policy).

Each function works in the caller's transaction and appends one audit record
per change to the same transaction (samarkiv.audit: action ``share`` with
``detail.policy`` = ``care.declare``, ``care.end``, ``share.grant``,
``share.revoke``, ``share-link.create``, ``share-link.revoke``,
``block.add``, ``block.lift``; action ``break-glass`` for an emergency
access, flagged for review). Pass the process's ``trail`` to forward the
records to its syslog collector as well. Who may make a change is the
door's concern (an administrator, the patient for their own blocks, ...);
break-glass is for staff users only.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, insert, or_, select, update

from ..audit import AuditEvent
from ..audit.events import row_of
from ..audit.trail import AuditTrail, append_rows
from ..identity.patients import UnknownPerson, current_person
from ..index.access_schema import users
from ..index.identity_schema import organisations, patient_identifiers
from ..index.policy_schema import (
    CARE_SOURCES,
    RIGHTS,
    break_glass,
    care_relationships,
    patient_blocks,
    share_link_studies,
    share_links,
    shares,
)
from ..index.schema import patients, studies
from .principal import Principal

BREAK_GLASS_HOURS = 4.0
CARE_DAYS = {"declared": 30.0, "referral": 180.0, "adt": 30.0}
SHARE_DAYS = 90.0
LINK_DAYS = 7.0
LINK_PREFIX = "smkl_"
_MAX_DAYS = 3660.0


def _error(message: str, *, missing: bool = False) -> Exception:
    from .policy import PolicyError, PolicyNotFound

    return (PolicyNotFound if missing else PolicyError)(message)


def _now(now: datetime | None) -> datetime:
    return (now or datetime.now(UTC)).astimezone(UTC)


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; ours are all UTC."""
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _audit(conn: Connection, events: Sequence[AuditEvent], trail: AuditTrail | None) -> None:
    if trail is not None:
        trail.record_in(conn, events)
    else:
        append_rows(conn, [row_of(e) for e in events])


def _reason(reason: str, what: str) -> str:
    text = (reason or "").strip()
    if not text:
        raise _error(f"{what} needs a reason")
    return text


def _expiry(now: datetime, expires_at: datetime | None, days: float | None, default_days: float) -> datetime:
    if expires_at is not None:
        when = _aware(expires_at)
        assert when is not None
    else:
        span = default_days if days is None else days
        if not 0 < span <= _MAX_DAYS:
            raise _error(f"a duration of {span:g} days is out of range (more than 0, at most {_MAX_DAYS:g})")
        when = now + timedelta(days=span)
    if when <= now:
        raise _error("the expiry must lie in the future")
    return when


def _rights(rights: Iterable[str] | str) -> str:
    items = [r.strip().lower() for r in (rights.split(",") if isinstance(rights, str) else rights) if r.strip()]
    unknown = sorted(set(items) - set(RIGHTS))
    if unknown or not items:
        raise _error(f"rights must be some of {', '.join(RIGHTS)} (got {', '.join(unknown) or 'none'})")
    return ",".join(r for r in RIGHTS if r in items)


def _person(conn: Connection, person_pk: int) -> int:
    try:
        return current_person(conn, int(person_pk))
    except UnknownPerson as exc:
        raise _error(str(exc), missing=True) from None


def _require_org(conn: Connection, org_pk: int) -> str:
    code = conn.execute(select(organisations.c.code).where(organisations.c.pk == org_pk)).scalar()
    if code is None:
        raise _error(f"no organisation {org_pk}", missing=True)
    return str(code)


def _require_user(conn: Connection, user_pk: int) -> Any:
    row = conn.execute(select(users.c.pk, users.c.username, users.c.org_pk).where(users.c.pk == user_pk)).first()
    if row is None:
        raise _error(f"no user {user_pk}", missing=True)
    return row


def persons_of_studies(conn: Connection, study_uids: Iterable[str]) -> dict[str, int | None]:
    """Study UID -> the person of its patient (None: no identity); PolicyError for an unknown study."""
    uids = sorted({u.strip() for u in study_uids if u.strip()})
    if not uids:
        raise _error("name at least one study")
    pi = patient_identifiers
    rows = conn.execute(
        select(studies.c.study_instance_uid, pi.c.person_pk)
        .select_from(
            studies.join(patients, studies.c.patient_pk == patients.c.pk).outerjoin(
                pi, and_(pi.c.value == patients.c.patient_id, pi.c.issuer == patients.c.issuer_of_patient_id)
            )
        )
        .where(studies.c.study_instance_uid.in_(uids))
    ).all()
    found = {uid: person for uid, person in rows}
    missing = [u for u in uids if u not in found]
    if missing:
        raise _error(f"no study {missing[0]}", missing=True)
    return found


def _persons(found: dict[str, int | None]) -> list[int]:
    return sorted({p for p in found.values() if p is not None})


# --- care relationships -----------------------------------------------------------------------------


def declare_care(
    conn: Connection,
    by: Principal,
    *,
    person_pk: int,
    org_pk: int,
    reason: str,
    user_pk: int | None = None,
    source: str = "declared",
    expires_at: datetime | None = None,
    days: float | None = None,
    now: datetime | None = None,
    trail: AuditTrail | None = None,
) -> int:
    """A care relationship of ``org_pk`` (or of its user ``user_pk``) with the person; returns its pk."""
    if source not in CARE_SOURCES:
        raise _error(f"a care relationship comes from one of {', '.join(CARE_SOURCES)}")
    now = _now(now)
    why = _reason(reason, "a care relationship")
    person = _person(conn, person_pk)
    code = _require_org(conn, org_pk)
    if user_pk is not None and _require_user(conn, user_pk).org_pk != org_pk:
        raise _error(f"user {user_pk} is not of organisation {code}")
    until = _expiry(now, expires_at, days, CARE_DAYS[source])
    pk = conn.execute(
        insert(care_relationships)
        .values(person_pk=person, org_pk=org_pk, user_pk=user_pk, source=source, reason=why, created_by=by.name,
                created_at=now, expires_at=until)
        .returning(care_relationships.c.pk)
    ).scalar_one()  # fmt: skip
    _audit(conn, [AuditEvent(
        "share", by, patient_keys=[person], care_relationship=pk, reason=why, purpose="TREAT", time=now,
        detail={"policy": "care.declare", "org": code, "user_pk": user_pk, "source": source,
                "expires": until.isoformat()},
    )], trail)  # fmt: skip
    return int(pk)


def care_from_referral(
    conn: Connection, by: Principal, *, person_pk: int, org_pk: int, referral: str, user_pk: int | None = None,
    days: float | None = None, now: datetime | None = None, trail: AuditTrail | None = None,
) -> int:  # fmt: skip
    """The care relationship a referral to ``org_pk`` creates (default 180 days)."""
    return declare_care(conn, by, person_pk=person_pk, org_pk=org_pk, user_pk=user_pk, source="referral",
                        reason=f"referral {_reason(referral, 'a referral')}", days=days, now=now, trail=trail)  # fmt: skip


def care_from_adt(
    conn: Connection, by: Principal, *, person_pk: int, org_pk: int, event: str, days: float | None = None,
    now: datetime | None = None, trail: AuditTrail | None = None,
) -> int:  # fmt: skip
    """The care relationship an HL7 ADT admission at ``org_pk`` creates (default 30 days)."""
    return declare_care(conn, by, person_pk=person_pk, org_pk=org_pk, source="adt",
                        reason=f"ADT {_reason(event, 'an ADT admission')}", days=days, now=now, trail=trail)  # fmt: skip


def end_care(
    conn: Connection, by: Principal, pk: int, *, reason: str = "", now: datetime | None = None,
    trail: AuditTrail | None = None,
) -> None:  # fmt: skip
    now = _now(now)
    c = care_relationships
    row = conn.execute(select(c.c.person_pk, c.c.ended_at).where(c.c.pk == pk)).first()
    if row is None:
        raise _error(f"no care relationship {pk}", missing=True)
    if row.ended_at is not None:
        raise _error(f"care relationship {pk} has already ended")
    conn.execute(update(c).where(c.c.pk == pk).values(ended_at=now))
    _audit(conn, [AuditEvent("share", by, patient_keys=[row.person_pk], care_relationship=pk, reason=reason, time=now,
                             detail={"policy": "care.end"})], trail)  # fmt: skip


def list_care(
    conn: Connection, *, person_pk: int | None = None, org_pk: int | None = None, active: bool = True,
    now: datetime | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    now = _now(now)
    c = care_relationships
    stmt = select(c, organisations.c.code.label("org")).join(organisations, organisations.c.pk == c.c.org_pk)
    if person_pk is not None:
        stmt = stmt.where(c.c.person_pk == person_pk)
    if org_pk is not None:
        stmt = stmt.where(c.c.org_pk == org_pk)
    if active:
        stmt = stmt.where(c.c.ended_at.is_(None), or_(c.c.expires_at.is_(None), c.c.expires_at > now))
    return [_plain(r) for r in conn.execute(stmt.order_by(c.c.pk)).mappings()]


def _plain(row: Any) -> dict[str, Any]:
    return {k: (_aware(v).isoformat() if isinstance(v, datetime) else v) for k, v in dict(row).items()}  # type: ignore[union-attr]


# --- shares -----------------------------------------------------------------------------------------


def grant_share(
    conn: Connection,
    by: Principal,
    *,
    study_uids: Iterable[str],
    reason: str,
    grantee_org_pk: int | None = None,
    grantee_user_pk: int | None = None,
    rights: Iterable[str] | str = ("view",),
    expires_at: datetime | None = None,
    days: float | None = None,
    now: datetime | None = None,
    trail: AuditTrail | None = None,
) -> list[int]:
    """Share each study with an organisation or a user; returns one share pk per study."""
    if (grantee_org_pk is None) == (grantee_user_pk is None):
        raise _error("share with one organisation or one user")
    now = _now(now)
    why = _reason(reason, "a share")
    granted = _rights(rights)
    grantee = (
        {"org": _require_org(conn, grantee_org_pk)} if grantee_org_pk is not None
        else {"user": _require_user(conn, grantee_user_pk).username}  # type: ignore[arg-type]
    )  # fmt: skip
    until = _expiry(now, expires_at, days, SHARE_DAYS)
    found = persons_of_studies(conn, study_uids)
    pks, events = [], []
    for uid, person in sorted(found.items()):
        pk = conn.execute(
            insert(shares)
            .values(study_instance_uid=uid, grantee_org_pk=grantee_org_pk, grantee_user_pk=grantee_user_pk,
                    rights=granted, reason=why, created_by=by.name, created_at=now, expires_at=until)
            .returning(shares.c.pk)
        ).scalar_one()  # fmt: skip
        pks.append(int(pk))
        events.append(AuditEvent(
            "share", by, patient_keys=[person] if person else [], study_uid=uid, reason=why, time=now,
            detail={"policy": "share.grant", "share": pk, **grantee, "rights": granted, "expires": until.isoformat()},
        ))  # fmt: skip
    _audit(conn, events, trail)
    return pks


def revoke_share(conn: Connection, by: Principal, pk: int, *, now: datetime | None = None,
                 trail: AuditTrail | None = None) -> None:  # fmt: skip
    now = _now(now)
    row = conn.execute(select(shares.c.study_instance_uid, shares.c.revoked_at).where(shares.c.pk == pk)).first()
    if row is None:
        raise _error(f"no share {pk}", missing=True)
    if row.revoked_at is not None:
        raise _error(f"share {pk} is already revoked")
    conn.execute(update(shares).where(shares.c.pk == pk).values(revoked_at=now))
    person = persons_of_studies(conn, [row.study_instance_uid]).get(row.study_instance_uid)
    _audit(conn, [AuditEvent("share", by, patient_keys=[person] if person else [], study_uid=row.study_instance_uid,
                             time=now, detail={"policy": "share.revoke", "share": pk})], trail)  # fmt: skip


def list_shares(conn: Connection, *, study_uid: str | None = None, active: bool = True,
                now: datetime | None = None) -> list[dict[str, Any]]:  # fmt: skip
    now = _now(now)
    s = shares
    stmt = (
        select(s, organisations.c.code.label("grantee_org"), users.c.username.label("grantee_user"))
        .outerjoin(organisations, organisations.c.pk == s.c.grantee_org_pk)
        .outerjoin(users, users.c.pk == s.c.grantee_user_pk)
    )
    if study_uid is not None:
        stmt = stmt.where(s.c.study_instance_uid == study_uid)
    if active:
        stmt = stmt.where(s.c.revoked_at.is_(None), or_(s.c.expires_at.is_(None), s.c.expires_at > now))
    return [_plain(r) for r in conn.execute(stmt.order_by(s.c.pk)).mappings()]


# --- share links ------------------------------------------------------------------------------------


def create_share_link(
    conn: Connection,
    by: Principal,
    *,
    study_uids: Iterable[str],
    rights: Iterable[str] | str = ("view",),
    reason: str = "",
    expires_at: datetime | None = None,
    days: float | None = None,
    now: datetime | None = None,
    trail: AuditTrail | None = None,
) -> tuple[int, str]:
    """A share link to the studies: (its pk, the token — shown once; only its SHA-256 is kept)."""
    now = _now(now)
    granted = _rights(rights)
    until = _expiry(now, expires_at, days, LINK_DAYS)
    found = persons_of_studies(conn, study_uids)
    token = LINK_PREFIX + secrets.token_urlsafe(32)
    pk = conn.execute(
        insert(share_links)
        .values(token_sha256=hashlib.sha256(token.encode()).hexdigest(), rights=granted, reason=(reason or "").strip(),
                created_by=by.name, created_at=now, expires_at=until)
        .returning(share_links.c.pk)
    ).scalar_one()  # fmt: skip
    conn.execute(insert(share_link_studies), [{"link_pk": pk, "study_instance_uid": uid} for uid in sorted(found)])
    _audit(conn, [AuditEvent(
        "share", by, patient_keys=_persons(found), study_uid=next(iter(found)) if len(found) == 1 else None,
        reason=(reason or "").strip(), time=now,
        detail={"policy": "share-link.create", "link": pk, "studies": sorted(found), "rights": granted,
                "expires": until.isoformat()},
    )], trail)  # fmt: skip
    return int(pk), token


def _link_studies(conn: Connection, pk: int) -> list[str]:
    return list(
        conn.execute(
            select(share_link_studies.c.study_instance_uid).where(share_link_studies.c.link_pk == pk).order_by(
                share_link_studies.c.study_instance_uid
            )
        ).scalars()
    )


def revoke_share_link(conn: Connection, by: Principal, pk: int, *, now: datetime | None = None,
                      trail: AuditTrail | None = None) -> None:  # fmt: skip
    now = _now(now)
    row = conn.execute(select(share_links.c.revoked_at).where(share_links.c.pk == pk)).first()
    if row is None:
        raise _error(f"no share link {pk}", missing=True)
    if row.revoked_at is not None:
        raise _error(f"share link {pk} is already revoked")
    conn.execute(update(share_links).where(share_links.c.pk == pk).values(revoked_at=now))
    uids = _link_studies(conn, pk)
    persons = _persons(persons_of_studies(conn, uids)) if uids else []
    _audit(conn, [AuditEvent("share", by, patient_keys=persons, time=now,
                             detail={"policy": "share-link.revoke", "link": pk, "studies": uids})], trail)  # fmt: skip


def list_share_links(conn: Connection, *, active: bool = True, now: datetime | None = None) -> list[dict[str, Any]]:
    now = _now(now)
    sl = share_links
    stmt = select(sl.c.pk, sl.c.rights, sl.c.reason, sl.c.created_by, sl.c.created_at, sl.c.expires_at, sl.c.revoked_at)
    if active:
        stmt = stmt.where(sl.c.revoked_at.is_(None), or_(sl.c.expires_at.is_(None), sl.c.expires_at > now))
    out = []
    for row in conn.execute(stmt.order_by(sl.c.pk)).mappings():
        item = _plain(row)
        item["studies"] = _link_studies(conn, row["pk"])
        out.append(item)
    return out


# --- break-glass ------------------------------------------------------------------------------------


def start_break_glass(
    conn: Connection,
    principal: Principal,
    *,
    person_pk: int,
    reason: str,
    hours: float = BREAK_GLASS_HOURS,
    now: datetime | None = None,
    trail: AuditTrail | None = None,
) -> int:
    """Emergency access of ``principal`` (a staff user) to the person for ``hours``; flagged for review."""
    from .policy import _is_patient, _is_researcher_only

    if principal.kind != "user" or _is_patient(principal) or _is_researcher_only(principal):
        raise _error("break-glass is for staff users only")
    if not 0 < hours <= 24:
        raise _error("break-glass lasts more than 0 and at most 24 hours")
    now = _now(now)
    why = _reason(reason, "break-glass")
    person = _person(conn, person_pk)
    until = now + timedelta(hours=hours)
    pk = conn.execute(
        insert(break_glass)
        .values(user_name=principal.name, user_pk=principal.user_pk, org_pk=principal.org_pk, person_pk=person,
                reason=why, started_at=now, expires_at=until)
        .returning(break_glass.c.pk)
    ).scalar_one()  # fmt: skip
    _audit(conn, [AuditEvent(
        "break-glass", principal, patient_keys=[person], reason=why, purpose="ETREAT", flagged=True, time=now,
        detail={"policy": "break-glass.start", "break_glass": pk, "expires": until.isoformat()},
    )], trail)  # fmt: skip
    return int(pk)


def list_break_glass(conn: Connection, *, person_pk: int | None = None, active: bool = False,
                     now: datetime | None = None) -> list[dict[str, Any]]:  # fmt: skip
    g = break_glass
    stmt = select(g)
    if person_pk is not None:
        stmt = stmt.where(g.c.person_pk == person_pk)
    if active:
        stmt = stmt.where(g.c.expires_at > _now(now))
    return [_plain(r) for r in conn.execute(stmt.order_by(g.c.pk)).mappings()]


# --- patient blocks ---------------------------------------------------------------------------------


def add_block(
    conn: Connection,
    by: Principal,
    *,
    person_pk: int,
    reason: str,
    blocked_org_pk: int | None = None,
    study_uid: str | None = None,
    now: datetime | None = None,
    trail: AuditTrail | None = None,
) -> int:
    """The patient blocks ``blocked_org_pk`` (None: every organisation but the owner) from
    ``study_uid`` (None: everything); returns the block's pk."""
    now = _now(now)
    why = _reason(reason, "a block")
    person = _person(conn, person_pk)
    code = _require_org(conn, blocked_org_pk) if blocked_org_pk is not None else None
    if study_uid is not None:
        owner = persons_of_studies(conn, [study_uid])[study_uid]
        if owner is None or current_person(conn, owner) != person:
            raise _error(f"study {study_uid} is not the patient's")
    pk = conn.execute(
        insert(patient_blocks)
        .values(person_pk=person, blocked_org_pk=blocked_org_pk, study_instance_uid=study_uid, reason=why,
                created_by=by.name, created_at=now)
        .returning(patient_blocks.c.pk)
    ).scalar_one()  # fmt: skip
    _audit(conn, [AuditEvent("share", by, patient_keys=[person], study_uid=study_uid, reason=why, time=now,
                             detail={"policy": "block.add", "block": pk, "org": code or "*"})], trail)  # fmt: skip
    return int(pk)


def lift_block(conn: Connection, by: Principal, pk: int, *, reason: str = "", now: datetime | None = None,
               trail: AuditTrail | None = None) -> None:  # fmt: skip
    now = _now(now)
    b = patient_blocks
    row = conn.execute(select(b.c.person_pk, b.c.study_instance_uid, b.c.revoked_at).where(b.c.pk == pk)).first()
    if row is None:
        raise _error(f"no block {pk}", missing=True)
    if row.revoked_at is not None:
        raise _error(f"block {pk} is already lifted")
    conn.execute(update(b).where(b.c.pk == pk).values(revoked_at=now))
    _audit(conn, [AuditEvent("share", by, patient_keys=[row.person_pk], study_uid=row.study_instance_uid, reason=reason,
                             time=now, detail={"policy": "block.lift", "block": pk})], trail)  # fmt: skip


def list_blocks(conn: Connection, *, person_pk: int | None = None, active: bool = True) -> list[dict[str, Any]]:
    b = patient_blocks
    stmt = select(b, organisations.c.code.label("blocked_org")).outerjoin(
        organisations, organisations.c.pk == b.c.blocked_org_pk
    )
    if person_pk is not None:
        stmt = stmt.where(b.c.person_pk == person_pk)
    if active:
        stmt = stmt.where(b.c.revoked_at.is_(None))
    return [_plain(r) for r in conn.execute(stmt.order_by(b.c.pk)).mappings()]
