"""ImagingStudy (FHIR R4 imagingstudy.html): a study of the catalogue, linked to DICOMweb.

The id is the Study Instance UID (a valid FHIR id: digits and dots, at most
64). Each ImagingStudy carries:

- ``identifier``: the Study Instance UID as ``urn:dicom:uid`` /
  ``urn:oid:<uid>`` (imagingstudy.html#notes) and the Accession Number with
  type ACSN (v2-0203);
- ``status`` available, ``subject`` the Patient (the MPI person) the study's
  patient key belongs to (an identifier reference when the key is on no
  person), ``started`` (Study Date and Time; a time is read in the server's
  local time zone, since FHIR R4 requires an offset and DICOM dates carry none),
  ``numberOfSeries``, ``numberOfInstances``, ``modality`` (DCM codes),
  ``description``;
- ``series[]`` with uid, number, modality, description, started, number of
  instances and ``instance[]`` (uid, SOP Class as ``urn:oid:``, number);
- ``endpoint``: a contained Endpoint (connection type ``dicom-wado-rs``)
  whose address is this server's absolute DICOMweb base URL, so a client goes
  from the study straight to QIDO-RS/WADO-RS (``address + '/studies/' + uid``).

Search: ``_id``, ``identifier``, ``patient`` and ``subject`` (references),
``patient.identifier`` / ``subject:Patient.identifier`` (chained through the
MPI: every identifier of the person, at every organisation), ``started``
(date, to the day), ``modality`` and ``series`` (tokens). Everything is read
from the catalogue; no object is opened. :func:`search_studies` and
:func:`read_study` are the only functions here that see patient data.

Access (issue 5, samarkiv/access/gate.py): a search ANDs the caller's
visibility condition into its SQL (one ``query`` audit record), so hidden
studies are neither listed nor counted in ``total``; a read is one ``view``
decision on the study (audited, allowed or denied), and a refused study is
404 like an unknown one (FHIR R4 security.html: reveal nothing).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    and_,
    exists,
    false,
    func,
    or_,
    select,
)

from ...access.principal import Principal
from ...core.archive import Archive
from ...core.ingest import is_valid_uid
from ...identity.patients import UnknownPerson, current_person
from ...index.identity_schema import patient_identifiers, persons
from ...index.schema import instances, patients, series, studies
from .bundle import searchset
from .errors import FhirError, FhirRoute, caller, fhir_json
from .patient import fhir_date, person_pks_with_identifier
from .search import (
    SearchRequest,
    Token,
    date_condition,
    negotiate,
    parse_search,
    parse_token,
    request_parameters,
    unescape,
)
from .systems import canonical_of, issuer_organisations, system_of

DCM = "http://dicom.nema.org/resources/ontology/DCM"
DICOM_UID = "urn:dicom:uid"
_RFC3986 = "urn:ietf:rfc:3986"
_PI = patient_identifiers
_CHAINS = ("patient.identifier", "patient:Patient.identifier", "subject.identifier", "subject:Patient.identifier")
_REFERENCES = ("patient", "subject", "subject:Patient")
SEARCH_PARAMETERS = {"_id", "identifier", "started", "modality", "series", *_REFERENCES, *_CHAINS}


# --- matching -------------------------------------------------------------------------


def _of_persons(person_condition: ColumnElement[bool]) -> ColumnElement[bool]:
    """Studies whose patient key is an identifier of a person matching ``person_condition``."""
    return exists().where(
        _PI.c.value == patients.c.patient_id,
        _PI.c.issuer == patients.c.issuer_of_patient_id,
        _PI.c.person_pk.in_(select(persons.c.pk).where(person_condition)),
    )


def _subject_identifier(conn: Connection, token: Token) -> ColumnElement[bool]:
    """Studies of the person(s) an identifier names, at every organisation,
    plus studies filed under that very key (also when no person carries it yet)."""
    direct: ColumnElement[bool] = false()
    if token.system is None:
        direct = patients.c.patient_id == token.code
    elif (canonical := canonical_of(conn, token.system, token.code)) is not None:
        key = canonical.identifier
        direct = and_(patients.c.patient_id == key.value, patients.c.issuer_of_patient_id == key.issuer)
    return or_(direct, _of_persons(person_pks_with_identifier(conn, token)))


def _reference_person(name: str, value: str) -> int | None:
    """The person number a reference value names (``Patient/12``, ``12`` or an
    absolute URL ending so); None for another resource type; 400 when malformed."""
    text = unescape(value).strip().rstrip("/")
    parts = text.split("/")
    if len(parts) >= 2:
        kind, resource_id = parts[-2], parts[-1]
        if kind != "Patient":
            if name == "patient":
                raise FhirError(400, f"{name} refers to a Patient, not {kind}")
            return None
    else:
        resource_id = text
    if not resource_id or len(resource_id) > 64:
        raise FhirError(400, f"{name}: {value!r} is not a reference")
    return int(resource_id) if resource_id.isdigit() and len(resource_id) <= 18 else None


def _subject(conn: Connection, name: str, value: str) -> ColumnElement[bool]:
    pk = _reference_person(name, value)
    if pk is None:
        return false()
    try:
        pk = current_person(conn, pk)  # a merged person's studies are its successor's
    except UnknownPerson:
        return false()
    return _of_persons(persons.c.pk == pk)


def _study_identifier(token: Token) -> ColumnElement[bool]:
    """ImagingStudy.identifier: the Study Instance UID (``urn:dicom:uid|urn:oid:UID``)
    or the Accession Number (no system)."""
    code = token.code
    uid = code[8:] if code.lower().startswith("urn:oid:") else None
    if token.system == DICOM_UID:
        return studies.c.study_instance_uid == uid if uid else false()
    if token.system == "":
        return studies.c.accession_number == code
    if token.system is None:
        return studies.c.study_instance_uid == uid if uid else studies.c.accession_number == code
    return false()


def _started(value: str) -> ColumnElement[bool]:
    return date_condition(studies.c.study_date, "started", value)


def _series_has(condition: ColumnElement[bool]) -> ColumnElement[bool]:
    return exists().where(series.c.study_pk == studies.c.pk, condition)


def _modality(token: Token) -> ColumnElement[bool]:
    if token.system not in (None, DCM):
        return false()
    return _series_has(series.c.modality == token.code)


def _conditions(conn: Connection, search: SearchRequest) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    for values in search.values("_id"):
        where.append(studies.c.study_instance_uid.in_([unescape(v) for v in values]))
    for values in search.values("identifier"):
        where.append(or_(*(_study_identifier(parse_token(v)) for v in values)))
    for name in _REFERENCES:
        for values in search.values(name):
            where.append(or_(*(_subject(conn, name, v) for v in values)))
    for name in _CHAINS:
        for values in search.values(name):
            where.append(or_(*(_subject_identifier(conn, parse_token(v)) for v in values)))
    for values in search.values("started"):
        where.append(or_(*(_started(v) for v in values)))
    for values in search.values("modality"):
        where.append(or_(*(_modality(parse_token(v)) for v in values)))
    for values in search.values("series"):
        where.append(_series_has(series.c.series_instance_uid.in_([parse_token(v).code for v in values])))
    return where


# --- resources -------------------------------------------------------------------------


def fhir_datetime(da: str | None, tm: str | None) -> str | None:
    """DICOM DA and TM as a FHIR dateTime; a time is given the server's local
    offset (FHIR R4 datatypes.html#dateTime: a time needs a zone)."""
    day = fhir_date(da)
    if day is None:
        return None
    digits = (tm or "").strip()
    whole, _, fraction = digits.partition(".")
    if not whole or not whole.isdigit() or len(whole) not in (2, 4, 6):
        return day
    hh, mm, ss = int(whole[:2]), int(whole[2:4] or 0), int(whole[4:6] or 0)
    micro = int((fraction[:6] or "0").ljust(6, "0")) if fraction.isdigit() else 0
    try:
        moment = datetime.fromisoformat(day).replace(hour=hh, minute=mm, second=min(ss, 59), microsecond=micro)
    except ValueError:
        return day
    return moment.astimezone().isoformat(timespec="milliseconds" if micro else "seconds")


def _coding(modality: str | None) -> dict[str, str]:
    # Modality (0008,0060) is type 1; a series without one is "OT" (other).
    return {"system": DCM, "code": (modality or "").strip() or "OT"}


def endpoint_resource(dicomweb_base: str) -> dict[str, Any]:
    """The DICOMweb service of this server as an Endpoint (FHIR R4 endpoint.html)."""
    return {
        "resourceType": "Endpoint",
        "id": "dicomweb",
        "status": "active",
        "connectionType": {
            "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
            "code": "dicom-wado-rs",
        },
        "name": "samarkiv DICOMweb (QIDO-RS, WADO-RS, STOW-RS)",
        "payloadType": [{"text": "DICOM"}],
        "payloadMimeType": ["application/dicom", "application/dicom+json"],
        "address": dicomweb_base,
    }


def _page_rows(where: list[ColumnElement[bool]]) -> Select:
    return (
        select(
            studies.c.pk,
            studies.c.study_instance_uid,
            studies.c.study_date,
            studies.c.study_time,
            studies.c.accession_number,
            studies.c.study_description,
            patients.c.pk.label("patient_pk"),
            patients.c.patient_id,
            patients.c.issuer_of_patient_id,
        )
        .join(patients, patients.c.pk == studies.c.patient_pk)
        .where(*where)
    )


def study_resources(conn: Connection, rows: list[Any], dicomweb_base: str) -> list[dict[str, Any]]:
    """ImagingStudy resources for rows of :func:`_page_rows`."""
    if not rows:
        return []
    study_pks = [r.pk for r in rows]
    patient_pks = list({r.patient_pk for r in rows})
    person_of: dict[int, int] = {
        r.pk: r.person_pk
        for r in conn.execute(
            select(patients.c.pk, _PI.c.person_pk)
            .join(_PI, and_(_PI.c.value == patients.c.patient_id, _PI.c.issuer == patients.c.issuer_of_patient_id))
            .where(patients.c.pk.in_(patient_pks), _PI.c.person_pk.isnot(None))
        )
    }
    count = func.count(instances.c.pk)
    series_rows = conn.execute(
        select(series, count.label("n"))
        .outerjoin(instances, instances.c.series_pk == series.c.pk)
        .where(series.c.study_pk.in_(study_pks))
        .group_by(series.c.pk)
        .order_by(series.c.study_pk, series.c.series_number, series.c.pk)
    ).all()
    instance_rows: dict[int, list[Any]] = {}
    for r in conn.execute(
        select(instances.c.series_pk, instances.c.sop_instance_uid, instances.c.sop_class_uid, instances.c.instance_number)
        .where(instances.c.series_pk.in_([s.pk for s in series_rows]))
        .order_by(instances.c.series_pk, instances.c.instance_number, instances.c.pk)
    ):
        instance_rows.setdefault(r.series_pk, []).append(r)
    series_of: dict[int, list[dict[str, Any]]] = {}
    modalities: dict[int, list[str]] = {}
    for s in series_rows:
        item: dict[str, Any] = {"uid": s.series_instance_uid}
        if s.series_number is not None and s.series_number >= 0:
            item["number"] = s.series_number
        item["modality"] = _coding(s.modality)
        if s.series_description:
            item["description"] = s.series_description
        item["numberOfInstances"] = s.n
        started = fhir_datetime(s.series_date, s.series_time)
        if started:
            item["started"] = started
        item_instances = []
        for i in instance_rows.get(s.pk, []):
            instance: dict[str, Any] = {
                "uid": i.sop_instance_uid,
                "sopClass": {"system": _RFC3986, "code": f"urn:oid:{i.sop_class_uid}"},
            }
            if i.instance_number is not None and i.instance_number >= 0:
                instance["number"] = i.instance_number
            item_instances.append(instance)
        if item_instances:
            item["instance"] = item_instances
        series_of.setdefault(s.study_pk, []).append(item)
        code = item["modality"]["code"]
        if code not in modalities.setdefault(s.study_pk, []):
            modalities[s.study_pk].append(code)
    orgs = issuer_organisations(conn)
    out = []
    for r in rows:
        resource: dict[str, Any] = {
            "resourceType": "ImagingStudy",
            "id": r.study_instance_uid,
            "contained": [endpoint_resource(dicomweb_base)],
            "identifier": [{"system": DICOM_UID, "value": f"urn:oid:{r.study_instance_uid}"}],
        }
        if r.accession_number:
            resource["identifier"].append(
                {
                    "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
                    "value": r.accession_number,
                }
            )
        resource["status"] = "available"
        if modalities.get(r.pk):
            resource["modality"] = [{"system": DCM, "code": m} for m in modalities[r.pk]]
        person = person_of.get(r.patient_pk)
        if person is not None:
            resource["subject"] = {"reference": f"Patient/{person}"}
        else:  # a key no person carries (yet): a logical reference (references.html#logical)
            identifier: dict[str, Any] = {"value": r.patient_id or "unknown"}
            if r.issuer_of_patient_id:
                identifier = {"system": system_of(r.issuer_of_patient_id, orgs), **identifier}
            resource["subject"] = {"type": "Patient", "identifier": identifier}
        started = fhir_datetime(r.study_date, r.study_time)
        if started:
            resource["started"] = started
        resource["endpoint"] = [{"reference": "#dicomweb"}]
        study_series = series_of.get(r.pk, [])
        resource["numberOfSeries"] = len(study_series)
        resource["numberOfInstances"] = sum(s["numberOfInstances"] for s in study_series)
        if r.study_description:
            resource["description"] = r.study_description
        if study_series:
            resource["series"] = study_series
        out.append(resource)
    return out


# --- data access (the functions access control will gate) ---------------------------------


def search_studies(
    conn: Connection, search: SearchRequest, dicomweb_base: str, visible: ColumnElement[bool] | None = None
) -> tuple[int, list[dict[str, Any]]]:
    """The number of studies matching ``search`` and the ImagingStudies of its page;
    ``visible``: the caller's condition on ``studies``/``patients`` (None: all)."""
    where = _conditions(conn, search) + ([visible] if visible is not None else [])
    total = conn.execute(
        select(func.count()).select_from(studies.join(patients, patients.c.pk == studies.c.patient_pk)).where(*where)
    ).scalar_one()
    if search.summary_count or search.count == 0:
        return total, []
    rows = conn.execute(
        _page_rows(where).order_by(studies.c.pk).offset(search.offset).limit(search.count)
    ).all()
    return total, study_resources(conn, rows, dicomweb_base)


def read_study(conn: Connection, resource_id: str, dicomweb_base: str) -> dict[str, Any] | None:
    """The ImagingStudy with this id (Study Instance UID), or None."""
    rows = conn.execute(_page_rows([studies.c.study_instance_uid == resource_id])).all()
    return study_resources(conn, rows, dicomweb_base)[0] if rows else None


# --- routes -----------------------------------------------------------------------------


def create_router(archive: Archive) -> APIRouter:
    router = APIRouter(route_class=FhirRoute)
    root = "/" + archive.settings.dicomweb_root.strip("/")

    def dicomweb_base(request: Request) -> str:
        return str(request.base_url).rstrip("/") + root

    def run_search(search: SearchRequest, base: str, principal: Principal) -> tuple[int, list[dict[str, Any]]]:
        detail = {"door": "FHIR", "resource": "ImagingStudy", "params": [list(p) for p in search.params]}
        visible = archive.gate.query_condition(principal, "STUDY", detail=detail)
        with archive.engine.connect() as conn:
            return search_studies(conn, search, base, visible)

    async def search_route(request: Request) -> Response:
        principal = caller(request)
        items = await request_parameters(request)
        search = parse_search(request, "ImagingStudy", SEARCH_PARAMETERS, items)
        total, resources = await run_in_threadpool(run_search, search, dicomweb_base(request), principal)
        return fhir_json(searchset(search, total, resources), pretty=search.pretty)

    router.add_api_route("/ImagingStudy", search_route, methods=["GET"], include_in_schema=False)
    router.add_api_route("/ImagingStudy/_search", search_route, methods=["POST"], include_in_schema=False)

    def run_read(resource_id: str, base: str, principal: Principal) -> dict[str, Any] | None:
        if not is_valid_uid(resource_id) or resource_id not in archive.gate.authorise(principal, "view", [resource_id]).allowed:
            return None
        with archive.engine.connect() as conn:
            return read_study(conn, resource_id, base)

    @router.get("/ImagingStudy/{resource_id}", include_in_schema=False)
    async def read_route(resource_id: str, request: Request) -> Response:
        principal = caller(request)
        pretty = negotiate(request, list(request.query_params.multi_items()))
        resource = await run_in_threadpool(run_read, resource_id, dicomweb_base(request), principal)
        if resource is None:
            raise FhirError(404, f"ImagingStudy/{resource_id} is not known")
        return fhir_json(resource, pretty=pretty)

    return router
