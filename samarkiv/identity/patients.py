"""The master patient index: persons, their identifiers, links and merges.

A patient identifier is (Patient ID, issuer), the issuer being canonical
(:func:`canonicalise`): a national number's issuer OID; else the organisation
an issuer belongs to; else the dataset's own Issuer of Patient ID or
universal entity ID; else the owning organisation's issuer. A bare Patient
ID is never a key. Every identifier sits on one person; a valid national
number (Patient ID under a national issuer, or an Other Patient IDs Sequence
item, PS3.3 C.7.1.1) links the identifiers it arrives with to the person
carrying it, merging persons when needed. Invalid numbers are kept, flagged,
and never linked. Links and merges are recorded in ``identity_history`` and
can be undone (:func:`unlink`, :func:`unmerge`).

The catalogue's ``patients`` rows use the same key: a patient row belongs to
the person of the identifier whose (value, issuer) equals its (patient_id,
issuer_of_patient_id); :func:`persons_matching` finds the person a query
key names and :func:`identifiers_of_same_person` all its keys, for
cross-referencing queries (IHE PIX style, identity/query.py).

Functions take a ``Connection`` inside the caller's transaction.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Connection, Select, and_, delete, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from ..index.identity_schema import identity_history, organisations, patient_identifiers, persons
from ..index.schema import patients, studies
from .national import (
    ISSUER_OF_KIND,
    NationalKind,
    NationalNumber,
    Issuer,
    identifiers_in_dataset,
    national_kind_of_issuer,
    parse_national,
)
from .organisations import Organisation, get_organisation, organisation_for_issuer

_LO = 64
_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")


class IdentityError(ValueError):
    """A link, merge or lookup that cannot be done (exit status 1)."""


class UnknownIdentifier(IdentityError):
    pass


class UnknownPerson(IdentityError):
    pass


class MalformedIdentifier(IdentityError):
    """Text that is no VALUE^ISSUER (exit status 2)."""


class InvalidNationalNumber(IdentityError):
    """A national number that fails its checks (exit status 2)."""


@dataclass(frozen=True)
class Identifier:
    """A canonical patient key."""

    value: str
    issuer: str

    def __str__(self) -> str:
        return f"{self.value}^{self.issuer}"


@dataclass(frozen=True)
class Canonical:
    identifier: Identifier
    national: NationalNumber | None


@dataclass(frozen=True)
class ResolvedIdentity:
    """What the store path needs: the person, and the identifier row whose
    (value, issuer) is the key to file the ``patients`` row under."""

    person_pk: int
    identifier_pk: int
    identifier: Identifier
    national: tuple[NationalNumber, ...] = ()  # national numbers the dataset carried
    linked: tuple[Identifier, ...] = ()  # identifiers newly put on the person
    flagged: tuple[Identifier, ...] = ()  # invalid national numbers, kept unlinked
    conflicts: tuple[str, ...] = ()  # links not made, recorded in identity_history


def _now() -> datetime:
    return datetime.now(UTC)


def _as_issuer(issuer: Issuer | str | None) -> Issuer:
    if isinstance(issuer, Issuer):
        return issuer
    text = (issuer or "").strip()
    return Issuer(universal=text, universal_type="ISO") if _OID.fullmatch(text) else Issuer(local=text)


# --- keys ---------------------------------------------------------------------


def canonicalise(
    conn: Connection,
    value: str,
    issuer: Issuer | str | None,
    owner: Organisation | None,
    today: date | None = None,
) -> Canonical:
    """The canonical key of ``value`` issued by ``issuer``; the owner's issuer
    when ``issuer`` is empty (IdentityError when there is no owner either)."""
    issuer = _as_issuer(issuer)
    value = value.strip()[:_LO]
    kind = issuer.national_kind
    if kind is not None:
        key = ISSUER_OF_KIND[kind]
    elif issuer.universal:
        org = organisation_for_issuer(conn, Issuer(universal=issuer.universal))
        key = org.patient_id_issuer if org else issuer.local or issuer.universal
    elif issuer.local:
        key = issuer.local
    elif owner is not None:
        key = owner.patient_id_issuer
    else:
        raise IdentityError("a Patient ID without issuer needs an owning organisation")
    key = key[:_LO]
    kind = national_kind_of_issuer(key)
    national = parse_national(value, kind, today) if kind is not None and value else None
    return Canonical(Identifier(value, key), national)


def identifier_from_text(conn: Connection, text: str, today: date | None = None) -> Canonical:
    """``VALUE^ISSUER`` as typed by an administrator. ISSUER may be an issuer
    OID or name, an organisation code (its issuer), or a national kind such as
    ``se-personnummer``."""
    value, sep, issuer_text = text.rpartition("^")
    if not sep or not value.strip() or not issuer_text.strip():
        raise MalformedIdentifier(f"{text!r}: write VALUE^ISSUER (a Patient ID is never used without its issuer)")
    issuer_text = issuer_text.strip()
    try:
        issuer: Issuer | str = ISSUER_OF_KIND[NationalKind(issuer_text.lower())]
    except (ValueError, KeyError):
        org = get_organisation(conn, issuer_text)
        issuer = org.patient_id_issuer if org is not None else issuer_text
    return canonicalise(conn, value, issuer, None, today)


# --- rows ---------------------------------------------------------------------


def _row(conn: Connection, ident: Identifier) -> Any:
    return conn.execute(
        select(patient_identifiers).where(
            patient_identifiers.c.value == ident.value, patient_identifiers.c.issuer == ident.issuer
        )
    ).first()


def _require_row(conn: Connection, ident: Identifier) -> Any:
    row = _row(conn, ident)
    if row is None:
        raise UnknownIdentifier(f"no patient identifier {ident}")
    return row


def _holders(conn: Connection, national: NationalNumber) -> list[int]:
    """Persons carrying this valid national number (in any written form)."""
    return list(
        conn.execute(
            select(patient_identifiers.c.person_pk)
            .where(
                patient_identifiers.c.national_kind == str(national.kind),
                patient_identifiers.c.national_normalised == national.normalised,
                patient_identifiers.c.national_valid.is_(True),
                patient_identifiers.c.person_pk.isnot(None),
            )
            .distinct()
            .order_by(patient_identifiers.c.person_pk)
        ).scalars()
    )


def _new_person(conn: Connection, now: datetime) -> int:
    return conn.execute(insert(persons).values(created_at=now).returning(persons.c.pk)).scalar_one()


def _fill_person(conn: Connection, person_pk: int, nationals: Iterable[NationalNumber]) -> None:
    """Birth date and sex from the first valid national number, where unknown."""
    for national in nationals:
        if national.links_persons and national.birth_date is not None:
            conn.execute(
                update(persons)
                .where(persons.c.pk == person_pk, persons.c.birth_date.is_(None))
                .values(birth_date=f"{national.birth_date:%Y%m%d}", sex=national.sex)
            )
            return


def _insert_identifier(
    conn: Connection,
    canonical: Canonical,
    person_pk: int | None,
    organisation_pk: int | None,
    now: datetime,
    seen_with_pk: int | None = None,
) -> int | None:
    """Insert the identifier; None when another writer inserted it first."""
    national = canonical.national
    values = {
        "value": canonical.identifier.value,
        "issuer": canonical.identifier.issuer,
        "person_pk": person_pk,
        "organisation_pk": organisation_pk,
        "national_kind": str(national.kind) if national and national.kind else None,
        "national_normalised": national.normalised if national else None,
        "national_valid": national.valid if national else None,
        "national_reason": national.reason or None if national else None,
        "seen_with_pk": seen_with_pk,
        "created_at": now,
    }
    dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    return conn.execute(
        dialect_insert(patient_identifiers)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["value", "issuer"])
        .returning(patient_identifiers.c.pk)
    ).scalar()


def _history(
    conn: Connection,
    action: str,
    actor: str,
    reason: str,
    now: datetime,
    *,
    identifier_pk: int | None = None,
    from_person: int | None = None,
    to_person: int | None = None,
    detail: dict[str, Any] | None = None,
) -> int:
    return conn.execute(
        insert(identity_history)
        .values(
            action=action,
            identifier_pk=identifier_pk,
            from_person_pk=from_person,
            to_person_pk=to_person,
            detail=json.dumps(detail or {}, sort_keys=True),
            actor=actor[:128],
            reason=reason,
            at=now,
        )
        .returning(identity_history.c.pk)
    ).scalar_one()


def _move_person(
    conn: Connection, source: int, target: int, action: str, actor: str, reason: str, now: datetime
) -> int:
    """Put all of ``source``'s identifiers on ``target`` and retire ``source``."""
    moved = list(
        conn.execute(
            select(patient_identifiers.c.pk).where(patient_identifiers.c.person_pk == source)
        ).scalars()
    )
    conn.execute(
        update(patient_identifiers)
        .where(patient_identifiers.c.person_pk == source)
        .values(person_pk=target, pinned=False if action == "merge" else patient_identifiers.c.pinned)
    )
    conn.execute(update(persons).where(persons.c.pk == source).values(merged_into_pk=target))
    return _history(
        conn, action, actor, reason, now, from_person=source, to_person=target, detail={"identifiers": moved}
    )


def _sides_conflict(conn: Connection, person_pks: set[int], dataset: dict[str, str]) -> str:
    """Why these persons (and the dataset's national numbers) must not be
    merged automatically, or '' when they may."""
    rows = conn.execute(
        select(
            patient_identifiers.c.person_pk,
            patient_identifiers.c.national_kind,
            patient_identifiers.c.national_normalised,
            patient_identifiers.c.national_valid,
            patient_identifiers.c.pinned,
        ).where(patient_identifiers.c.person_pk.in_(person_pks))
    ).all()
    if len(person_pks) > 1 and any(r.pinned for r in rows):
        return "an administrator separated one of these persons' identifiers"
    sides: dict[str, dict[object, set[str]]] = {}
    for r in rows:
        if r.national_valid and r.national_kind and NationalKind(r.national_kind).links_persons:
            sides.setdefault(r.national_kind, {}).setdefault(r.person_pk, set()).add(r.national_normalised)
    for kind, normalised in dataset.items():
        sides.setdefault(kind, {})["dataset"] = {normalised}
    for kind, by_side in sides.items():
        values = list(by_side.values())
        for i, one in enumerate(values):
            if any(not (one & other) for other in values[i + 1 :]):
                return f"different {kind} numbers"
    return ""


def _record_conflict(
    conn: Connection,
    actor: str,
    reason: str,
    now: datetime,
    identifier_pk: int | None,
    from_person: int | None,
    to_person: int | None,
) -> None:
    """Record a link not made, once (every instance of a study repeats it)."""
    h = identity_history
    same = conn.execute(
        select(h.c.pk).where(
            h.c.action == "conflict",
            h.c.reason == reason,
            h.c.identifier_pk.is_(None) if identifier_pk is None else h.c.identifier_pk == identifier_pk,
            h.c.from_person_pk.is_(None) if from_person is None else h.c.from_person_pk == from_person,
            h.c.to_person_pk.is_(None) if to_person is None else h.c.to_person_pk == to_person,
        ).limit(1)
    ).first()
    if same is None:
        _history(
            conn, "conflict", actor, reason, now, identifier_pk=identifier_pk, from_person=from_person, to_person=to_person
        )


# --- the store path -------------------------------------------------------------


def resolve_identity(
    conn: Connection,
    patient_id: str,
    issuer: Issuer | str | None = None,
    other_ids: Iterable[tuple[str, Issuer | str | None]] = (),
    owner_org: Organisation | None = None,
    *,
    actor: str = "store",
    today: date | None = None,
    _retry: bool = True,
) -> ResolvedIdentity:
    """The person a stored dataset belongs to, linking and flagging as the
    module docstring says. No writes once the identifier and the national
    numbers it comes with are known: one SELECT, plus one per national number
    in Other Patient IDs.

    ``other_ids`` are (Patient ID, issuer) pairs of the Other Patient IDs
    Sequence; those without an issuer, and local ones, are not linked
    automatically. An empty Patient ID gets a key but never links.
    """
    primary = canonicalise(conn, patient_id, issuer, owner_org, today)
    others: list[Canonical] = []
    for value, other_issuer in other_ids:
        other_issuer = _as_issuer(other_issuer)
        if not value.strip() or other_issuer.national_kind is None:
            continue  # only national numbers link (or are flagged)
        other = canonicalise(conn, value, other_issuer, None, today)
        matters = other.national is not None and (other.national.links_persons or not other.national.valid)
        if matters and other.identifier != primary.identifier and other not in others:
            others.append(other)
    national = tuple(c.national for c in (primary, *others) if c.national is not None)
    row = _row(conn, primary.identifier)
    if row is not None and row.person_pk is not None:
        # Known, and every national number it came with known too: nothing to do.
        settled = True
        for c in others:
            known = _row(conn, c.identifier)
            if known is None or known.person_pk not in (row.person_pk, None) or (
                known.person_pk is None and c.national is not None and c.national.valid
            ):
                settled = False
                break
        if settled:
            return ResolvedIdentity(row.person_pk, row.pk, primary.identifier, national)

    now = _now()
    conflicts: list[str] = []
    linking: list[Canonical] = []
    by_kind: dict[str, str] = {}
    ambiguous: set[str] = set()
    for c in (primary, *others):
        if not primary.identifier.value or c.national is None or not c.national.links_persons:
            continue
        kind, normalised = str(c.national.kind), c.national.normalised or ""
        if by_kind.setdefault(kind, normalised) != normalised:
            ambiguous.add(kind)
        linking.append(c)
    for kind in sorted(ambiguous):  # which one is the patient's? link none of them
        conflicts.append(f"the dataset carries different {kind} numbers; none linked")
        linking = [c for c in linking if c is primary or str(c.national.kind) != kind]  # type: ignore[union-attr]
        if primary.national is None or str(primary.national.kind) != kind:
            del by_kind[kind]

    primary_person = row.person_pk if row is not None else None
    holders: list[int] = []
    for c in linking:
        holders += [pk for pk in _holders(conn, c.national) if pk not in holders]  # type: ignore[arg-type]
    candidates = {pk for pk in (primary_person, *holders) if pk is not None}
    target: int | None = next(iter(candidates)) if len(candidates) == 1 else None
    why = _sides_conflict(conn, candidates, by_kind) if candidates and linking else ""
    if why:
        conflicts.append(f"not linked: {why}")
        _record_conflict(
            conn, actor, why, now, row.pk if row is not None else None,
            primary_person, min(holders) if holders else None,
        )  # fmt: skip
        linking = []
        target = primary_person
    elif len(candidates) > 1:
        target = min(holders)
        for source in sorted(candidates - {target}):
            _move_person(
                conn, source, target, "auto-link", actor, "a stored dataset carries a national number of both", now
            )
    for text in conflicts:
        if not text.startswith("not linked"):
            _record_conflict(conn, actor, text, now, row.pk if row is not None else None, primary_person, None)

    created = target is None
    if target is None:
        target = _new_person(conn, now)
    owner_pk = owner_org.pk if owner_org is not None else None
    if row is None:
        pk = _insert_identifier(conn, primary, target, owner_pk, now)
        if pk is None:  # another writer keyed it first: start again from its row
            if created:
                conn.execute(delete(persons).where(persons.c.pk == target))
            if not _retry:
                raise IdentityError(f"identifier {primary.identifier} keeps changing under us")
            return resolve_identity(
                conn, patient_id, issuer, [(o.identifier.value, o.identifier.issuer) for o in others],
                owner_org, actor=actor, today=today, _retry=False,
            )  # fmt: skip
        primary_pk = pk
    else:
        primary_pk = row.pk
        if row.person_pk is None:  # a flagged number, now a dataset's own Patient ID
            conn.execute(update(patient_identifiers).where(patient_identifiers.c.pk == row.pk).values(person_pk=target))

    linked: list[Identifier] = []
    flagged: list[Identifier] = []
    for c in others:
        existing = _row(conn, c.identifier)
        if c in linking:
            if existing is None:
                if _insert_identifier(conn, c, target, owner_pk, now) is not None:
                    linked.append(c.identifier)
            elif existing.person_pk is None:
                conn.execute(
                    update(patient_identifiers).where(patient_identifiers.c.pk == existing.pk).values(person_pk=target)
                )
                linked.append(c.identifier)
        elif c.national is not None and not c.national.valid and existing is None:
            _insert_identifier(conn, c, None, owner_pk, now, seen_with_pk=primary_pk)
            flagged.append(c.identifier)
    if linked:
        _history(
            conn, "auto-link", actor, "national number in Other Patient IDs", now,
            to_person=target, detail={"identifiers": [str(i) for i in linked]},
        )  # fmt: skip
    _fill_person(conn, target, (c.national for c in linking if c.national is not None))
    return ResolvedIdentity(
        target, primary_pk, primary.identifier, national, tuple(linked), tuple(flagged), tuple(conflicts)
    )


def resolve_dataset(
    conn: Connection, ds: Any, owner_org: Organisation | None, *, actor: str = "store", today: date | None = None
) -> ResolvedIdentity:
    """:func:`resolve_identity` for a pydicom Dataset's patient identifiers."""
    found = list(identifiers_in_dataset(ds, today))
    primary, others = found[0], found[1:]
    return resolve_identity(
        conn, primary.value, primary.issuer, [(o.value, o.issuer) for o in others], owner_org,
        actor=actor, today=today,
    )  # fmt: skip


# --- manual links -----------------------------------------------------------------


def current_person(conn: Connection, person_pk: int) -> int:
    """The person ``person_pk`` is now (following merges)."""
    seen: set[int] = set()
    pk = person_pk
    while True:
        merged_into = conn.execute(select(persons.c.merged_into_pk).where(persons.c.pk == pk)).first()
        if merged_into is None:
            raise UnknownPerson(f"no person {person_pk}")
        if merged_into[0] is None or pk in seen:
            return pk
        seen.add(pk)
        pk = merged_into[0]


def person_of(conn: Connection, ident: Identifier) -> int | None:
    row = _row(conn, ident)
    return None if row is None else row.person_pk


def find_identifier(conn: Connection, canonical: Canonical) -> Identifier:
    """The stored identifier ``canonical`` names: itself, or for a valid
    national number the one stored in another written form."""
    if _row(conn, canonical.identifier) is not None:
        return canonical.identifier
    national = canonical.national
    if national is not None and national.valid and national.kind is not None:
        pi = patient_identifiers
        found = conn.execute(
            select(pi.c.value, pi.c.issuer)
            .where(pi.c.national_kind == str(national.kind), pi.c.national_normalised == national.normalised)
            .order_by(pi.c.person_pk.is_(None), pi.c.pk)
        ).first()
        if found is not None:
            return Identifier(found.value, found.issuer)
    raise UnknownIdentifier(f"no patient identifier {canonical.identifier}")


def person_for(conn: Connection, canonical: Canonical) -> int:
    """The one person a key names (a national number in any written form)."""
    found = sorted(set(conn.execute(persons_matching(canonical)).scalars()))
    if not found:
        raise UnknownIdentifier(f"no person has the identifier {canonical.identifier}")
    if len(found) > 1:
        raise IdentityError(f"{canonical.identifier} names several persons: {', '.join(map(str, found))}")
    return found[0]


def link(
    conn: Connection,
    identifier: Canonical | Identifier,
    to: Canonical | Identifier | int,
    *,
    actor: str,
    reason: str = "",
) -> int | None:
    """Put ``identifier`` on the person of ``to`` (an identifier, or a person
    pk); a ``to`` identifier not yet known is created on ``identifier``'s
    person (a national one must be valid). Returns the history pk, or None
    when they already are one person."""
    ident = identifier.identifier if isinstance(identifier, Canonical) else identifier
    row = _require_row(conn, ident)
    now = _now()
    if isinstance(to, int):
        target = current_person(conn, to)
    else:
        canonical = to if isinstance(to, Canonical) else Canonical(to, None)
        to_row = _row(conn, canonical.identifier)
        holders = _holders(conn, canonical.national) if canonical.national and canonical.national.valid else []
        if to_row is None and holders:  # the number is known, written another way
            to_row = _require_row(conn, find_identifier(conn, canonical))
        if to_row is None:
            if canonical.national is not None and not canonical.national.valid:
                raise InvalidNationalNumber(
                    f"{canonical.identifier}: invalid {canonical.national.kind or canonical.national.country} "
                    f"number ({canonical.national.reason})"
                )
            if row.person_pk is None:
                raise IdentityError(f"{ident} is a flagged number on no person; link it to a known identifier")
            pk = _insert_identifier(conn, canonical, row.person_pk, None, now)  # typed, not sent
            if canonical.national is not None:
                _fill_person(conn, row.person_pk, [canonical.national])
            return _history(
                conn, "link", actor, reason, now, identifier_pk=pk, to_person=row.person_pk,
                detail={"created": str(canonical.identifier)},
            )  # fmt: skip
        if to_row.person_pk is None:
            # ``to`` is a flagged number: link it onto ``identifier``'s person instead.
            if row.person_pk is None:
                raise IdentityError("neither identifier is on a person")
            row, target = to_row, row.person_pk
        else:
            target = to_row.person_pk
    if row.person_pk == target:
        return None
    conn.execute(
        update(patient_identifiers).where(patient_identifiers.c.pk == row.pk).values(person_pk=target, pinned=False)
    )
    return _history(conn, "link", actor, reason, now, identifier_pk=row.pk, from_person=row.person_pk, to_person=target)


def unlink(conn: Connection, identifier: Canonical | Identifier, *, actor: str, reason: str = "") -> int:
    """Take ``identifier`` off its person onto a new person of its own, and
    keep automatic linking from joining them again. Returns the new person."""
    ident = identifier.identifier if isinstance(identifier, Canonical) else identifier
    row = _require_row(conn, ident)
    if row.person_pk is None:
        raise IdentityError(f"{ident} is not linked to a person")
    count = conn.execute(
        select(func.count()).select_from(patient_identifiers).where(patient_identifiers.c.person_pk == row.person_pk)
    ).scalar_one()
    if count == 1:
        raise IdentityError(f"{ident} is the only identifier of person {row.person_pk}")
    now = _now()
    new = _new_person(conn, now)
    conn.execute(
        update(patient_identifiers).where(patient_identifiers.c.pk == row.pk).values(person_pk=new, pinned=True)
    )
    if row.national_valid:
        _fill_person(conn, new, [_national_of_row(row)])
    _history(conn, "unlink", actor, reason, now, identifier_pk=row.pk, from_person=row.person_pk, to_person=new)
    return new


def _national_of_row(row: Any) -> NationalNumber:
    return parse_national(row.value, NationalKind(row.national_kind))


def merge(conn: Connection, source: int, target: int, *, actor: str, reason: str = "") -> int:
    """Merge person ``source`` into ``target``: all of source's identifiers
    move, source is kept (merged into target) so :func:`unmerge` can undo it.
    Returns the history pk."""
    source_now, target_now = current_person(conn, source), current_person(conn, target)
    if source_now != source:
        raise IdentityError(f"person {source} is already merged into person {source_now}")
    if source_now == target_now:
        raise IdentityError(f"persons {source} and {target} are already one person")
    return _move_person(conn, source, target_now, "merge", actor, reason, _now())


def unmerge(conn: Connection, source: int, *, actor: str, reason: str = "") -> int:
    """Undo the latest merge (manual or automatic) of person ``source``: the
    identifiers it moved go back (unless moved again by hand since), and are
    kept from being linked automatically again. Returns the history pk."""
    last = conn.execute(
        select(identity_history)
        .where(
            identity_history.c.from_person_pk == source,
            identity_history.c.action.in_(("merge", "auto-link")),
            identity_history.c.reverted_by_pk.is_(None),
        )
        .order_by(identity_history.c.pk.desc())
        .limit(1)
    ).first()
    if last is None:
        raise IdentityError(f"person {source} has no merge to undo")
    chain = {last.to_person_pk}
    pk = last.to_person_pk
    while (pk := conn.execute(select(persons.c.merged_into_pk).where(persons.c.pk == pk)).scalar()) is not None:
        if pk in chain:
            break
        chain.add(pk)
    moved = json.loads(last.detail or "{}").get("identifiers", [])
    now = _now()
    back = list(
        conn.execute(
            select(patient_identifiers.c.pk).where(
                patient_identifiers.c.pk.in_(moved), patient_identifiers.c.person_pk.in_(chain)
            )
        ).scalars()
    )
    conn.execute(
        update(patient_identifiers).where(patient_identifiers.c.pk.in_(back)).values(person_pk=source, pinned=True)
    )
    conn.execute(update(persons).where(persons.c.pk == source).values(merged_into_pk=None))
    pk = _history(
        conn, "unmerge", actor, reason, now, from_person=last.to_person_pk, to_person=source,
        detail={"identifiers": back, "reverts": last.pk},
    )  # fmt: skip
    conn.execute(update(identity_history).where(identity_history.c.pk == last.pk).values(reverted_by_pk=pk))
    return pk


def last_merge_of(conn: Connection, ident: Identifier) -> int | None:
    """The person whose latest unreverted merge moved ``ident`` (for unmerge by identifier)."""
    row = _require_row(conn, ident)
    for entry in conn.execute(
        select(identity_history)
        .where(identity_history.c.action.in_(("merge", "auto-link")), identity_history.c.reverted_by_pk.is_(None))
        .where(identity_history.c.from_person_pk.isnot(None))
        .order_by(identity_history.c.pk.desc())
    ):
        if row.pk in json.loads(entry.detail or "{}").get("identifiers", []):
            return entry.from_person_pk
    return None


# --- reading ------------------------------------------------------------------


@dataclass(frozen=True)
class IdentifierView:
    pk: int
    value: str
    issuer: str
    organisation: str | None
    national_kind: str | None
    national_valid: bool | None
    national_reason: str | None
    pinned: bool
    created_at: datetime


@dataclass(frozen=True)
class PersonView:
    pk: int
    merged_into: int | None
    birth_date: str | None
    sex: str | None
    identifiers: list[IdentifierView]
    flagged: list[IdentifierView]
    merged_from: list[int]
    studies: int
    history: list[dict[str, Any]] = field(default_factory=list)
    demographics: list[Any] = field(default_factory=list)  # demographics.IdentifierDemographics
    conflicts: list[Any] = field(default_factory=list)  # demographics.Conflict

    def as_dict(self) -> dict[str, Any]:
        def ident(i: IdentifierView) -> dict[str, Any]:
            return {
                "value": i.value,
                "issuer": i.issuer,
                "organisation": i.organisation,
                "national_kind": i.national_kind,
                "national_valid": i.national_valid,
                "national_reason": i.national_reason,
                "pinned": i.pinned,
            }

        return {
            "person": self.pk,
            "merged_into": self.merged_into,
            "birth_date": self.birth_date,
            "sex": self.sex,
            "identifiers": [ident(i) for i in self.identifiers],
            "flagged": [ident(i) for i in self.flagged],
            "merged_from": self.merged_from,
            "studies": self.studies,
            "history": self.history,
            "demographics": [d.as_dict() for d in self.demographics],
            "conflicts": [c.as_dict() for c in self.conflicts],
        }


def _identifier_views(conn: Connection, where) -> list[IdentifierView]:  # type: ignore[no-untyped-def]
    pi = patient_identifiers
    rows = conn.execute(
        select(pi, organisations.c.code)
        .outerjoin(organisations, organisations.c.pk == pi.c.organisation_pk)
        .where(where)
        .order_by(pi.c.pk)
    ).all()
    return [
        IdentifierView(
            r.pk, r.value, r.issuer, r.code, r.national_kind, r.national_valid, r.national_reason, r.pinned, r.created_at
        )
        for r in rows
    ]


def study_count(conn: Connection, person_pk: int) -> int:
    """Studies filed under any identifier of the person (patients rows keyed
    like the identifiers; see the module docstring)."""
    pi = patient_identifiers
    return conn.execute(
        select(func.count(studies.c.pk))
        .select_from(studies)
        .join(patients, patients.c.pk == studies.c.patient_pk)
        .join(pi, and_(pi.c.value == patients.c.patient_id, pi.c.issuer == patients.c.issuer_of_patient_id))
        .where(pi.c.person_pk == person_pk)
    ).scalar_one()


def show(conn: Connection, person_pk: int) -> PersonView:
    from . import demographics

    person = conn.execute(select(persons).where(persons.c.pk == person_pk)).first()
    if person is None:
        raise UnknownPerson(f"no person {person_pk}")
    identifiers = _identifier_views(conn, patient_identifiers.c.person_pk == person_pk)
    pks = [i.pk for i in identifiers]
    flagged = _identifier_views(
        conn, and_(patient_identifiers.c.person_pk.is_(None), patient_identifiers.c.seen_with_pk.in_(pks))
    )
    merged_from = list(
        conn.execute(select(persons.c.pk).where(persons.c.merged_into_pk == person_pk).order_by(persons.c.pk)).scalars()
    )
    history = [
        {
            "at": r.at.isoformat(),
            "action": r.action,
            "from_person": r.from_person_pk,
            "to_person": r.to_person_pk,
            "actor": r.actor,
            "reason": r.reason,
            "reverted": r.reverted_by_pk is not None,
        }
        for r in conn.execute(
            select(identity_history)
            .where(or_(identity_history.c.from_person_pk == person_pk, identity_history.c.to_person_pk == person_pk))
            .order_by(identity_history.c.pk)
        )
    ]
    return PersonView(
        person.pk,
        person.merged_into_pk,
        person.birth_date,
        person.sex,
        identifiers,
        flagged,
        merged_from,
        study_count(conn, person_pk),
        history,
        demographics.of_person(conn, person_pk),
        demographics.conflicts(conn, person_pk),
    )


def persons_matching(canonical: Canonical) -> Select:
    """SELECT of the person pks a query key names: a valid national number
    matches in any written form, any other key exactly."""
    pi = patient_identifiers
    national = canonical.national
    if national is not None and national.valid and national.kind is not None:
        where = and_(pi.c.national_kind == str(national.kind), pi.c.national_normalised == national.normalised)
    else:
        where = and_(pi.c.value == canonical.identifier.value, pi.c.issuer == canonical.identifier.issuer)
    return select(pi.c.person_pk).where(where, pi.c.person_pk.isnot(None))


def identifiers_of_same_person(canonical: Canonical) -> Select:
    """SELECT of (value, issuer) of every identifier of the person(s) the key
    names: join ``patients`` on (patient_id, issuer_of_patient_id) with it to
    find a person's studies from every organisation."""
    pi = patient_identifiers
    return select(pi.c.value, pi.c.issuer).where(pi.c.person_pk.in_(persons_matching(canonical).scalar_subquery()))
