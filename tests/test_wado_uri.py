"""WADO-URI (PS3.18 section 9): GET /wado?requestType=WADO&... as older EPRs use it."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pydicom
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless

from _wado import dataset_of, make_pdf_object, pick, uids
from test_dicomweb_wado import stored_bytes, store


def wado(server, path: Path, **params: str) -> httpx.Response:  # type: ignore[no-untyped-def]
    study, series, sop = uids(path)
    query = {"requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": sop, **params}
    return httpx.get(f"{server.http}/wado", params=query, timeout=60, headers=server.headers)


def picture(response: httpx.Response) -> Image.Image:
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def test_wado_uri_dicom_and_rendered(archive, sample_files, tmp_path):
    ct, rle, multi = pick(sample_files, "ct"), pick(sample_files, "mr_rle"), pick(sample_files, "us_multi_jpeg")
    pdf = tmp_path / "doc.dcm"
    document = make_pdf_object(pdf)
    store(archive, ct, rle, multi, pdf)

    # application/dicom: the stored object when no syntax is asked and it is Explicit VR LE
    response = wado(archive, ct, contentType="application/dicom")
    assert response.status_code == 200
    assert response.headers["content-type"] == f"application/dicom; transfer-syntax={ExplicitVRLittleEndian}"
    assert response.content == stored_bytes(archive, uids(ct)[2])
    # an RLE original comes decoded by default, or in the syntax asked
    default = pydicom.dcmread(io.BytesIO(wado(archive, rle, contentType="application/dicom").content))
    assert default.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(default.pixel_array, pydicom.dcmread(rle).pixel_array)
    as_jls = wado(archive, rle, contentType="application/dicom", transferSyntax=JPEGLSLossless)
    decoded = pydicom.dcmread(io.BytesIO(as_jls.content))
    assert decoded.file_meta.TransferSyntaxUID == JPEGLSLossless
    assert np.array_equal(decoded.pixel_array, pydicom.dcmread(rle).pixel_array)
    stored_rle = wado(archive, rle, contentType="application/dicom", transferSyntax="1.2.840.10008.1.2.5")
    assert dataset_of(stored_rle.content) == dataset_of(stored_bytes(archive, uids(rle)[2]))

    # rendered: JPEG by default, PNG on request; size, window, region, frame
    ds = pydicom.dcmread(ct)
    jpeg = picture(wado(archive, ct))
    assert jpeg.format == "JPEG" and jpeg.size == (ds.Columns, ds.Rows)
    png = picture(wado(archive, ct, contentType="image/png"))
    assert png.format == "PNG"
    assert picture(wado(archive, ct, contentType="image/png", rows="64", columns="64")).size == (64, 64)
    assert picture(wado(archive, ct, contentType="image/png", columns="32")).size == (32, 32)
    narrow = np.asarray(picture(wado(archive, ct, contentType="image/png", windowCenter="40", windowWidth="80")), float)
    wide = np.asarray(picture(wado(archive, ct, contentType="image/png", windowCenter="40", windowWidth="2000")), float)
    assert np.abs(narrow - wide).mean() > 10
    region = picture(wado(archive, ct, contentType="image/png", region="0,0,0.5,0.5"))
    assert region.size == (ds.Columns // 2, ds.Rows // 2)
    assert np.array_equal(np.asarray(region), np.asarray(png)[: ds.Rows // 2, : ds.Columns // 2])
    first = np.asarray(picture(wado(archive, multi, contentType="image/png")))
    third = np.asarray(picture(wado(archive, multi, contentType="image/png", frameNumber="3")))
    assert first.shape == third.shape and not np.array_equal(first, third)
    low = wado(archive, ct, imageQuality="5").content
    assert len(low) < len(wado(archive, ct, imageQuality="95").content)

    # an Encapsulated PDF renders as the document
    response = wado(archive, pdf, contentType="application/pdf")
    assert response.status_code == 200 and response.headers["content-type"] == "application/pdf"
    assert response.content == document
    assert wado(archive, pdf).content == document  # its natural form is the default


def test_wado_uri_errors(archive, sample_files):
    ct, multi = pick(sample_files, "ct"), pick(sample_files, "us_multi_jpeg")
    store(archive, ct, multi)
    study, series, sop = uids(ct)
    base = f"{archive.http}/wado"
    bad_requests = [
        {"studyUID": study, "seriesUID": series, "objectUID": sop},  # no requestType
        {"requestType": "RS", "studyUID": study, "seriesUID": series, "objectUID": sop},
        {"requestType": "WADO", "studyUID": study, "seriesUID": series},  # no objectUID
        {"requestType": "WADO", "studyUID": "x.y", "seriesUID": series, "objectUID": sop},
    ]
    for params in bad_requests:
        response = httpx.get(base, params=params, headers=archive.headers)
        assert response.status_code == 400, params
        assert response.headers["content-type"] == "application/problem+json"
    for params in (
        {"windowCenter": "40"},  # without windowWidth
        {"windowCenter": "40", "windowWidth": "wide"},
        {"frameNumber": "2"},  # a single-frame object
        {"frameNumber": "0"},
        {"rows": "-4"},
        {"region": "0.5,0.5,0.2,0.9"},
        {"imageQuality": "101"},
        {"contentType": "image/jpeg", "transferSyntax": ExplicitVRLittleEndian},
        {"contentType": "application/dicom", "rows": "64"},
        {"contentType": "application/dicom", "frameNumber": "1"},
        {"anonymize": "yes"},
    ):
        response = wado(archive, ct, **params)
        assert response.status_code == 400, params
        assert response.json()["detail"]
    assert wado(archive, multi, frameNumber="31").status_code == 400  # 30 frames
    for params in (
        {"contentType": "text/html"},
        {"contentType": "application/dicom", "transferSyntax": "1.2.840.10008.1.2.4.50"},  # no JPEG encoder
        {"contentType": "application/dicom", "transferSyntax": "1.2.840.10008.1.2"},  # not on the web
    ):
        response = wado(archive, ct, **params)
        assert response.status_code == 406, params
    unknown = httpx.get(base, params={"requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": "1.2.3.4"}, headers=archive.headers)
    assert unknown.status_code == 404
    hidden = httpx.get(base, params={"requestType": "WADO", "studyUID": "1.2.3.4", "seriesUID": series, "objectUID": "1.2.3.4"}, headers=archive.headers)
    assert hidden.status_code == 403  # an unknown study is refused like one the caller may not see (issue 5)
    assert wado(archive, ct, anonymize="no").status_code == 200
