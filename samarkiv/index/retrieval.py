"""What a C-MOVE or C-GET asks for, and where a C-MOVE sends it.

A retrieve identifier holds unique keys only (PS3.4 C.4.2.1.4.1 and
C.4.3.1.3.1): the Query/Retrieve Level, the unique key of that level (a list
of UIDs is allowed there, PS3.4 C.2.2.2.2) and, optionally, the single-valued
unique keys of the levels above it, which narrow the match. Patient ID is a
key only in the Patient Root model (PS3.4 C.6.1); Study Root has no PATIENT
level (PS3.4 C.6.2).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import Engine, Select

from ..config import Settings
from ..core.ingest import is_valid_uid
from .catalog import Catalog, StoredInstance, stored_instances_select
from .query import Model
from .schema import instances, patients, series, studies

# Bound parameters per IN (...) query; far below the SQLite and PostgreSQL limits.
_CHUNK = 500


# One enum for the information models of C-FIND, C-MOVE and C-GET (PS3.4 C.6).
InformationModel = Model


LEVELS: dict[InformationModel, tuple[str, ...]] = {
    InformationModel.PATIENT_ROOT: ("PATIENT", "STUDY", "SERIES", "IMAGE"),
    InformationModel.STUDY_ROOT: ("STUDY", "SERIES", "IMAGE"),
}

# The unique key of each level below PATIENT (PS3.4 Table C.6-1, C.6-2).
_UID_KEYS = {"STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}


class IdentifierError(ValueError):
    """The identifier is not a valid retrieve request (answered with 0xA900).

    The message names keys and levels only, never values: it is logged and
    sent back as the Error Comment.
    """


@dataclass(frozen=True)
class RetrieveRequest:
    """The unique keys of a retrieve, checked and normalised."""

    level: str
    patient_id: str | None = None
    issuer_of_patient_id: str | None = None
    study_uids: tuple[str, ...] = ()
    series_uids: tuple[str, ...] = ()
    sop_uids: tuple[str, ...] = ()


# --- identifier ------------------------------------------------------------------


def _values(identifier: Dataset, keyword: str) -> list[str]:
    """The non-empty values of ``keyword`` (absent or zero length: no values)."""
    try:
        value = identifier.get(keyword)
    except Exception as exc:  # pydicom decodes lazily; a bad element fails here  # noqa: BLE001
        raise IdentifierError(f"{keyword} cannot be decoded ({type(exc).__name__})") from None
    if value is None:
        return []
    raw = list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
    return [text for text in (str(v).strip(" \x00") for v in raw) if text]


def _uid_list(identifier: Dataset, keyword: str, *, single: bool) -> tuple[str, ...]:
    uids = _values(identifier, keyword)
    if single and len(uids) > 1:
        raise IdentifierError(f"{keyword} must be a single UID above the retrieve level")
    for uid in uids:
        if not is_valid_uid(uid):
            raise IdentifierError(f"{keyword} holds a value that is not a UID (wildcards are not allowed)")
    return tuple(dict.fromkeys(uids))


def _level(identifier: Dataset, model: InformationModel) -> str:
    values = _values(identifier, "QueryRetrieveLevel")
    if len(values) != 1:
        raise IdentifierError("QueryRetrieveLevel is missing or multi-valued")
    level = values[0].upper()
    if level not in LEVELS[model]:
        raise IdentifierError(f"QueryRetrieveLevel {level[:16]!r} is not a level of the {model.value} model")
    return level


def parse_identifier(identifier: Dataset, model: InformationModel) -> RetrieveRequest:
    """Check a C-MOVE/C-GET identifier against ``model``; raise IdentifierError if unfit."""
    level = _level(identifier, model)
    depth = LEVELS[InformationModel.PATIENT_ROOT].index(level)
    keys: dict[str, Any] = {}
    for index, key_level in enumerate(("STUDY", "SERIES", "IMAGE"), start=1):
        keyword = _UID_KEYS[key_level]
        if index > depth:
            if _values(identifier, keyword):
                raise IdentifierError(f"{keyword} is below the retrieve level {level}")
            continue
        keys[keyword] = _uid_list(identifier, keyword, single=index < depth)
    if model is InformationModel.PATIENT_ROOT:
        patient_ids = _values(identifier, "PatientID")
        if len(patient_ids) > 1:
            raise IdentifierError("PatientID must be a single value")
        issuers = _values(identifier, "IssuerOfPatientID")
        keys["PatientID"] = patient_ids[0] if patient_ids else None
        keys["IssuerOfPatientID"] = issuers[0] if len(issuers) == 1 else None
    if level == "PATIENT" and not keys.get("PatientID"):
        raise IdentifierError("PatientID is required at the PATIENT level")
    if level != "PATIENT" and not keys[_UID_KEYS[level]]:
        raise IdentifierError(f"{_UID_KEYS[level]} is required at the {level} level")
    return RetrieveRequest(
        level=level,
        patient_id=keys.get("PatientID"),
        issuer_of_patient_id=keys.get("IssuerOfPatientID"),
        study_uids=keys.get("StudyInstanceUID", ()),
        series_uids=keys.get("SeriesInstanceUID", ()),
        sop_uids=keys.get("SOPInstanceUID", ()),
    )


# --- matching --------------------------------------------------------------------

# Study (date, time, arrival), series (number, arrival), instance (number, arrival).
_ORDER_COLUMNS = (
    studies.c.study_date.label("o_study_date"),
    studies.c.study_time.label("o_study_time"),
    studies.c.pk.label("o_study_pk"),
    series.c.series_number.label("o_series_number"),
    series.c.pk.label("o_series_pk"),
    instances.c.instance_number.label("o_instance_number"),
)
_STORED_FIELDS = len(StoredInstance.__dataclass_fields__)


def _base_query(request: RetrieveRequest) -> Select:  # type: ignore[type-arg]
    query = stored_instances_select().add_columns(*_ORDER_COLUMNS)
    if request.patient_id is not None:
        query = query.join(patients, studies.c.patient_pk == patients.c.pk).where(
            patients.c.patient_id == request.patient_id
        )
        if request.issuer_of_patient_id is not None:
            query = query.where(patients.c.issuer_of_patient_id == request.issuer_of_patient_id)
    for column, uids in (
        (studies.c.study_instance_uid, request.study_uids),
        (series.c.series_instance_uid, request.series_uids),
        (instances.c.sop_instance_uid, request.sop_uids),
    ):
        if len(uids) == 1:
            query = query.where(column == uids[0])
    return query


def _queries(request: RetrieveRequest) -> Iterator[Select]:  # type: ignore[type-arg]
    """One query, or one per chunk of the level's UID list."""
    base = _base_query(request)
    column, uids = {
        "PATIENT": (None, ()),
        "STUDY": (studies.c.study_instance_uid, request.study_uids),
        "SERIES": (series.c.series_instance_uid, request.series_uids),
        "IMAGE": (instances.c.sop_instance_uid, request.sop_uids),
    }[request.level]
    if column is None or len(uids) <= 1:
        yield base
        return
    for start in range(0, len(uids), _CHUNK):
        yield base.where(column.in_(uids[start : start + _CHUNK]))


def _sort_key(row: Sequence[Any]) -> tuple[Any, ...]:
    """Missing values sort last, as on both backends' NULLS LAST."""
    order = row[_STORED_FIELDS:]
    key: list[Any] = []
    for value in order:
        key.extend((value is None, value if value is not None else 0))
    key.append(row[0])  # instance pk: arrival order breaks ties
    return tuple(key)


def find_instances(engine: Engine, request: RetrieveRequest) -> list[StoredInstance]:
    """The stored instances a retrieve names, by study, series and instance number."""
    rows: dict[int, Sequence[Any]] = {}
    with engine.connect() as conn:
        for query in _queries(request):
            for row in conn.execute(query):
                rows[row[0]] = tuple(row)
    return [StoredInstance(*row[:_STORED_FIELDS]) for row in sorted(rows.values(), key=_sort_key)]


# --- destinations ----------------------------------------------------------------


def resolve_node(settings: Settings, catalog: Catalog, aet: str) -> tuple[str, int] | None:
    """(host, port) of the peer ``aet``: the config file's nodes first, then ``nodes add``.

    AE titles compare without their insignificant leading/trailing spaces
    (PS3.5 Table 6.2-1, AE).
    """
    wanted = aet.strip()
    if not wanted:
        return None
    for node in settings.nodes:
        if node.aet.strip() == wanted:
            return node.host, int(node.port)
    for row in catalog.nodes():
        if str(row["aet"]).strip() == wanted:
            return str(row["host"]), int(row["port"])
    return None
