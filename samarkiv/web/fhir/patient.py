"""Patient (FHIR R4 patient.html): one person of the master patient index.

A Patient is a person of ``identity.patients`` (``persons`` and
``patient_identifiers``); its id is the person's number. It carries every
identifier of the person (national numbers official, local Patient IDs with
their organisation as assigner, see systems.py), and name, birth date and sex
from the most recently updated catalogue ``patients`` row filed under one of
those identifiers (birth date and sex from the national number otherwise).
A person merged into another is ``active: false`` with a ``replaced-by``
link; the one it was merged into has a ``replaces`` link back
(patient.html#links).

Search (search.html): ``_id`` and ``identifier`` (token, ``system|value``,
``value`` for any system). Reads and searches go through
:func:`search_patients` and :func:`read_patient`, the only functions here
that see patient data, so that access control can gate them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import ColumnElement, Connection, and_, false, func, or_, select

from ...core.archive import Archive
from ...identity.patients import persons_matching
from ...index.identity_schema import patient_identifiers, persons
from ...index.schema import patients
from .bundle import searchset
from .errors import FhirError, FhirRoute, fhir_json
from .search import SearchRequest, Token, negotiate, parse_search, parse_token, request_parameters, unescape
from .systems import IssuerOrganisation, canonical_of, identifier_json, issuer_organisations

SEARCH_PARAMETERS = {"_id", "identifier"}
_GENDER = {"M": "male", "F": "female", "O": "other"}
_PI = patient_identifiers


# --- matching -------------------------------------------------------------------------


def person_pks_with_identifier(conn: Connection, token: Token) -> ColumnElement[bool]:
    """``persons.pk`` condition: the persons carrying the identifier ``token`` names."""
    if token.system is None:  # a value in any system
        return persons.c.pk.in_(select(_PI.c.person_pk).where(_PI.c.value == token.code, _PI.c.person_pk.isnot(None)))
    canonical = canonical_of(conn, token.system, token.code)
    if canonical is None:
        return false()
    return persons.c.pk.in_(persons_matching(canonical))


def _id_condition(column: Any, values: list[str]) -> ColumnElement[bool]:
    pks = [int(v) for v in map(unescape, values) if v.isdigit() and len(v) <= 18]
    return column.in_(pks) if pks else false()


def _conditions(conn: Connection, search: SearchRequest) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    for values in search.values("_id"):
        where.append(_id_condition(persons.c.pk, values))
    for values in search.values("identifier"):
        where.append(or_(*(person_pks_with_identifier(conn, parse_token(v)) for v in values)))
    if not search.values("_id"):
        where.append(persons.c.merged_into_pk.is_(None))  # merged persons only by id
    return where


# --- resources -------------------------------------------------------------------------


@dataclass
class _Demographics:
    name: str | None = None
    birth_date: str | None = None
    sex: str | None = None


def human_name(pn: str) -> dict[str, Any] | None:
    """A HumanName from a DICOM PN's alphabetic group (PS3.5 6.2.1.1:
    family^given^middle^prefix^suffix)."""
    parts = [p.strip() for p in pn.split("=")[0].split("^")] + [""] * 5
    family, given, middle, prefix, suffix = parts[:5]
    name: dict[str, Any] = {}
    if family:
        name["family"] = family
    givens = [g for g in (given, *middle.split()) if g]
    if givens:
        name["given"] = givens
    if prefix:
        name["prefix"] = [prefix]
    if suffix:
        name["suffix"] = [suffix]
    if not name:
        return None
    name["text"] = " ".join(x for x in (prefix, *givens, family, suffix) if x)
    return name


def fhir_date(da: str | None) -> str | None:
    """A DICOM DA (YYYYMMDD) as a FHIR date, or None when it is no calendar date."""
    if not da or len(da) != 8 or not da.isdigit():
        return None
    try:
        return date(int(da[:4]), int(da[4:6]), int(da[6:])).isoformat()
    except ValueError:
        return None


def _demographics(conn: Connection, person_pks: list[int]) -> dict[int, _Demographics]:
    """For each person, the newest non-empty name, birth date and sex among
    the catalogue rows filed under its identifiers."""
    rows = conn.execute(
        select(_PI.c.person_pk, patients.c.patient_name, patients.c.patient_birth_date, patients.c.patient_sex)
        .join(patients, and_(patients.c.patient_id == _PI.c.value, patients.c.issuer_of_patient_id == _PI.c.issuer))
        .where(_PI.c.person_pk.in_(person_pks))
        .order_by(patients.c.updated_at.desc(), patients.c.pk.desc())
    )
    found: dict[int, _Demographics] = {}
    for r in rows:
        d = found.setdefault(r.person_pk, _Demographics())
        d.name = d.name or (r.patient_name or None)
        d.birth_date = d.birth_date or fhir_date(r.patient_birth_date)
        d.sex = d.sex or (r.patient_sex or "").strip().upper() or None
    return found


def patient_resources(conn: Connection, rows: list[Any]) -> list[dict[str, Any]]:
    """Patient resources for ``persons`` rows."""
    pks = [r.pk for r in rows]
    orgs: dict[str, IssuerOrganisation] = issuer_organisations(conn)
    identifiers: dict[int, list[dict[str, Any]]] = {}
    seen: set[tuple[int, str, str]] = set()
    for r in conn.execute(
        select(_PI.c.person_pk, _PI.c.value, _PI.c.issuer, _PI.c.national_valid, _PI.c.national_normalised)
        .where(_PI.c.person_pk.in_(pks))
        .order_by(_PI.c.pk)
    ):
        # A valid national number once, in its normalised form (Sweden: twelve
        # digits), however many ways it was written.
        value = r.national_normalised if r.national_valid and r.national_normalised else r.value
        if (r.person_pk, value, r.issuer) not in seen:
            seen.add((r.person_pk, value, r.issuer))
            identifiers.setdefault(r.person_pk, []).append(identifier_json(value, r.issuer, orgs))
    replaces: dict[int, list[int]] = {}
    for r in conn.execute(
        select(persons.c.pk, persons.c.merged_into_pk).where(persons.c.merged_into_pk.in_(pks)).order_by(persons.c.pk)
    ):
        replaces.setdefault(r.merged_into_pk, []).append(r.pk)
    demographics = _demographics(conn, pks)
    out = []
    for person in rows:
        d = demographics.get(person.pk, _Demographics())
        resource: dict[str, Any] = {"resourceType": "Patient", "id": str(person.pk)}
        # National numbers first: they name the person everywhere.
        idents = sorted(identifiers.get(person.pk, []), key=lambda i: i["use"] != "official")
        if idents:
            resource["identifier"] = idents
        resource["active"] = person.merged_into_pk is None
        name = human_name(d.name) if d.name else None
        if name:
            resource["name"] = [name]
        sex = d.sex or person.sex
        if sex:
            resource["gender"] = _GENDER.get(sex, "unknown")
        birth_date = d.birth_date or fhir_date(person.birth_date)
        if birth_date:
            resource["birthDate"] = birth_date
        links = []
        if person.merged_into_pk is not None:
            links.append({"other": {"reference": f"Patient/{person.merged_into_pk}"}, "type": "replaced-by"})
        links += [{"other": {"reference": f"Patient/{pk}"}, "type": "replaces"} for pk in replaces.get(person.pk, [])]
        if links:
            resource["link"] = links
        out.append(resource)
    return out


# --- data access (the functions access control will gate) ---------------------------------


def search_patients(conn: Connection, search: SearchRequest) -> tuple[int, list[dict[str, Any]]]:
    """The number of persons matching ``search`` and the Patients of its page."""
    where = _conditions(conn, search)
    total = conn.execute(select(func.count()).select_from(persons).where(*where)).scalar_one()
    if search.summary_count or search.count == 0:
        return total, []
    rows = conn.execute(
        select(persons).where(*where).order_by(persons.c.pk).offset(search.offset).limit(search.count)
    ).all()
    return total, patient_resources(conn, rows)


def read_patient(conn: Connection, resource_id: str) -> dict[str, Any] | None:
    """The Patient with this id, or None."""
    if not resource_id.isdigit() or len(resource_id) > 18:
        return None
    row = conn.execute(select(persons).where(persons.c.pk == int(resource_id))).first()
    return None if row is None else patient_resources(conn, [row])[0]


# --- routes -----------------------------------------------------------------------------


def create_router(archive: Archive) -> APIRouter:
    router = APIRouter(route_class=FhirRoute)

    def run_search(search: SearchRequest) -> tuple[int, list[dict[str, Any]]]:
        with archive.engine.connect() as conn:
            return search_patients(conn, search)

    async def search_route(request: Request) -> Response:
        items = await request_parameters(request)
        search = parse_search(request, "Patient", SEARCH_PARAMETERS, items)
        total, resources = await run_in_threadpool(run_search, search)
        return fhir_json(searchset(search, total, resources), pretty=search.pretty)

    router.add_api_route("/Patient", search_route, methods=["GET"], include_in_schema=False)
    router.add_api_route("/Patient/_search", search_route, methods=["POST"], include_in_schema=False)

    def run_read(resource_id: str) -> dict[str, Any] | None:
        with archive.engine.connect() as conn:
            return read_patient(conn, resource_id)

    @router.get("/Patient/{resource_id}", include_in_schema=False)
    async def read_route(resource_id: str, request: Request) -> Response:
        pretty = negotiate(request, list(request.query_params.multi_items()))
        resource = await run_in_threadpool(run_read, resource_id)
        if resource is None:
            raise FhirError(404, f"Patient/{resource_id} is not known")
        return fhir_json(resource, pretty=pretty)

    return router
