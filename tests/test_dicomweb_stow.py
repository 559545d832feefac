"""STOW-RS (PS3.18 10.5): dicomweb-client stores real sample files; the response
documents for duplicates, conflicts, invalid parts, another study; the error
answers; application/dicom+json uploads with bulk data; XML responses."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from io import BytesIO
from pathlib import Path

import httpx
import pydicom
import pytest
import requests
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from _dicomweb import as_sent, client, consistent, multipart, path_of, read, sequence, stow, value
from conftest import dataset_bytes, stored_object

NS = {"d": "http://dicom.nema.org/PS3.19/models/NativeDICOM"}


def open_archive(server):  # type: ignore[no-untyped-def]
    """An in-process Archive on the running server's data folder and index."""
    from samarkiv.config import Settings
    from samarkiv.core.archive import Archive

    return Archive(Settings(data=server.data, index_url=server.index_url), run_migrations=False)


def ct(**attributes: object) -> pydicom.Dataset:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword, val in attributes.items():
        setattr(ds, keyword, val)
    return ds


def part10(ds: pydicom.Dataset) -> bytes:
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_store_sample_files(archive, sendable_files: list[Path]) -> None:  # type: ignore[no-untyped-def]
    """Every consistent sample file is stored as sent, byte for byte after the File Meta."""
    files = consistent(sendable_files)
    web = client(archive)
    stored: dict[str, Path] = {}
    for start in range(0, len(files), 20):
        batch = files[start : start + 20]
        answer = web.store_instances([read(f) for f in batch])
        assert "FailedSOPSequence" not in answer
        assert [item.ReferencedSOPInstanceUID for item in answer.ReferencedSOPSequence] == [
            read(f).SOPInstanceUID for f in batch
        ]
        for item, path in zip(answer.ReferencedSOPSequence, batch, strict=True):
            ds = read(path)
            assert item.ReferencedSOPClassUID == ds.SOPClassUID
            assert path_of(item.RetrieveURL) == (
                f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
            )
            assert "WarningReason" not in item
            stored[ds.SOPInstanceUID] = path
    local = open_archive(archive)
    try:
        for uid, path in stored.items():
            instance = local.catalog.instance(uid)
            assert instance is not None, path.name
            assert dataset_bytes(stored_object(local, instance)) == dataset_bytes(as_sent(path)), path.name
    finally:
        local.close()


def test_status_codes_and_reasons(archive) -> None:  # type: ignore[no-untyped-def]
    first, second = ct(), ct()
    answer = stow(archive, [part10(first), part10(second)])
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/dicom+json"
    document = answer.json()
    assert path_of(value(document, "00081190")) == f"/dicomweb/studies/{first.StudyInstanceUID}"
    assert len(sequence(document, "00081199")) == 2 and "00081198" not in document

    # the same object again: stored already, a warning, 202
    again = stow(archive, [part10(first)])
    assert again.status_code == 202
    (item,) = sequence(again.json(), "00081199")
    assert value(item, "00081155") == first.SOPInstanceUID and value(item, "00081196") == 0xB010

    # a different object under a known SOP Instance UID (duplicate policy reject): 409, 0111
    changed = first.copy()
    changed.ImageComments = "another object"
    conflict = stow(archive, [part10(changed)])
    assert conflict.status_code == 409
    (failed,) = sequence(conflict.json(), "00081198")
    assert value(failed, "00081197") == 0x0111 and value(failed, "00081155") == first.SOPInstanceUID
    assert value(failed, "00081150") == first.SOPClassUID

    # the study is filed under another patient: 0xC001
    other_patient = ct(PatientID="SOMEONE-ELSE")
    refused = stow(archive, [part10(other_patient)])
    assert refused.status_code == 409
    assert value(sequence(refused.json(), "00081198")[0], "00081197") == 0xC001

    # an invalid part beside a good one: 202, one stored, one failed with 0xC000
    good = ct()
    broken = part10(ct())[:400]  # truncated inside the data set
    mixed = stow(archive, [part10(good), broken, b"not DICOM at all"])
    assert mixed.status_code == 202
    assert [value(i, "00081155") for i in sequence(mixed.json(), "00081199")] == [good.SOPInstanceUID]
    assert [value(i, "00081197") for i in sequence(mixed.json(), "00081198")] == [0xC000, 0xC000]

    # an instance of another study than the target: 0xC409, and nothing stored
    elsewhere = ct(StudyInstanceUID=generate_uid())
    wrong = stow(archive, [part10(elsewhere), part10(ct())], study=first.StudyInstanceUID)
    assert wrong.status_code == 202
    (failed,) = sequence(wrong.json(), "00081198")
    assert value(failed, "00081197") == 0xC409 and value(failed, "00081155") == elsewhere.SOPInstanceUID
    assert httpx.get(f"{archive.http}/dicomweb/instances", params={"SOPInstanceUID": elsewhere.SOPInstanceUID}, headers=archive.headers).json() == []
    only_wrong = stow(archive, [part10(ct(StudyInstanceUID=generate_uid()))], study=first.StudyInstanceUID)
    assert only_wrong.status_code == 409

    # a part that is not application/dicom
    typed = stow(archive, [part10(ct())], part_type="application/pdf")
    assert typed.status_code == 409
    assert value(sequence(typed.json(), "00081198")[0], "00081197") == 0xC000


def test_dicomweb_client_sees_failures(archive) -> None:  # type: ignore[no-untyped-def]
    web = client(archive)
    ds = ct()
    web.store_instances([ds], study_instance_uid=ds.StudyInstanceUID)
    assert web.search_for_instances(search_filters={"SOPInstanceUID": ds.SOPInstanceUID})
    with pytest.raises(requests.HTTPError) as error:
        web.store_instances([ct(StudyInstanceUID=generate_uid())], study_instance_uid=ds.StudyInstanceUID)
    assert error.value.response.status_code == 409


def test_request_errors(archive) -> None:  # type: ignore[no-untyped-def]
    url = f"{archive.http}/dicomweb/studies"
    data = part10(ct())

    def problem(response: httpx.Response, status: int) -> str:
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
        return response.json()["detail"]

    assert "multipart/related" in problem(httpx.post(url, content=data, headers={**archive.headers, "Content-Type": "application/dicom"}), 415)
    body, boundary = multipart([({"Content-Type": "application/dicom+xml"}, b"<x/>")])
    xml_type = f'multipart/related; type="application/dicom+xml"; boundary={boundary}'
    assert "application/dicom+xml" in problem(httpx.post(url, content=body, headers={**archive.headers, "Content-Type": xml_type}), 415)
    assert "boundary" in problem(
        httpx.post(url, content=data, headers={**archive.headers, "Content-Type": 'multipart/related; type="application/dicom"'}), 400
    )
    ok_type = 'multipart/related; type="application/dicom"; boundary=abc'
    assert "boundary" in problem(httpx.post(url, content=data, headers={**archive.headers, "Content-Type": ok_type}), 400)
    truncated = b"--abc\r\nContent-Type: application/dicom\r\n\r\n" + data[:1000]
    assert "closing boundary" in problem(httpx.post(url, content=truncated, headers={**archive.headers, "Content-Type": ok_type}), 400)
    garbage_header = b"--abc\r\nno colon here\r\n\r\n" + data + b"\r\n--abc--"
    assert "header" in problem(httpx.post(url, content=garbage_header, headers={**archive.headers, "Content-Type": ok_type}), 400)
    assert problem(httpx.post(url, content=b"--abc--\r\n", headers={**archive.headers, "Content-Type": ok_type}), 400)
    answer = httpx.post(url, content=data, headers={**archive.headers, "Content-Type": "application/dicom", "Accept": "image/png"})
    assert answer.status_code == 406
    # nothing of the above was stored
    assert httpx.get(f"{archive.http}/dicomweb/instances", headers=archive.headers).json() == []


def test_multipart_parsing_edges(archive) -> None:  # type: ignore[no-untyped-def]
    """A preamble, transport padding after boundaries, an epilogue, a boundary that needs
    quoting, parts split across reads at awkward places."""
    a, b = ct(), ct()
    boundary = "odd boundary:=?"
    body = (
        b"preamble to be ignored\r\n"
        + f"--{boundary}  \r\nContent-Type: application/dicom\r\n\r\n".encode()
        + part10(a)
        + f"\r\n--{boundary}\r\n\r\n".encode()  # no headers: the type parameter applies
        + part10(b)
        + f"\r\n--{boundary}--\r\nepilogue".encode()
    )

    def dribble():  # type: ignore[no-untyped-def]
        for start in range(0, len(body), 997):
            yield body[start : start + 997]

    response = httpx.post(
        f"{archive.http}/dicomweb/studies",
        content=dribble(),
        headers={**archive.headers, "Content-Type": f'multipart/related; type="application/dicom"; boundary="{boundary}"'},
    )
    assert response.status_code == 200, response.text
    assert [value(i, "00081155") for i in sequence(response.json(), "00081199")] == [a.SOPInstanceUID, b.SOPInstanceUID]


def test_large_parts_stream_to_staging_files(archive) -> None:  # type: ignore[no-untyped-def]
    """Objects larger than the in-memory limit take the staging-file path."""
    ds = ct()
    ds.ImageComments = "x" * (3 << 20)  # a 3 MiB text attribute
    response = stow(archive, [part10(ds)])
    assert response.status_code == 200, response.text
    local = open_archive(archive)
    try:
        instance = local.catalog.instance(ds.SOPInstanceUID)
        assert dataset_bytes(stored_object(local, instance)) == dataset_bytes(part10(ds))
    finally:
        local.close()
    assert not list((archive.data / "tmp").glob("*.part"))


def test_xml_response(archive) -> None:  # type: ignore[no-untyped-def]
    ds = ct()
    response = stow(archive, [part10(ds), b"junk"], accept="application/dicom+xml")
    assert response.status_code == 202
    assert response.headers["content-type"] == "application/dicom+xml"
    root = ET.fromstring(response.content)
    referenced = root.find("d:DicomAttribute[@keyword='ReferencedSOPSequence']", NS)
    assert referenced.find("d:Item/d:DicomAttribute[@keyword='ReferencedSOPInstanceUID']/d:Value", NS).text == (
        ds.SOPInstanceUID
    )
    failed = root.find("d:DicomAttribute[@keyword='FailedSOPSequence']", NS)
    assert failed.find("d:Item/d:DicomAttribute[@keyword='FailureReason']/d:Value", NS).text == str(0xC000)


def test_json_with_bulk_data(archive) -> None:  # type: ignore[no-untyped-def]
    """application/dicom+json with bulk data parts: stored as Part 10, values and pixels as sent."""
    uncompressed = ct()
    jpeg = pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    jpeg.SOPInstanceUID = generate_uid()
    frame = next(pydicom.encaps.generate_frames(jpeg.PixelData, number_of_frames=1))

    def document(ds: pydicom.Dataset, uri: str) -> dict:
        out = ds.to_json_dict(bulk_data_threshold=1 << 62, bulk_data_element_handler=lambda e: "")
        out["7FE00010"] = {"vr": "OB" if ds.file_meta.TransferSyntaxUID.is_compressed else "OW", "BulkDataURI": uri}
        return out

    base = "http://example.invalid/bulk"
    parts = [
        ({"Content-Type": "application/dicom+json"}, json.dumps([document(uncompressed, f"{base}/1"), document(jpeg, f"{base}/2")]).encode()),
        ({"Content-Type": "application/octet-stream", "Content-Location": f"{base}/1"}, uncompressed.PixelData),
        (
            {"Content-Type": 'image/jpeg; transfer-syntax="1.2.840.10008.1.2.4.50"', "Content-Location": f"{base}/2"},
            frame,
        ),
    ]
    body, boundary = multipart(parts)
    response = httpx.post(
        f"{archive.http}/dicomweb/studies",
        content=body,
        headers={**archive.headers, "Content-Type": f'multipart/related; type="application/dicom+json"; boundary={boundary}'},
    )
    assert response.status_code == 200, response.text
    assert {value(i, "00081155") for i in sequence(response.json(), "00081199")} == {
        uncompressed.SOPInstanceUID,
        jpeg.SOPInstanceUID,
    }
    local = open_archive(archive)
    try:
        for sent in (uncompressed, jpeg):
            stored = pydicom.dcmread(BytesIO(stored_object(local, local.catalog.instance(sent.SOPInstanceUID))))
            assert stored.PatientName == sent.PatientName and stored.Rows == sent.Rows
            assert (stored.pixel_array == sent.pixel_array).all()
        assert pydicom.dcmread(
            BytesIO(stored_object(local, local.catalog.instance(jpeg.SOPInstanceUID)))
        ).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    finally:
        local.close()

    # a BulkDataURI no part answers, and a part that is not JSON
    missing = [({"Content-Type": "application/dicom+json"}, json.dumps([document(ct(), f"{base}/none")]).encode())]
    body, boundary = multipart(missing + [({"Content-Type": "application/dicom+json"}, b"{not json")])
    response = httpx.post(
        f"{archive.http}/dicomweb/studies",
        content=body,
        headers={**archive.headers, "Content-Type": f'multipart/related; type="application/dicom+json"; boundary={boundary}'},
    )
    assert response.status_code == 409
    assert [value(i, "00081197") for i in sequence(response.json(), "00081198")] == [0xC000, 0xC000]


def test_stored_objects_belong_to_the_callers_organisation(make_archive) -> None:  # type: ignore[no-untyped-def]
    """STOW-RS files what a user stores under that user's organisation (issue 4:
    the authenticated client's), and without an issuer in the dataset under its
    Issuer of Patient ID; the same file from the default organisation's user
    would be another patient."""
    from sqlalchemy import select

    from samarkiv.index.identity_schema import organisations
    from samarkiv.index.schema import instances, patients, series, studies

    server = make_archive('[[organisations]]\ncode = "SU"\nname = "Sahlgrenska"\nissuer_of_patient_id = "SU"\n')
    _, token = server.add_user("su-radiographer", "technologist", org="SU")
    su_headers = {"Authorization": f"Bearer {token}"}
    ds = ct(PatientID="SU-1")
    if "IssuerOfPatientID" in ds:
        del ds.IssuerOfPatientID
    body, boundary = multipart([({"Content-Type": "application/dicom"}, part10(ds))])
    answer = httpx.post(
        server.http + "/dicomweb/studies", content=body, timeout=60,
        headers={**su_headers, "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                 "Accept": "application/dicom+json"},
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    archive = open_archive(server)
    try:
        with archive.engine.connect() as conn:
            owner, issuer = conn.execute(
                select(organisations.c.code, patients.c.issuer_of_patient_id)
                .select_from(instances)
                .join(organisations, organisations.c.pk == instances.c.org_pk)
                .join(series, series.c.pk == instances.c.series_pk)
                .join(studies, studies.c.pk == series.c.study_pk)
                .join(patients, patients.c.pk == studies.c.patient_pk)
                .where(instances.c.sop_instance_uid == ds.SOPInstanceUID)
            ).one()
    finally:
        archive.close()
    assert (owner, issuer) == ("SU", "SU")
