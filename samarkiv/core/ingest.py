"""From received bytes to an index record: parse the header once, validate it.

The header is parsed from the compact header copy (bulk data left out), so a
2 GB multi-frame costs no more to index than a small CT.
"""

from __future__ import annotations

import mmap
import re
import struct
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, Protocol

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRBigEndian

from ..identity.national import Issuer, identifiers_in_dataset, issuer_of
from .structure import (
    _LONG_VRS,
    BULK_THRESHOLD,
    Layout,
    MalformedDataset,
    header_of_buffer,
    inspect_buffer,
)

# Top-level elements the index reads; parsing only these is several times
# faster than parsing the whole header.
_INDEXED_KEYWORDS = (
        "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "StudyDate", "SeriesDate",
        "ContentDate", "StudyTime", "SeriesTime", "ContentTime", "AccessionNumber", "Modality",
        "InstitutionName", "ReferringPhysicianName", "StationName", "StudyDescription",
        "SeriesDescription", "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
        "PatientSex", "BodyPartExamined", "StudyInstanceUID", "SeriesInstanceUID", "StudyID",
        "SeriesNumber", "InstanceNumber", "NumberOfFrames", "Rows", "Columns",
        "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
        "RequestAttributesSequence", "IssuerOfPatientIDQualifiersSequence", "OtherPatientIDsSequence",
)
_INDEXED_TAGS = frozenset(int(Tag(keyword)) for keyword in _INDEXED_KEYWORDS)


def _indexed_subset(buf: mmap.mmap | bytes, layout: Layout) -> bytes:
    """The File Meta group plus only the top-level elements the index reads."""
    parts = [buf[: layout.dataset_offset]]
    parts.extend(buf[start:end] for tag, start, end in layout.spans if tag in _INDEXED_TAGS)
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


class _Values(Protocol):
    """Where the indexed attributes are read from: the raw bytes, or pydicom."""

    ds: Dataset  # what pydicom decoded: the whole subset, or only its sequences

    def text(self, keyword: str) -> str | None: ...

    def number(self, keyword: str) -> int | None: ...


class _DatasetValues:
    """Attributes decoded by pydicom: any character set, sequences, deflate."""

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds

    def text(self, keyword: str) -> str | None:
        value = self.ds.get(keyword)
        if value is None or value == "":
            return None
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            return "\\".join(str(v) for v in value)
        return str(value)

    def number(self, keyword: str) -> int | None:
        value = self.ds.get(keyword)
        try:
            return None if value in (None, "") else int(value)
        except (TypeError, ValueError):
            return None


# Single-byte and UTF-8 character sets decode without pydicom (PS3.3 C.12.1.1.2);
# the ISO 2022 ones (code extensions, several values) go through pydicom.
_SIMPLE_CHARSETS = {"": "latin-1", "ISO_IR 6": "latin-1", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}
_US_TAGS = {int(Tag("Rows")), int(Tag("Columns"))}
_PN_TAGS = {int(Tag("PatientName")), int(Tag("ReferringPhysicianName"))}
_CHARSET_TAG = int(Tag("SpecificCharacterSet"))
# Sequences are read by pydicom: when one is present and not empty, so is the rest.
_SEQUENCE_TAGS = tuple(
    int(Tag(k))
    for k in ("RequestAttributesSequence", "IssuerOfPatientIDQualifiersSequence", "OtherPatientIDsSequence")
)
_KEYWORD_TAGS = {keyword: int(Tag(keyword)) for keyword in _INDEXED_KEYWORDS}


# The instances of a study arrive together and repeat the same patient
# sequences byte for byte: decode each distinct one once (bounded caches).
_SEQUENCES: dict[tuple[bytes, bool, bool, str], Dataset] = {}
_PATIENT_IDS: dict[tuple[bytes | None, bytes | None, bytes, str], tuple[tuple[str, Issuer], ...]] = {}
_CACHE_LIMIT = 256
_PATIENT_ID_TAG = int(Tag("PatientID"))
_ISSUER_TAG = int(Tag("IssuerOfPatientID"))


def _sequences(raw: bytes, explicit: bool, little: bool, charset: str) -> Dataset:
    """The indexed sequences, decoded by pydicom (read-only: shared between calls)."""
    key = (raw, explicit, little, charset)
    ds = _SEQUENCES.get(key)
    if ds is None:
        ds = read_dataset(BytesIO(raw), not explicit, little) if raw else Dataset()
        if raw and charset:
            ds.SpecificCharacterSet = charset  # items decode in the data set's character set
        if len(_SEQUENCES) >= _CACHE_LIMIT:
            _SEQUENCES.clear()
        _SEQUENCES[key] = ds
    return ds


class _RawValues:
    """The indexed top-level attributes read straight from the received bytes.

    Values are decoded as pydicom would (PS3.5 6.2: trailing spaces and NULs
    are padding; backslashes separate values), for about a tenth of the cost.
    """

    def __init__(self, raw: dict[int, bytes], encoding: str, little: bool, sequences: Dataset) -> None:
        self.raw = raw
        self.encoding = encoding
        self.us = struct.Struct("<H" if little else ">H")
        self.ds = sequences  # the indexed sequences only, decoded by pydicom
        self.sequence_bytes = b""

    @classmethod
    def of(cls, buf: mmap.mmap | bytes, layout: Layout) -> _RawValues | None:
        """None when pydicom must decode (other character sets, sequences)."""
        explicit = layout.explicit_vr
        little = layout.transfer_syntax_uid != ExplicitVRBigEndian
        raw: dict[int, bytes] = {}
        sequences: list[bytes] = []
        for tag, start, end in layout.spans:
            if tag in _INDEXED_TAGS:
                header = 12 if explicit and bytes(buf[start + 4 : start + 6]) in _LONG_VRS else 8
                if tag in _US_TAGS and explicit and buf[start + 4 : start + 6] != b"US":
                    return None
                raw[tag] = bytes(buf[start + header : end])
                if tag in _SEQUENCE_TAGS and end - start > header:
                    sequences.append(bytes(buf[start:end]))
        charset = raw.get(_CHARSET_TAG, b"").decode("ascii", "replace").strip(" \x00")
        encoding = _SIMPLE_CHARSETS.get(charset)
        if encoding is None:
            return None
        sequence_bytes = b"".join(sequences)
        values = cls(raw, encoding, little, _sequences(sequence_bytes, explicit, little, charset))
        values.sequence_bytes = sequence_bytes
        return values

    @property
    def patient_ids(self) -> tuple[tuple[str, Issuer], ...]:
        key = (self.raw.get(_PATIENT_ID_TAG), self.raw.get(_ISSUER_TAG), self.sequence_bytes, self.encoding)
        found = _PATIENT_IDS.get(key)
        if found is None:
            if len(_PATIENT_IDS) >= _CACHE_LIMIT:
                _PATIENT_IDS.clear()
            found = _PATIENT_IDS[key] = _patient_ids_of(self)
        return found

    def text(self, keyword: str) -> str | None:
        tag = _KEYWORD_TAGS[keyword]
        value = self.raw.get(tag)
        if not value:
            return None
        if tag in _US_TAGS:
            return str(self.us.unpack_from(value)[0]) if len(value) >= 2 else None
        text = "\\".join(v.rstrip(" \x00") for v in value.decode(self.encoding, "replace").split("\\"))
        if tag in _PN_TAGS:
            text = text.rstrip("=")  # empty trailing component groups (PS3.5 6.2.1)
        return text if text.strip("\\") else None

    def number(self, keyword: str) -> int | None:
        text = self.text(keyword)
        try:
            return None if text is None else int(text.strip())
        except ValueError:
            return None


def _time(values: _Values, keyword: str) -> str | None:
    value = values.text(keyword)
    return value.replace(":", "") if value else None


def _date(values: _Values, keyword: str) -> str | None:
    value = values.text(keyword)
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
    # (Patient ID, issuer) pairs: the Patient ID first, then Other Patient IDs
    # (PS3.3 C.7.1.1, 10.14); the identity module resolves them to a person.
    patient_ids: tuple[tuple[str, Issuer], ...] = ()

    @property
    def sop_instance_uid(self) -> str:
        return self.instance["sop_instance_uid"]

    @property
    def study_instance_uid(self) -> str:
        return self.study["study_instance_uid"]


def _patient_ids(values: _Values) -> tuple[tuple[str, Issuer], ...]:
    """The Patient ID with its issuer, then the Other Patient IDs (PS3.3 C.7.1.1)."""
    if isinstance(values, _DatasetValues):
        return tuple((found.value, found.issuer) for found in identifiers_in_dataset(values.ds))
    return values.patient_ids  # type: ignore[attr-defined]


def _patient_ids_of(values: _RawValues) -> tuple[tuple[str, Issuer], ...]:
    qualifiers = values.ds.get("IssuerOfPatientIDQualifiersSequence")
    universal = Issuer()
    if qualifiers:
        universal = issuer_of(Dataset({"IssuerOfPatientIDQualifiersSequence": qualifiers}))  # type: ignore[arg-type]
    primary = (
        (values.text("PatientID") or "").strip(),
        Issuer(values.text("IssuerOfPatientID") or "", universal.universal, universal.universal_type),
    )
    others = tuple(
        (found.value, found.issuer)
        for found in identifiers_in_dataset(values.ds)
        if found.source == "OtherPatientIDsSequence"
    )
    return (primary, *others)


def _first_request_attribute(values: _Values, keyword: str) -> str | None:
    for item in values.ds.get("RequestAttributesSequence", []) or []:  # type: ignore[attr-defined]
        value = _DatasetValues(item).text(keyword)
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
        with open(path, "rb") as f:
            if f.seek(0, 2) == 0:
                raise RejectedDataset("malformed dataset: empty file")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return parse_buffer(buf, expected_sop_instance_uid, expected_sop_class_uid)
    except OSError as exc:
        raise RejectedDataset(f"cannot read dataset: {exc.strerror}") from None


def parse_buffer(
    buf: mmap.mmap | bytes,
    expected_sop_instance_uid: str | None = None,
    expected_sop_class_uid: str | None = None,
) -> ParsedInstance:
    """Check and parse a Part 10 file held in ``buf``; raise RejectedDataset if unfit."""
    try:
        layout = inspect_buffer(buf)
        header = header_of_buffer(buf, layout)
        values: _Values | None = _RawValues.of(buf, layout) if layout.spans else None
        if values is None:
            source = BytesIO(_indexed_subset(buf, layout) if layout.spans else bytes(buf))
            ds = dcmread(source, stop_before_pixels=True, defer_size=BULK_THRESHOLD)
            ds.file_meta  # noqa: B018  (forces meta decoding errors to surface here)
            values = _DatasetValues(ds)
    except (MalformedDataset, InvalidDicomError) as exc:
        raise RejectedDataset(f"malformed dataset: {exc}") from None
    except Exception as exc:  # pydicom raises many kinds on garbage  # noqa: BLE001
        raise RejectedDataset(f"cannot parse dataset: {type(exc).__name__}: {exc}") from None
    return _parsed(values, layout, header, expected_sop_instance_uid, expected_sop_class_uid)


def _parsed(
    values: _Values,
    layout: Layout,
    header: bytes | None,
    expected_sop_instance_uid: str | None,
    expected_sop_class_uid: str | None,
) -> ParsedInstance:
    _text, _int = values.text, values.number
    try:
        uids = {
            "SOPInstanceUID": _text("SOPInstanceUID"),
            "SOPClassUID": _text("SOPClassUID"),
            "StudyInstanceUID": _text("StudyInstanceUID"),
            "SeriesInstanceUID": _text("SeriesInstanceUID"),
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
            "patient_id": _text("PatientID") or "",
            "issuer_of_patient_id": _text("IssuerOfPatientID") or "",
            "patient_name": _text("PatientName"),
            "patient_name_norm": normalise_name(_text("PatientName")),
            "patient_birth_date": _date(values, "PatientBirthDate"),
            "patient_sex": _text("PatientSex"),
        }
        study = {
            "study_instance_uid": uids["StudyInstanceUID"],
            "study_date": _date(values, "StudyDate"),
            "study_time": _time(values, "StudyTime"),
            "accession_number": _text("AccessionNumber"),
            "study_id": _text("StudyID"),
            "study_description": _text("StudyDescription"),
            "referring_physician_name": _text("ReferringPhysicianName"),
            "referring_physician_name_norm": normalise_name(_text("ReferringPhysicianName")),
        }
        series = {
            "series_instance_uid": uids["SeriesInstanceUID"],
            "modality": _text("Modality"),
            "series_number": _int("SeriesNumber"),
            "series_description": _text("SeriesDescription"),
            "series_date": _date(values, "SeriesDate"),
            "series_time": _time(values, "SeriesTime"),
            "body_part_examined": _text("BodyPartExamined"),
            "station_name": _text("StationName"),
            "institution_name": _text("InstitutionName"),
            "performed_procedure_step_start_date": _date(values, "PerformedProcedureStepStartDate"),
            "performed_procedure_step_start_time": _time(values, "PerformedProcedureStepStartTime"),
            "scheduled_procedure_step_id": _first_request_attribute(values, "ScheduledProcedureStepID"),
            "requested_procedure_id": _first_request_attribute(values, "RequestedProcedureID"),
        }
        patient_ids = _patient_ids(values)
        instance = {
            "sop_instance_uid": uids["SOPInstanceUID"],
            "sop_class_uid": uids["SOPClassUID"],
            "instance_number": _int("InstanceNumber"),
            "content_date": _date(values, "ContentDate"),
            "content_time": _time(values, "ContentTime"),
            "number_of_frames": _int("NumberOfFrames"),
            "rows": _int("Rows"),
            "columns": _int("Columns"),
            "transfer_syntax_uid": layout.transfer_syntax_uid,
        }
    except RejectedDataset:
        raise
    except Exception as exc:  # a value pydicom cannot decode  # noqa: BLE001
        raise RejectedDataset(f"cannot decode attribute: {type(exc).__name__}: {exc}") from None
    return ParsedInstance(layout, header, patient, study, series, instance, patient_ids)
