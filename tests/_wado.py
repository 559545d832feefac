"""Helpers for the WADO-RS and WADO-URI tests: sample choice, made-up objects
(PDF, video, large multi-frame), and a multipart/related reader."""

from __future__ import annotations

import io
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

# Samples of pydicom / pydicom-data used by name (one SOP Instance UID each).
SAMPLES = {
    "ct": "CT_small.dcm",  # Explicit VR LE, 16-bit, MONOCHROME2
    "mr_rle": "MR_small_RLE.dcm",  # RLE Lossless
    "emr_jls": "emri_small_jpeg_ls_lossless.dcm",  # Enhanced MR, 10 frames, JPEG-LS lossless
    "us_j2k": "US1_J2KR.dcm",  # US, JPEG 2000 lossless, YBR_RCT
    "jpeg": "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, YBR_FULL
    "us_multi_jpeg": "examples_ybr_color.dcm",  # US multi-frame, 30 frames, JPEG baseline
    "palette": "OBXXXX1A_2frame.dcm",  # US multi-frame, palette colour, native
    "ect": "eCT_Supplemental.dcm",  # Enhanced CT, 2 frames, native
}


def pick(sample_files: list[Path], key: str) -> Path:
    """The sample file named for ``key`` (looked up in the sample folders, since
    ``sample_files`` keeps one file per SOP Instance UID)."""
    for folder in dict.fromkeys(path.parent for path in sample_files):
        if (folder / SAMPLES[key]).exists():
            return folder / SAMPLES[key]
    raise LookupError(SAMPLES[key])


def uids(path: Path) -> tuple[str, str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def instance_url(base: str, path: Path) -> str:
    study, series, sop = uids(path)
    return f"{base}/dicomweb/studies/{study}/series/{series}/instances/{sop}"


def parse_multipart(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    """(Content-Type, content) of each part of a multipart/related body (RFC 2046 5.1)."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    assert match, content_type
    delimiter = b"--" + match.group(1).encode()
    assert body.startswith(delimiter), body[:80]
    pieces = body[len(delimiter) :].split(b"\r\n" + delimiter)
    assert pieces[-1].startswith(b"--"), "no close delimiter"
    parts = []
    for raw in pieces[:-1]:
        head, _, content = raw[2:].partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode("latin-1").split("\r\n") if ": " in line)
        parts.append((headers.get("Content-Type", ""), content))
    return parts


def dataset_of(part10: bytes) -> bytes:
    """The bytes after the File Meta Information group."""
    from samarkiv.core.structure import dataset_offset

    return part10[dataset_offset(io.BytesIO(part10)) :]


def _file_meta(sop_class: str, sop: str, syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = syntax
    return meta


def _patient_study(ds: Dataset, patient: str) -> None:
    ds.PatientID, ds.PatientName = patient, f"{patient}^Test"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "120000", "1", ""
    ds.SeriesNumber, ds.InstanceNumber = 1, 1


def make_pdf_object(path: Path) -> bytes:
    """An Encapsulated PDF (PS3.3 A.45.1) holding a one-page PDF; returns the PDF."""
    from PIL import Image

    pdf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(pdf, "PDF")
    document = pdf.getvalue()
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"
    _patient_study(ds, "PDFPAT")
    ds.Modality = "DOC"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = "report"
    ds.EncapsulatedDocument = document + (b"\x00" if len(document) % 2 else b"")
    ds.file_meta = _file_meta(ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian)
    ds.save_as(path, enforce_file_format=True)
    return document


def make_video_object(path: Path) -> bytes | None:
    """A Video Photographic object in MPEG-4 AVC/H.264 (PS3.5 8.2.7), made with
    ffmpeg; returns the elementary stream (None when ffmpeg cannot make one)."""
    ffmpeg = shutil.which("ffmpeg")
    if not ffmpeg:
        return None
    made = subprocess.run(
        [ffmpeg, "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=duration=1:size=64x48:rate=10",
         "-c:v", "libx264", "-pix_fmt", "yuv420p", "-f", "h264", "pipe:1"],
        capture_output=True, timeout=60,
    )  # fmt: skip
    if made.returncode != 0 or not made.stdout:
        return None
    stream = made.stdout
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.4.1"  # Video Photographic Image Storage
    _patient_study(ds, "VIDPAT")
    ds.Modality = "XC"
    ds.Rows, ds.Columns, ds.NumberOfFrames = 48, 64, 10
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, "YBR_PARTIAL_420"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.PlanarConfiguration = 8, 8, 7, 0, 0
    ds.CineRate, ds.FrameTime = 10, 100.0
    half = len(stream) // 4 * 2  # fragments of even length: no padding inside the stream
    ds.PixelData = encapsulate([stream[:half], stream[half:]], has_bot=False)
    ds["PixelData"].VR = "OB"
    ds.file_meta = _file_meta(ds.SOPClassUID, ds.SOPInstanceUID, "1.2.840.10008.1.2.4.102")
    ds.save_as(path, enforce_file_format=True)
    return stream


def make_monochrome1_copy(source: Path, path: Path) -> None:
    """The CT sample as a new MONOCHROME1 instance in a new study."""
    ds = pydicom.dcmread(source)
    _patient_study(ds, "MONO1")
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)


def write_big_multiframe(path: Path, frames: int, rows: int = 1024, columns: int = 1024) -> int:
    """A multi-frame CT written without holding its pixel data in memory; size in bytes."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT Image Storage
    _patient_study(ds, "BIG")
    ds.Modality = "CT"
    ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.file_meta = _file_meta(ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian)
    header = io.BytesIO()
    ds.save_as(header, enforce_file_format=True)
    frame_size = rows * columns * 2
    with open(path, "wb") as f:
        f.write(header.getvalue())
        f.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, frames * frame_size))
        for number in range(frames):
            f.write(bytes([number % 256]) * frame_size)
    return path.stat().st_size
