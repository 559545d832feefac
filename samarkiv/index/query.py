"""One query model for C-FIND (PS3.4 C.4.1) now and QIDO-RS (PS3.18 10.6) later.

A :class:`Query` names a level, matching keys and return keys. :func:`prepare`
checks it and compiles it to SQL on the catalogue (schema.py);
:meth:`PreparedQuery.run` yields one pydicom Dataset per match, page by page.

Matching (PS3.4 C.2.2.2):

* Single value matching (C.2.2.2.1). Person names match case-insensitively,
  against the upper-cased ``*_norm`` columns (the standard leaves case to the
  SCP); a name without ``=`` also matches the alphabetic group of a name that
  has ideographic or phonetic groups.
* Universal matching (C.2.2.2.3): an empty value, or a value of only ``*``.
* Wildcard matching (C.2.2.2.4): ``*`` and ``?`` in text keys (AE, CS, LO, PN,
  SH); case-sensitive except for person names.
* Range matching (C.2.2.2.5) for DA and TM: ``a-b``, ``-b`` and ``a-``, compared
  as strings. A time of reduced precision covers its whole span (``1030`` is
  10:30:00 to 10:30:59.999999), as a single value and as an upper bound.
* List of UID matching (C.2.2.2.2): backslash-separated UIDs.
* Multiple value matching (C.2.2.2.8): backslash-separated values of any other
  key match when any one of them matches.
* Sequence matching (C.2.2.2.6) for Request Attributes Sequence, whose item
  keys are written ``RequestAttributesSequence.ScheduledProcedureStepID``.

Return keys (PS3.4 C.4.1.1.3): every requested key is returned, from its
catalogue column, from an aggregate (counts, Modalities/SOP Classes in Study;
the schema caches none), or else from the stored header of one instance at
the query level; keys of a lower level, and keys the header lacks, come back
zero-length (C.4.1.1.3.1). The level's unique key and Query/Retrieve Level are
always returned; Specific Character Set is ISO_IR 192 when a value is not ASCII.

Not supported, and reported in :attr:`PreparedQuery.unmatched` (treated as
universal, so C-FIND answers 0xFF01): matching on keys that have no catalogue
column (they are still returned, from a stored header), on count keys, and on
keys below the query level. Also not supported: combined date-time matching
of a DA/TM pair (each is matched on its own), fuzzy semantic name matching and
timezone adjustment.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum, StrEnum
from functools import lru_cache
from io import BytesIO
from typing import Any

from pydicom import config, dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pydicom.valuerep import PersonName
from sqlalchemy import (
    ColumnElement,
    Engine,
    FromClause,
    Select,
    and_,
    exists,
    func,
    literal_column,
    or_,
    select,
)
from sqlalchemy.engine import Connection, Row

from .schema import instances, patients, series, studies

# --- levels and models ---------------------------------------------------------------


class Level(StrEnum):
    """Query/Retrieve Level (0008,0052) values of PS3.4 C.6."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"

    @property
    def depth(self) -> int:
        return _LEVELS.index(self)


_LEVELS = (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE)


class Model(StrEnum):
    """Query/Retrieve information models (PS3.4 C.6.1 and C.6.2)."""

    PATIENT_ROOT = "PATIENT_ROOT"
    STUDY_ROOT = "STUDY_ROOT"


class QueryError(ValueError):
    """The query cannot be run as asked (C-FIND 0xA900, QIDO-RS 400).

    Messages name keys, never their values, so they are safe to log.
    """

    def __init__(self, message: str, keyword: str | None = None) -> None:
        super().__init__(message)
        self.keyword = keyword


@dataclass(frozen=True)
class Query:
    """A catalogue query.

    ``keys`` maps DICOM keywords to matching values in DICOM string form (an
    empty value is universal matching); every key is also returned.
    ``return_keys`` are further keywords to return. Items of a sequence key
    are written ``Sequence.ItemKeyword``.
    """

    level: Level
    keys: Mapping[str, str] = field(default_factory=dict)
    return_keys: Sequence[str] = ()
    model: Model = Model.STUDY_ROOT
    limit: int | None = None
    offset: int = 0


# --- the keys the catalogue can match ------------------------------------------------


class Match(Enum):
    UID = "uid"
    TEXT = "text"
    NAME = "name"
    DATE = "date"
    TIME = "time"
    INT = "int"
    COUNT = "count"
    MODALITIES = "modalities"
    SOP_CLASSES = "sop-classes"


@dataclass(frozen=True)
class Key:
    """A matching/return key with a catalogue column (or an aggregate)."""

    keyword: str
    level: Level  # the entity the attribute describes
    match: Match
    column: Any = None  # the stored value
    norm: Any = None  # upper-cased copy used for matching person names


_P, _ST, _SE, _IM = _LEVELS
_KEY_LIST = (
    # Patient level (PS3.4 C.6.1.1.2, and the patient keys of C.6.2.1.2)
    Key("PatientName", _P, Match.NAME, patients.c.patient_name, patients.c.patient_name_norm),
    Key("PatientID", _P, Match.TEXT, patients.c.patient_id),
    Key("IssuerOfPatientID", _P, Match.TEXT, patients.c.issuer_of_patient_id),
    Key("PatientBirthDate", _P, Match.DATE, patients.c.patient_birth_date),
    Key("PatientSex", _P, Match.TEXT, patients.c.patient_sex),
    Key("NumberOfPatientRelatedStudies", _P, Match.COUNT),
    Key("NumberOfPatientRelatedSeries", _P, Match.COUNT),
    Key("NumberOfPatientRelatedInstances", _P, Match.COUNT),
    # Study level (C.6.1.1.3, C.6.2.1.2)
    Key("StudyInstanceUID", _ST, Match.UID, studies.c.study_instance_uid),
    Key("StudyDate", _ST, Match.DATE, studies.c.study_date),
    Key("StudyTime", _ST, Match.TIME, studies.c.study_time),
    Key("AccessionNumber", _ST, Match.TEXT, studies.c.accession_number),
    Key("StudyID", _ST, Match.TEXT, studies.c.study_id),
    Key("StudyDescription", _ST, Match.TEXT, studies.c.study_description),
    Key(
        "ReferringPhysicianName",
        _ST,
        Match.NAME,
        studies.c.referring_physician_name,
        studies.c.referring_physician_name_norm,
    ),
    Key("ModalitiesInStudy", _ST, Match.MODALITIES),
    Key("SOPClassesInStudy", _ST, Match.SOP_CLASSES),
    Key("NumberOfStudyRelatedSeries", _ST, Match.COUNT),
    Key("NumberOfStudyRelatedInstances", _ST, Match.COUNT),
    # Series level (C.6.1.1.4)
    Key("SeriesInstanceUID", _SE, Match.UID, series.c.series_instance_uid),
    Key("Modality", _SE, Match.TEXT, series.c.modality),
    Key("SeriesNumber", _SE, Match.INT, series.c.series_number),
    Key("SeriesDescription", _SE, Match.TEXT, series.c.series_description),
    Key("SeriesDate", _SE, Match.DATE, series.c.series_date),
    Key("SeriesTime", _SE, Match.TIME, series.c.series_time),
    Key("BodyPartExamined", _SE, Match.TEXT, series.c.body_part_examined),
    Key("StationName", _SE, Match.TEXT, series.c.station_name),
    Key("InstitutionName", _SE, Match.TEXT, series.c.institution_name),
    Key("PerformedProcedureStepStartDate", _SE, Match.DATE, series.c.performed_procedure_step_start_date),
    Key("PerformedProcedureStepStartTime", _SE, Match.TIME, series.c.performed_procedure_step_start_time),
    Key(
        "RequestAttributesSequence.ScheduledProcedureStepID",
        _SE,
        Match.TEXT,
        series.c.scheduled_procedure_step_id,
    ),
    Key("RequestAttributesSequence.RequestedProcedureID", _SE, Match.TEXT, series.c.requested_procedure_id),
    Key("NumberOfSeriesRelatedInstances", _SE, Match.COUNT),
    # Composite object instance level (C.6.1.1.5)
    Key("SOPInstanceUID", _IM, Match.UID, instances.c.sop_instance_uid),
    Key("SOPClassUID", _IM, Match.UID, instances.c.sop_class_uid),
    Key("InstanceNumber", _IM, Match.INT, instances.c.instance_number),
    Key("ContentDate", _IM, Match.DATE, instances.c.content_date),
    Key("ContentTime", _IM, Match.TIME, instances.c.content_time),
    Key("Rows", _IM, Match.INT, instances.c.rows),
    Key("Columns", _IM, Match.INT, instances.c.columns),
    Key("NumberOfFrames", _IM, Match.INT, instances.c.number_of_frames),
)
KEYS: dict[str, Key] = {key.keyword: key for key in _KEY_LIST}

UNIQUE_KEYS = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}

# Count keys (PS3.4 C.3.2-C.3.4): (entity counted for, level counted)
_COUNTS = {
    "NumberOfPatientRelatedStudies": (_P, _ST),
    "NumberOfPatientRelatedSeries": (_P, _SE),
    "NumberOfPatientRelatedInstances": (_P, _IM),
    "NumberOfStudyRelatedSeries": (_ST, _SE),
    "NumberOfStudyRelatedInstances": (_ST, _IM),
    "NumberOfSeriesRelatedInstances": (_SE, _IM),
}

# Return keys with a fixed answer: everything stored here is online (PS3.4 C.4.1.1.3.2).
_CONSTANTS = {"InstanceAvailability": "ONLINE"}
# Never matching or return keys: the response sets them itself.
_NOT_KEYS = {"QueryRetrieveLevel", "SpecificCharacterSet"}

_TABLES = {_P: patients, _ST: studies, _SE: series, _IM: instances}
_PARENT_FK = {_ST: studies.c.patient_pk, _SE: series.c.study_pk, _IM: instances.c.series_pk}


def is_keyword(keyword: str) -> bool:
    """A DICOM keyword, or ``Sequence.Item`` path of keywords, that pydicom knows."""
    parts = keyword.split(".")
    return all(tag_for_keyword(part) is not None for part in parts) and all(
        dictionary_VR(tag_for_keyword(part)) == "SQ" for part in parts[:-1]
    )


# --- turning key values into SQL conditions ------------------------------------------


def _values(raw: str) -> list[str]:
    """The values of a key; an empty list means universal matching (C.2.2.2.3)."""
    values = [v.strip() for v in str(raw).split("\\")]
    values = [v for v in values if v]
    if any(set(v) == {"*"} for v in values):
        return []
    return values


def _wildcard(column: Any, value: str, dialect: str) -> ColumnElement[bool]:
    """PS3.4 C.2.2.2.4: ``*`` any sequence, ``?`` any one character; case-sensitive.

    SQLite's LIKE ignores case, so SQLite gets GLOB (whose only other special
    character, ``[``, is escaped); both use an index for a literal prefix.
    """
    if dialect == "sqlite":
        return column.op("GLOB")(value.replace("[", "[[]"))
    escaped = value.replace("!", "!!").replace("%", "!%").replace("_", "!_")
    return column.like(escaped.replace("*", "%").replace("?", "_"), escape="!")


def _text_condition(column: Any, values: Iterable[str], dialect: str) -> ColumnElement[bool]:
    exact = [v for v in values if "*" not in v and "?" not in v]
    patterns = [v for v in values if v not in exact]
    conditions = [_wildcard(column, p, dialect) for p in patterns]
    if len(exact) == 1:
        conditions.append(column == exact[0])
    elif exact:
        conditions.append(column.in_(exact))
    return or_(*conditions)


def _name_condition(key: Key, values: Iterable[str], dialect: str) -> ColumnElement[bool]:
    """Case-insensitive person name matching on the upper-cased column."""
    patterns: list[str] = []
    for value in values:
        value = value.upper()
        patterns.append(value)
        if "=" not in value and not value.endswith("*"):
            patterns.append(value + "=*")  # the alphabetic group of a multi-group name
    return _text_condition(key.norm, patterns, dialect)


_DATE = re.compile(r"^\d{8}$")
_TIME = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")


def _date(value: str, keyword: str) -> tuple[str, str]:
    value = value.replace(".", "")  # ACR-NEMA style YYYY.MM.DD
    if not _DATE.match(value):
        raise QueryError(f"{keyword}: not a date (YYYYMMDD) or date range", keyword)
    return value, value


def _time(value: str, keyword: str) -> tuple[str, str]:
    """The first and last stored time strings that ``value`` covers."""
    value = value.replace(":", "")
    if not _TIME.match(value):
        raise QueryError(f"{keyword}: not a time (HHMMSS.FFFFFF) or time range", keyword)
    whole, _, fraction = value.partition(".")
    if fraction:
        last = value + "9" * (6 - len(fraction))
    else:
        last = whole + "9" * (6 - len(whole)) + ".999999"
    return value, last


def _range_condition(key: Key, values: Iterable[str]) -> ColumnElement[bool]:
    """PS3.4 C.2.2.2.5 range matching (and single values) on DA and TM strings."""
    parse = _date if key.match is Match.DATE else _time
    column, conditions = key.column, []
    for value in values:
        if value.count("-") > 1:
            raise QueryError(f"{key.keyword}: malformed range", key.keyword)
        if "-" in value:
            low, high = (part.strip() for part in value.split("-"))
            if not low and not high:
                raise QueryError(f"{key.keyword}: a range needs at least one end", key.keyword)
            bounds = []
            if low:
                bounds.append(column >= parse(low, key.keyword)[0])
            if high:
                bounds.append(column <= parse(high, key.keyword)[1])
            conditions.append(and_(*bounds))
        else:
            first, last = parse(value, key.keyword)
            conditions.append(column == first if first == last else column.between(first, last))
    return or_(*conditions)


def _int_condition(key: Key, values: Iterable[str]) -> ColumnElement[bool]:
    try:
        numbers = [int(v) for v in values]
    except ValueError:
        raise QueryError(f"{key.keyword}: not an integer", key.keyword) from None
    return key.column.in_(numbers) if len(numbers) > 1 else key.column == numbers[0]


def _uid_condition(column: Any, values: list[str]) -> ColumnElement[bool]:
    """PS3.4 C.2.2.2.2 list of UID matching."""
    return column.in_(values) if len(values) > 1 else column == values[0]


def _modalities_condition(values: list[str], dialect: str) -> ColumnElement[bool]:
    """Modalities in Study matches when any series of the study has one of them."""
    other = series.alias("mis")
    return exists(
        select(1).where(other.c.study_pk == studies.c.pk, _text_condition(other.c.modality, values, dialect))
    )


def _sop_classes_condition(values: list[str]) -> ColumnElement[bool]:
    """SOP Classes in Study matches when any instance of the study has one of them."""
    other_series, other_instances = series.alias("scs"), instances.alias("sci")
    return exists(
        select(1)
        .select_from(other_instances.join(other_series, other_instances.c.series_pk == other_series.c.pk))
        .where(other_series.c.study_pk == studies.c.pk, _uid_condition(other_instances.c.sop_class_uid, values))
    )


def _condition(key: Key, raw: str, dialect: str) -> ColumnElement[bool] | None:
    values = _values(raw)
    if not values:
        return None
    match key.match:
        case Match.UID:
            return _uid_condition(key.column, values)
        case Match.TEXT:
            return _text_condition(key.column, values, dialect)
        case Match.NAME:
            return _name_condition(key, values, dialect)
        case Match.DATE | Match.TIME:
            return _range_condition(key, values)
        case Match.INT:
            return _int_condition(key, values)
        case Match.MODALITIES:
            return _modalities_condition(values, dialect)
        case Match.SOP_CLASSES:
            return _sop_classes_condition(values)
    return None  # counts: return keys only


# --- what to return ------------------------------------------------------------------


class Source(Enum):
    COLUMN = "column"
    COUNT = "count"
    MODALITIES = "modalities"
    SOP_CLASSES = "sop-classes"
    SEQUENCE = "sequence"
    HEADER = "header"
    CONSTANT = "constant"
    EMPTY = "empty"


@dataclass(frozen=True)
class ReturnKey:
    keyword: str
    source: Source
    key: Key | None = None
    items: tuple[Key, ...] = ()  # SEQUENCE: item keys with columns
    item_keywords: tuple[str, ...] = ()  # SEQUENCE: every item keyword asked for


def _label(key: Key) -> str:
    return "k_" + key.keyword.replace(".", "__")


def _pk_label(level: Level) -> str:
    return f"pk_{level.value.lower()}"


def _return_key(keyword: str, level: Level, item_keywords: Sequence[str]) -> ReturnKey:
    if keyword in _CONSTANTS:
        return ReturnKey(keyword, Source.CONSTANT)
    if keyword == "RequestAttributesSequence":
        if level.depth < Level.SERIES.depth:
            return ReturnKey(keyword, Source.EMPTY)
        known = tuple(KEYS[k] for k in KEYS if k.startswith(keyword + "."))
        return ReturnKey(keyword, Source.SEQUENCE, items=known, item_keywords=tuple(item_keywords))
    key = KEYS.get(keyword)
    if key is None:
        return ReturnKey(keyword, Source.HEADER)
    if key.level.depth > level.depth:
        return ReturnKey(keyword, Source.EMPTY)  # a lower level's key has no single value here
    source = {
        Match.COUNT: Source.COUNT,
        Match.MODALITIES: Source.MODALITIES,
        Match.SOP_CLASSES: Source.SOP_CLASSES,
    }.get(key.match, Source.COLUMN)
    return ReturnKey(keyword, source, key)


# --- the prepared query ---------------------------------------------------------------


def _validate(query: Query) -> Query:
    """The query with its level and model as enums; QueryError if it is malformed."""
    try:
        query = replace(query, level=Level(query.level), model=Model(query.model))
    except ValueError:
        raise QueryError("unknown query level or information model") from None
    if query.level is Level.PATIENT and query.model is not Model.PATIENT_ROOT:
        raise QueryError("the Study Root model has no PATIENT level (PS3.4 C.6.2)")
    if (query.limit is not None and query.limit < 0) or query.offset < 0:
        raise QueryError("limit and offset must not be negative")
    for keyword in [*query.keys, *query.return_keys]:
        if not is_keyword(keyword):
            raise QueryError(f"unknown attribute keyword {keyword!r}", keyword)
    return query


@dataclass
class PreparedQuery:
    """A checked query compiled to SQL; run it with :meth:`run`."""

    query: Query
    conditions: list[ColumnElement[bool]]
    returns: list[ReturnKey]
    unmatched: tuple[str, ...]  # keys with a value that could not be matched (treated as universal)
    # A condition on ``studies``/``patients`` (the access policy's, issue 5): the
    # patient-related counts (NumberOfPatientRelated*) then count only its studies.
    count_condition: ColumnElement[bool] | None = None

    @property
    def level(self) -> Level:
        return self.query.level

    def _select(self) -> Select[Any]:
        """The level's rows joined up to the patient: every level's pk, then key columns."""
        levels = _LEVELS[: self.level.depth + 1]
        columns = [_TABLES[level].c.pk.label(_pk_label(level)) for level in levels]
        keys = [r.key for r in self.returns if r.source is Source.COLUMN] + [
            item for r in self.returns if r.source is Source.SEQUENCE for item in r.items
        ]
        columns += [key.column.label(_label(key)) for key in dict.fromkeys(keys) if key is not None]
        source = _joined(Level.PATIENT, self.level)
        return select(*columns).select_from(source).where(*self.conditions).order_by(_TABLES[self.level].c.pk)

    def run(self, engine: Engine, page_size: int = 500) -> Iterator[Dataset]:
        """Yield the matches as Datasets, reading ``page_size`` rows at a time.

        Each page is read on its own connection (nothing is held open while
        the caller sends answers). On PostgreSQL in autocommit mode, which
        saves the BEGIN and ROLLBACK round trips; counts may then include an
        instance stored a moment later.
        """
        autocommit = engine.dialect.name == "postgresql"
        base, pk = self._select(), _TABLES[self.level].c.pk
        remaining, last = self.query.limit, None
        while remaining is None or remaining > 0:
            size = page_size if remaining is None else min(page_size, remaining)
            # LIMIT as a literal: with a bound LIMIT, PostgreSQL's generic plan
            # for a prepared statement (psycopg prepares after 5 runs) may walk
            # the whole table in pk order behind the access-policy condition.
            stmt = base.limit(literal_column(str(int(size))))
            if last is not None:
                stmt = stmt.where(pk > last)
            elif self.query.offset:
                stmt = stmt.offset(self.query.offset)
            with engine.connect() as conn:
                if autocommit:
                    conn.execution_options(isolation_level="AUTOCOMMIT")
                rows = conn.execute(stmt).all()
                extras = self._extras(conn, rows) if rows else _Extras()
            for row in rows:
                yield self._dataset(row._mapping, extras)
            if len(rows) < size:
                return
            last = rows[-1][self.level.depth]  # the level's pk (see _select)
            if remaining is not None:
                remaining -= len(rows)

    # --- aggregates and headers: one grouped query per entity and page ----------------

    def _extras(self, conn: Connection, rows: Sequence[Row[Any]]) -> _Extras:
        extras = _Extras()
        sources = {r.source for r in self.returns}
        entities = {_COUNTS[r.keyword][0] for r in self.returns if r.source is Source.COUNT}
        if sources & {Source.MODALITIES, Source.SOP_CLASSES}:
            entities.add(_ST)
        for entity in sorted(entities, key=lambda level: level.depth):
            extras.summaries[entity] = _summaries(
                conn, entity, _pks(rows, entity), Source.MODALITIES in sources, Source.SOP_CLASSES in sources,
                self.count_condition if entity is _P else None,
            )  # fmt: skip
        if Source.HEADER in sources:
            extras.headers = _headers(conn, self.level, _pks(rows, self.level))
        return extras

    def _dataset(self, row: Mapping[str, Any], extras: _Extras) -> Dataset:
        elements: list[DataElement] = []
        for ret in self.returns:
            match ret.source:
                case Source.COLUMN:
                    elements.append(_element(ret.keyword, row[_label(ret.key)]))  # type: ignore[arg-type]
                case Source.COUNT | Source.MODALITIES | Source.SOP_CLASSES:
                    entity = _COUNTS[ret.keyword][0] if ret.source is Source.COUNT else _ST
                    summary = extras.summaries[entity].get(row[_pk_label(entity)], _EMPTY_SUMMARY)
                    elements.append(_element(ret.keyword, summary.value(ret.keyword)))
                case Source.SEQUENCE:
                    elements.append(_sequence_element(ret, row))
                case Source.HEADER:
                    header = extras.headers.get(row[_pk_label(self.level)])
                    elements.append(_header_element(ret.keyword, header))
                case Source.CONSTANT:
                    elements.append(_element(ret.keyword, _CONSTANTS[ret.keyword]))
                case Source.EMPTY:
                    elements.append(_element(ret.keyword, None))
        elements.append(_element("QueryRetrieveLevel", self.level.value))
        if _non_ascii(elements):
            elements.append(_element("SpecificCharacterSet", "ISO_IR 192"))
        return _dataset_of(elements)


def prepare(query: Query, dialect: str) -> PreparedQuery:
    """Check ``query`` and compile it for the ``dialect`` ("sqlite" or "postgresql").

    Raises QueryError for a query that cannot be run as asked.
    """
    query = _validate(query)
    level = query.level
    conditions, unmatched = [], []
    for keyword, raw in query.keys.items():
        if keyword in _NOT_KEYS:
            continue
        key = KEYS.get(keyword)
        has_value = bool(_values(raw))
        if key is None or key.level.depth > level.depth or key.match is Match.COUNT:
            if has_value:
                unmatched.append(keyword)
            continue
        condition = _condition(key, raw, dialect)
        if condition is not None:
            conditions.append(condition)
    return PreparedQuery(query, conditions, _returns(query), tuple(unmatched))


def _returns(query: Query) -> list[ReturnKey]:
    """Return keys in request order: the level's unique key first, items grouped."""
    wanted = [UNIQUE_KEYS[query.level], *query.keys, *query.return_keys]
    items: dict[str, list[str]] = {}
    order: list[str] = []
    for keyword in wanted:
        if keyword in _NOT_KEYS:
            continue
        top, _, item = keyword.partition(".")
        if top not in items:
            items[top] = []
            order.append(top)
        if item and item not in items[top]:
            items[top].append(item)
    return [_return_key(top, query.level, items[top]) for top in order]


def run_query(engine: Engine, query: Query) -> Iterator[Dataset]:
    """Prepare ``query`` for ``engine`` and yield its matches."""
    return prepare(query, engine.dialect.name).run(engine)


# --- helpers for the extras --------------------------------------------------------


def _pks(rows: Sequence[Row[Any]], level: Level) -> list[int]:
    return list(dict.fromkeys(row._mapping[_pk_label(level)] for row in rows))


def _joined(top: Level, bottom: Level) -> FromClause:
    """The ``bottom`` table joined to its parents up to ``top``."""
    source: FromClause = _TABLES[bottom]
    for child in _LEVELS[bottom.depth : top.depth : -1]:
        parent = _LEVELS[child.depth - 1]
        source = source.join(_TABLES[parent], _PARENT_FK[child] == _TABLES[parent].c.pk)
    return source


def _descend(entity: Level, lower: Level) -> tuple[FromClause, Any]:
    """FROM clause reaching ``lower`` rows from ``entity``, and the column naming the entity."""
    below = _LEVELS[entity.depth + 1]
    return _joined(below, lower), _PARENT_FK[below]


@dataclass
class _Summary:
    """What lies below one patient, study or series (the schema caches no counts)."""

    studies: set[int] = field(default_factory=set)
    series: set[int] = field(default_factory=set)
    instances: int = 0
    modalities: set[str] = field(default_factory=set)
    sop_classes: set[str] = field(default_factory=set)

    def value(self, keyword: str) -> Any:
        if keyword == "ModalitiesInStudy":
            return sorted(self.modalities)
        if keyword == "SOPClassesInStudy":
            return sorted(self.sop_classes)
        counted = _COUNTS[keyword][1]
        return {_ST: len(self.studies), _SE: len(self.series), _IM: self.instances}[counted]


_EMPTY_SUMMARY = _Summary()


@dataclass
class _Extras:
    summaries: dict[Level, dict[int, _Summary]] = field(default_factory=dict)
    headers: dict[int, Dataset | None] = field(default_factory=dict)


def _summaries(
    conn: Connection, entity: Level, pks: list[int], modalities: bool, sop_classes: bool,
    condition: ColumnElement[bool] | None = None,
) -> dict[int, _Summary]:
    """Counts (and, for studies, modalities and SOP classes) of ``pks`` in one grouped query.

    One row per series (and SOP class) below each entity, counting its instances;
    for patients, only of the studies ``condition`` (on studies and patients) keeps.
    """
    source, owner = _descend(entity, _IM)
    where = [owner.in_(pks)]
    if condition is not None and entity is _P:
        source = source.join(patients, studies.c.patient_pk == patients.c.pk)
        where.append(condition)
    columns = [owner]
    if entity is _P:
        columns.append(studies.c.pk)
    if entity.depth <= _ST.depth:
        columns.append(series.c.pk)
    if entity is _ST and modalities:
        columns.append(series.c.modality)
    if entity is _ST and sop_classes:
        columns.append(instances.c.sop_class_uid)
    stmt = (
        select(*columns, func.count().label("n"))
        .select_from(source)
        .where(*where)
        .group_by(*columns)
    )
    found: dict[int, _Summary] = {}
    for row in conn.execute(stmt):
        values = row._mapping
        summary = found.setdefault(row[0], _Summary())
        summary.instances += values["n"]
        if entity is _P:
            summary.studies.add(values[studies.c.pk])
        if entity.depth <= _ST.depth:
            summary.series.add(values[series.c.pk])
        if entity is _ST and modalities and values[series.c.modality]:
            summary.modalities.add(values[series.c.modality])
        if entity is _ST and sop_classes:
            summary.sop_classes.add(values[instances.c.sop_class_uid])
    return found


def _headers(conn: Connection, level: Level, pks: list[int]) -> dict[int, Dataset | None]:
    """The stored header of one instance (the first stored) per entity, parsed."""
    if level is Level.IMAGE:
        stmt = select(instances.c.pk, instances.c.metadata).where(instances.c.pk.in_(pks))
    else:
        source, owner = _descend(level, _IM)
        first = (
            select(owner.label("owner"), func.min(instances.c.pk).label("first"))
            .select_from(source)
            .where(owner.in_(pks))
            .group_by(owner)
            .subquery()
        )
        stmt = select(first.c.owner, instances.c.metadata).join_from(
            first, instances, instances.c.pk == first.c.first
        )
    return {pk: _parse_header(blob) for pk, blob in conn.execute(stmt)}


def _parse_header(blob: bytes | None) -> Dataset | None:
    if not blob:
        return None
    try:
        return dcmread(BytesIO(zlib.decompress(blob)), stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - a header we cannot read answers empty values
        return None


# --- building the response Dataset ------------------------------------------------


@lru_cache(maxsize=1024)
def _tag_vr(keyword: str) -> tuple[BaseTag, str]:
    tag = Tag(tag_for_keyword(keyword))
    return tag, dictionary_VR(tag).split(" or ")[0]


def _dataset_of(elements: Iterable[DataElement]) -> Dataset:
    return Dataset({elem.tag: elem for elem in elements})


def _element(keyword: str, value: Any) -> DataElement:
    """``keyword`` set to a value from the catalogue; None, "" and [] give a
    zero-length value (PS3.4 C.4.1.1.3.1).

    Values are plain str/int/list, written as they are: pydicom neither
    converts nor validates them again (its warnings could quote patient data).
    """
    tag, vr = _tag_vr(keyword)
    if value == "" or value == []:
        value = None
    if vr == "SQ":
        return DataElement(tag, vr, value or [], validation_mode=config.IGNORE)
    if vr == "PN" and value is not None:
        value = [PersonName(v) for v in value] if isinstance(value, list) else PersonName(value)
    return DataElement(tag, vr, value, already_converted=True, validation_mode=config.IGNORE)


def _sequence_element(ret: ReturnKey, row: Mapping[str, Any]) -> DataElement:
    """Request Attributes Sequence from its columns: one item, or none when all are empty."""
    items = []
    for keyword in ret.item_keywords or [k.keyword.split(".", 1)[1] for k in ret.items]:
        key = KEYS.get(f"{ret.keyword}.{keyword}")
        items.append(_element(keyword, row[_label(key)] if key is not None else None))
    has_value = any(elem.value not in (None, "") for elem in items)
    return _element(ret.keyword, [_dataset_of(items)] if has_value else None)


def _fresh(value: Any) -> Any:
    """Person names re-made from their text, so they are written in the response's
    character set rather than the stored header's."""
    if isinstance(value, PersonName):
        return PersonName(str(value))
    if isinstance(value, MultiValue) and value and isinstance(value[0], PersonName):
        return [PersonName(str(v)) for v in value]
    return value


def _header_element(keyword: str, header: Dataset | None) -> DataElement:
    """``keyword`` as the stored header has it, or zero-length when it has not."""
    tag = _tag_vr(keyword)[0]
    try:
        elem = header[tag] if header is not None and tag in header else None
        if elem is not None:
            return DataElement(tag, elem.VR, _fresh(elem.value), already_converted=True, validation_mode=config.IGNORE)
    except Exception:  # noqa: BLE001 - an undecodable value is returned empty
        pass
    return _element(keyword, None)


# Value representations whose text Specific Character Set governs (PS3.5 6.1.2.3).
_TEXT_VRS = {"SH", "LO", "UC", "ST", "LT", "UT", "PN"}


def _non_ascii(elements: Iterable[DataElement]) -> bool:
    for elem in elements:
        if elem.VR == "SQ":
            if any(_non_ascii(item) for item in elem.value or []):
                return True
        elif elem.VR in _TEXT_VRS and elem.value is not None:
            values = elem.value if isinstance(elem.value, (list, MultiValue)) else [elem.value]
            if any(not str(v).isascii() for v in values):
                return True
    return False
