"""WADO-RS retrieve (PS3.18 10.4): instances, transcoding, frames, bulk data,
rendered and thumbnail resources, errors, and streaming with bounded memory.

The client is dicomweb-client (a real DICOMweb client); raw httpx only for
error paths and headers it does not show.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.encaps import generate_frames
from pydicom.pixels import get_decoder
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless

from _wado import (
    dataset_of,
    instance_url,
    make_monochrome1_copy,
    make_pdf_object,
    make_video_object,
    parse_multipart,
    pick,
    uids,
    write_big_multiframe,
)
from conftest import require, require_tool, stored_object, storescu
from samarkiv.config import load_settings
from samarkiv.core.archive import Archive
from test_durability import peak_rss_mb

OCTET_ANY = (("application/octet-stream", "*"),)


def client(archive) -> DICOMwebClient:  # type: ignore[no-untyped-def]
    return DICOMwebClient(url=f"{archive.http}/dicomweb", headers=archive.headers)


def store(archive, *files: Path) -> None:  # type: ignore[no-untyped-def]
    result = storescu(archive, *files)
    assert result.returncode == 0 and "E:" not in result.stderr, result.stderr


def imported(archive, tmp_path: Path, *files: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "to-import"
    folder.mkdir(exist_ok=True)
    for f in files:
        if f.parent != folder:
            (folder / f.name).write_bytes(f.read_bytes())
    archive.cli("import", str(folder))


def stored_bytes(server, sop: str) -> bytes:  # type: ignore[no-untyped-def]
    """The object as the archive keeps it (read through the core API)."""
    archive = Archive(load_settings(data=server.data, index_url=server.index_url), run_migrations=False)
    try:
        stored = archive.catalog.instance(sop)
        assert stored is not None
        return stored_object(archive, stored)
    finally:
        archive.close()


def pixels(path: Path) -> np.ndarray:
    return pydicom.dcmread(path).pixel_array


def image(data: bytes) -> Image.Image:
    picture = Image.open(io.BytesIO(data))
    picture.load()
    return picture


# --- study, series, instance ---------------------------------------------------------


def test_retrieve_study_series_instance_as_stored(archive, sample_files):
    files = [pick(sample_files, k) for k in ("ct", "mr_rle", "jpeg", "us_j2k")]
    store(archive, *files)
    dw = client(archive)
    for path in files:
        study, series, sop = uids(path)
        # transfer-syntax=* : the stored bytes, untouched
        response = httpx.get(
            instance_url(archive.http, path),
            headers={**archive.headers, "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        )
        assert response.status_code == 200
        assert response.headers["content-type"].startswith('multipart/related; type="application/dicom"')
        [(part_type, content)] = parse_multipart(response.headers["content-type"], response.content)
        assert content == stored_bytes(archive, sop)  # byte for byte, File Meta included
        assert dataset_of(content) == dataset_of(stored_bytes(archive, sop))
        assert part_type == f"application/dicom; transfer-syntax={pydicom.dcmread(path).file_meta.TransferSyntaxUID}"
        # as stored, the length is known up front: Content-Length, not chunked
        assert int(response.headers["content-length"]) == len(response.content)
        assert "transfer-encoding" not in response.headers

        retrieved = dw.retrieve_instance(study, series, sop, media_types=(("application/dicom", "*"),))
        assert retrieved.SOPInstanceUID == sop
        in_series = dw.retrieve_series(study, series, media_types=(("application/dicom", "*"),))
        assert sop in {ds.SOPInstanceUID for ds in in_series}
        in_study = dw.retrieve_study(study, media_types=(("application/dicom", "*"),))
        assert sop in {ds.SOPInstanceUID for ds in in_study}

    # application/zip: the stored objects in a ZIP file
    study = uids(files[0])[0]
    response = httpx.get(f"{archive.http}/dicomweb/studies/{study}", headers={**archive.headers, "Accept": "application/zip"})
    assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.content)) as packed:
        for name in packed.namelist():
            assert packed.read(name) == stored_bytes(archive, name.rsplit("/", 1)[1].removesuffix(".dcm"))
        assert len(packed.namelist()) == sum(uids(f)[0] == study for f in files)

    # no transfer syntax asked: Explicit VR Little Endian (PS3.18 8.7.3.5) for a
    # lossless original, the stored form for a lossy one
    rle, jpeg = files[1], files[2]
    response = httpx.get(instance_url(archive.http, rle), headers={**archive.headers, "Accept": 'multipart/related; type="application/dicom"'})
    assert response.headers.get("transfer-encoding") == "chunked"  # transcoded: its length is not known before
    [(part_type, content)] = parse_multipart(response.headers["content-type"], response.content)
    assert part_type == f"application/dicom; transfer-syntax={ExplicitVRLittleEndian}"
    decoded = pydicom.dcmread(io.BytesIO(content))
    assert decoded.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(decoded.pixel_array, pixels(rle))
    response = httpx.get(instance_url(archive.http, jpeg), headers={**archive.headers, "Accept": 'multipart/related; type="application/dicom"'})
    [(part_type, content)] = parse_multipart(response.headers["content-type"], response.content)
    assert content == stored_bytes(archive, uids(jpeg)[2])


@pytest.mark.parametrize(
    "target", [ExplicitVRLittleEndian, RLELossless, JPEGLSLossless, JPEG2000Lossless], ids=lambda uid: uid.name
)
def test_transcoded_instances_keep_their_pixels(archive, sample_files, target):
    files = [pick(sample_files, k) for k in ("ct", "mr_rle", "us_j2k", "emr_jls")]
    store(archive, *files)
    dw = client(archive)
    for path in files:
        study, series, sop = uids(path)
        retrieved = dw.retrieve_instance(study, series, sop, media_types=(("application/dicom", target),))
        assert retrieved.file_meta.TransferSyntaxUID == target
        assert retrieved.SOPInstanceUID == sop  # lossless: the same instance
        assert np.array_equal(retrieved.pixel_array, pixels(path)), path.name


def test_transcoding_that_cannot_be_done_is_not_acceptable(archive, sample_files):
    ct = pick(sample_files, "ct")
    store(archive, ct)
    url = instance_url(archive.http, ct)
    for accept in (
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50',  # no JPEG encoder
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.3.4',
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2',  # not on the web
        "application/json",
        'multipart/related; type="image/png"',
    ):
        response = httpx.get(url, headers={**archive.headers, "Accept": accept})
        assert response.status_code == 406, accept
        assert response.headers["content-type"] == "application/problem+json"
        assert "acceptable" in response.json()["detail"]
    # a later acceptable entry is chosen when the first cannot be served
    response = httpx.get(
        url,
        headers={**archive.headers, 
            "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50, '
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.5; q=0.5'
        },
    )
    assert response.status_code == 200
    [(part_type, _content)] = parse_multipart(response.headers["content-type"], response.content)
    assert part_type.endswith(RLELossless)


# --- frames -----------------------------------------------------------------------------


def test_frames_as_stored_and_decoded(archive, sample_files):
    keys = ("ct", "mr_rle", "emr_jls", "us_j2k", "jpeg", "us_multi_jpeg", "palette", "ect")
    files = {k: pick(sample_files, k) for k in keys}
    store(archive, *files.values())
    dw = client(archive)
    for key, path in files.items():
        ds = pydicom.dcmread(path)
        study, series, sop = uids(path)
        count = int(ds.get("NumberOfFrames", 1))
        numbers = sorted({1, count, (count + 1) // 2})
        got = dw.retrieve_instance_frames(study, series, sop, frame_numbers=numbers, media_types=OCTET_ANY)
        assert len(got) == len(numbers)
        syntax = ds.file_meta.TransferSyntaxUID
        if syntax.is_compressed:  # the stored fragments, as they are
            stored = list(generate_frames(ds.PixelData, number_of_frames=count))
            assert got == [stored[n - 1] for n in numbers], key
        else:
            size = len(ds.PixelData) // count
            assert got == [ds.PixelData[(n - 1) * size : n * size] for n in numbers], key

        # application/octet-stream without a syntax: uncompressed little endian
        native = dw.retrieve_instance_frames(
            study, series, sop, frame_numbers=[numbers[-1]], media_types=("application/octet-stream",)
        )
        reference = ds.pixel_array if count == 1 else ds.pixel_array[numbers[-1] - 1]
        if syntax in (RLELossless, JPEGLSLossless, JPEG2000Lossless) or not syntax.is_compressed:
            decoded = np.frombuffer(native[0], reference.dtype.newbyteorder("<")).reshape(reference.shape)
            assert np.array_equal(decoded, reference), key


def test_frames_reencoded_on_request(archive, sample_files):
    ct, emr = pick(sample_files, "ct"), pick(sample_files, "emr_jls")
    store(archive, ct, emr)
    dw = client(archive)
    for path, numbers in ((ct, [1]), (emr, [2, 7])):
        study, series, sop = uids(path)
        ds = pydicom.dcmread(path)
        for media_type, syntax in (("image/jls", JPEGLSLossless), ("image/jp2", JPEG2000Lossless), ("image/dicom-rle", RLELossless)):
            got = dw.retrieve_instance_frames(study, series, sop, frame_numbers=numbers, media_types=((media_type, syntax),))
            for number, frame in zip(numbers, got, strict=True):
                options = {
                    "rows": ds.Rows, "columns": ds.Columns, "samples_per_pixel": 1, "number_of_frames": 1,
                    "bits_allocated": ds.BitsAllocated, "bits_stored": ds.BitsStored,
                    "pixel_representation": ds.PixelRepresentation, "photometric_interpretation": "MONOCHROME2",
                }  # fmt: skip
                from pydicom.encaps import encapsulate

                decoded, _ = get_decoder(syntax).as_array(encapsulate([frame]), **options)
                reference = ds.pixel_array if int(ds.get("NumberOfFrames", 1)) == 1 else ds.pixel_array[number - 1]
                assert np.array_equal(decoded, reference), (path.name, media_type)
    # the part says what it holds
    response = httpx.get(instance_url(archive.http, ct) + "/frames/1", headers={**archive.headers, "Accept": 'multipart/related; type="image/jls"'})
    [(part_type, _)] = parse_multipart(response.headers["content-type"], response.content)
    assert part_type == f"image/jls; transfer-syntax={JPEGLSLossless}"


def test_frame_errors(archive, sample_files, tmp_path):
    ct, emr = pick(sample_files, "ct"), pick(sample_files, "emr_jls")
    pdf = tmp_path / "doc.dcm"
    make_pdf_object(pdf)
    store(archive, ct, emr, pdf)
    base = instance_url(archive.http, emr)
    for frames, status in (("11", 404), ("0", 400), ("1,x", 400), ("-1", 400), ("1,,2", 400), ("3,12", 404)):
        response = httpx.get(f"{base}/frames/{frames}", headers=archive.headers)
        assert response.status_code == status, frames
        assert response.headers["content-type"] == "application/problem+json"
    response = httpx.get(instance_url(archive.http, pdf) + "/frames/1", headers=archive.headers)
    assert response.status_code == 400 and "pixel data" in response.json()["detail"]
    # JPEG lossless/baseline cannot be written here: a native frame as image/jpeg is not acceptable
    response = httpx.get(instance_url(archive.http, ct) + "/frames/1", headers={**archive.headers, "Accept": 'multipart/related; type="image/jpeg"'})
    assert response.status_code == 406


# --- bulk data ----------------------------------------------------------------------------


def test_bulkdata_with_ranges(archive, sample_files, tmp_path):
    ct, jpeg_multi = pick(sample_files, "ct"), pick(sample_files, "us_multi_jpeg")
    pdf_path = tmp_path / "doc.dcm"
    document = make_pdf_object(pdf_path)
    store(archive, ct, jpeg_multi, pdf_path)
    dw = client(archive)
    pixel_data = pydicom.dcmread(ct).PixelData
    url = instance_url(archive.http, ct) + "/bulk/7FE00010"

    assert dw.retrieve_bulkdata(url) == [pixel_data]
    assert dw.retrieve_bulkdata(url, byte_range=(100, 199)) == [pixel_data[100:200]]
    single = httpx.get(url, headers={**archive.headers, "Accept": "application/octet-stream", "Range": "bytes=-16"})
    assert single.status_code == 206
    assert single.content == pixel_data[-16:]
    assert single.headers["content-range"] == f"bytes {len(pixel_data) - 16}-{len(pixel_data) - 1}/{len(pixel_data)}"
    assert single.headers["accept-ranges"] == "bytes"
    whole = httpx.get(url, headers={**archive.headers, "Accept": "application/octet-stream"})
    assert whole.status_code == 200 and whole.content == pixel_data
    beyond = httpx.get(url, headers={**archive.headers, "Accept": "application/octet-stream", "Range": f"bytes={len(pixel_data)}-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{len(pixel_data)}"

    # encapsulated pixel data: one part per frame, as stored
    ds = pydicom.dcmread(jpeg_multi)
    frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    got = dw.retrieve_bulkdata(instance_url(archive.http, jpeg_multi) + "/bulk/7FE00010", media_types=(("image/jpeg", "*"),))
    assert got == frames

    # any other element: here the PDF of an Encapsulated PDF, also in its own media type
    doc_url = instance_url(archive.http, pdf_path) + "/bulk/00420011"
    value = pydicom.dcmread(pdf_path).EncapsulatedDocument
    assert dw.retrieve_bulkdata(doc_url) == [value]
    as_pdf = httpx.get(doc_url, headers={**archive.headers, "Accept": "application/pdf"})
    assert as_pdf.headers["content-type"] == "application/pdf" and as_pdf.content.startswith(document[:64])

    for path, status in (("/bulk/7FE0001", 400), ("/bulk/XYZ00010", 400), ("/bulk/00990099", 404)):
        response = httpx.get(instance_url(archive.http, ct) + path, headers=archive.headers)
        assert response.status_code == status, path
    assert httpx.get(url, headers={**archive.headers, "Accept": "text/html"}).status_code == 406


# --- rendered and thumbnails -----------------------------------------------------------------


def test_rendered_images(archive, sample_files, tmp_path):
    ct, multi, palette = pick(sample_files, "ct"), pick(sample_files, "us_multi_jpeg"), pick(sample_files, "palette")
    inverted = tmp_path / "mono1.dcm"
    make_monochrome1_copy(ct, inverted)
    store(archive, ct, multi, palette, inverted)
    dw = client(archive)
    study, series, sop = uids(ct)
    ds = pydicom.dcmread(ct)

    jpeg = image(dw.retrieve_instance_rendered(study, series, sop, media_types=("image/jpeg",)))
    assert jpeg.format == "JPEG" and jpeg.size == (ds.Columns, ds.Rows)
    png = image(dw.retrieve_instance_rendered(study, series, sop, media_types=("image/png",)))
    assert png.format == "PNG" and png.size == (ds.Columns, ds.Rows)

    narrow = np.asarray(image(dw.retrieve_instance_rendered(study, series, sop, media_types=("image/png",), params={"window": "40,80"})), float)
    wide = np.asarray(image(dw.retrieve_instance_rendered(study, series, sop, media_types=("image/png",), params={"window": "40,2000"})), float)
    assert np.abs(narrow - wide).mean() > 10  # the window changes the picture
    assert narrow.std() > wide.std()  # a narrow window stretches contrast
    sigmoid = image(dw.retrieve_instance_rendered(study, series, sop, media_types=("image/png",), params={"window": "40,80,sigmoid"}))
    assert np.abs(np.asarray(sigmoid, float) - narrow).mean() > 0.5

    small = image(dw.retrieve_instance_rendered(study, series, sop, params={"viewport": "64,64"}))
    assert small.size == (64, 64)
    cropped = image(dw.retrieve_instance_rendered(study, series, sop, media_types=("image/png",), params={"viewport": "32,32,0,0,32,32"}))
    assert cropped.size == (32, 32)
    assert np.array_equal(np.asarray(cropped), np.asarray(png)[:32, :32])
    low = dw.retrieve_instance_rendered(study, series, sop, params={"quality": "10"})
    high = dw.retrieve_instance_rendered(study, series, sop, params={"quality": "95"})
    assert len(low) < len(high)

    # MONOCHROME1 is shown inverted
    mono1 = uids(inverted)
    flipped = np.asarray(image(dw.retrieve_instance_rendered(*mono1, media_types=("image/png",), params={"window": "40,400"})), int)
    plain = np.asarray(image(dw.retrieve_instance_rendered(study, series, sop, media_types=("image/png",), params={"window": "40,400"})), int)
    assert np.abs(flipped + plain - 255).max() <= 1

    # multi-frame: the first frame, or the frames asked; colour stays colour
    m_study, m_series, m_sop = uids(multi)
    first = image(dw.retrieve_instance_rendered(m_study, m_series, m_sop, media_types=("image/png",)))
    assert first.mode == "RGB"
    frames = dw.retrieve_instance_frames_rendered(m_study, m_series, m_sop, frame_numbers=[1], media_types=("image/png",))
    assert np.array_equal(np.asarray(image(frames)), np.asarray(first))
    other = image(dw.retrieve_instance_frames_rendered(m_study, m_series, m_sop, frame_numbers=[20], media_types=("image/png",)))
    assert not np.array_equal(np.asarray(other), np.asarray(first))
    p_study, p_series, p_sop = uids(palette)
    assert image(dw.retrieve_instance_rendered(p_study, p_series, p_sop)).mode == "RGB"

    # series and study: one rendered part per instance
    response = httpx.get(f"{archive.http}/dicomweb/studies/{m_study}/series/{m_series}/rendered", headers={**archive.headers, "Accept": "image/jpeg"})
    assert response.status_code == 200
    parts = parse_multipart(response.headers["content-type"], response.content)
    assert [image(content).format for _, content in parts] == ["JPEG"]


def test_rendered_errors(archive, sample_files):
    ct = pick(sample_files, "ct")
    store(archive, ct)
    url = instance_url(archive.http, ct) + "/rendered"
    for query in ("window=40", "window=a,b", "window=40,0", "window=40,80,cubic", "viewport=0,10", "viewport=10",
                  "viewport=10,10,500,500,10,10", "quality=0", "quality=high"):  # fmt: skip
        response = httpx.get(f"{url}?{query}", headers=archive.headers)
        assert response.status_code == 400, query
        assert response.headers["content-type"] == "application/problem+json"
    assert httpx.get(url, headers={**archive.headers, "Accept": "text/html"}).status_code == 406
    assert httpx.get(instance_url(archive.http, ct) + "/frames/2/rendered", headers=archive.headers).status_code == 404


def test_thumbnails(archive, sample_files):
    ct, multi = pick(sample_files, "ct"), pick(sample_files, "us_multi_jpeg")
    store(archive, ct, multi)
    for path in (ct, multi):
        study, series, _sop = uids(path)
        for url in (
            f"{archive.http}/dicomweb/studies/{study}/thumbnail",
            f"{archive.http}/dicomweb/studies/{study}/series/{series}/thumbnail",
            instance_url(archive.http, path) + "/thumbnail",
            instance_url(archive.http, path) + "/frames/1/thumbnail",
        ):
            response = httpx.get(url, headers=archive.headers)
            assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg", url
            assert max(image(response.content).size) == 128
    asked = httpx.get(instance_url(archive.http, ct) + "/thumbnail?viewport=40,40", headers={**archive.headers, "Accept": "image/png"})
    assert image(asked.content).size == (40, 40) and image(asked.content).format == "PNG"


def test_pdf_and_video_render_as_themselves(archive, tmp_path):
    require_tool("ffmpeg")
    pdf_path, video_path = tmp_path / "doc.dcm", tmp_path / "video.dcm"
    document = make_pdf_object(pdf_path)
    stream = make_video_object(video_path)
    require(stream is not None, "ffmpeg cannot encode H.264 (libx264)")
    imported(archive, tmp_path, pdf_path, video_path)
    dw = client(archive)

    study, series, sop = uids(pdf_path)
    rendered = httpx.get(instance_url(archive.http, pdf_path) + "/rendered", headers=archive.headers)
    assert rendered.status_code == 200 and rendered.headers["content-type"] == "application/pdf"
    assert rendered.content == document
    assert dw.retrieve_instance_rendered(study, series, sop, media_types=("application/pdf",)) == document
    thumb = httpx.get(instance_url(archive.http, pdf_path) + "/thumbnail", headers=archive.headers)
    assert thumb.status_code == 200 and image(thumb.content).format == "JPEG"

    video = httpx.get(instance_url(archive.http, video_path) + "/rendered", headers=archive.headers)
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    assert video.content[4:8] == b"ftyp"  # an MP4 file a browser plays, not the bare stream
    thumb = httpx.get(instance_url(archive.http, video_path) + "/thumbnail", headers=archive.headers)
    assert thumb.status_code == 200 and image(thumb.content).size == (128, 96)
    # the bare stream stays available as bulk data
    v_study, v_series, v_sop = uids(video_path)
    bulk = httpx.get(instance_url(archive.http, video_path) + "/bulk/7FE00010", headers={**archive.headers, "Accept": "video/mp4"})
    assert bulk.content in (stream, stream + b"\x00")  # PS3.5 A.4: the last fragment has even length
    frames = httpx.get(instance_url(archive.http, video_path) + "/frames/1", headers=archive.headers)
    assert frames.status_code == 400


# --- errors ----------------------------------------------------------------------------------


def test_unknown_and_misplaced_resources(archive, sample_files):
    ct, mr = pick(sample_files, "ct"), pick(sample_files, "mr_rle")
    store(archive, ct, mr)
    study, series, sop = uids(ct)
    other_study, other_series, _ = uids(mr)
    base = f"{archive.http}/dicomweb"
    for path in (
        f"/studies/{study}/series/1.2.3.4",
        f"/studies/{study}/series/{series}/instances/1.2.3.4",
        f"/studies/{other_study}/series/{series}",  # exists, but in another study
        f"/studies/{other_study}/series/{other_series}/instances/{sop}",
        f"/studies/{study}/series/{series}/instances/1.2.3.4/frames/1",
        f"/studies/{study}/series/{series}/instances/1.2.3.4/rendered",
        f"/studies/{study}/series/{series}/instances/1.2.3.4/bulk/7FE00010",
    ):
        response = httpx.get(base + path, headers=archive.headers)
        assert response.status_code == 404, path
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["detail"]
    # a study the caller may not see answers as one that does not exist: 403 (issue 5)
    for path in ("/studies/1.2.3.4", "/studies/1.2.3.4/thumbnail", "/studies/1.2.3.4/series/1.2.3.5/instances/1.2.3.6/frames/1"):
        response = httpx.get(base + path, headers=archive.headers)
        assert response.status_code == 403, path
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["detail"] == "access to this study is not permitted"
    for path in ("/studies/not-a-uid", f"/studies/{study}/series/1..2", f"/studies/{study}/series/{series}/instances/x"):
        assert httpx.get(base + path, headers=archive.headers).status_code == 400, path
    assert httpx.get(base + f"/studies/{study}", headers={**archive.headers, "Accept": "multipart/related; q=x"}).status_code == 400


# --- streaming -----------------------------------------------------------------------------


@pytest.mark.parametrize("index_url", ["sqlite"], indirect=True)
def test_large_study_is_streamed_with_bounded_memory(make_archive, tmp_path):
    big = tmp_path / "big" / "big.dcm"
    big.parent.mkdir()
    size = write_big_multiframe(big, frames=150)  # about 300 MB
    server = make_archive()
    server.cli("import", str(big.parent))
    study, series, sop = uids(big)
    before = peak_rss_mb(server.process.pid)

    digest, received = hashlib.sha256(), 0
    accept = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
    with httpx.stream("GET", f"{server.http}/dicomweb/studies/{study}", headers={**server.headers, **accept}, timeout=600) as response:
        assert response.status_code == 200
        for chunk in response.iter_bytes(1 << 20):
            digest.update(chunk)
            received += len(chunk)
    assert received > size
    growth = peak_rss_mb(server.process.pid) - before
    print(f"peak RSS growth while streaming {size / 2**20:.0f} MB: {growth:.1f} MB")
    assert growth < 100, f"server memory grew by {growth:.0f} MB for a {size / 2**20:.0f} MB study"

    dw = client(server)
    frames = dw.retrieve_instance_frames(study, series, sop, frame_numbers=[1, 150], media_types=OCTET_ANY)
    assert frames == [bytes([0]) * (1 << 21), bytes([149]) * (1 << 21)]
    picture = image(dw.retrieve_instance_frames_rendered(study, series, sop, frame_numbers=[75], params={"viewport": "256,256"}))
    assert picture.size == (256, 256)
    growth = peak_rss_mb(server.process.pid) - before
    assert growth < 100, f"server memory grew by {growth:.0f} MB"
    big.unlink()
