"""An inbound ADT message, parsed with hl7apy into the few values the archive
uses: PID-3 identifiers (CX), PID-5 name, PID-7 birth date, PID-8 sex, and
MRG-1 prior identifiers (HL7 v2.5 3.4.2 PID, 3.4.3 MRG; 2.A.14 CX, 2.A.88 XPN).

hl7apy checks the segments' structure for the message's version (2.1 to
2.8.2). Segments the archive does not use are not given to it: a receiver
ignores segments it does not expect (HL7 v2.5 2.12, message construction
rules); their IDs must still be segment IDs. Empty fields mean "no change";
``""`` (two double quotes) means "delete the value" (2.5.3).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.exceptions import HL7apyException, UnsupportedVersion
from hl7apy.parser import parse_message

from .er7 import Delimiters, Er7Error, Header, read_header, split_segments

USED_SEGMENTS = ("MSH", "EVN", "PID", "PD1", "MRG", "PV1")
_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}")
DELETE = '""'  # HL7 null: delete the stored value (2.5.3)


class AckCode:
    """MSA-1 (HL7 v2.5 Table 0008, original acknowledgment mode)."""

    ACCEPT = "AA"
    ERROR = "AE"  # processing failed: the receiving application's error
    REJECT = "AR"  # rejected: bad MSH-9, MSH-11, MSH-12, or not a message


class ErrorCode:
    """HL7 v2.5 Table 0357, message error condition codes."""

    SEGMENT_SEQUENCE = (100, "Segment sequence error")
    REQUIRED_FIELD = (101, "Required field missing")
    DATA_TYPE = (102, "Data type error")
    TABLE_VALUE = (103, "Table value not found")
    MESSAGE_TYPE = (200, "Unsupported message type")
    EVENT_CODE = (201, "Unsupported event code")
    PROCESSING_ID = (202, "Unsupported processing id")
    VERSION_ID = (203, "Unsupported version id")
    UNKNOWN_KEY = (204, "Unknown key identifier")
    INTERNAL = (207, "Application internal error")


@dataclass(frozen=True)
class Location:
    """ERR-2 (ERL, HL7 v2.5 2.A.27): where in the message the problem is."""

    segment: str
    sequence: int = 1
    field: int | None = None
    repetition: int | None = None
    component: int | None = None


@dataclass(frozen=True)
class Issue:
    """One ERR segment: code (Table 0357), severity (Table 0516: E, W, I),
    a diagnostic text (never patient data), where."""

    code: tuple[int, str]
    text: str
    location: Location | None = None
    severity: str = "E"


class MessageError(Exception):
    """The message cannot be processed: answer ``ack_code`` with ``issue``."""

    def __init__(self, ack_code: str, issue: Issue) -> None:
        super().__init__(issue.text)
        self.ack_code = ack_code
        self.issue = issue


@dataclass(frozen=True)
class Cx:
    """A PID-3/MRG-1 repetition: ID (CX.1), assigning authority (CX.4, an HD:
    namespace ID, universal ID, universal ID type), identifier type (CX.5)."""

    value: str
    namespace: str
    universal: str
    universal_type: str
    type_code: str
    location: Location


@dataclass(frozen=True)
class Demographics:
    """None: not sent (keep); "": sent as "" (delete)."""

    name: str | None = None  # a DICOM PN: family^given^middle^prefix^suffix
    birth_date: str | None = None  # YYYYMMDD
    sex: str | None = None  # DICOM Patient's Sex: M, F, O


@dataclass(frozen=True)
class Patient:
    """One PID segment."""

    sequence: int
    identifiers: tuple[Cx, ...]
    demographics: Demographics
    warnings: tuple[Issue, ...] = ()


@dataclass(frozen=True)
class AdtMessage:
    header: Header
    patients: tuple[Patient, ...]
    prior_identifiers: tuple[Cx, ...] = ()  # MRG-1 of the first MRG
    has_mrg: bool = False
    extra: dict[str, int] = field(default_factory=dict)  # ignored segment IDs, counted


def _reject(code: tuple[int, str], text: str, location: Location | None = None, ack: str = AckCode.REJECT) -> MessageError:
    return MessageError(ack, Issue(code, text, location))


def _components(d: Delimiters, text: str) -> list[str]:
    return text.split(d.component)


def _sub(d: Delimiters, text: str, n: int) -> str:
    parts = text.split(d.subcomponent)
    return d.unescaped(parts[n - 1]).strip() if n <= len(parts) else ""


def _comp(d: Delimiters, parts: list[str], n: int) -> str:
    return parts[n - 1] if n <= len(parts) else ""


def _cx(d: Delimiters, er7: str, location: Location) -> Cx:
    parts = _components(d, er7)
    authority = _comp(d, parts, 4)
    return Cx(
        value=d.unescaped(_comp(d, parts, 1).split(d.subcomponent)[0]).strip(),
        namespace=_sub(d, authority, 1),
        universal=_sub(d, authority, 2),
        universal_type=_sub(d, authority, 3).upper(),
        type_code=d.unescaped(_comp(d, parts, 5)).strip().upper(),
        location=location,
    )


def _pn_component(text: str) -> str:
    """A DICOM PN component: no ^ = \\ or control characters (PS3.5 6.2)."""
    return re.sub(r"[\^=\\\x00-\x1f]", " ", text).strip()


def _name(d: Delimiters, repetitions: list[str]) -> str | None:
    """PID-5 as a DICOM PN: the legal name (XPN.7 = L) or the first one.
    XPN: family (FN.1 surname), given, further given, suffix, prefix."""
    if not repetitions or repetitions == [""]:
        return None
    if repetitions == [DELETE]:
        return ""
    chosen = repetitions[0]
    for rep in repetitions:
        if _comp(d, _components(d, rep), 7).strip().upper() == "L":
            chosen = rep
            break
    parts = _components(d, chosen)
    family = _sub(d, _comp(d, parts, 1), 1)
    given, middle, suffix, prefix = (_sub(d, _comp(d, parts, n), 1) for n in (2, 3, 4, 5))
    pn = "^".join(_pn_component(p) for p in (family, given, middle, prefix, suffix)).rstrip("^")
    return pn[:324]


def _birth_date(d: Delimiters, er7: str, location: Location) -> str | None:
    """PID-7 (TS/DTM, YYYY[MM[DD[HHMM...]]]) as a DICOM date; a date without
    month or day cannot be one and is not kept."""
    text = d.unescaped(_components(d, er7)[0]).strip()
    if not text:
        return None
    if text == DELETE:
        return ""
    digits = re.match(r"\d*", text).group()  # type: ignore[union-attr]
    if len(digits) < 4 or len(digits) % 2:
        raise _reject(ErrorCode.DATA_TYPE, "PID-7 is not a date/time", location, AckCode.ERROR)
    if len(digits) < 8:
        return None
    try:
        date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        raise _reject(ErrorCode.DATA_TYPE, "PID-7 is no calendar date", location, AckCode.ERROR) from None
    return digits[:8]


# HL7 Table 0001 (administrative sex) -> DICOM Patient's Sex (PS3.3 C.7.1.1).
_SEX = {"F": "F", "M": "M", "O": "O", "A": "O", "U": "", "N": ""}


def _sex(d: Delimiters, er7: str, location: Location) -> tuple[str | None, Issue | None]:
    text = d.unescaped(_components(d, er7)[0]).strip().upper()
    if not text:
        return None, None
    if text == DELETE:
        return "", None
    if text in _SEX:
        return _SEX[text], None
    return None, Issue(ErrorCode.TABLE_VALUE, "PID-8 is not in table 0001; sex not changed", location, "W")


def _field_er7(segment, n: int) -> list[str]:  # type: ignore[no-untyped-def]
    """The repetitions of field ``n`` of an hl7apy segment, as ER7 text."""
    try:
        reps = getattr(segment, f"{segment.name.lower()}_{n}")
    except HL7apyException:
        return []
    return [rep.to_er7() for rep in reps] if reps else []


def _patient(d: Delimiters, pid, sequence: int) -> Patient:  # type: ignore[no-untyped-def]
    identifiers = tuple(
        _cx(d, er7, Location("PID", sequence, 3, i))
        for i, er7 in enumerate(_field_er7(pid, 3), start=1)
    )
    dob = (_field_er7(pid, 7) or [""])[0]
    sex_text = (_field_er7(pid, 8) or [""])[0]
    sex, warning = _sex(d, sex_text, Location("PID", sequence, 8))
    demographics = Demographics(
        name=_name(d, _field_er7(pid, 5)),
        birth_date=_birth_date(d, dob, Location("PID", sequence, 7)),
        sex=sex,
    )
    return Patient(sequence, identifiers, demographics, (warning,) if warning else ())


def parse(text: str, header: Header | None = None) -> AdtMessage:
    """Parse a decoded message; MessageError (with the ACK code and ERR
    content to answer) when it is not one the archive can take."""
    try:
        header = header or read_header(text)
    except Er7Error as exc:
        raise _reject(ErrorCode.SEGMENT_SEQUENCE, str(exc), Location("MSH")) from None
    if not header.control_id:
        raise _reject(ErrorCode.REQUIRED_FIELD, "MSH-10 (message control ID) is empty", Location("MSH", 1, 10))
    if not header.version:
        raise _reject(ErrorCode.REQUIRED_FIELD, "MSH-12 (version ID) is empty", Location("MSH", 1, 12))
    if header.processing_id not in ("P", "D", "T"):
        raise _reject(ErrorCode.PROCESSING_ID, "MSH-11 must be P, D or T", Location("MSH", 1, 11))
    d = header.delimiters
    used: list[str] = []
    extra: dict[str, int] = {}
    for segment in split_segments(text):
        seg_id = segment[:3]
        if not _SEGMENT_ID.fullmatch(seg_id) or (len(segment) > 3 and segment[3] != d.field):
            raise _reject(ErrorCode.SEGMENT_SEQUENCE, f"not a segment: it starts {seg_id!r}", ack=AckCode.ERROR)
        if seg_id in USED_SEGMENTS:
            used.append(segment)
        else:
            extra[seg_id] = extra.get(seg_id, 0) + 1
    try:
        parsed = parse_message(
            "\r".join(used) + "\r", validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=False
        )
    except UnsupportedVersion:
        raise _reject(ErrorCode.VERSION_ID, "MSH-12: versions 2.1 to 2.8.2 are supported", Location("MSH", 1, 12)) from None
    except HL7apyException as exc:
        raise _reject(ErrorCode.SEGMENT_SEQUENCE, f"unparseable message: {exc.__class__.__name__}", ack=AckCode.ERROR) from None
    pids = [child for child in parsed.children if child.name == "PID"]
    mrgs = [child for child in parsed.children if child.name == "MRG"]
    try:
        patients = tuple(_patient(d, pid, n) for n, pid in enumerate(pids, start=1))
        prior = tuple(
            _cx(d, er7, Location("MRG", 1, 1, i)) for i, er7 in enumerate(_field_er7(mrgs[0], 1), start=1)
        ) if mrgs else ()  # fmt: skip
    except HL7apyException as exc:
        raise _reject(ErrorCode.DATA_TYPE, f"unparseable field: {exc.__class__.__name__}", ack=AckCode.ERROR) from None
    return AdtMessage(header, patients, prior, bool(mrgs), extra)
