"""From received bytes to an index record: parse the header once, validate it.

The header is parsed from the compact header copy (bulk data left out), so a
2 GB multi-frame costs no more to index than a small CT.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag

from .structure import BULK_THRESHOLD, PIXEL_DATA, Layout, MalformedDataset, header_bytes, inspect_file

# Top-level elements the index reads; parsing only these is several times
# faster than parsing the whole header.
_INDEXED_TAGS = frozenset(
    int(Tag(keyword))
    for keyword in (
        "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "StudyDate", "SeriesDate",
        "ContentDate", "StudyTime", "SeriesTime", "ContentTime", "AccessionNumber", "Modality",
        "InstitutionName", "ReferringPhysicianName", "StationName", "StudyDescription",
        "SeriesDescription", "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
        "PatientSex", "BodyPartExamined", "StudyInstanceUID", "SeriesInstanceUID", "StudyID",
        "SeriesNumber", "InstanceNumber", "NumberOfFrames", "Rows", "Columns",
        "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
        "RequestAttributesSequence",
    )
)


def _indexed_subset(header: bytes, layout: Layout) -> bytes:
    """The File Meta group plus only the top-level elements the index reads."""
    parts = [header[: layout.dataset_offset]]
    offset = layout.dataset_offset  # header keeps the spans' order, minus bulk data
    for tag, start, end in layout.spans:
        size = end - start
        if tag == PIXEL_DATA or size > BULK_THRESHOLD:
            continue
        if tag in _INDEXED_TAGS:
            parts.append(header[offset : offset + size])
        offset += size
    return b"".join(parts)

# PS3.5 9.1: components of digits without leading zeros, at most 64 characters.
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


class RejectedDataset(ValueError):
    """The dataset cannot be stored; ``reason`` is safe to show to the sender."""


def is_valid_uid(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 64 and bool(_UID.match(value))


def normalise_name(value: Any) -> str | None:
    """Person names compared case-insensitively (PS3.4 C.2.2.2.1)."""
    return None if value in (None, "") else str(value).upper()


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    try:
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def _time(ds: Dataset, keyword: str) -> str | None:
    value = _text(ds, keyword)
    return value.replace(":", "") if value else None


def _date(ds: Dataset, keyword: str) -> str | None:
    value = _text(ds, keyword)
    return value.replace(".", "") if value else None


@dataclass
class ParsedInstance:
    """What the index needs to know about one received object."""

    layout: Layout
    header: bytes | None
    patient: dict[str, Any]
    study: dict[str, Any]
    series: dict[str, Any]
    instance: dict[str, Any]

    @property
    def sop_instance_uid(self) -> str:
        return self.instance["sop_instance_uid"]

    @property
    def study_instance_uid(self) -> str:
        return self.study["study_instance_uid"]


def _first_request_attribute(ds: Dataset, keyword: str) -> str | None:
    for item in ds.get("RequestAttributesSequence", []) or []:
        value = _text(item, keyword)
        if value:
            return value
    return None


def parse_instance(
    path: Path,
    expected_sop_instance_uid: str | None = None,
    expected_sop_class_uid: str | None = None,
) -> ParsedInstance:
    """Check and parse the Part 10 file at ``path``; raise RejectedDataset if unfit."""
    try:
        layout = inspect_file(path)
        header = header_bytes(path, layout)
        source = BytesIO(_indexed_subset(header, layout)) if header is not None else str(path)
        ds = dcmread(source, stop_before_pixels=True, defer_size=BULK_THRESHOLD)
        ds.file_meta  # noqa: B018  (forces meta decoding errors to surface here)
    except (MalformedDataset, InvalidDicomError) as exc:
        raise RejectedDataset(f"malformed dataset: {exc}") from None
    except Exception as exc:  # pydicom raises many kinds on garbage  # noqa: BLE001
        raise RejectedDataset(f"cannot parse dataset: {type(exc).__name__}: {exc}") from None

    try:
        uids = {
            "SOPInstanceUID": _text(ds, "SOPInstanceUID"),
            "SOPClassUID": _text(ds, "SOPClassUID"),
            "StudyInstanceUID": _text(ds, "StudyInstanceUID"),
            "SeriesInstanceUID": _text(ds, "SeriesInstanceUID"),
        }
        for keyword, value in uids.items():
            if not value:
                raise RejectedDataset(f"{keyword} is missing")
            if not is_valid_uid(value):
                raise RejectedDataset(f"{keyword} {value!r} is not a valid UID")
        if expected_sop_instance_uid and uids["SOPInstanceUID"] != expected_sop_instance_uid:
            raise RejectedDataset("SOP Instance UID in the dataset differs from the request's")
        if expected_sop_class_uid and uids["SOPClassUID"] != expected_sop_class_uid:
            raise RejectedDataset("SOP Class UID in the dataset differs from the request's")

        patient = {
            "patient_id": _text(ds, "PatientID") or "",
            "issuer_of_patient_id": _text(ds, "IssuerOfPatientID") or "",
            "patient_name": _text(ds, "PatientName"),
            "patient_name_norm": normalise_name(_text(ds, "PatientName")),
            "patient_birth_date": _date(ds, "PatientBirthDate"),
            "patient_sex": _text(ds, "PatientSex"),
        }
        study = {
            "study_instance_uid": uids["StudyInstanceUID"],
            "study_date": _date(ds, "StudyDate"),
            "study_time": _time(ds, "StudyTime"),
            "accession_number": _text(ds, "AccessionNumber"),
            "study_id": _text(ds, "StudyID"),
            "study_description": _text(ds, "StudyDescription"),
            "referring_physician_name": _text(ds, "ReferringPhysicianName"),
            "referring_physician_name_norm": normalise_name(_text(ds, "ReferringPhysicianName")),
        }
        series = {
            "series_instance_uid": uids["SeriesInstanceUID"],
            "modality": _text(ds, "Modality"),
            "series_number": _int(ds, "SeriesNumber"),
            "series_description": _text(ds, "SeriesDescription"),
            "series_date": _date(ds, "SeriesDate"),
            "series_time": _time(ds, "SeriesTime"),
            "body_part_examined": _text(ds, "BodyPartExamined"),
            "station_name": _text(ds, "StationName"),
            "institution_name": _text(ds, "InstitutionName"),
            "performed_procedure_step_start_date": _date(ds, "PerformedProcedureStepStartDate"),
            "performed_procedure_step_start_time": _time(ds, "PerformedProcedureStepStartTime"),
            "scheduled_procedure_step_id": _first_request_attribute(ds, "ScheduledProcedureStepID"),
            "requested_procedure_id": _first_request_attribute(ds, "RequestedProcedureID"),
        }
        instance = {
            "sop_instance_uid": uids["SOPInstanceUID"],
            "sop_class_uid": uids["SOPClassUID"],
            "instance_number": _int(ds, "InstanceNumber"),
            "content_date": _date(ds, "ContentDate"),
            "content_time": _time(ds, "ContentTime"),
            "number_of_frames": _int(ds, "NumberOfFrames"),
            "rows": _int(ds, "Rows"),
            "columns": _int(ds, "Columns"),
            "transfer_syntax_uid": layout.transfer_syntax_uid,
        }
    except RejectedDataset:
        raise
    except Exception as exc:  # a value pydicom cannot decode  # noqa: BLE001
        raise RejectedDataset(f"cannot decode attribute: {type(exc).__name__}: {exc}") from None
    return ParsedInstance(layout, header, patient, study, series, instance)
