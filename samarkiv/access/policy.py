"""The access policy: one decision function for every door (issue 5).

Who may see a patient's objects, and on what basis:

* ``owner`` — an organisation always sees what it owns (an instance's
  ``org_pk``; a study is owned by every organisation owning one of its
  instances). A patient block never overrides ownership.
* ``care`` — another organisation's user, with an active care relationship
  for the person (the whole organisation's, or that user's): from a
  referral, an HL7 ADT admission, or declared with a reason; it expires.
* ``share`` — an active share of the study with the user's organisation or
  the user, whose rights include the action's right.
* ``break-glass`` — the user's own active emergency access to the person
  (default 4 h, a reason is required). It allows even what a block forbids;
  every access on this basis is ``flagged`` for review.
* ``share-link`` — a share link's principal sees exactly its studies, with
  its rights, until it expires or is revoked.
* ``self`` — a patient (a user with role ``patient`` and
  ``Principal.patient_key`` = their person) sees their own person's data,
  and nothing else (not what their organisation owns).
* ``system`` — the archive itself (internal jobs).
* A patient block ("sperre") overrides care relationships, shares and share
  links (a block of every organisation covers links too), not ownership and
  not break-glass. Researchers see nothing identifiable through these doors
  (research uses de-identified exports); administrators and auditors have no
  extra sight: they see patient data only on one of the bases above.

Actions and the right they need: ``query``, ``retrieve``, ``view`` → view;
``download``, ``export`` → download; ``store`` (annotations),
``annotate`` → annotate; ``delete`` → ownership only. Care relationships and
break-glass carry every right; ``self`` carries view and download.

Using it from a door (the whole API)::

    from samarkiv.access.policy import decide, visible_condition

    # retrieve / view / store: one decision per study (a few indexed SELECTs in one round trip)
    d = decide(conn, principal, "retrieve", person_pks=[person_pk], study_uid=uid, owner_org_pks={org_pk, ...})
    if not d.allowed: ...                      # DICOM 0xA801 / HTTP 403, nothing about what exists
    trail.record(AuditEvent("retrieve", principal, outcome="allowed" if d.allowed else "denied",
                            patient_keys=[person_pk], study_uid=uid, **d.audit_fields()))

    # C-FIND / QIDO / FHIR search: one SQL condition ANDed into the query
    cond = visible_condition(conn, principal, level=prepared.level)   # None: no filter (system)
    if cond is not None:
        prepared.conditions.append(cond)

    # share-link bearer tokens
    principal = link_principal(conn, token)    # None: unknown, expired or revoked

``visible_condition`` reads nothing: it is a set of correlated EXISTS index
probes evaluated only for the rows the query matches — ownership (an
instance of the study with the organisation's ``org_pk``, index
``ix_instances_series_org``), care relationships, break-glass and blocks (by
the person of the ``patients`` row, through ``patient_identifiers``), shares
(by study UID). It is built once per principal and level, compiled to SQL
text with the principal's values as literals (so SQLAlchemy's statement
cache keys on the text; nothing user-typed but the principal's own name
reaches it, quoted), and compares expiry with the database's clock. At
PATIENT level it keeps patients with at least one visible study. It answers
like ``decide(..., "query")`` for each study.

Changes (each writes an audit record in the caller's transaction, action
``share`` with ``detail.policy`` naming the change, or ``break-glass``):
:func:`declare_care`, :func:`care_from_referral`, :func:`care_from_adt`,
:func:`end_care`; :func:`grant_share`, :func:`revoke_share`;
:func:`create_share_link` (the token is returned once, only its SHA-256 is
kept), :func:`revoke_share_link`; :func:`start_break_glass`;
:func:`add_block`, :func:`lift_block`; and ``list_*`` to read them.
Every function takes a ``Connection`` inside the caller's transaction;
bad input raises :class:`PolicyError` with a message for the user.

Persons: a relationship, break-glass or block recorded for a person that
was later merged into another still applies to the merged person (one
merge level deep).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    DateTime,
    and_,
    exists,
    false,
    literal,
    not_,
    null,
    or_,
    select,
    text,
    union_all,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from ..index.identity_schema import patient_identifiers, persons
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
from ..index.schema import instances, patients, series, studies
from .principal import Principal

# action -> the right it needs (None: only the owner may)
ACTION_RIGHTS: dict[str, str | None] = {
    "query": "view",
    "retrieve": "view",
    "view": "view",
    "download": "download",
    "export": "download",
    "store": "annotate",
    "annotate": "annotate",
    "delete": None,
}
BASES = ("owner", "care", "share", "share-link", "break-glass", "self", "system", "denied")
SELF_RIGHTS = frozenset({"view", "download"})
# Stored rights are canonical (RIGHTS order, comma-separated): those including view.
_VIEW_RIGHTS = ("view", "view,download", "view,annotate", "view,download,annotate")
# Roles that may see patient data on a basis; a researcher without one of them sees none.
_SEEING_ROLES = frozenset({"radiologist", "clinician", "technologist", "administrator", "auditor", "service"})


class PolicyError(ValueError):
    """A policy change that cannot be made as asked (the message says why)."""


class PolicyNotFound(PolicyError):
    """The organisation, user, study, person or policy row named does not exist."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer of :func:`decide`; ``audit_fields()`` feeds an AuditEvent."""

    allowed: bool
    basis: str  # one of BASES
    care_relationship: int | None = None
    reason: str = ""
    flagged: bool = False
    purpose: str | None = None  # HL7 v3 PurposeOfUse (TREAT, ETREAT, PATRQT, HSYSADMIN)
    share: int | None = None
    break_glass: int | None = None

    def audit_fields(self) -> dict[str, Any]:
        return {
            "purpose": self.purpose,
            "care_relationship": self.care_relationship,
            "reason": self.reason,
            "flagged": self.flagged,
            "outcome_detail": "" if self.allowed else self.reason,
        }


def _deny(reason: str) -> Decision:
    return Decision(False, "denied", reason=reason)


def _now() -> datetime:
    return datetime.now(UTC)


def _active(expires: Any, now: Any) -> ColumnElement[bool]:
    return or_(expires.is_(None), expires > now)


def _persons_in(column: Any, person_pks: Collection[int]) -> ColumnElement[bool]:
    """``column`` names one of ``person_pks``, or a person merged into one of them."""
    pks = sorted(set(person_pks))
    merged = select(persons.c.pk).where(persons.c.merged_into_pk.in_(pks)).scalar_subquery()
    return or_(column.in_(pks), column.in_(merged))


def _is_researcher_only(p: Principal) -> bool:
    return p.has_role("researcher") and not p.roles & _SEEING_ROLES


def _is_patient(p: Principal) -> bool:
    return p.kind == "user" and (p.has_role("patient") or (p.patient_key is not None and not p.roles & _SEEING_ROLES))


def _link_pk(p: Principal) -> int | None:
    if p.kind != "share-link" or not p.name.startswith("share-link:"):
        return None
    tail = p.name.removeprefix("share-link:")
    return int(tail) if tail.isdigit() else None


def _rights(text: str) -> frozenset[str]:
    return frozenset(r for r in text.split(",") if r)


def _merged_target(conn: Connection, person_pk: int) -> set[int]:
    """``person_pk`` and the person it was merged into (if any)."""
    row = conn.execute(select(persons.c.merged_into_pk).where(persons.c.pk == person_pk)).first()
    return {person_pk} | ({row[0]} if row is not None and row[0] is not None else set())


# On PostgreSQL the conditions' EXISTS subqueries carry OFFSET 0, which keeps the
# planner from turning them into a hashed set of every matching row (all of an
# organisation's instances, say): each stays an index probe per candidate row.
_PER_ROW: ContextVar[bool] = ContextVar("policy_per_row", default=False)


def _exists(sel: Any) -> ColumnElement[bool]:
    return exists(sel.offset(0) if _PER_ROW.get() else sel)


# Aliases the query doors' conditions use (made once: building them costs more than the SQL).
_STUDIES = studies.alias("policy_studies")
_SERIES = series.alias("policy_series")
_INSTANCES = instances.alias("policy_instances")
_MERGED = persons.alias("policy_merged")
_PI = patient_identifiers.alias("policy_pi")


# --- decisions ------------------------------------------------------------------------------------


def decide(
    conn: Connection,
    principal: Principal,
    action: str,
    *,
    person_pks: Iterable[int],
    study_uid: str | None = None,
    owner_org_pks: Collection[int] = (),
    now: datetime | None = None,
) -> Decision:
    """May ``principal`` do ``action`` on the objects of ``person_pks``
    (in study ``study_uid``, owned by ``owner_org_pks``)?

    ``person_pks`` are the persons (master patient index) the objects belong
    to; ``study_uid`` None asks about the patient as a whole (shares, share
    links and study blocks then do not apply). Raises PolicyError for an
    unknown action."""
    if action not in ACTION_RIGHTS:
        raise PolicyError(f"unknown action {action!r}; known: {', '.join(ACTION_RIGHTS)}")
    right = ACTION_RIGHTS[action]
    if principal.kind == "system":
        return Decision(True, "system", purpose="HSYSADMIN")
    now = now or _now()
    persons_ = sorted(set(person_pks))
    if principal.kind == "share-link":
        return _decide_link(conn, principal, right, persons_, study_uid, now)
    if _is_researcher_only(principal):
        return _deny("research sees de-identified exports only")
    if _is_patient(principal):
        if principal.patient_key is None or right not in SELF_RIGHTS:
            return _deny("a patient sees (views, downloads) only their own record")
        if persons_ and _merged_target(conn, principal.patient_key) & set(persons_):
            return Decision(True, "self", purpose="PATRQT")
        return _deny("not the patient's own record")
    if principal.org_pk is not None and principal.org_pk in owner_org_pks:
        return Decision(True, "owner", purpose="TREAT")
    if right is None:
        return _deny(f"only the owning organisation may {action}")
    if not persons_ and study_uid is None:
        return _deny("no patient named")
    return _decide_need(conn, principal, right, persons_, study_uid, now)


def _decide_need(
    conn: Connection, p: Principal, right: str, person_pks: list[int], study_uid: str | None, now: datetime
) -> Decision:
    """Care relationship, share, block and break-glass, read in one round trip."""
    parts = []
    if person_pks:
        b = patient_blocks
        parts.append(
            select(literal("block").label("kind"), b.c.pk, null().label("text")).where(
                _persons_in(b.c.person_pk, person_pks),
                b.c.revoked_at.is_(None),
                or_(b.c.blocked_org_pk.is_(None), b.c.blocked_org_pk == p.org_pk)
                if p.org_pk is not None
                else b.c.blocked_org_pk.is_(None),
                or_(b.c.study_instance_uid.is_(None), b.c.study_instance_uid == study_uid)
                if study_uid is not None
                else b.c.study_instance_uid.is_(None),
            )
        )
        if p.org_pk is not None:
            c = care_relationships
            whose = c.c.user_pk.is_(None) if p.user_pk is None else or_(c.c.user_pk.is_(None), c.c.user_pk == p.user_pk)
            parts.append(
                select(literal("care").label("kind"), c.c.pk, c.c.reason.label("text")).where(
                    _persons_in(c.c.person_pk, person_pks),
                    c.c.org_pk == p.org_pk,
                    whose,
                    c.c.ended_at.is_(None),
                    _active(c.c.expires_at, now),
                )
            )
        if p.kind == "user":
            g = break_glass
            who = g.c.user_pk == p.user_pk if p.user_pk is not None else g.c.user_name == p.name
            parts.append(
                select(literal("glass").label("kind"), g.c.pk, g.c.reason.label("text")).where(
                    _persons_in(g.c.person_pk, person_pks), who, g.c.expires_at > now
                )
            )
    grantee = []
    if p.org_pk is not None:
        grantee.append(shares.c.grantee_org_pk == p.org_pk)
    if p.user_pk is not None:
        grantee.append(shares.c.grantee_user_pk == p.user_pk)
    if study_uid is not None and grantee:
        s = shares
        parts.append(
            select(literal("share").label("kind"), s.c.pk, s.c.rights.label("text")).where(
                s.c.study_instance_uid == study_uid, or_(*grantee), s.c.revoked_at.is_(None), _active(s.c.expires_at, now)
            )
        )
    if not parts:
        return _deny("no care relationship or share")
    rows = conn.execute(union_all(*parts) if len(parts) > 1 else parts[0]).all()
    found: dict[str, list[Any]] = {}
    for row in sorted(rows, key=lambda r: r.pk):
        found.setdefault(row.kind, []).append(row)
    blocked = "block" in found
    if not blocked:
        if "care" in found:
            care = found["care"][0]
            return Decision(True, "care", care_relationship=care.pk, reason=care.text or "", purpose="TREAT")
        for share in found.get("share", []):
            if right in _rights(share.text):
                return Decision(True, "share", share=share.pk, purpose="TREAT")
    if "glass" in found:
        glass = found["glass"][-1]
        return Decision(True, "break-glass", reason=glass.text, flagged=True, purpose="ETREAT", break_glass=glass.pk)
    if blocked:
        return _deny("blocked by the patient")
    if found.get("share"):
        return _deny(f"the share does not include {right}")
    return _deny("no care relationship or share")


def _decide_link(
    conn: Connection, p: Principal, right: str | None, person_pks: list[int], study_uid: str | None, now: datetime
) -> Decision:
    link_pk = _link_pk(p)
    if link_pk is None or study_uid is None or right is None:
        return _deny("a share link grants only its studies")
    row = conn.execute(
        select(share_links.c.rights)
        .select_from(share_links.join(share_link_studies, share_link_studies.c.link_pk == share_links.c.pk))
        .where(
            share_links.c.pk == link_pk,
            share_link_studies.c.study_instance_uid == study_uid,
            share_links.c.revoked_at.is_(None),
            _active(share_links.c.expires_at, now),
        )
    ).first()
    if row is None:
        return _deny("not a study of an active share link")
    if right not in _rights(row.rights):
        return _deny(f"the share link does not include {right}")
    if person_pks:
        b = patient_blocks
        blocked = conn.execute(
            select(b.c.pk).where(
                _persons_in(b.c.person_pk, person_pks),
                b.c.revoked_at.is_(None),
                b.c.blocked_org_pk.is_(None),
                or_(b.c.study_instance_uid.is_(None), b.c.study_instance_uid == study_uid),
            )
        ).first()
        if blocked is not None:
            return _deny("blocked by the patient")
    return Decision(True, "share-link", purpose="TREAT")


# --- the query doors ------------------------------------------------------------------------------


class _UtcNow(FunctionElement[datetime]):
    """The database's current UTC time, in the form the DateTime columns hold
    (SQLite: text to the millisecond, which compares right with the stored microseconds)."""

    type = DateTime(timezone=True)
    inherit_cache = True
    name = "policy_utc_now"


@compiles(_UtcNow)
def _utc_now_default(element: Any, compiler: Any, **kw: Any) -> str:
    return "CURRENT_TIMESTAMP"


@compiles(_UtcNow, "sqlite")
def _utc_now_sqlite(element: Any, compiler: Any, **kw: Any) -> str:
    return "strftime('%Y-%m-%d %H:%M:%f', 'now')"


# (principal's policy identity, patient level) -> condition; it holds no parameters
# that change (the time is the database's), so it is built once per principal.
_CONDITIONS: dict[tuple[Any, ...], ColumnElement[bool]] = {}


def _key(p: Principal) -> tuple[Any, ...]:
    return (p.kind, p.org_pk, p.user_pk, p.name if p.user_pk is None else None, p.patient_key,
            _is_researcher_only(p), _is_patient(p))  # fmt: skip


def visible_condition(
    conn: Connection, principal: Principal, level: str = "STUDY", *, now: datetime | None = None
) -> ColumnElement[bool] | None:
    """An SQL condition keeping only what ``principal`` may query; None for the system.

    ``level`` is the query level (PATIENT, STUDY, SERIES, IMAGE): at STUDY and
    below the condition is on ``studies`` and ``patients`` (the query joins
    both); at PATIENT on ``patients`` (a patient with at least one visible
    study). Costs microseconds: the condition reads no rows here and is
    built once per principal; ``now`` (tests) builds a fresh one for that time."""
    if principal.kind == "system":
        return None
    patient_level = str(level).upper() == "PATIENT"
    if now is not None:
        return _condition(principal, patient_level, now, conn.dialect.name)
    key = (conn.dialect.name, _key(principal), patient_level)
    cond = _CONDITIONS.get(key)
    if cond is None:
        if len(_CONDITIONS) >= 10_000:
            _CONDITIONS.clear()
        # Compiled once to SQL text (its values are the principal's numbers and
        # name, rendered as quoted literals): SQLAlchemy then keys its statement
        # cache on the text instead of walking a large expression on every query.
        built = _condition(principal, patient_level, _UtcNow(), conn.dialect.name)
        sql = _where_sql(built, patient_level, conn.dialect).replace(":", "\\:")  # no bind parameters in text()
        cond = _CONDITIONS[key] = text(f"({sql})")  # type: ignore[assignment]
    return cond


def _where_sql(cond: ColumnElement[bool], patient_level: bool, dialect: Any) -> str:
    """``cond`` as SQL, correlated to the query's ``studies``/``patients``: compiled
    inside a SELECT from those tables (so they are not repeated in the
    subqueries' FROM), of which the WHERE clause is kept."""
    outer = patients if patient_level else studies.join(patients, studies.c.patient_pk == patients.c.pk)
    sql = str(select(literal(1)).select_from(outer).where(cond).compile(
        dialect=dialect, compile_kwargs={"literal_binds": True}))  # fmt: skip
    head, sep, where = sql.partition("\nWHERE ")
    if not sep or "WHERE" in head:
        raise RuntimeError("unexpected SQL for the policy condition")  # a SQLAlchemy change; caught by the tests
    return where


def _condition(principal: Principal, patient_level: bool, now: Any, dialect: str) -> ColumnElement[bool]:
    token = _PER_ROW.set(dialect == "postgresql")
    try:
        return _build(principal, patient_level, now)
    finally:
        _PER_ROW.reset(token)


def _build(principal: Principal, patient_level: bool, now: Any) -> ColumnElement[bool]:
    if patient_level:
        inner = _STUDIES
        cond = _study_condition(principal, inner, now)
        return exists(select(literal(1)).select_from(inner).where(inner.c.patient_pk == patients.c.pk, cond))
    return _study_condition(principal, studies, now)


def _of_patient(st: Any, table: Any, person: Any, *where: ColumnElement[bool]) -> ColumnElement[bool]:
    """EXISTS a ``table`` row matching ``where`` for the person of the outer query's
    ``patients`` row, or for a person merged into that person: a few index probes per row."""
    pi, pm = _PI, _MERGED
    key = and_(pi.c.value == patients.c.patient_id, pi.c.issuer == patients.c.issuer_of_patient_id)
    # The person, or a person merged into it; correlated explicitly: at PATIENT
    # level ``patients`` is two levels up.
    same = or_(pm.c.pk == pi.c.person_pk, pm.c.merged_into_pk == pi.c.person_pk)
    return _exists(
        select(literal(1))
        .select_from(pi.join(pm, same).join(table, person == pm.c.pk))
        .where(key, *where)
        .correlate(patients, st)
    )


def _blocked(st: Any, against: ColumnElement[bool]) -> ColumnElement[bool]:
    b = patient_blocks
    study = or_(b.c.study_instance_uid.is_(None), b.c.study_instance_uid == st.c.study_instance_uid)
    return _of_patient(st, b, b.c.person_pk, b.c.revoked_at.is_(None), against, study)


def _study_condition(p: Principal, st: Any, now: Any) -> ColumnElement[bool]:
    """The condition on ``st`` (studies or an alias) and ``patients``: correlated
    EXISTS probes (ownership: an instance of the study with the organisation's
    ``org_pk``; care, break-glass and blocks: by the person of the patient row;
    shares: by study UID), evaluated only for the rows the query matches."""
    if p.kind == "share-link":
        return _link_condition(p, st, now)
    if _is_researcher_only(p):
        return false()
    if _is_patient(p):
        if p.patient_key is None:
            return false()
        target = select(persons.c.merged_into_pk).where(persons.c.pk == p.patient_key).scalar_subquery()
        pi = _PI
        return exists(
            select(literal(1))
            .where(
                pi.c.value == patients.c.patient_id,
                pi.c.issuer == patients.c.issuer_of_patient_id,
                or_(pi.c.person_pk == p.patient_key, pi.c.person_pk == target),
            )
            .correlate(patients)
        )
    terms: list[ColumnElement[bool]] = []
    if p.org_pk is not None:
        # Nested, so that every planner probes (series_pk, org_pk) per series of the
        # study instead of walking all of the organisation's instances.
        se, inst = _SERIES, _INSTANCES
        owned = exists(select(literal(1)).where(inst.c.series_pk == se.c.pk, inst.c.org_pk == p.org_pk))
        terms.append(_exists(select(literal(1)).select_from(se).where(se.c.study_pk == st.c.pk, owned)))
    need: list[ColumnElement[bool]] = []
    if p.org_pk is not None:
        c = care_relationships
        whose = c.c.user_pk.is_(None) if p.user_pk is None else or_(c.c.user_pk.is_(None), c.c.user_pk == p.user_pk)
        need.append(
            _of_patient(st, c, c.c.person_pk, c.c.org_pk == p.org_pk, whose, c.c.ended_at.is_(None),
                        _active(c.c.expires_at, now))
        )  # fmt: skip
    grantee = []
    if p.org_pk is not None:
        grantee.append(shares.c.grantee_org_pk == p.org_pk)
    if p.user_pk is not None:
        grantee.append(shares.c.grantee_user_pk == p.user_pk)
    if grantee:
        s = shares
        need.append(
            _exists(select(literal(1)).where(
                s.c.study_instance_uid == st.c.study_instance_uid, or_(*grantee), s.c.revoked_at.is_(None),
                _active(s.c.expires_at, now), s.c.rights.in_(_VIEW_RIGHTS),
            ))
        )  # fmt: skip
    if need:
        b = patient_blocks
        against = or_(b.c.blocked_org_pk.is_(None), b.c.blocked_org_pk == p.org_pk) if p.org_pk is not None else (
            b.c.blocked_org_pk.is_(None))  # fmt: skip
        terms.append(and_(or_(*need), not_(_blocked(st, against))))
    if p.kind == "user":
        g = break_glass
        who = g.c.user_pk == p.user_pk if p.user_pk is not None else g.c.user_name == p.name
        terms.append(_of_patient(st, g, g.c.person_pk, who, g.c.expires_at > now))
    return or_(*terms) if terms else false()


def _link_condition(p: Principal, st: Any, now: Any) -> ColumnElement[bool]:
    """A share link's studies (with the view right, active), less those its patients
    blocked from every organisation."""
    link_pk = _link_pk(p)
    if link_pk is None:
        return false()
    sl, sls = share_links, share_link_studies
    linked = _exists(
        select(literal(1))
        .select_from(sl.join(sls, sls.c.link_pk == sl.c.pk))
        .where(
            sls.c.study_instance_uid == st.c.study_instance_uid, sl.c.pk == link_pk, sl.c.revoked_at.is_(None),
            _active(sl.c.expires_at, now), sl.c.rights.in_(_VIEW_RIGHTS),
        )
    )  # fmt: skip
    return and_(linked, not_(_blocked(st, patient_blocks.c.blocked_org_pk.is_(None))))


# --- share-link principals --------------------------------------------------------------------------


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def looks_like_link_token(value: str) -> bool:
    return value.startswith(LINK_PREFIX)


def link_principal(conn: Connection, token: str, *, address: str | None = None, now: datetime | None = None) -> Principal | None:
    """The principal of an active share link's token; None when unknown, expired or revoked."""
    if not looks_like_link_token(token) or len(token) > 200:
        return None
    row = conn.execute(
        select(share_links.c.pk).where(
            share_links.c.token_sha256 == _digest(token),
            share_links.c.revoked_at.is_(None),
            _active(share_links.c.expires_at, now or _now()),
        )
    ).first()
    if row is None:
        return None
    return Principal(name=f"share-link:{row.pk}", kind="share-link", auth_method="share-link", address=address)


# --- changes ----------------------------------------------------------------------------------------

from .policy_changes import (
    BREAK_GLASS_HOURS,
    CARE_DAYS,
    LINK_PREFIX,
    add_block,
    care_from_adt,
    care_from_referral,
    create_share_link,
    declare_care,
    end_care,
    grant_share,
    lift_block,
    list_blocks,
    list_break_glass,
    list_care,
    list_share_links,
    list_shares,
    revoke_share,
    revoke_share_link,
    start_break_glass,
)

__all__ = [
    "ACTION_RIGHTS",
    "BASES",
    "BREAK_GLASS_HOURS",
    "CARE_DAYS",
    "CARE_SOURCES",
    "LINK_PREFIX",
    "RIGHTS",
    "Decision",
    "PolicyError",
    "add_block",
    "care_from_adt",
    "care_from_referral",
    "create_share_link",
    "decide",
    "declare_care",
    "end_care",
    "grant_share",
    "lift_block",
    "link_principal",
    "list_blocks",
    "list_break_glass",
    "list_care",
    "list_share_links",
    "list_shares",
    "revoke_share",
    "revoke_share_link",
    "start_break_glass",
    "visible_condition",
]  # fmt: skip
