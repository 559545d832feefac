"""Helpers of the STOW-RS, QIDO-RS and metadata tests (tests/test_dicomweb_*.py)."""

from __future__ import annotations

import uuid
import warnings
from io import BytesIO
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pydicom
from pydicom.dataset import Dataset

BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
INLINE_BINARY_MAX = 1024  # samarkiv/web/dicomweb/metadata.py
HEADER_BULK = 65536  # samarkiv/core/structure.py BULK_THRESHOLD


def client(server):  # type: ignore[no-untyped-def]
    """dicomweb-client on the archive's DICOMweb root."""
    from dicomweb_client.api import DICOMwebClient

    return DICOMwebClient(url=server.http + "/dicomweb", headers=server.headers)


def read(source: Path | bytes) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(BytesIO(source) if isinstance(source, bytes) else source)


def as_sent(path: Path) -> bytes:
    """The bytes dicomweb-client's store_instances sends for the file (pydicom re-encodes
    it: group lengths, for one, are dropped)."""
    out = BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pydicom.dcmwrite(out, read(path))
    return out.getvalue()


def consistent(files: Iterable[Path]) -> list[Path]:
    """Sample files whose study is not also filed under another patient (those
    would be rejected as patient conflicts, rightly)."""
    owner: dict[str, tuple[str, str]] = {}
    chosen = []
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        patient = (str(ds.get("PatientID", "")), str(ds.get("IssuerOfPatientID", "")))
        if owner.setdefault(str(ds.StudyInstanceUID), patient) == patient:
            chosen.append(path)
    return chosen


def multipart(parts: Sequence[tuple[dict[str, str], bytes]], boundary: str | None = None) -> tuple[bytes, str]:
    """A multipart/related body of (headers, content) parts, and its boundary."""
    boundary = boundary or uuid.uuid4().hex
    body = b""
    for headers, content in parts:
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        body += f"--{boundary}\r\n{head}\r\n".encode() + content + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), boundary


def stow(
    server,  # type: ignore[no-untyped-def]
    contents: Sequence[bytes],
    *,
    study: str | None = None,
    part_type: str = "application/dicom",
    accept: str = "application/dicom+json",
) -> httpx.Response:
    """POST Part 10 files as multipart/related; type="application/dicom" with httpx
    (for the answers dicomweb-client turns into exceptions)."""
    body, boundary = multipart([({"Content-Type": part_type}, c) for c in contents])
    url = server.http + "/dicomweb/studies" + (f"/{study}" if study else "")
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return httpx.post(url, content=body, headers={**server.headers, "Content-Type": content_type, "Accept": accept}, timeout=120)


def sequence(document: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    return (document.get(tag) or {}).get("Value") or []


def value(item: dict[str, Any], tag: str) -> Any:
    values = (item.get(tag) or {}).get("Value") or [None]
    return values[0]


def path_of(uri: str) -> str:
    """dicomweb-client sends Host without the port, so URLs are compared by path."""
    return urlsplit(uri).path


def expected_metadata(path: Path | bytes, prefix: str) -> dict[str, Any]:
    """pydicom's DICOM JSON of the file as sent, with what the archive serves as
    bulk data (Pixel Data, top-level binary elements over 1 KiB, any other
    element over 64 KiB that is not a sequence) as BulkDataURI under ``prefix``."""
    ds = read(path)
    sizes = {int(tag): _encoded_length(ds.get_item(tag)) for tag in ds._dict}
    document = ds.to_json_dict(bulk_data_threshold=1 << 62, bulk_data_element_handler=lambda e: "")
    for key, element in list(document.items()):
        tag = int(key, 16)
        size = sizes.get(tag, 0)
        vr = element["vr"]
        large = vr != "SQ" and size > HEADER_BULK
        if tag == 0x7FE00010 or large or (vr in BINARY_VRS and size > INLINE_BINARY_MAX):
            document[key] = {"vr": vr, "BulkDataURI": f"{prefix}{key}"}
    return document


def _encoded_length(elem: Any) -> int:
    if hasattr(elem, "length"):  # still raw
        return elem.length
    return len(elem.value) if isinstance(elem.value, bytes) else 0


def normalised(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with BulkDataURIs reduced to their path."""
    out = {}
    for key, element in document.items():
        element = dict(element)
        if "BulkDataURI" in element:
            element["BulkDataURI"] = path_of(element["BulkDataURI"])
        if element.get("vr") == "SQ" and element.get("Value"):
            element["Value"] = [normalised(item) for item in element["Value"]]
        out[key] = element
    return out
