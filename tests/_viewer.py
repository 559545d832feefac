"""Helpers for the viewer tests: non-image samples (an Encapsulated PDF, an
MPEG-4 video object), headless Chromium that reaches only 127.0.0.1, and
canvas pixel checks."""

from __future__ import annotations

import io
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    MPEG4HP41,
    PYDICOM_IMPLEMENTATION_UID,
    generate_uid,
)

from conftest import require, require_tool

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
VIDEO_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4.1"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def _base(sop_class: str, modality: str, patient: str, patient_id: str, description: str) -> Dataset:
    """Patient, study, series and SOP common attributes of a new object."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.PatientName = patient
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyDate = ds.ContentDate = "20240105"
    ds.StudyTime = ds.ContentTime = "101500"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = description
    ds.SeriesDescription = description
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "samarkiv tests"
    return ds


def make_pdf(path: Path) -> Dataset:
    """An Encapsulated PDF (PS3.3 A.45.1) holding a one-page PDF that Pillow writes."""
    from PIL import Image, ImageDraw

    page = Image.new("RGB", (320, 200), "white")
    ImageDraw.Draw(page).text((20, 90), "samarkiv viewer test report", fill="black")
    buffer = io.BytesIO()
    page.save(buffer, format="PDF")
    pdf = buffer.getvalue()

    ds = _base(ENCAPSULATED_PDF, "DOC", "Viewer^Pdf", "VIEWERPDF", "PDF report")
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.ConversionType = "WSD"
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = "viewer test report"
    ds.ConceptNameCodeSequence = []
    ds.AcquisitionDateTime = "20240105101500"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocumentLength = len(pdf)
    ds.EncapsulatedDocument = pdf + b"\0" * (len(pdf) % 2)  # OB: even length (PS3.5 7.1)
    ds.save_as(path, enforce_file_format=True)
    return ds


def make_video(path: Path, work: Path) -> Dataset:
    """A Video Photographic Image (PS3.3 A.32.7) in MPEG-4 AVC/H.264 HP@L4.1
    (PS3.5 8.2.8): ten 320x240 frames that ffmpeg encodes, as the bare H.264
    byte stream (ITU-T H.264 Annex B)."""
    require_tool("ffmpeg")
    h264 = work / "video.h264"
    subprocess.run(
        ["ffmpeg", "-y", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=10",
         "-t", "1", "-c:v", "libx264", "-profile:v", "high", "-level", "4.1", "-pix_fmt", "yuv420p",
         "-f", "h264", str(h264)],
        check=True, timeout=120, capture_output=True,
    )  # fmt: skip
    stream = h264.read_bytes()
    stream += b"\0" * (len(stream) % 2)  # even fragments; trailing zero bytes end a byte stream

    ds = _base(VIDEO_PHOTOGRAPHIC, "XC", "Viewer^Video", "VIEWERVIDEO", "Video clip")
    ds.file_meta.TransferSyntaxUID = MPEG4HP41
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.AcquisitionDateTime = "20240105101500"
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_PARTIAL_420"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = 240, 320
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.NumberOfFrames = 10
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.FrameTime = 100.0
    ds.CineRate = 10
    ds.RecommendedDisplayFrameRate = 10
    ds.StartTrim, ds.StopTrim = 1, 10
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_14496_10"
    ds.PixelData = encapsulate([stream], has_bot=False)
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return ds


# --- the browser --------------------------------------------------------------------


@dataclass
class PageLog:
    """What a page did: console errors, requests it made and those we blocked."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    failed_responses: list[tuple[int, str]] = field(default_factory=list)


def _local(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about", "chrome", "chrome-extension"):
        return True  # in-browser resources (the built-in PDF viewer is an extension)
    return parts.scheme in ("http", "https", "ws") and parts.hostname == "127.0.0.1"


@contextmanager
def chromium() -> Iterator:  # type: ignore[type-arg]
    """Debian's Chromium, headless, driven by Playwright (never its own browsers)."""
    require_tool("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require(False, "playwright not installed (pip install -e '.[test]')")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def local_page(browser, log: PageLog) -> Iterator:  # type: ignore[no-untyped-def, type-arg]
    """A fresh page whose requests to anything but 127.0.0.1 are aborted and logged.

    Playwright delivers events only while the test is inside a Playwright call:
    wait with ``page.wait_for_*``, never ``time.sleep``.
    """
    context = browser.new_context(viewport={"width": 1400, "height": 900}, service_workers="block")
    context.set_default_timeout(60_000)

    def route(route) -> None:  # type: ignore[no-untyped-def]
        if _local(route.request.url):
            route.continue_()
        else:
            log.blocked.append(route.request.url)
            route.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.on("console", lambda m: log.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: log.page_errors.append(str(e)))
    page.on("request", lambda r: log.requests.append(r.url))
    page.on("response", lambda r: log.failed_responses.append((r.status, r.url)) if r.status >= 400 else None)
    try:
        yield page
    finally:
        context.close()


# The fraction of a viewport canvas's pixels that are not (near) black.
CANVAS_LIT_FRACTION = """
(canvas) => {
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  if (!ctx || canvas.width === 0 || canvas.height === 0) return 0;
  const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  let lit = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i] > 16 || data[i + 1] > 16 || data[i + 2] > 16) lit++;
  }
  return lit / (data.length / 4);
}
"""
