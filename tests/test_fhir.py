"""FHIR R4 read access (samarkiv/web/fhir/): Patient and ImagingStudy over a real ``samarkiv serve``.

Every FHIR answer is validated against the official FHIR R4 JSON schema
(tests/data/fhir-r4/, HL7, CC0) with ``jsonschema``, plus the invariants
the schema cannot express that these resources could break (ele-1 no empty
elements, dom-3 contained resources referenced, bdl-7 unique fullUrls).
"""

from __future__ import annotations

import gzip
import json
import uuid
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from conftest import ArchiveProcess, auth_headers, storescu

PERSONNUMMER_OID = "1.2.752.129.2.1.3.1"
PNR = "191212121212"  # Skatteverket's test personnummer 19121212-1212
KS_OID = "1.2.752.999.7.1"
FHIR_JSON = "application/fhir+json"
SCHEMA_FILE = Path(__file__).parent / "data" / "fhir-r4" / "fhir.schema.json.gz"


# --- validation against FHIR R4 --------------------------------------------------------


@cache
def _schema() -> dict[str, Any]:
    return json.loads(gzip.decompress(SCHEMA_FILE.read_bytes()))


@cache
def _validator(resource_type: str):  # type: ignore[no-untyped-def]
    from jsonschema import Draft6Validator

    definitions = dict(_schema()["definitions"])
    assert resource_type in definitions, f"{resource_type} is no FHIR R4 resource"
    # A nested resource (Bundle entry, contained) is validated on its own against
    # its type's definition (fhir_r4_errors recurses), not through the schema's
    # oneOf of every resource type, which is slow and hides the real error.
    definitions["ResourceList"] = {"type": "object", "required": ["resourceType"]}
    return Draft6Validator({"$ref": f"#/definitions/{resource_type}", "definitions": definitions})


def _empty_elements(value: Any, path: str = "") -> list[str]:
    """ele-1: no element is empty (no {}, [], "" or null)."""
    if value in ({}, [], "", None):
        return [path or "/"]
    found = []
    if isinstance(value, dict):
        for k, v in value.items():
            found += _empty_elements(v, f"{path}/{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _empty_elements(v, f"{path}/{i}")
    return found


def _references(value: Any) -> set[str]:
    if isinstance(value, dict):
        refs = {value["reference"]} if isinstance(value.get("reference"), str) else set()
        return refs.union(*(_references(v) for k, v in value.items() if k != "contained"))
    if isinstance(value, list):
        return set().union(*(_references(v) for v in value))
    return set()


# Primitive elements of minimum cardinality 1 (FHIR R4 resource definitions), which the
# JSON schema cannot require (a primitive may come as its _element extension instead).
REQUIRED_PRIMITIVES = {
    "ImagingStudy": ("status",),
    "Endpoint": ("status", "address"),
    "Bundle": ("type",),
    "CapabilityStatement": ("status", "date", "kind", "fhirVersion", "format"),
}


def fhir_r4_errors(resource: dict[str, Any], where: str = "") -> list[str]:
    """Why ``resource`` is not valid FHIR R4 JSON (empty when it is)."""
    kind = resource.get("resourceType", "?")
    errors = [f"{where}{kind}{'/' + '/'.join(map(str, e.absolute_path)) if e.absolute_path else ''}: {e.message[:300]}"
              for e in _validator(kind).iter_errors(resource)]  # fmt: skip
    errors += [f"{where}{kind}: {name} is required" for name in REQUIRED_PRIMITIVES.get(kind, ()) if name not in resource]
    if kind == "OperationOutcome":
        errors += [f"{where}OperationOutcome: issue needs severity and code"
                   for i in resource.get("issue", []) if not {"severity", "code"} <= i.keys()]  # fmt: skip
    errors += [f"{where}{kind}: empty element at {p} (ele-1)" for p in _empty_elements(resource)]
    refs = _references(resource)
    for contained in resource.get("contained", []):
        if f"#{contained.get('id')}" not in refs:
            errors.append(f"{where}{kind}: contained {contained.get('id')} is not referenced (dom-3)")
        errors += fhir_r4_errors(contained, f"{where}{kind}.contained/")
    if kind == "Bundle":
        urls = [e["fullUrl"] for e in resource.get("entry", []) if "fullUrl" in e]
        if len(urls) != len(set(urls)):
            errors.append("Bundle: duplicate fullUrl (bdl-7)")
        for i, entry in enumerate(resource.get("entry", [])):
            errors += fhir_r4_errors(entry["resource"], f"Bundle.entry[{i}]/")
    return errors


def test_the_validator_rejects_invalid_fhir() -> None:
    """The schema check is real: a wrong code, an unknown element, a missing
    required element and an empty element are each found."""
    assert not fhir_r4_errors({"resourceType": "Patient", "id": "1", "gender": "male", "birthDate": "1912-12-12"})
    assert _schema()["definitions"]["CapabilityStatement"]["properties"]["fhirVersion"]["enum"][-1] == "4.0.1"
    assert fhir_r4_errors({"resourceType": "Patient", "gender": "man"})
    assert fhir_r4_errors({"resourceType": "Patient", "favouriteColour": "blue"})
    assert fhir_r4_errors({"resourceType": "Patient", "birthDate": "19121212"})
    assert fhir_r4_errors({"resourceType": "ImagingStudy", "status": "available"})  # no subject
    assert fhir_r4_errors({"resourceType": "ImagingStudy", "subject": {"reference": "Patient/1"}})  # no status
    assert fhir_r4_errors({"resourceType": "Patient", "identifier": []})
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": {"resourceType": "Patient", "gender": "x"}}]}
    assert any("entry[0]" in e for e in fhir_r4_errors(bundle))


def get_fhir(url: str, *, status: int = 200, **kwargs: Any) -> dict[str, Any]:
    """GET a FHIR answer, check its status, media type and FHIR R4 validity."""
    headers = {**auth_headers(url), **kwargs.pop("headers", {})}
    response = httpx.get(url, timeout=30, headers=headers, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(FHIR_JSON)
    body = response.json()
    assert fhir_r4_errors(body) == []
    if status >= 400:
        assert body["resourceType"] == "OperationOutcome"
    return body


# --- data: three organisations, one person with a personnummer ------------------------------


@dataclass
class Sent:
    study_uid: str
    series_uid: str
    sop_uids: list[str]
    sop_class_uid: str


def _dataset(
    folder: Path, patient_id: str, issuer: str, *, pnr: str | None = None, name: str = "Testsson^Tolvan",
    study_date: str = "20240301", modality: str = "CT", accession: str = "", count: int = 1,
) -> tuple[list[Path], Sent]:
    """``count`` instances of one new study and series, made from pydicom's CT_small."""
    study_uid, series_uid = generate_uid(), generate_uid()
    paths, sops = [], []
    for number in range(1, count + 1):
        ds = dcmread(get_testdata_file("CT_small.dcm"))
        ds.PatientID, ds.IssuerOfPatientID, ds.PatientName = patient_id, issuer, name
        ds.PatientBirthDate, ds.PatientSex = "19121212", "M"
        if pnr is not None:
            item = Dataset()
            item.PatientID, item.IssuerOfPatientID = pnr, PERSONNUMMER_OID
            ds.OtherPatientIDsSequence = Sequence([item])
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyDate, ds.StudyTime, ds.SeriesDate = study_date, "101500", study_date
        ds.Modality, ds.AccessionNumber, ds.InstanceNumber = modality, accession, number
        ds.StudyDescription, ds.SeriesNumber = f"{modality} study", 1
        path = folder / f"{uuid.uuid4().hex}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
        sops.append(ds.SOPInstanceUID)
    return paths, Sent(study_uid, series_uid, sops, str(ds.SOPClassUID))


def _send(server: ArchiveProcess, paths: list[Path]) -> None:
    result = storescu(server, *paths)
    assert result.returncode == 0, result.stderr


def _register(server: ArchiveProcess, patient_id: str, issuer: str, org_code: str, pnr: str | None = None) -> None:
    """What the store path does once it resolves identity: put the dataset's
    identifiers into the MPI, linking by personnummer (the identity API)."""
    from samarkiv.identity.organisations import get_organisation
    from samarkiv.identity.patients import resolve_identity
    from samarkiv.index.engine import create_index_engine

    engine = create_index_engine(server.index_url, writer=server.index_url.startswith("sqlite"))
    try:
        with engine.begin() as conn:
            others = [(pnr, PERSONNUMMER_OID)] if pnr else []
            resolve_identity(conn, patient_id, issuer, others, get_organisation(conn, org_code), actor="test")
    finally:
        engine.dispose()


@dataclass
class Region:
    server: ArchiveProcess
    ks: Sent  # person A at Karolinska (KS-1001, with personnummer)
    su: Sent  # person A at Sahlgrenska (SU-77, with personnummer)
    other: Sent  # person B at Sahlgrenska: Patient ID KS-1001 too, another person

    @property
    def fhir(self) -> str:
        return f"{self.server.http}/fhir"

    @property
    def headers(self) -> dict[str, str]:
        return self.server.headers


@pytest.fixture
def region(archive: ArchiveProcess, tmp_path: Path) -> Region:
    archive.cli("org", "add", "KS", "--name", "Karolinska", "--issuer", "KS", "--issuer-ueid", KS_OID)
    archive.cli("org", "add", "SU", "--name", "Sahlgrenska", "--issuer", "SU")
    archive.cli("org", "add", "RAD", "--name", "Privatröntgen", "--kind", "private", "--issuer", "RAD")
    ks_files, ks = _dataset(tmp_path, "KS-1001", "KS", pnr=PNR, accession="KSACC1")
    su_files, su = _dataset(
        tmp_path, "SU-77", "SU", pnr="19121212-1212", study_date="20240415", modality="MR", count=2,
        name="Testsson^Tolvan^Anders",
    )  # fmt: skip
    other_files, other = _dataset(tmp_path, "KS-1001", "SU", name="Annan^Person", study_date="20230101")
    _send(archive, ks_files + su_files + other_files)
    _register(archive, "KS-1001", "KS", "KS", PNR)
    _register(archive, "SU-77", "SU", "SU", "19121212-1212")
    _register(archive, "KS-1001", "SU", "SU")
    return Region(archive, ks, su, other)


def _patient_id(region: Region, system: str, value: str) -> str:
    bundle = get_fhir(f"{region.fhir}/Patient", params={"identifier": f"{system}|{value}"})
    assert bundle["total"] == 1, bundle
    return bundle["entry"][0]["resource"]["id"]


def _study_ids(bundle: dict[str, Any]) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"}


# --- Patient ---------------------------------------------------------------------------------


def test_patient_search_by_national_number_finds_the_person(region: Region) -> None:
    bundle = get_fhir(f"{region.fhir}/Patient", params={"identifier": f"urn:oid:{PERSONNUMMER_OID}|{PNR}"})
    assert bundle["type"] == "searchset" and bundle["total"] == 1
    assert bundle["link"][0]["relation"] == "self" and "identifier=" in bundle["link"][0]["url"]
    entry = bundle["entry"][0]
    patient = entry["resource"]
    assert entry["fullUrl"] == f"{region.fhir}/Patient/{patient['id']}"
    by_system = {i["system"]: i for i in patient["identifier"]}
    assert by_system[f"urn:oid:{PERSONNUMMER_OID}"]["value"] == PNR
    assert by_system[f"urn:oid:{PERSONNUMMER_OID}"]["use"] == "official"
    # KS has an issuer OID; SU has none and gets samarkiv's own system.
    assert by_system[f"urn:oid:{KS_OID}"]["value"] == "KS-1001"
    assert by_system[f"urn:oid:{KS_OID}"]["assigner"] == {"display": "Karolinska"}
    assert by_system["urn:samarkiv:issuer:SU"]["value"] == "SU-77"
    assert by_system["urn:samarkiv:issuer:SU"]["assigner"] == {"display": "Sahlgrenska"}
    assert patient["gender"] == "male" and patient["birthDate"] == "1912-12-12" and patient["active"] is True
    assert patient["name"][0]["family"] == "Testsson"

    # The same person by the number in another written form, by either local ID, and by read.
    for system, value in ((f"urn:oid:{PERSONNUMMER_OID}", "19121212-1212"), (f"urn:oid:{KS_OID}", "KS-1001"),
                          ("urn:samarkiv:issuer:SU", "SU-77")):  # fmt: skip
        assert _patient_id(region, system, value) == patient["id"]
    assert get_fhir(f"{region.fhir}/Patient/{patient['id']}") == patient
    assert get_fhir(f"{region.fhir}/Patient", params={"_id": patient["id"]})["entry"][0]["resource"] == patient

    # The colliding Patient ID at SU is another person.
    other = _patient_id(region, "urn:samarkiv:issuer:SU", "KS-1001")
    assert other != patient["id"]
    # A value alone matches in every system: both persons carry KS-1001.
    assert get_fhir(f"{region.fhir}/Patient", params={"identifier": "KS-1001"})["total"] == 2
    # Unknown numbers and systems find nothing.
    assert get_fhir(f"{region.fhir}/Patient", params={"identifier": f"urn:oid:{PERSONNUMMER_OID}|190101010101"})["total"] == 0
    assert get_fhir(f"{region.fhir}/Patient", params={"identifier": "http://example.org/ids|SU-77"})["total"] == 0


def test_patient_search_by_name_birth_date_and_gender(region: Region, tmp_path: Path) -> None:
    person_a = _patient_id(region, f"urn:oid:{PERSONNUMMER_OID}", PNR)
    person_b = _patient_id(region, "urn:samarkiv:issuer:SU", "KS-1001")
    files, _ = _dataset(tmp_path, "RAD-5", "RAD", name="Østergård^Åsa", study_date="20240501")
    _send(region.server, files)

    def found(**params: str) -> set[str]:
        bundle = get_fhir(f"{region.fhir}/Patient", params=params)
        assert bundle["total"] == len(bundle.get("entry", []))
        return {e["resource"]["id"] for e in bundle.get("entry", [])}

    assert found(name="test") == {person_a}  # family name, case-insensitive, starts with
    assert found(name="TOLV") == found(name="anders") == {person_a}  # given and middle names
    assert found(name="person") == {person_b}
    assert found(name="esss") == set() and found(name="sson") == set()  # not in the middle of a name
    assert found(**{"name:contains": "ESTS"}) == {person_a}
    assert found(**{"name:exact": "Testsson"}) == {person_a} and found(**{"name:exact": "testsson"}) == set()
    assert found(family="tolvan") == set() and found(given="tolvan") == {person_a} and found(family="annan") == {person_b}
    assert found(name="annan,testsson") == {person_a, person_b}  # a list is OR
    nordic = found(name="østergård")  # case folding beyond ASCII, on both index engines
    assert len(nordic) == 1 and found(given="åsa") == nordic
    assert nordic.isdisjoint({person_a, person_b})

    assert found(birthdate="1912-12-12") == found(birthdate="1912") == {person_a, person_b, *nordic}
    assert found(birthdate="lt1912-12-12") == set() and found(birthdate="ge1912-12-12") == {person_a, person_b, *nordic}
    assert found(gender="male") == {person_a, person_b, *nordic} and found(gender="female") == set()
    assert found(name="test", birthdate="1912-12-12", gender="male") == {person_a}  # parameters are AND
    problem = get_fhir(f"{region.fhir}/Patient", params={"birthdate": "12/12/1912"}, status=400)
    assert "birthdate" in problem["issue"][0]["diagnostics"]


def test_merged_person_links_to_the_one_kept(region: Region) -> None:
    person_a = _patient_id(region, f"urn:oid:{PERSONNUMMER_OID}", PNR)
    person_b = _patient_id(region, "urn:samarkiv:issuer:SU", "KS-1001")
    region.server.cli("patients", "merge", person_b, person_a, "--why", "same person (test)")
    merged = get_fhir(f"{region.fhir}/Patient/{person_b}")
    assert merged["active"] is False
    assert merged["link"] == [{"other": {"reference": f"Patient/{person_a}"}, "type": "replaced-by"}]
    kept = get_fhir(f"{region.fhir}/Patient/{person_a}")
    assert {"other": {"reference": f"Patient/{person_b}"}, "type": "replaces"} in kept["link"]
    assert "KS-1001" in {i["value"] for i in kept["identifier"] if i["system"] == "urn:samarkiv:issuer:SU"}
    # A reference to the merged person finds the studies of the one kept.
    bundle = get_fhir(f"{region.fhir}/ImagingStudy", params={"patient": f"Patient/{person_b}"})
    assert _study_ids(bundle) == {region.ks.study_uid, region.su.study_uid, region.other.study_uid}


# --- ImagingStudy ----------------------------------------------------------------------------


def test_imaging_studies_by_subject_identifier_span_organisations(region: Region) -> None:
    person = _patient_id(region, f"urn:oid:{PERSONNUMMER_OID}", PNR)
    expected = {region.ks.study_uid, region.su.study_uid}
    token = f"urn:oid:{PERSONNUMMER_OID}|{PNR}"
    for params in ({"subject:Patient.identifier": token}, {"patient.identifier": token},
                   {"patient": f"Patient/{person}"}, {"patient": person}, {"subject": f"Patient/{person}"},
                   {"subject:Patient.identifier": f"urn:oid:{KS_OID}|KS-1001"}):  # fmt: skip
        bundle = get_fhir(f"{region.fhir}/ImagingStudy", params=params)
        assert bundle["total"] == 2 and _study_ids(bundle) == expected, params
    # The SU patient KS-1001 is someone else: the KS ID with SU's system finds only that study.
    bundle = get_fhir(f"{region.fhir}/ImagingStudy", params={"subject:Patient.identifier": "urn:samarkiv:issuer:SU|KS-1001"})
    assert _study_ids(bundle) == {region.other.study_uid}

    study = get_fhir(f"{region.fhir}/ImagingStudy/{region.su.study_uid}")
    assert study["status"] == "available"
    assert study["subject"] == {"reference": f"Patient/{person}"}
    assert {"system": "urn:dicom:uid", "value": f"urn:oid:{region.su.study_uid}"} in study["identifier"]
    assert study["modality"] == [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "MR"}]
    assert study["numberOfSeries"] == 1 and study["numberOfInstances"] == 2
    assert study["started"].startswith("2024-04-15T10:15:00")
    assert study["description"] == "MR study"
    (series,) = study["series"]
    assert series["uid"] == region.su.series_uid and series["numberOfInstances"] == 2 and series["number"] == 1
    assert [i["uid"] for i in series["instance"]] == region.su.sop_uids
    assert series["instance"][0]["sopClass"] == {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{region.su.sop_class_uid}"}
    assert series["instance"][0]["number"] == 1
    (endpoint,) = study["contained"]
    assert study["endpoint"] == [{"reference": f"#{endpoint['id']}"}]
    assert endpoint["connectionType"]["code"] == "dicom-wado-rs"
    assert endpoint["address"] == f"{region.server.http}/dicomweb"


def test_imaging_study_search_parameters_and_paging(region: Region) -> None:
    url = f"{region.fhir}/ImagingStudy"
    ks, su, other = region.ks.study_uid, region.su.study_uid, region.other.study_uid
    assert _study_ids(get_fhir(url, params={"identifier": f"urn:dicom:uid|urn:oid:{ks}"})) == {ks}
    assert _study_ids(get_fhir(url, params={"identifier": f"urn:oid:{su}"})) == {su}
    assert _study_ids(get_fhir(url, params={"identifier": "KSACC1"})) == {ks}  # accession number
    assert _study_ids(get_fhir(url, params={"_id": f"{ks},{other}"})) == {ks, other}
    assert _study_ids(get_fhir(url, params={"started": "2024"})) == {ks, su}
    assert _study_ids(get_fhir(url, params={"started": "ge2024-04"})) == {su}
    assert _study_ids(get_fhir(url, params=[("started", "ge2023-06-01"), ("started", "lt2024-04-15")])) == {ks}
    assert _study_ids(get_fhir(url, params={"modality": "MR"})) == {su}
    assert _study_ids(get_fhir(url, params={"series": region.ks.series_uid})) == {ks}
    assert get_fhir(url, params={"_summary": "count"}) == {
        "resourceType": "Bundle", "type": "searchset", "total": 3,
        "link": [{"relation": "self", "url": f"{url}?_summary=count&_count=20"}],
    }  # fmt: skip

    # Paging: _count=2 gives a next link; following the links visits each study once.
    seen: list[str] = []
    page = get_fhir(url, params={"_count": "2"})
    while True:
        assert page["total"] == 3
        seen += sorted(_study_ids(page))
        nxt = [link["url"] for link in page["link"] if link["relation"] == "next"]
        if not nxt:
            break
        page = get_fhir(nxt[0])
    assert sorted(seen) == sorted([ks, su, other]) and len(seen) == 3

    # POST [type]/_search (search.html: keeps identifiers out of URLs).
    response = httpx.post(f"{url}/_search", data={"subject:Patient.identifier": f"urn:oid:{PERSONNUMMER_OID}|{PNR}"}, headers=region.headers)
    assert response.status_code == 200 and response.headers["content-type"].startswith(FHIR_JSON)
    assert _study_ids(response.json()) == {ks, su}


def test_manual_link_with_the_cli_joins_a_third_organisation(region: Region, tmp_path: Path) -> None:
    """A private provider's local ID without personnummer, linked by hand with ``samarkiv patients link``."""
    files, rad = _dataset(tmp_path, "P-9", "RAD", study_date="20240520", modality="DX")
    _send(region.server, files)
    _register(region.server, "P-9", "RAD", "RAD")
    token = f"urn:oid:{PERSONNUMMER_OID}|{PNR}"
    bundle = get_fhir(f"{region.fhir}/ImagingStudy", params={"subject:Patient.identifier": token})
    assert rad.study_uid not in _study_ids(bundle)
    region.server.cli("patients", "link", "P-9^RAD", "--to", f"{PNR}^se-personnummer", "--why", "test")
    bundle = get_fhir(f"{region.fhir}/ImagingStudy", params={"subject:Patient.identifier": token})
    assert _study_ids(bundle) == {region.ks.study_uid, region.su.study_uid, rad.study_uid}
    patient = get_fhir(f"{region.fhir}/Patient", params={"identifier": token})["entry"][0]["resource"]
    assert {"system": "urn:samarkiv:issuer:RAD", "value": "P-9"}.items() <= next(
        i for i in patient["identifier"] if i["value"] == "P-9"
    ).items()


def test_endpoint_address_serves_the_study_over_qido(region: Region) -> None:
    study = get_fhir(f"{region.fhir}/ImagingStudy/{region.ks.study_uid}")
    address = study["contained"][0]["address"]
    response = httpx.get(f"{address}/studies", params={"StudyInstanceUID": region.ks.study_uid}, timeout=30, headers=region.headers)
    assert response.status_code == 200, response.text
    (found,) = response.json()
    assert found["0020000D"]["Value"] == [region.ks.study_uid]


def test_store_path_links_by_personnummer(archive: ArchiveProcess, tmp_path: Path) -> None:
    """The store path resolves identity: storing is enough, no _register."""
    from samarkiv.index.engine import create_index_engine
    from samarkiv.index.identity_schema import patient_identifiers

    archive.cli("org", "add", "KS", "--name", "Karolinska", "--issuer", "KS", "--issuer-ueid", KS_OID)
    archive.cli("org", "add", "SU", "--name", "Sahlgrenska", "--issuer", "SU")
    ks_files, ks = _dataset(tmp_path, "KS-1001", "KS", pnr=PNR)
    su_files, su = _dataset(tmp_path, "SU-77", "SU", pnr="19121212-1212", modality="MR")
    _send(archive, ks_files + su_files)
    engine = create_index_engine(archive.index_url)
    try:
        with engine.connect() as conn:
            known = conn.execute(select(func.count()).select_from(patient_identifiers)).scalar_one()
    finally:
        engine.dispose()
    assert known > 0, "the store path put no identifier into the master patient index"
    bundle = get_fhir(
        f"{archive.http}/fhir/ImagingStudy", params={"subject:Patient.identifier": f"urn:oid:{PERSONNUMMER_OID}|{PNR}"}
    )
    assert _study_ids(bundle) == {ks.study_uid, su.study_uid}
    (patient,) = [e["resource"] for e in get_fhir(f"{archive.http}/fhir/Patient", params={"identifier": f"urn:oid:{PERSONNUMMER_OID}|{PNR}"})["entry"]]
    assert {f"urn:oid:{KS_OID}", "urn:samarkiv:issuer:SU"} <= {i["system"] for i in patient["identifier"]}


# --- capability and errors ---------------------------------------------------------------------


def test_capability_statement_and_errors(archive: ArchiveProcess) -> None:
    fhir = f"{archive.http}/fhir"
    capability = get_fhir(f"{fhir}/metadata")
    assert capability["resourceType"] == "CapabilityStatement" and capability["fhirVersion"] == "4.0.1"
    assert {r["type"] for r in capability["rest"][0]["resource"]} == {"Patient", "ImagingStudy"}
    assert get_fhir(f"{fhir}/metadata", params={"_format": "json"}) == capability
    assert get_fhir(f"{fhir}/metadata", headers={"Accept": "application/fhir+json"}) == capability

    def issue(body: dict[str, Any]) -> dict[str, Any]:
        (found,) = body["issue"]
        return found

    assert issue(get_fhir(f"{fhir}/Patient/424242", status=404))["code"] == "not-found"
    assert issue(get_fhir(f"{fhir}/Patient/not-a-number", status=404))["code"] == "not-found"
    assert issue(get_fhir(f"{fhir}/ImagingStudy/1.2.3.4", status=404))["code"] == "not-found"
    assert issue(get_fhir(f"{fhir}/Observation", status=404))["code"] == "not-supported"
    assert issue(get_fhir(f"{fhir}/Observation/1", status=404))["code"] == "not-supported"
    assert issue(get_fhir(f"{fhir}/Patient", params={"_count": "many"}, status=400))["code"] == "invalid"
    assert issue(get_fhir(f"{fhir}/ImagingStudy", params={"started": "last week"}, status=400))["code"] == "invalid"
    assert issue(get_fhir(f"{fhir}/ImagingStudy", params={"patient": "Group/1"}, status=400))["code"] == "invalid"
    assert issue(get_fhir(f"{fhir}/Patient", params={"_format": "xml"}, status=406))["code"] == "not-supported"
    get_fhir(f"{fhir}/Patient", headers={"Accept": "application/fhir+xml"}, status=406)

    # Unknown parameters: lenient by default (ignored, reported), 400 with Prefer: handling=strict.
    lenient = get_fhir(f"{fhir}/Patient", params={"address-city": "Solna"})
    assert lenient["total"] == 0
    (outcome,) = [e for e in lenient["entry"] if e["search"]["mode"] == "outcome"]
    assert "address-city" in issue(outcome["resource"])["diagnostics"] and "address-city" not in lenient["link"][0]["url"]
    strict = get_fhir(f"{fhir}/Patient", params={"address-city": "Solna"}, headers={"Prefer": "handling=strict"}, status=400)
    assert "address-city" in issue(strict)["diagnostics"]

    for method in ("POST", "PUT", "DELETE"):
        response = httpx.request(method, f"{fhir}/Patient/1", json={"resourceType": "Patient"}, headers=archive.headers)
        assert response.status_code == 405 and response.headers["allow"] == "GET"
        assert response.headers["content-type"].startswith(FHIR_JSON)
        assert issue(response.json())["code"] == "not-supported"
    response = httpx.post(f"{fhir}/Patient", json={"resourceType": "Patient"}, headers=archive.headers)
    assert response.status_code == 405
