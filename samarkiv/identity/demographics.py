"""What each identifier says about its person, and where sources disagree.

Two sources describe a patient identifier (PS3.3 C.7.1.1 Patient Module):

* the catalogue's ``patients`` row keyed like it: the demographics of the
  DICOM objects filed under it, kept current by HL7 ADT updates;
* ``hl7_demographics`` (samarkiv/hl7/demographics.py): what the registration
  system's last ADT message said, also for identifiers no DICOM object has
  carried yet.

A person's birth date and sex can also come from a valid national number.
:func:`conflicts` compares all of them per person and lists the
disagreements for review (``samarkiv patients conflicts``): a different
family or given name, birth date or sex for the same person, typically
between organisations. Names compare case-insensitively on their alphabetic
group's family and given components (PS3.5 6.2.1.1); a component one source
leaves empty never conflicts.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, literal, select, union_all

from ..hl7.demographics import hl7_demographics
from ..index.identity_schema import identity_history, organisations, patient_identifiers, persons
from ..index.schema import patients

_PI = patient_identifiers


@dataclass(frozen=True)
class IdentifierDemographics:
    """One source's demographics for one identifier of a person."""

    person_pk: int
    identifier: str  # VALUE^ISSUER
    organisation: str | None
    source: str  # "DICOM", "HL7 ADT^A08 from APP^FACILITY", "national number"
    name: str | None
    birth_date: str | None
    sex: str | None
    updated_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "identifier": self.identifier,
            "organisation": self.organisation,
            "source": self.source,
            "name": self.name,
            "birth_date": self.birth_date,
            "sex": self.sex,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
        }


@dataclass(frozen=True)
class Conflict:
    """The sources of one person that disagree on one attribute."""

    person_pk: int
    attribute: str  # "name", "birth date", "sex"
    values: list[IdentifierDemographics] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"person": self.person_pk, "attribute": self.attribute, "sources": [v.as_dict() for v in self.values]}


def _rows(conn: Connection, where: ColumnElement[bool]) -> list[Any]:
    """Demographics rows from both sources for the identifiers ``where`` selects."""
    h = hl7_demographics
    catalogue = (
        select(
            _PI.c.person_pk, _PI.c.value, _PI.c.issuer, organisations.c.code.label("organisation"),
            literal("DICOM").label("source"), patients.c.patient_name.label("name"),
            patients.c.patient_birth_date.label("birth_date"), patients.c.patient_sex.label("sex"),
            patients.c.updated_at,
        )  # fmt: skip
        .join(patients, and_(patients.c.patient_id == _PI.c.value, patients.c.issuer_of_patient_id == _PI.c.issuer))
        .outerjoin(organisations, organisations.c.pk == _PI.c.organisation_pk)
        .where(where)
    )
    adt = (
        select(
            _PI.c.person_pk, _PI.c.value, _PI.c.issuer, organisations.c.code.label("organisation"),
            (literal("HL7 ") + h.c.event + literal(" from ") + h.c.source).label("source"),
            h.c.patient_name.label("name"), h.c.birth_date, h.c.sex, h.c.updated_at,
        )  # fmt: skip
        .join(h, h.c.identifier_pk == _PI.c.pk)
        .outerjoin(organisations, organisations.c.pk == _PI.c.organisation_pk)
        .where(where)
    )
    both = union_all(catalogue, adt).subquery()
    return list(conn.execute(select(both).order_by(both.c.person_pk, both.c.value, both.c.issuer, both.c.source)))


def _view(r: Any) -> IdentifierDemographics:
    return IdentifierDemographics(
        r.person_pk, f"{r.value}^{r.issuer}", r.organisation, r.source.replace(" from hl7:", " from "),
        r.name or None, r.birth_date or None, (r.sex or "").strip().upper() or None, r.updated_at,
    )  # fmt: skip


def of_person(conn: Connection, person_pk: int) -> list[IdentifierDemographics]:
    """Every source's demographics for the person's identifiers."""
    return of_persons(conn, [person_pk])


def of_persons(conn: Connection, person_pks: list[int]) -> list[IdentifierDemographics]:
    """Every source's demographics for these persons' identifiers."""
    return [_view(r) for r in _rows(conn, _PI.c.person_pk.in_(person_pks))]


# --- comparing --------------------------------------------------------------------------


def _fold(text: str) -> str:
    """Case- and spacing-insensitive form of a name component."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def name_parts(pn: str) -> tuple[str, str]:
    """(family, given) of a PN's alphabetic group, folded."""
    parts = pn.split("=")[0].split("^") + ["", ""]
    return _fold(parts[0]), _fold(parts[1])


def _disagree(values: Iterable[str]) -> bool:
    return len({v for v in values if v}) > 1


def _person_conflicts(person_pk: int, sources: list[IdentifierDemographics]) -> list[Conflict]:
    found = []
    named = [s for s in sources if s.name]
    families = [name_parts(s.name or "")[0] for s in named]
    givens = [name_parts(s.name or "")[1] for s in named]
    if _disagree(families) or _disagree(givens):
        found.append(Conflict(person_pk, "name", named))
    dated = [s for s in sources if s.birth_date]
    if _disagree(s.birth_date or "" for s in dated):
        found.append(Conflict(person_pk, "birth date", dated))
    sexed = [s for s in sources if s.sex in ("M", "F")]
    if _disagree(s.sex or "" for s in sexed):
        found.append(Conflict(person_pk, "sex", sexed))
    return found


def _national_facts(conn: Connection, person_pks: set[int]) -> dict[int, IdentifierDemographics]:
    """The birth date and sex each person's valid national number states."""
    rows = conn.execute(
        select(persons.c.pk, persons.c.birth_date, persons.c.sex).where(
            persons.c.pk.in_(person_pks), (persons.c.birth_date.isnot(None)) | (persons.c.sex.isnot(None))
        )
    )
    return {
        r.pk: IdentifierDemographics(r.pk, "", None, "national number", None, r.birth_date, r.sex, None) for r in rows
    }


def conflicts(conn: Connection, person_pk: int | None = None) -> list[Conflict]:
    """Demographic disagreements between the sources of each person (of one
    person when ``person_pk`` is given), persons in number order."""
    where = _PI.c.person_pk.isnot(None) if person_pk is None else _PI.c.person_pk == person_pk
    by_person: dict[int, list[IdentifierDemographics]] = {}
    for r in _rows(conn, where):
        by_person.setdefault(r.person_pk, []).append(_view(r))
    nationals = _national_facts(conn, set(by_person))
    found: list[Conflict] = []
    for pk, sources in by_person.items():
        if pk in nationals:
            sources = [*sources, nationals[pk]]
        if len(sources) > 1:
            found.extend(_person_conflicts(pk, sources))
    return found


@dataclass(frozen=True)
class LinkNotMade:
    """An automatic link the store path refused (``identity_history`` conflict)."""

    at: datetime
    identifier: str | None
    from_person: int | None
    to_person: int | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "identifier": self.identifier,
            "from_person": self.from_person,
            "to_person": self.to_person,
            "reason": self.reason,
        }


def links_not_made(conn: Connection) -> list[LinkNotMade]:
    """Automatic links refused because the sides disagreed, not yet resolved."""
    h = identity_history
    rows = conn.execute(
        select(h.c.at, h.c.from_person_pk, h.c.to_person_pk, h.c.reason, _PI.c.value, _PI.c.issuer)
        .outerjoin(_PI, _PI.c.pk == h.c.identifier_pk)
        .where(h.c.action == "conflict", h.c.reverted_by_pk.is_(None))
        .order_by(h.c.pk)
    )
    return [
        LinkNotMade(r.at, f"{r.value}^{r.issuer}" if r.value is not None else None, r.from_person_pk, r.to_person_pk, r.reason)
        for r in rows
    ]
