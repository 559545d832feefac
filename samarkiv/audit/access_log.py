"""A patient's access log in plain words (``samarkiv audit patient``, the portal's
``GET /api/patients/{id}/access-log``).

The patient is a person of the master patient index, named by its number, a
national number (any written form) or ``VALUE^ISSUER``; resolution only reads
(samarkiv/identity). Each record concerning the person becomes one sentence:
"Anna Berg (radiologist) at Karolinska viewed your CT study of 2024-03-01 on
2024-05-02 at 14:03 UTC because: emergency access (reason: unconscious in
the emergency room)."
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Connection, select

from ..identity.national import ISSUER_OF_KIND, NationalKind, parse_national
from ..identity.patients import (
    Canonical,
    Identifier,
    IdentityError,
    UnknownPerson,
    current_person,
    identifier_from_text,
    person_for,
)
from ..index.audit_schema import audit_events, audit_patients
from ..index.identity_schema import organisations, persons
from ..index.schema import series, studies
from .events import PURPOSES

# action -> (verb, verb when refused)
_VERBS = {
    "query": ("searched for", "tried to search for"),
    "retrieve": ("retrieved", "tried to retrieve"),
    "view": ("viewed", "tried to view"),
    "download": ("downloaded", "tried to download"),
    "export": ("exported", "tried to export"),
    "store": ("stored", "tried to store"),
    "delete": ("deleted", "tried to delete"),
    "share": ("shared", "tried to share"),
    "break-glass": ("used emergency access to open", "tried emergency access to open"),
    "link": ("linked records of", "tried to link records of"),
    "merge": ("merged records of", "tried to merge records of"),
    "unlink": ("separated records of", "tried to separate records of"),
    "unmerge": ("separated records of", "tried to separate records of"),
    "audit-read": ("read the access log of", "tried to read the access log of"),
}


def resolve_patient(conn: Connection, text: str) -> int:
    """The person ``text`` names: ``VALUE^ISSUER``, a national number, or a person number."""
    text = text.strip()
    if not text:
        raise IdentityError("name a patient: a national number, VALUE^ISSUER, or a person number")
    if "^" in text:
        return person_for(conn, identifier_from_text(conn, text))
    found: set[int] = set()
    for kind in (NationalKind.SE_PERSONNUMMER, NationalKind.NO_FODSELSNUMMER, NationalKind.DK_CPR):
        try:
            national = parse_national(text, kind)
        except ValueError:
            continue
        if national.valid and national.kind is not None:
            key = Canonical(Identifier(national.normalised or text, ISSUER_OF_KIND[national.kind]), national)
            try:
                found.add(person_for(conn, key))
            except IdentityError:
                pass
    if len(found) == 1:
        return found.pop()
    if len(found) > 1:
        raise IdentityError(f"{text} names several persons: {', '.join(map(str, sorted(found)))}")
    if text.isdigit() and len(text) <= 9:
        return current_person(conn, int(text))
    raise UnknownPerson(f"no patient {text!r} (give a national number, VALUE^ISSUER, or a person number)")


@dataclass
class AccessEntry:
    seq: int
    time: str
    action: str
    outcome: str
    who: str
    organisation: str
    purpose: str
    reason: str
    study: str
    text: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _with_merged(conn: Connection, person_pk: int) -> set[int]:
    """``person_pk`` and every person merged into it, directly or in steps."""
    found, frontier = {person_pk}, {person_pk}
    while frontier:
        frontier = set(conn.execute(select(persons.c.pk).where(persons.c.merged_into_pk.in_(frontier))).scalars()) - found
        found |= frontier
    return found


def records_of_patient(
    conn: Connection, person_pk: int, *, since: datetime | None = None, until: datetime | None = None, limit: int = 10_000
) -> list[dict[str, Any]]:
    """Audit records naming ``person_pk`` or a person merged into it (the records
    made before the merge are the same patient's), oldest first."""
    keys = _with_merged(conn, person_pk)
    q = select(audit_events).where(
        audit_events.c.seq.in_(select(audit_patients.c.seq).where(audit_patients.c.patient_key.in_(keys)))
    )
    if since is not None:
        q = q.where(audit_events.c.time >= since)
    if until is not None:
        q = q.where(audit_events.c.time < until)
    return [dict(r._mapping) for r in conn.execute(q.order_by(audit_events.c.seq).limit(limit))]


def _org_names(conn: Connection, codes: Iterable[str]) -> dict[str, str]:
    codes = {c for c in codes if c}
    if not codes:
        return {}
    rows = conn.execute(select(organisations.c.code, organisations.c.name).where(organisations.c.code.in_(codes)))
    return {r.code: r.name for r in rows}


def _studies(conn: Connection, uids: Iterable[str]) -> dict[str, tuple[str, str]]:
    """study UID -> (modalities, YYYY-MM-DD date)."""
    uids = {u for u in uids if u}
    if not uids:
        return {}
    found: dict[str, tuple[list[str], str]] = {}
    rows = conn.execute(
        select(studies.c.study_instance_uid, studies.c.study_date, series.c.modality)
        .select_from(studies.outerjoin(series, series.c.study_pk == studies.c.pk))
        .where(studies.c.study_instance_uid.in_(uids))
    )
    for r in rows:
        mods, _ = found.setdefault(r.study_instance_uid, ([], r.study_date or ""))
        if r.modality and r.modality not in mods:
            mods.append(r.modality)
    out = {}
    for uid, (mods, da) in found.items():
        day = f"{da[:4]}-{da[4:6]}-{da[6:8]}" if len(da) == 8 and da.isdigit() else ""
        out[uid] = ("/".join(sorted(mods)), day)
    return out


def _who(record: Mapping[str, Any], orgs: dict[str, str]) -> tuple[str, str]:
    org = orgs.get(record["org_code"] or "", record["org_code"] or "")
    roles = [r for r in (record["roles"] or "").split(",") if r and r != "service"]
    kind = record["principal_kind"]
    if kind == "system" or not record["user_name"]:
        who = "The archive itself"
    elif kind == "service":
        who = f"The DICOM system {record['user_name']}"
    elif kind == "share-link":
        who = "Someone holding a share link"
    elif kind == "user" and "patient" in roles:
        who = "You"
    else:
        who = record["user_name"] + (f" ({', '.join(roles)})" if roles else "")
    return who + (f" at {org}" if org else ""), org


def _because(record: Mapping[str, Any]) -> str:
    purpose, reason = record["purpose"], (record["reason"] or "").strip()
    if record["action"] == "break-glass" or purpose == "ETREAT":
        return "emergency access" + (f" (reason: {reason})" if reason else "")
    parts = []
    if purpose:
        words = PURPOSES.get(purpose, purpose)
        if purpose == "TREAT" and record["care_relationship"]:
            words += f" (care relationship {record['care_relationship']})"
        parts.append(words)
    if reason:
        parts.append(reason if not parts else f"reason: {reason}")
    return "; ".join(parts)


def describe(record: Mapping[str, Any], orgs: dict[str, str], studies_: dict[str, tuple[str, str]]) -> AccessEntry:
    """One record as an entry with its plain-words sentence."""
    who, org = _who(record, orgs)
    verb, refused = _VERBS.get(record["action"], (record["action"], f"tried to {record['action']}"))
    if record["outcome"] != "allowed":
        verb = refused
    uid = record["study_uid"]
    if uid:
        mods, day = studies_.get(uid, ("", ""))
        what = "your " + (f"{mods} " if mods else "") + "study" + (f" of {day}" if day else "")
        if record["object_count"] and record["object_count"] > 1 and record["action"] != "query":
            what += f" ({record['object_count']} images)"
    elif record["action"] == "query":
        what = "your studies"
    else:
        what = "your records"
    when = record["time"]
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    stamp = when.strftime("on %Y-%m-%d at %H:%M UTC")
    because = _because(record)
    text = f"{who} {verb} {what} {stamp}"
    if record["outcome"] == "denied":
        text += " and was refused"
    elif record["outcome"] == "error":
        text += " but it failed"
    text += f" because: {because}." if because else "."
    return AccessEntry(
        seq=int(record["seq"]), time=when.isoformat().replace("+00:00", "Z"), action=record["action"],
        outcome=record["outcome"], who=who, organisation=org, purpose=record["purpose"] or "",
        reason=record["reason"] or "", study=uid or "", text=text,
    )  # fmt: skip


def access_log(
    conn: Connection, person_pk: int, *, since: date | datetime | None = None, limit: int = 10_000
) -> list[AccessEntry]:
    """The person's access log, oldest first."""
    start = datetime(since.year, since.month, since.day, tzinfo=UTC) if isinstance(since, date) and not isinstance(since, datetime) else since
    records = records_of_patient(conn, person_pk, since=start, limit=limit)
    orgs = _org_names(conn, (r["org_code"] for r in records))
    studies_ = _studies(conn, (r["study_uid"] for r in records))
    return [describe(r, orgs, studies_) for r in records]
