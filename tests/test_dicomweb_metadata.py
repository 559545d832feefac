"""WADO-RS metadata (PS3.18 10.4.1.1.2) against dicomweb-client: the JSON served
equals pydicom's of the file sent, bulk data as BulkDataURI; XML, errors, and
the cache staying right as instances are added and replaced."""

from __future__ import annotations

import json
import re
import time
import warnings
import xml.etree.ElementTree as ET
import zlib
from email.parser import BytesParser
from io import BytesIO
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from _dicomweb import as_sent, client, consistent, expected_metadata, normalised, path_of, read, stow
from conftest import auth_headers

NS = {"d": "http://dicom.nema.org/PS3.19/models/NativeDICOM"}


def metric(server, name: str) -> float:  # type: ignore[no-untyped-def]
    text = httpx.get(server.http + "/metrics", headers=server.headers).text
    found = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def prefix(ds: pydicom.Dataset) -> str:
    return f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/bulk/"


def series_of(count: int, **attributes: object) -> list[pydicom.Dataset]:
    """``count`` CT instances of one new series (from pydicom's CT_small)."""
    study, series = generate_uid(), generate_uid()
    out = []
    for number in range(1, count + 1):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = number
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        out.append(ds)
    return out


def part10(ds: pydicom.Dataset) -> bytes:
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


# --- the JSON conversion itself, on every sample file ------------------------------------


def test_header_json_equals_pydicom(sample_files: list[Path]) -> None:
    """The fast converter (dicomjson.dataset_json) on stored header copies gives
    pydicom's JSON for every element it keeps, over all sample files."""
    from samarkiv.core.structure import inspect_file, header_bytes
    from samarkiv.web.dicomweb.dicomjson import dataset_json, xml_document
    from samarkiv.web.dicomweb.metadata import _TRACE_TAGS

    compared = 0
    for path in sample_files:
        header = header_bytes(path, inspect_file(path))
        if header is None:
            continue  # deflated: read from the object itself
        try:
            reference = read(path).to_json_dict(1 << 62, lambda e: "")
        except Exception:  # noqa: BLE001 - a value pydicom itself cannot decode
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mine = dataset_json(pydicom.dcmread(BytesIO(header)), skip=_TRACE_TAGS)
        assert mine == {k: v for k, v in reference.items() if k in mine}, path.name
        root = ET.fromstring(xml_document(mine))  # the XML form is well-formed too
        assert len(root.findall("d:DicomAttribute", NS)) == len(mine)
        compared += 1
    assert compared >= 20


# --- against a running archive -------------------------------------------------------------


def test_metadata_equals_what_was_sent(archive, sendable_files: list[Path]) -> None:  # type: ignore[no-untyped-def]
    files = consistent(sendable_files)
    web = client(archive)
    for start in range(0, len(files), 25):
        web.store_instances([read(f) for f in files[start : start + 25]])
    studies: dict[str, set[str]] = {}
    series: dict[tuple[str, str], set[str]] = {}
    for path in files:
        ds = read(path)
        studies.setdefault(ds.StudyInstanceUID, set()).add(ds.SOPInstanceUID)
        series.setdefault((ds.StudyInstanceUID, ds.SeriesInstanceUID), set()).add(ds.SOPInstanceUID)
        served = web.retrieve_instance_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        assert normalised(served) == normalised(expected_metadata(as_sent(path), prefix(ds))), path.name
    for (study, series_uid), members in series.items():
        served = web.retrieve_series_metadata(study, series_uid)
        assert {item["00080018"]["Value"][0] for item in served} == members
    for study, members in studies.items():
        served = web.retrieve_study_metadata(study)
        assert {item["00080018"]["Value"][0] for item in served} == members


def test_bulk_data_uris(archive, sample_files: list[Path]) -> None:  # type: ignore[no-untyped-def]
    """Pixel Data and elements over 64 KiB (here segmented palette LUTs) are announced
    with BulkDataURIs on the request's own base URL; a large sequence stays inline."""
    by_name = {p.name: p for p in sample_files}
    wanted = [by_name[n] for n in ("gdcm-US-ALOKA-16.dcm", "waveform_ecg.dcm", "CT_small.dcm") if n in by_name]
    if len(wanted) < 3:
        pytest.skip("sample files gdcm-US-ALOKA-16, waveform_ecg and CT_small needed")
    response = stow(archive, [p.read_bytes() for p in wanted])
    assert response.status_code == 200, response.text
    alok, ecg, ct = (read(p) for p in wanted)
    url = (
        f"{archive.http}/dicomweb/studies/{alok.StudyInstanceUID}/series/{alok.SeriesInstanceUID}"
        f"/instances/{alok.SOPInstanceUID}/metadata"
    )
    served = httpx.get(url, headers=archive.headers).json()[0]
    base = url.removesuffix("/metadata") + "/bulk/"
    for tag in ("00281221", "00281222", "7FE00010"):
        assert served[tag] == {"vr": "OW", "BulkDataURI": base + tag}
    ecg_served = client(archive).retrieve_instance_metadata(ecg.StudyInstanceUID, ecg.SeriesInstanceUID, ecg.SOPInstanceUID)
    assert len(ecg_served["54000100"]["Value"]) == len(ecg.WaveformSequence)
    ct_served = client(archive).retrieve_instance_metadata(ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID)
    assert path_of(ct_served["7FE00010"]["BulkDataURI"]) == prefix(ct) + "7FE00010"


def test_cache_follows_stores_and_replacements(make_archive) -> None:  # type: ignore[no-untyped-def]
    # never idle: nothing is prepared in the background, so every conversion is counted here
    server = make_archive('duplicate_policy = "keep-new"\njournal_idle_seconds = 3600\n')
    web = client(server)
    instances = series_of(3, SeriesDescription="cache test")
    first = instances[0]
    web.store_instances(instances[:2])

    def served() -> dict[str, dict]:
        items = web.retrieve_series_metadata(first.StudyInstanceUID, first.SeriesInstanceUID)
        return {item["00080018"]["Value"][0]: item for item in items}

    assert set(served()) == {ds.SOPInstanceUID for ds in instances[:2]}
    converted = metric(server, "samarkiv_metadata_conversions_total")
    assert served() and metric(server, "samarkiv_metadata_conversions_total") == converted  # from the cache
    assert metric(server, 'samarkiv_metadata_answers_total{source="cached"}') >= 1

    web.store_instances(instances[2:])  # the series grows: the answer changes
    assert set(served()) == {ds.SOPInstanceUID for ds in instances}
    assert metric(server, "samarkiv_metadata_conversions_total") == converted + 1  # only the new one

    changed = instances[1]
    changed.ImageComments = "replaced"  # a different object under the same SOP Instance UID
    answer = web.store_instances([changed])
    assert answer.ReferencedSOPSequence[0].WarningReason == 0xB011
    assert served()[changed.SOPInstanceUID]["00204000"]["Value"] == ["replaced"]
    study = web.retrieve_study_metadata(first.StudyInstanceUID)
    assert [i for i in study if i["00080018"]["Value"][0] == changed.SOPInstanceUID][0]["00204000"]["Value"] == [
        "replaced"
    ]


# --- metadata prepared in the background (instance_json) ------------------------------------


def test_instance_json_migration_matches_the_table(index_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from samarkiv.index.engine import create_index_engine, migrate
    from samarkiv.index.metadata_schema import instance_json

    engine = create_index_engine(index_url, writer=index_url.startswith("sqlite"))
    try:
        migrate(engine)
        with engine.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn), instance_json.metadata)
        assert [d for d in diffs if "instance_json" in repr(d)] == []
    finally:
        engine.dispose()


def wait_prepared(server, count: float, timeout: float = 120) -> None:  # type: ignore[no-untyped-def]
    """Wait until the journal mover has prepared ``count`` instances' metadata."""
    deadline = time.monotonic() + timeout
    while metric(server, "samarkiv_metadata_prepared_total") < count:
        assert time.monotonic() < deadline, "metadata was not prepared in time"
        time.sleep(0.2)


def series_url(server, ds: pydicom.Dataset) -> str:  # type: ignore[no-untyped-def]
    return f"{server.http}/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/metadata"


def test_cold_series_answered_from_prepared_rows(make_archive) -> None:  # type: ignore[no-untyped-def]
    """Once the archive is idle the journal mover prepares each instance's JSON; a
    200-instance series is then answered cold (nothing of it in memory) with no header
    converted, and equals pydicom's JSON of what was sent."""
    server = make_archive("journal_idle_seconds = 0\n")
    instances = series_of(200, SeriesDescription="prepared")
    for start in range(0, len(instances), 50):
        response = stow(server, [part10(ds) for ds in instances[start : start + 50]])
        assert response.status_code == 200, response.text
    wait_prepared(server, len(instances))
    assert metric(server, "samarkiv_written_back_instances_total") == len(instances)  # journal drained first

    served = httpx.get(series_url(server, instances[0]), timeout=60, headers=server.headers)
    assert served.status_code == 200
    assert metric(server, "samarkiv_metadata_conversions_total") == 0
    items = {item["00080018"]["Value"][0]: item for item in served.json()}
    assert len(items) == len(instances) and set(items) == {ds.SOPInstanceUID for ds in instances}
    for ds in (instances[0], instances[-1]):
        expected = expected_metadata(part10(ds), prefix(ds))
        assert normalised(items[ds.SOPInstanceUID]) == normalised(expected)
        assert items[ds.SOPInstanceUID]["7FE00010"]["BulkDataURI"].startswith(server.http + "/dicomweb/studies/")


def test_prepared_equals_converted(make_archive) -> None:  # type: ignore[no-untyped-def]
    """Without background preparation a request converts the headers and keeps the
    rows (write-through): the next answer over the same instances is read from
    them, unconverted, and is the same JSON."""
    server = make_archive("journal_idle_seconds = 3600\n")
    instances = series_of(3)
    client(server).store_instances(instances)
    ds = instances[0]
    converted = httpx.get(series_url(server, ds), headers=server.headers).json()
    assert metric(server, "samarkiv_metadata_conversions_total") == 3
    study = httpx.get(f"{server.http}/dicomweb/studies/{ds.StudyInstanceUID}/metadata", headers=server.headers).json()
    assert metric(server, "samarkiv_metadata_conversions_total") == 3
    assert metric(server, "samarkiv_metadata_prepared_total") == 0
    assert study == converted
    gzipped = httpx.get(series_url(server, ds), headers={**server.headers, "Accept-Encoding": "gzip"})
    assert gzipped.headers.get("content-encoding") == "gzip" and gzipped.json() == converted


def test_replaced_instance_serves_new_json(make_archive) -> None:  # type: ignore[no-untyped-def]
    """keep-new: a prepared row of the replaced object is never served; the new
    object's JSON is converted once and kept."""
    server = make_archive('duplicate_policy = "keep-new"\njournal_idle_seconds = 0\n')
    web = client(server)
    instances = series_of(2)
    web.store_instances(instances)
    wait_prepared(server, 2)
    changed = instances[1]
    changed.ImageComments = "replaced"
    assert web.store_instances([changed]).ReferencedSOPSequence[0].WarningReason == 0xB011

    def comments(url: str) -> dict[str, object]:
        return {i["00080018"]["Value"][0]: i.get("00204000", {}).get("Value") for i in httpx.get(url, headers=server.headers).json()}

    assert comments(series_url(server, changed))[changed.SOPInstanceUID] == ["replaced"]
    assert metric(server, "samarkiv_metadata_conversions_total") == 1  # only the replaced one
    study_url = f"{server.http}/dicomweb/studies/{changed.StudyInstanceUID}/metadata"
    assert comments(study_url) == {instances[0].SOPInstanceUID: [instances[0].ImageComments], changed.SOPInstanceUID: ["replaced"]}
    assert metric(server, "samarkiv_metadata_conversions_total") == 1  # kept by the first answer


def test_xml_and_gzip(archive) -> None:  # type: ignore[no-untyped-def]
    instances = series_of(2, PatientName="Ærø^Åse")
    client(archive).store_instances(instances)
    ds = instances[0]
    url = f"{archive.http}/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/metadata"

    response = httpx.get(url, headers={**archive.headers, "Accept": 'multipart/related; type="application/dicom+xml"'})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("multipart/related")
    message = BytesParser().parsebytes(
        b"Content-Type: " + response.headers["content-type"].encode() + b"\r\n\r\n" + response.content
    )
    documents = [ET.fromstring(part.get_payload(decode=True)) for part in message.get_payload()]
    assert len(documents) == 2
    uids = set()
    for root in documents:
        sop = root.find("d:DicomAttribute[@keyword='SOPInstanceUID']/d:Value", NS)
        uids.add(sop.text)
        pixel = root.find("d:DicomAttribute[@tag='7FE00010']/d:BulkData", NS)
        assert pixel is not None and pixel.get("uri").endswith("/bulk/7FE00010")
        name = root.find("d:DicomAttribute[@keyword='PatientName']/d:PersonName/d:Alphabetic", NS)
        assert name.find("d:FamilyName", NS).text == "Ærø" and name.find("d:GivenName", NS).text == "Åse"
    assert uids == {i.SOPInstanceUID for i in instances}

    raw = httpx.get(url, headers={**archive.headers, "Accept-Encoding": "gzip"})
    assert raw.headers.get("content-encoding") == "gzip"
    plain = httpx.get(url, headers={**archive.headers, "Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    assert raw.json() == plain.json() == json.loads(plain.content)
    assert zlib.decompress(_gzip_bytes(url), 16 + zlib.MAX_WBITS) == plain.content


def _gzip_bytes(url: str) -> bytes:
    with httpx.stream("GET", url, headers={**auth_headers(url), "Accept-Encoding": "gzip"}) as response:
        return b"".join(response.iter_raw())


def test_errors(archive) -> None:  # type: ignore[no-untyped-def]
    instances = series_of(1)
    client(archive).store_instances(instances)
    ds = instances[0]
    base = f"{archive.http}/dicomweb/studies"
    for url, status in (
        (f"{base}/1.2.3.4/metadata", 403),  # no such study: refused like a hidden one (issue 5)
        (f"{base}/{ds.StudyInstanceUID}/series/1.2.3.4/metadata", 404),
        (f"{base}/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/1.2.3.4/metadata", 404),
        (f"{base}/1.2.3.4/series/{ds.SeriesInstanceUID}/metadata", 403),  # a series of another (unknown) study
    ):
        response = httpx.get(url, headers=archive.headers)
        assert response.status_code == status, url
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == status
    response = httpx.get(f"{base}/{ds.StudyInstanceUID}/metadata", headers={**archive.headers, "Accept": "image/png"})
    assert response.status_code == 406
    assert "application/dicom+json" in response.json()["detail"]
    assert httpx.get(f"{base}/{ds.StudyInstanceUID}/metadata", headers={**archive.headers, "Accept": "application/json"}).status_code == 200
