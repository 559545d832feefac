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
``value`` for any system); ``name`` (string: a name component starting with
the value, case-insensitive; ``:exact`` a whole family or given name as
written; ``:contains`` anywhere), ``family`` and ``given`` likewise on their
component, ``birthdate`` (date, with prefixes) and ``gender`` (token), each
matched against every source of the person's demographics (the catalogue's
patient rows and HL7 ADT, see identity/demographics.py). Reads and searches go through
:func:`search_patients` and :func:`read_patient`, the only functions here
that see patient data, so that access control can gate them.

Access (issue 5): a person is shown (searched, counted, read) only when the
caller may see at least one of its studies (the gate's PATIENT-level
condition, samarkiv/access/gate.py, one ``query`` audit record per
request), is that patient, or has an active care relationship with the
person that no block of the patient's overrides (a merged person: when the
person kept is shown); anything else is absent from searches and 404 on
read, like an unknown id.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import ColumnElement, Connection, and_, false, func, or_, select

from ...access.principal import Principal
from ...core.archive import Archive
from ...hl7.demographics import hl7_demographics
from ...identity.demographics import of_persons
from ...identity.patients import persons_matching
from ...index.identity_schema import patient_identifiers, persons
from ...index.policy_schema import care_relationships, patient_blocks
from ...index.schema import patients
from .bundle import searchset
from .errors import FhirError, FhirRoute, caller, fhir_json
from .search import (
    SearchRequest,
    Token,
    date_condition,
    negotiate,
    parse_search,
    parse_token,
    request_parameters,
    split_values,
    unescape,
)
from .systems import (
    IssuerOrganisation,
    canonical_of,
    identifier_json,
    issuer_organisations,
)

SEARCH_PARAMETERS = {"_id", "identifier", "gender", "birthdate"} | {
    f"{name}{modifier}" for name in ("name", "family", "given") for modifier in ("", ":exact", ":contains")
}
_GENDER = {"M": "male", "F": "female", "O": "other"}
_SEX = {"male": "M", "female": "F", "other": "O"}
_PI = patient_identifiers
_H = hl7_demographics


# --- matching -------------------------------------------------------------------------


def person_pks_with_identifier(conn: Connection, token: Token) -> ColumnElement[bool]:
    """``persons.pk`` condition: the persons carrying the identifier ``token`` names."""
    if token.system is None:  # a value in any system
        return persons.c.pk.in_(select(_PI.c.person_pk).where(_PI.c.value == token.code, _PI.c.person_pk.isnot(None)))
    canonical = canonical_of(conn, token.system, token.code)
    if canonical is None:
        return false()
    return persons.c.pk.in_(persons_matching(canonical))


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _exact(column: Any, text: str, dialect: str, *, before: bool = False, after: bool = False) -> ColumnElement[bool]:
    """``column`` is ``text`` as written, with any name components ``before``
    and ``after`` it. Case-sensitive: SQLite's LIKE is not, so it gets GLOB."""
    if dialect == "sqlite":
        literal = "".join(f"[{c}]" if c in "*?[" else c for c in text)
        return column.op("GLOB")(("*^" if before else "") + literal + ("^*" if after else ""))
    return column.like(("%^" if before else "") + _like(text) + ("^%" if after else ""), escape="\\")


def _name_condition(column: Any, parameter: str, value: str, dialect: str) -> ColumnElement[bool]:
    """A string search on a DICOM PN column (family^given^middle^prefix^suffix,
    PS3.5 6.2.1.1): see the module docstring."""
    name, _, modifier = parameter.partition(":")
    text = unescape(value).strip()
    if modifier == "exact":
        family = or_(column == text, _exact(column, text, dialect, after=True))
        given = or_(_exact(column, text, dialect, before=True), _exact(column, text, dialect, before=True, after=True))
    else:
        column, v = func.upper(column), _like(text.upper())
        if modifier == "contains":
            return column.like(f"%{v}%", escape="\\")
        family = column.like(f"{v}%", escape="\\")
        given = or_(column.like(f"%^{v}%", escape="\\"), column.like(f"% {v}%", escape="\\"))
    return {"family": family, "given": given}.get(name, or_(family, given))


# attribute -> its column in the catalogue, in ADT records, and from the national number
_SOURCES = {
    "name": (patients.c.patient_name, _H.c.patient_name, None),
    "birth_date": (patients.c.patient_birth_date, _H.c.birth_date, persons.c.birth_date),
    "sex": (patients.c.patient_sex, _H.c.sex, persons.c.sex),
}


def _any_source(attribute: str, test: Callable[[Any], ColumnElement[bool]]) -> ColumnElement[bool]:
    """``persons.pk`` condition: some source of the person's ``attribute``
    (a catalogue row, an ADT record, the national number) passes ``test``."""
    catalogue_column, adt_column, national_column = _SOURCES[attribute]
    catalogue = (
        select(_PI.c.person_pk)
        .join(patients, and_(patients.c.patient_id == _PI.c.value, patients.c.issuer_of_patient_id == _PI.c.issuer))
        .where(test(catalogue_column))
    )
    adt = select(_PI.c.person_pk).join(_H, _H.c.identifier_pk == _PI.c.pk).where(test(adt_column))
    conditions = [persons.c.pk.in_(catalogue), persons.c.pk.in_(adt)]
    if national_column is not None:
        conditions.append(test(national_column))
    return or_(*conditions)


def _gender_condition(token: Token, column: Any) -> ColumnElement[bool]:
    """administrative-gender codes against a DICOM Patient's Sex column
    ("unknown" has no DICOM value and matches nothing)."""
    sex = _SEX.get(token.code)
    if token.system not in (None, "http://hl7.org/fhir/administrative-gender") or sex is None:
        return false()
    return column == sex


def _id_condition(column: Any, values: list[str]) -> ColumnElement[bool]:
    pks = [int(v) for v in map(unescape, values) if v.isdigit() and len(v) <= 18]
    return column.in_(pks) if pks else false()


def _conditions(conn: Connection, search: SearchRequest) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    for values in search.values("_id"):
        where.append(_id_condition(persons.c.pk, values))
    for values in search.values("identifier"):
        where.append(or_(*(person_pks_with_identifier(conn, parse_token(v)) for v in values)))
    for key, value in search.params:
        values = split_values(value)
        if key.partition(":")[0] in ("name", "family", "given"):
            dialect = conn.dialect.name
            where.append(_any_source("name", lambda c: or_(*(_name_condition(c, key, v, dialect) for v in values))))
        elif key == "birthdate":
            where.append(_any_source("birth_date", lambda c: or_(*(date_condition(c, "birthdate", v) for v in values))))
        elif key == "gender":
            where.append(_any_source("sex", lambda c: or_(*(_gender_condition(parse_token(v), c) for v in values))))
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
    the sources of its identifiers (catalogue rows and ADT records)."""
    found: dict[int, _Demographics] = {}
    newest_first = sorted(of_persons(conn, person_pks), key=lambda d: d.updated_at.timestamp() if d.updated_at else 0, reverse=True)
    for source in newest_first:
        d = found.setdefault(source.person_pk, _Demographics())
        d.name = d.name or source.name
        d.birth_date = d.birth_date or fhir_date(source.birth_date)
        d.sex = d.sex or source.sex
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


# --- access ---------------------------------------------------------------------------

# Roles that may see patient data on a care relationship (policy.py: not researchers).
_CARING_ROLES = frozenset({"radiologist", "clinician", "technologist", "administrator", "auditor", "service"})


def visible_persons(archive: Archive, principal: Principal, detail: dict[str, Any]) -> ColumnElement[bool] | None:
    """The condition on ``persons`` keeping those ``principal`` may see (module
    docstring); None: all (the system). The query is audited by the gate."""
    studied = archive.gate.query_condition(principal, "PATIENT", detail=detail)
    if studied is None:
        return None
    key = and_(patients.c.patient_id == _PI.c.value, patients.c.issuer_of_patient_id == _PI.c.issuer)
    seen = select(_PI.c.person_pk).select_from(_PI.join(patients, key)).where(studied)
    # a merged person is shown (with its replaced-by link) when the person kept is
    terms: list[ColumnElement[bool]] = [persons.c.pk.in_(seen), persons.c.merged_into_pk.in_(seen)]
    if principal.patient_key is not None and principal.kind == "user":
        terms.append(persons.c.pk == principal.patient_key)
    if principal.org_pk is not None and principal.kind in ("user", "service") and principal.roles & _CARING_ROLES:
        c, b, now = care_relationships, patient_blocks, datetime.now(UTC)
        whose = c.c.user_pk.is_(None) if principal.user_pk is None else or_(
            c.c.user_pk.is_(None), c.c.user_pk == principal.user_pk)  # fmt: skip
        blocked = select(b.c.person_pk).where(
            b.c.revoked_at.is_(None), b.c.study_instance_uid.is_(None),
            or_(b.c.blocked_org_pk.is_(None), b.c.blocked_org_pk == principal.org_pk),
        )  # fmt: skip
        care = select(c.c.person_pk).where(
            c.c.org_pk == principal.org_pk, whose, c.c.ended_at.is_(None),
            or_(c.c.expires_at.is_(None), c.c.expires_at > now), c.c.person_pk.notin_(blocked),
        )  # fmt: skip
        terms.append(persons.c.pk.in_(care))
    return or_(*terms)


# --- data access (the functions access control will gate) ---------------------------------


def search_patients(
    conn: Connection, search: SearchRequest, visible: ColumnElement[bool] | None = None
) -> tuple[int, list[dict[str, Any]]]:
    """The number of persons matching ``search`` and the Patients of its page;
    ``visible``: the caller's condition on ``persons`` (None: all)."""
    where = _conditions(conn, search) + ([visible] if visible is not None else [])
    total = conn.execute(select(func.count()).select_from(persons).where(*where)).scalar_one()
    if search.summary_count or search.count == 0:
        return total, []
    rows = conn.execute(
        select(persons).where(*where).order_by(persons.c.pk).offset(search.offset).limit(search.count)
    ).all()
    return total, patient_resources(conn, rows)


def read_patient(conn: Connection, resource_id: str, visible: ColumnElement[bool] | None = None) -> dict[str, Any] | None:
    """The Patient with this id, or None (also when ``visible`` hides it)."""
    if not resource_id.isdigit() or len(resource_id) > 18:
        return None
    where = [persons.c.pk == int(resource_id)] + ([visible] if visible is not None else [])
    row = conn.execute(select(persons).where(*where)).first()
    return None if row is None else patient_resources(conn, [row])[0]


# --- routes -----------------------------------------------------------------------------


def create_router(archive: Archive) -> APIRouter:
    router = APIRouter(route_class=FhirRoute)

    def run_search(search: SearchRequest, principal: Principal) -> tuple[int, list[dict[str, Any]]]:
        detail = {"door": "FHIR", "resource": "Patient", "params": [list(p) for p in search.params]}
        visible = visible_persons(archive, principal, detail)
        with archive.engine.connect() as conn:
            return search_patients(conn, search, visible)

    async def search_route(request: Request) -> Response:
        principal = caller(request)
        items = await request_parameters(request)
        search = parse_search(request, "Patient", SEARCH_PARAMETERS, items)
        total, resources = await run_in_threadpool(run_search, search, principal)
        return fhir_json(searchset(search, total, resources), pretty=search.pretty)

    router.add_api_route("/Patient", search_route, methods=["GET"], include_in_schema=False)
    router.add_api_route("/Patient/_search", search_route, methods=["POST"], include_in_schema=False)

    def run_read(resource_id: str, principal: Principal) -> dict[str, Any] | None:
        visible = visible_persons(archive, principal, {"door": "FHIR", "read": f"Patient/{resource_id[:20]}"})
        with archive.engine.connect() as conn:
            return read_patient(conn, resource_id, visible)

    @router.get("/Patient/{resource_id}", include_in_schema=False)
    async def read_route(resource_id: str, request: Request) -> Response:
        principal = caller(request)
        pretty = negotiate(request, list(request.query_params.multi_items()))
        resource = await run_in_threadpool(run_read, resource_id, principal)
        if resource is None:
            raise FhirError(404, f"Patient/{resource_id} is not known")
        return fhir_json(resource, pretty=pretty)

    return router
