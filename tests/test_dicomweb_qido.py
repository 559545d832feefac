"""QIDO-RS (PS3.18 10.6) against dicomweb-client: every search level, keys by keyword
and tag, wildcards, ranges, UID lists, fuzzy names, includefield, default
attributes, paging, XML, and the error answers."""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from email.parser import BytesParser
from io import BytesIO

import httpx
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from _dicomweb import client, path_of, value

NS = {"d": "http://dicom.nema.org/PS3.19/models/NativeDICOM"}


@dataclasses.dataclass
class Study:
    uid: str
    patient_id: str
    name: str
    date: str
    accession: str
    series: dict[str, list[str]]  # series UID -> SOP Instance UIDs
    modalities: list[str]


def make_study(patient_id: str, name: str, date: str, accession: str, layout: list[tuple[str, int]]):  # type: ignore[no-untyped-def]
    """Datasets of one study: ``layout`` lists (modality, instance count) per series."""
    study = Study(generate_uid(), patient_id, name, date, accession, {}, [m for m, _n in layout])
    datasets = []
    for number, (modality, count) in enumerate(layout, 1):
        series_uid = generate_uid()
        study.series[series_uid] = []
        for index in range(count):
            ds = pydicom.dcmread(get_testdata_file("CT_small.dcm" if modality == "CT" else "MR_small.dcm"))
            ds.PatientID, ds.PatientName, ds.StudyDate, ds.AccessionNumber = patient_id, name, date, accession
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study.uid, series_uid
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.SeriesNumber, ds.InstanceNumber, ds.Modality = number, index + 1, modality
            ds.StudyDescription = f"study of {name.split('^')[0]}"
            ds.PatientWeight = 70
            study.series[series_uid].append(ds.SOPInstanceUID)
            datasets.append(ds)
    return study, datasets


@pytest.fixture
def searchable(archive):  # type: ignore[no-untyped-def]
    """An archive holding three patients' studies."""
    plan = [
        ("QA-1", "Smith^John", "20200315", "ACC1", [("CT", 2), ("MR", 1)]),
        ("QA-2", "Doe^Smithers", "20210610", "ACC2", [("MR", 1)]),
        ("QA-3", "Jones^Ann", "20191231", "ACC3", [("CT", 3)]),
    ]
    studies, datasets = [], []
    for args in plan:
        study, items = make_study(*args)
        studies.append(study)
        datasets += items
    answer = client(archive).store_instances(datasets)
    assert len(answer.ReferencedSOPSequence) == len(datasets)
    return archive, studies


def uids(results: list[dict], tag: str = "0020000D") -> set[str]:
    return {value(r, tag) for r in results}


def test_search_every_level(searchable) -> None:  # type: ignore[no-untyped-def]
    server, (smith, doe, jones) = searchable
    web = client(server)
    assert uids(web.search_for_studies()) == {smith.uid, doe.uid, jones.uid}

    series = web.search_for_series(smith.uid)
    assert uids(series, "0020000E") == set(smith.series)
    assert uids(web.search_for_series()) == {smith.uid, doe.uid, jones.uid}  # all series carry their study
    assert len(web.search_for_series()) == 4

    instances = web.search_for_instances(smith.uid)
    assert uids(instances, "00080018") == {sop for sops in smith.series.values() for sop in sops}
    first_series, sops = next(iter(smith.series.items()))
    assert uids(web.search_for_instances(smith.uid, first_series), "00080018") == set(sops)
    assert len(web.search_for_instances()) == 7

    study = next(r for r in web.search_for_studies() if value(r, "0020000D") == smith.uid)
    for tag, expected in {
        "00100020": "QA-1",
        "00080020": "20200315",
        "00080050": "ACC1",
        "00080056": "ONLINE",
        "00201206": 2,  # Number of Study Related Series
        "00201208": 3,  # Number of Study Related Instances
    }.items():
        assert value(study, tag) == expected, tag
    assert study["00080061"]["Value"] == ["CT", "MR"]
    assert study["00100010"]["Value"] == [{"Alphabetic": "Smith^John"}]
    assert path_of(value(study, "00081190")) == f"/dicomweb/studies/{smith.uid}"

    one_series = series[0]
    assert value(one_series, "00201209") in (1, 2)  # Number of Series Related Instances
    assert path_of(value(one_series, "00081190")).startswith(f"/dicomweb/studies/{smith.uid}/series/")
    instance = instances[0]
    for tag in ("00080016", "00080018", "00200013", "00280010", "00280011", "00280100", "00081190"):
        assert tag in instance, tag
    assert value(instance, "00280100") == 16  # Bits Allocated: from the stored header
    assert "00100020" not in instance  # study attributes only when the URL names no study


def test_matching(searchable) -> None:  # type: ignore[no-untyped-def]
    server, (smith, doe, jones) = searchable
    web = client(server)

    def studies(**filters: str) -> set[str]:
        return uids(web.search_for_studies(search_filters=filters))

    assert studies(PatientID="QA-2") == {doe.uid}
    assert studies(**{"00100020": "QA-3"}) == {jones.uid}  # by tag
    assert studies(PatientID="QA-*") == {smith.uid, doe.uid, jones.uid}  # wildcard
    assert studies(PatientID="QA-?") == {smith.uid, doe.uid, jones.uid}
    assert studies(PatientName="smith*") == {smith.uid}  # names: any case
    assert studies(PatientName="SMITH^JOHN") == {smith.uid}
    assert studies(StudyDate="20200101-20211231") == {smith.uid, doe.uid}  # range
    assert studies(StudyDate="-20200101") == {jones.uid}
    assert studies(StudyDate="20210610") == {doe.uid}
    assert studies(StudyInstanceUID=f"{smith.uid},{jones.uid}") == {smith.uid, jones.uid}  # UID list
    assert studies(StudyInstanceUID=f"{doe.uid}\\{jones.uid}") == {doe.uid, jones.uid}
    assert studies(ModalitiesInStudy="MR") == {smith.uid, doe.uid}
    assert studies(AccessionNumber="ACC3") == {jones.uid}
    assert studies(PatientID="QA-1", StudyDate="20210101-") == set()  # no match: 200 and []

    fuzzy = web.search_for_studies(fuzzymatching=True, search_filters={"PatientName": "smi"})
    assert uids(fuzzy) == {smith.uid, doe.uid}  # "Smith^John" and "Doe^Smithers"
    assert uids(web.search_for_studies(fuzzymatching=True, search_filters={"PatientName": "ann"})) == {jones.uid}
    assert uids(web.search_for_studies(fuzzymatching=False, search_filters={"PatientName": "smi"})) == set()

    assert uids(web.search_for_series(search_filters={"Modality": "MR"})) == {smith.uid, doe.uid}
    ct_sops = {sop for s in jones.series.values() for sop in s}
    found = web.search_for_instances(search_filters={"SOPInstanceUID": ",".join(sorted(ct_sops))})
    assert uids(found, "00080018") == ct_sops
    assert len(web.search_for_instances(search_filters={"SOPClassUID": "1.2.840.10008.5.1.4.1.1.4"})) == 2  # MR

    response = httpx.get(f"{server.http}/dicomweb/studies", params={"PatientWeight": "70"}, headers=server.headers)
    assert response.status_code == 200 and len(response.json()) == 3  # no column: universal, with a warning
    assert "PatientWeight" in response.headers["warning"] and response.headers["warning"].startswith("299 ")
    empty = httpx.get(f"{server.http}/dicomweb/studies", params={"PatientID": "nobody"}, headers=server.headers)
    assert empty.status_code == 200 and empty.json() == []


def test_includefield(searchable) -> None:  # type: ignore[no-untyped-def]
    server, (smith, _doe, _jones) = searchable
    web = client(server)
    plain = web.search_for_studies(search_filters={"StudyInstanceUID": smith.uid})[0]
    assert "00081030" not in plain
    for fields in (["StudyDescription"], ["00081030"]):
        study = web.search_for_studies(fields=fields, search_filters={"StudyInstanceUID": smith.uid})[0]
        assert value(study, "00081030") == "study of Smith"
    both = httpx.get(
        f"{server.http}/dicomweb/studies",
        params=[("StudyInstanceUID", smith.uid), ("includefield", "StudyDescription,PatientWeight"), ("includefield", "00101010")],headers=server.headers
    ).json()[0]
    assert value(both, "00081030") == "study of Smith"
    assert value(both, "00101030") == 70.0  # no column: from a stored header
    assert "00101010" in both  # Patient's Age: asked for, returned (empty when unknown)

    everything = web.search_for_studies(fields=["all"], search_filters={"StudyInstanceUID": smith.uid})[0]
    for tag in ("00081030", "00201200", "00080062", "00100030"):  # description, patient counts, SOP classes
        assert tag in everything, tag
    assert "00080060" not in everything  # Modality is a series attribute
    series = web.search_for_series(smith.uid, fields=["all"])[0]
    assert "0008103E" in series and "00400275" in series
    instance = web.search_for_instances(smith.uid, fields=["all"])[0]
    assert "00080023" in instance  # Content Date


def test_paging(searchable) -> None:  # type: ignore[no-untyped-def]
    server, studies = searchable
    web = client(server)
    everything = web.search_for_instances()
    pages = [web.search_for_instances(limit=3, offset=offset) for offset in (0, 3, 6, 9)]
    assert [len(p) for p in pages] == [3, 3, 1, 0]
    assert [value(r, "00080018") for p in pages for r in p] == [value(r, "00080018") for r in everything]
    assert len(web.search_for_instances(limit=3, get_remaining=True)) == 7
    assert web.search_for_studies(limit=0) == []


def test_server_maximum_warns(index_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Without a limit (or with a larger one) at most the server's maximum is returned,
    with the paging Warning of PS3.18 8.3.4.4. In-process, to set a small maximum."""
    import warnings

    from fastapi import FastAPI

    from samarkiv.config import Settings
    from samarkiv.core.archive import Archive
    from samarkiv.web.dicomweb import qido
    from samarkiv.web.dicomweb.errors import DicomWebError, dicomweb_error_handler

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    archive = Archive(Settings(data=tmp_path / "data", index_url=index_url))
    try:
        _study, datasets = make_study("QA-9", "Max^Imum", "20200101", "M", [("CT", 3)])
        for ds in datasets:
            assert archive.store_stream(BytesIO(part10(ds))).outcome.value == "stored"
        router = qido.create_router(archive)
        router.qido_service.max_results = 2
        app = FastAPI()
        app.include_router(router, prefix="/dicomweb")
        app.add_exception_handler(DicomWebError, dicomweb_error_handler)
        # the caller: a user of the organisation owning what was stored (no authentication layer here)
        from samarkiv.access.principal import Principal

        home = archive.owner_for(None)
        assert home is not None
        tester = Principal(name="tester", kind="user", org_pk=home.pk, org_code=home.code, roles=frozenset({"radiologist"}))

        @app.middleware("http")
        async def as_tester(request, call_next):  # type: ignore[no-untyped-def]
            request.scope.setdefault("state", {})["principal"] = tester
            return await call_next(request)

        web = TestClient(app)
        response = web.get("/dicomweb/instances")
        assert len(response.json()) == 2
        assert "Additional results can be requested" in response.headers["warning"]
        assert len(web.get("/dicomweb/instances", params={"limit": 5}).json()) == 2
        assert "warning" not in web.get("/dicomweb/instances", params={"limit": 2}).headers
        last = web.get("/dicomweb/instances", params={"offset": 2})
        assert len(last.json()) == 1 and "warning" not in last.headers
    finally:
        archive.close()


def part10(ds: pydicom.Dataset) -> bytes:
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_xml(searchable) -> None:  # type: ignore[no-untyped-def]
    server, (smith, doe, jones) = searchable
    response = httpx.get(
        f"{server.http}/dicomweb/studies",
        params={"PatientID": "QA-*"},
        headers={**server.headers, "Accept": 'multipart/related; type="application/dicom+xml"'},
    )
    assert response.status_code == 200
    message = BytesParser().parsebytes(
        b"Content-Type: " + response.headers["content-type"].encode() + b"\r\n\r\n" + response.content
    )
    found = set()
    for part in message.get_payload():
        assert part.get_content_type() == "application/dicom+xml"
        root = ET.fromstring(part.get_payload(decode=True))
        found.add(root.find("d:DicomAttribute[@tag='0020000D']/d:Value", NS).text)
        count = root.find("d:DicomAttribute[@keyword='NumberOfStudyRelatedInstances']/d:Value", NS)
        assert int(count.text) >= 1
    assert found == {smith.uid, doe.uid, jones.uid}


BAD_REQUESTS = [
    ({"StudyDate": "2020-13-01"}, "StudyDate"),
    ({"StudyDate": "yesterday"}, "StudyDate"),
    ({"NoSuchAttribute": "x"}, "NoSuchAttribute"),
    ({"00089999": "x"}, "00089999"),
    ({"00091010": "x"}, "private"),
    ({"limit": "-1"}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"offset": "x"}, "offset"),
    ({"fuzzymatching": "maybe"}, "fuzzymatching"),
    ({"includefield": "NotAKeyword"}, "includefield"),
    ({"SeriesNumber": "one"}, "SeriesNumber"),
    ({"PatientName.FamilyName": "x"}, "PatientName"),
]


def test_bad_requests(archive) -> None:  # type: ignore[no-untyped-def]
    """400 with a problem document naming the parameter (never echoing patient data)."""
    for params, named in BAD_REQUESTS:
        level = "series" if "SeriesNumber" in params else "studies"
        response = httpx.get(f"{archive.http}/dicomweb/{level}", params=params, headers=archive.headers)
        assert response.status_code == 400, params
        assert response.headers["content-type"] == "application/problem+json"
        assert named in response.json()["detail"], params
    repeated = httpx.get(f"{archive.http}/dicomweb/studies", params=[("PatientID", "a"), ("00100020", "b")], headers=archive.headers)
    assert repeated.status_code == 400 and "more than once" in repeated.json()["detail"]


def test_not_acceptable(archive) -> None:  # type: ignore[no-untyped-def]
    response = httpx.get(f"{archive.http}/dicomweb/studies", headers={**archive.headers, "Accept": "text/html"})
    assert response.status_code == 406
    assert response.headers["content-type"] == "application/problem+json"
    for accept in ("application/json", "*/*", "application/dicom+json; q=0.5, text/html"):
        assert httpx.get(f"{archive.http}/dicomweb/studies", headers={**archive.headers, "Accept": accept}).status_code == 200
