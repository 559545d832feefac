"""QIDO-RS (PS3.18 10.6): search for studies, series and instances.

Query parameters become the same :class:`~samarkiv.index.query.Query` that
C-FIND uses, so both doors match alike (PS3.4 C.2.2.2: single value,
wildcard, range, list of UIDs, universal). Here:

* ``{attributeID}={value}``: a keyword or an 8-digit tag, or a sequence path
  (``RequestAttributesSequence.ScheduledProcedureStepID``, ``00400275.00400009``).
  UID lists may be separated by commas or backslashes (PS3.18 8.3.4.1).
* ``includefield``: attribute IDs, repeated or comma-separated, or ``all``
  (every optional key of the level the catalogue can answer).
* ``fuzzymatching=true``: person names match case-insensitively at the start
  of any name component (``smi`` finds ``Smith^John`` and ``Doe^Smithers``);
  without it they match case-insensitively as a whole (wildcards allowed).
* ``limit``/``offset`` page the results. With no ``limit`` (or a larger one)
  at most ``MAX_RESULTS`` are returned, with the paging Warning of
  PS3.18 8.3.4.4 when more matched.

Results stream page by page (PreparedQuery.run), as application/dicom+json
(default) or multipart/related; type="application/dicom+xml". No match is
200 with an empty array (PS3.18 10.6.3 Table 10.6.3-1: "any matching
results"). Matching on an attribute the catalogue cannot match is treated as
universal and named in a Warning header.

Access (issue 5): the caller's principal goes into the query, whose SQL then
keeps only the rows the policy lets it see (samarkiv/access/gate.py
``query_condition``, one ``query`` audit record per request): hidden studies,
series and instances are simply absent, and the paging Warning and limits
count only visible rows.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset

from ...access.http import organisation_of
from ...core.archive import Archive
from ...identity.query import PatientScope
from ...index.query import KEYS, Level, PreparedQuery, Query, QueryError
from .dicomjson import (
    DICOM_JSON,
    DICOM_XML,
    choose,
    dataset_json,
    json_accepted,
    multipart_parts,
    xml_accepted,
    xml_document,
)
from .errors import DicomWebError
from .guard import caller
from .metadata import dicomweb_base

MAX_RESULTS = 10_000  # per response, when the client asks for more or sets no limit

# Default return attributes (PS3.18 Tables 10.6.3-3, -4 and -5), those the
# catalogue holds; Timezone Offset From UTC is returned only when asked for.
STUDY_KEYS = (
    "StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability", "ModalitiesInStudy",
    "ReferringPhysicianName", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "StudyID", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
)  # fmt: skip
SERIES_KEYS = (
    "StudyInstanceUID", "Modality", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber",
    "NumberOfSeriesRelatedInstances", "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
    "RequestAttributesSequence.ScheduledProcedureStepID", "RequestAttributesSequence.RequestedProcedureID",
)  # fmt: skip
INSTANCE_KEYS = (
    "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID", "InstanceAvailability",
    "InstanceNumber", "Rows", "Columns", "BitsAllocated", "NumberOfFrames",
)  # fmt: skip

_RESERVED = {"limit", "offset", "fuzzymatching", "includefield", "accept", "charset", "token"}  # token: a share link
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
_RETRIEVE_URL = 0x00081190
_QUERY_RETRIEVE_LEVEL = 0x00080052


@dataclass
class Search:
    """One QIDO-RS request, parsed."""

    level: Level
    keys: dict[str, str] = field(default_factory=dict)
    include: list[str] = field(default_factory=list)
    include_all: bool = False
    fuzzy: bool = False
    limit: int | None = None
    offset: int = 0


def _keyword(attribute_id: str, parameter: str) -> str:
    """The keyword path of an attribute ID (keyword or tag, dotted for sequences)."""
    parts = []
    for part in attribute_id.split("."):
        if _TAG.match(part):
            tag = int(part, 16)
            if tag >> 16 & 1:
                raise DicomWebError(400, f"{parameter}: private attributes are not supported in searches")
            keyword = keyword_for_tag(tag)
            if not keyword:
                raise DicomWebError(400, f"{parameter}: unknown attribute tag {part}")
            parts.append(keyword)
        elif tag_for_keyword(part) is not None:
            parts.append(part)
        else:
            raise DicomWebError(400, f"{parameter}: {part!r} is not a DICOM attribute keyword or tag")
    for part in parts[:-1]:
        if dictionary_VR(tag_for_keyword(part)) != "SQ":
            raise DicomWebError(400, f"{parameter}: {part} is not a sequence")
    return ".".join(parts)


def _non_negative(value: str, name: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise DicomWebError(400, f"{name} must be a non-negative integer") from None
    if number < 0:
        raise DicomWebError(400, f"{name} must be a non-negative integer")
    return number


def _fuzzy(value: str) -> str:
    """Person name matching at the start of any name component, any case."""
    patterns = []
    for single in value.split("\\"):
        single = single.strip()
        if not single or "*" in single or "?" in single:
            patterns.append(single)  # wildcards: as given
            continue
        patterns += [f"{single}*", f"*^{single}*", f"* {single}*"]
    return "\\".join(patterns)


def parse_search(request: Request, level: Level, fixed: dict[str, str]) -> Search:
    """The search a request asks for; DicomWebError 400 naming the faulty parameter."""
    search = Search(level)
    seen: set[str] = set()
    for name, value in request.query_params.multi_items():
        if name == "includefield":
            for item in filter(None, (v.strip() for v in value.split(","))):
                if item == "all":
                    search.include_all = True
                else:
                    search.include.append(_keyword(item, "includefield"))
        elif name == "limit":
            search.limit = _non_negative(value, "limit")
        elif name == "offset":
            search.offset = _non_negative(value, "offset")
        elif name == "fuzzymatching":
            if value.lower() not in ("true", "false"):
                raise DicomWebError(400, "fuzzymatching must be true or false")
            search.fuzzy = value.lower() == "true"
        elif name in _RESERVED:
            continue
        else:
            keyword = _keyword(name, name)
            if keyword in seen:
                raise DicomWebError(400, f"{name} is given more than once")
            seen.add(keyword)
            search.keys[keyword] = value
    for keyword, value in search.keys.items():
        top = keyword.split(".")[-1]
        vr = dictionary_VR(tag_for_keyword(top))
        if vr == "UI":
            search.keys[keyword] = value.replace(",", "\\")
        elif vr == "PN" and search.fuzzy:
            search.keys[keyword] = _fuzzy(value)
    search.keys.update(fixed)
    return search


def _all_keys(level: Level) -> list[str]:
    """includefield=all: every key the catalogue holds at or above ``level``."""
    keys = [k.keyword for k in KEYS.values() if k.level.depth <= level.depth]
    return keys + ["InstanceAvailability"]


def _default_keys(level: Level, fixed: dict[str, str]) -> list[str]:
    """PS3.18 10.6.3.3: a level's table, plus higher levels' when the URL names no parent."""
    if level is Level.STUDY:
        return list(STUDY_KEYS)
    if level is Level.SERIES:
        return list(SERIES_KEYS) + ([] if "StudyInstanceUID" in fixed else list(STUDY_KEYS))
    keys = list(INSTANCE_KEYS)
    if "SeriesInstanceUID" not in fixed:
        keys += SERIES_KEYS
    if "StudyInstanceUID" not in fixed:
        keys += STUDY_KEYS
    return keys


def build_query(search: Search, fixed: dict[str, str], limit: int | None) -> Query:
    returns = _default_keys(search.level, fixed) + search.include
    if search.include_all:
        returns += _all_keys(search.level)
    # PS3.18 10.6.3.3: attributes of a lower level are not returned
    returns = [k for k in returns if k not in KEYS or KEYS[k].level.depth <= search.level.depth]
    return Query(
        level=search.level,
        keys=search.keys,
        return_keys=tuple(dict.fromkeys(k for k in returns if k not in search.keys)),
        limit=limit,
        offset=search.offset,
    )


def _retrieve_url(base: str, level: Level, ds: Dataset) -> str | None:
    study = ds.get("StudyInstanceUID")
    if not study:
        return None
    url = f"{base}/studies/{study}"
    if level is Level.STUDY:
        return url
    url += f"/series/{ds.get('SeriesInstanceUID', '')}"
    if level is Level.SERIES:
        return url
    return url + f"/instances/{ds.get('SOPInstanceUID', '')}"


def result_json(base: str, level: Level, ds: Dataset) -> dict:
    out = dataset_json(ds, skip=(_QUERY_RETRIEVE_LEVEL,))
    url = _retrieve_url(base, level, ds)
    if url:
        out["00081190"] = {"vr": "UR", "Value": [url]}
    return dict(sorted(out.items()))


class QidoService:
    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.max_results = archive.settings.qido_max_results

    def search(self, request: Request, level: Level, fixed: dict[str, str]) -> Response:
        accept = request.query_params.get("accept") or request.headers.get("accept")
        representation = choose(accept, {"json": json_accepted, "xml": xml_accepted})
        if representation is None:
            raise DicomWebError(
                406, 'search results are available as application/dicom+json or multipart/related; type="application/dicom+xml"'
            )
        search = parse_search(request, level, fixed)
        capped = search.limit is None or search.limit > self.max_results
        limit = self.max_results if capped else search.limit
        principal = caller(request)
        try:
            # the caller's organisation decides what a Patient ID without issuer means;
            # the caller's principal keeps only what the policy lets it see (audited)
            owner = organisation_of(request)
            prepared, scope = self.archive.prepare_query(
                build_query(search, fixed, limit), None, owner=owner, principal=principal,
                detail={"door": "QIDO-RS", "level": level.value, "keys": dict(search.keys)},
            )  # fmt: skip
        except QueryError as exc:
            raise DicomWebError(400, str(exc)) from None
        headers: list[tuple[str, str]] = []
        service = dicomweb_base(request, self.archive)
        if prepared.unmatched:
            headers.append(
                ("Warning", f'299 {service}: "The following attributes were not supported for matching and '
                 f'were treated as universal: {", ".join(prepared.unmatched)}"')
            )  # fmt: skip
        if capped and self._more_than(prepared, search):
            headers.append(
                ("Warning", f'299 {service}: "The number of results exceeded the maximum supported by the '
                 'server. Additional results can be requested."')
            )  # fmt: skip
        self.archive.metrics.queries.labels(level.value.lower()).inc()
        results = self._results(prepared, service, scope)
        if representation == "xml":
            boundary = uuid.uuid4().hex
            documents = (xml_document(r) for r in results)
            response: Response = StreamingResponse(
                multipart_parts(documents, boundary, DICOM_XML),
                media_type=f'multipart/related; type="{DICOM_XML}"; boundary={boundary}',
            )
        else:
            response = StreamingResponse(_json_array(results), media_type=DICOM_JSON)
        for name, value in headers:
            response.headers.append(name, value)
        return response

    def _more_than(self, prepared: PreparedQuery, search: Search) -> bool:
        """Whether a match exists beyond the server's maximum (one cheap probe)."""
        probe = replace(prepared, query=replace(prepared.query, limit=1, offset=search.offset + self.max_results))
        return any(True for _ in probe.run(self.archive.engine, page_size=1))

    def _results(self, prepared: PreparedQuery, base: str, scope: PatientScope) -> Iterator[dict]:
        started = time.perf_counter()
        try:
            for ds in prepared.run(self.archive.engine):
                yield result_json(base, prepared.level, scope.relabel(ds))
        finally:
            self.archive.metrics.query_seconds.observe(time.perf_counter() - started)


def _json_array(results: Iterator[dict]) -> Iterator[bytes]:
    """A JSON array written as its items come (a few at a time, not byte by byte)."""
    batch: list[str] = []
    first = True
    for result in results:
        batch.append(json.dumps(result, separators=(",", ":"), ensure_ascii=False))
        if len(batch) >= 50:
            yield (("[" if first else ",") + ",".join(batch)).encode("utf-8")
            first, batch = False, []
    tail = ",".join(batch)
    if first:
        yield ("[" + tail + "]").encode("utf-8")
    else:
        yield (("," + tail if tail else "") + "]").encode("utf-8")


def create_router(archive: Archive) -> APIRouter:
    service = QidoService(archive)
    router = APIRouter()
    router.qido_service = service  # type: ignore[attr-defined]  # tests adjust max_results

    @router.get("/studies", tags=["QIDO-RS"])
    def search_studies(request: Request) -> Response:
        """Search for studies (PS3.18 10.6.1)."""
        return service.search(request, Level.STUDY, {})

    @router.get("/studies/{study}/series", tags=["QIDO-RS"])
    def search_study_series(study: str, request: Request) -> Response:
        """Search for a study's series."""
        return service.search(request, Level.SERIES, {"StudyInstanceUID": study})

    @router.get("/series", tags=["QIDO-RS"])
    def search_series(request: Request) -> Response:
        """Search for series in every study."""
        return service.search(request, Level.SERIES, {})

    @router.get("/studies/{study}/instances", tags=["QIDO-RS"])
    def search_study_instances(study: str, request: Request) -> Response:
        """Search for a study's instances."""
        return service.search(request, Level.IMAGE, {"StudyInstanceUID": study})

    @router.get("/studies/{study}/series/{series_uid}/instances", tags=["QIDO-RS"])
    def search_series_instances(study: str, series_uid: str, request: Request) -> Response:
        """Search for a series' instances."""
        return service.search(request, Level.IMAGE, {"StudyInstanceUID": study, "SeriesInstanceUID": series_uid})

    @router.get("/instances", tags=["QIDO-RS"])
    def search_instances(request: Request) -> Response:
        """Search for instances in every study."""
        return service.search(request, Level.IMAGE, {})

    return router
