"""WADO-RS metadata (PS3.18 10.4.1.1.2): study, series and instance metadata.

Answered from prepared DICOM JSON, never from the stored objects: each
instance's JSON object is made once from the header copy the archive keeps at
store time (the ``instances.metadata`` column: the object without Pixel Data
and without other elements over 64 KiB) and kept, zlib-compressed, in the
``instance_json`` table (index/metadata_schema.py) under the SHA-256 of the
object it was made from. The journal mover prepares it when the archive is
idle (:func:`prepare_missing`, core/writeback.py); a request that finds an
instance unprepared, or prepared for an object since replaced, converts its
header then and writes the row, so the next request finds it. A study or
series answer is one query for the prepared rows, decompressed and joined as
bytes, without parsing them again.

What the header left out is named in its trailing trace (core/structure.py)
and announced as a BulkDataURI, ``{base}/studies/{st}/series/{se}/instances/{sop}/bulk/{tag}``,
which the WADO-RS retrieve module serves. Top-level binary elements over
1 KiB become BulkDataURIs too; smaller ones and everything nested in
sequences stay inline. The prepared JSON holds these URIs as paths
(``/studies/...``); the request's DICOMweb root is put in front when serving
(the base depends on the host the client used).

Assembled answers (and their gzip form) are cached in memory, keyed on the
(primary key, SHA-256) list of their instances, which changes with every
store, replacement or deletion.

Exceptions (they read the stored object): objects stored with a deflated
transfer syntax, for which no header copy exists.

Access: each request is one ``view`` decision on its study (guard.py), made
and audited before the cache is consulted; a refused study is 403.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import threading
import uuid
import weakref
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from io import BytesIO
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from prometheus_client import CollectorRegistry, Counter
from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from ...core.archive import Archive
from ...core.structure import (
    OMITTED_CREATOR,
    OMITTED_ELEMENT,
    OMITTED_GROUP,
    PIXEL_DATA,
)
from ...index.metadata_schema import instance_json
from ...index.schema import instances, instances_with_parents, series, studies
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
from .guard import authorise_study

log = logging.getLogger(__name__)

INLINE_BINARY_MAX = 1024  # top-level binary elements above this become BulkDataURIs
CACHE_BYTES = 256 << 20  # memory for cached answers
PREPARE_LEVEL = 6  # zlib level of prepared rows (made in the background)
_TRACE_TAGS = ((OMITTED_GROUP << 16) | 0x0010, (OMITTED_GROUP << 16) | OMITTED_ELEMENT)
# SOP Classes whose document lives in Encapsulated Document (0042,0011) (PS3.3 A.45)
_ENCAPSULATED_DOCUMENT = 0x00420011
# A BulkDataURI as prepared: a path. In compact JSON text an unescaped quote
# only delimits a string, so this occurs only where a key "BulkDataURI" has a
# value starting "/studies/", never inside a value.
_BULK_PATH = b'"BulkDataURI":"/studies/'


class Scope(Enum):
    STUDY = "study"
    SERIES = "series"
    INSTANCE = "instance"


# --- the cache ---------------------------------------------------------------------


class _LruBytes:
    """A thread-safe LRU of byte strings bounded by their total size."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.size = 0
        self.items: OrderedDict[Any, bytes] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: Any) -> bytes | None:
        with self.lock:
            value = self.items.get(key)
            if value is not None:
                self.items.move_to_end(key)
            return value

    def put(self, key: Any, value: bytes) -> None:
        if len(value) > self.budget // 4:
            return
        with self.lock:
            old = self.items.pop(key, None)
            if old is not None:
                self.size -= len(old)
            self.items[key] = value
            self.size += len(value)
            while self.size > self.budget:
                _key, dropped = self.items.popitem(last=False)
                self.size -= len(dropped)


@dataclass(frozen=True)
class _Listed:
    """One instance of the answer, as the key query found it."""

    pk: int
    sha256: str
    study: str
    series: str
    sop: str


@dataclass(frozen=True)
class _Counters:
    conversions: Counter  # headers converted while answering a request
    prepared: Counter  # headers converted in the background
    answered: Counter  # answers by source (cached / built)


_COUNTERS: weakref.WeakKeyDictionary[CollectorRegistry, _Counters] = weakref.WeakKeyDictionary()
_COUNTERS_LOCK = threading.Lock()


def _counters(archive: Archive) -> _Counters:
    """The metadata counters on the archive's /metrics registry (one set per registry)."""
    registry = archive.metrics.registry
    with _COUNTERS_LOCK:
        found = _COUNTERS.get(registry)
        if found is None:
            found = _Counters(
                Counter(
                    "samarkiv_metadata_conversions",
                    "Instance headers converted to DICOM JSON while answering a request",
                    registry=registry,
                ),
                Counter(
                    "samarkiv_metadata_prepared",
                    "Instance headers converted to DICOM JSON in the background",
                    registry=registry,
                ),
                Counter(
                    "samarkiv_metadata_answers", "Study/series/instance metadata answers", ["source"], registry=registry
                ),
            )
            _COUNTERS[registry] = found
        return found


# --- conversion ----------------------------------------------------------------------


def instance_json_text(archive: Archive, item: _Listed, header: bytes | None) -> bytes:
    """The metadata of one instance in the DICOM JSON Model (PS3.18 F.2), compact
    UTF-8 with BulkDataURIs as paths; ``header`` is the compressed header copy."""
    prefix = f"/studies/{item.study}/series/{item.series}/instances/{item.sop}/bulk/"

    def bulk(tag: int, vr: str, length: int) -> str | None:
        return f"{prefix}{tag:08X}" if length > INLINE_BINARY_MAX else None

    ds = _parse(zlib.decompress(header)) if header is not None else None
    if ds is None:
        ds = _read_stored(archive, item.sop)
        omitted = _inferred_omissions(ds)
    else:
        omitted = _omitted(ds)
    out = dataset_json(ds, bulk=bulk, skip=_TRACE_TAGS)
    for tag, vr in omitted or []:
        out[f"{tag:08X}"] = {"vr": vr, "BulkDataURI": f"{prefix}{tag:08X}"}
    return json.dumps(dict(sorted(out.items())), separators=(",", ":")).encode("utf-8")


def _read_stored(archive: Archive, sop: str) -> Dataset:
    """The stored object's header, when no header copy was kept (deflated objects)."""
    stored = archive.catalog.instance(sop)
    if stored is None:
        raise DicomWebError(404, "the instance was deleted while its metadata was read")
    with archive.open_instance(stored) as f:
        return dcmread(f, stop_before_pixels=True)


def prepare_missing(archive: Archive, after_pk: int, limit: int) -> tuple[int, int]:
    """Prepare the metadata of up to ``limit`` instances above ``after_pk`` that
    lack it (the journal mover calls this when the archive is idle). Returns how
    many were looked at and the primary key to continue after."""
    rows, upto = archive.catalog.unprepared_instances(after_pk, limit)
    prepared = []
    for row in rows:
        item = _Listed(row.pk, row.sha256, row.study_instance_uid, row.series_instance_uid, row.sop_instance_uid)
        try:
            text = instance_json_text(archive, item, bytes(row.metadata) if row.metadata is not None else None)
        except Exception as exc:  # noqa: BLE001 - one bad object must not stop the rest; answered on request
            log.warning("could not prepare the metadata of instance pk %d: %s", row.pk, type(exc).__name__)
            continue
        prepared.append((row.pk, row.sha256, zlib.compress(text, PREPARE_LEVEL)))
    archive.catalog.save_instance_json(prepared)
    _counters(archive).prepared.inc(len(prepared))
    return len(rows), upto


# --- answers -------------------------------------------------------------------------


class MetadataService:
    """Builds and caches metadata answers for one archive."""

    def __init__(self, archive: Archive, cache_bytes: int = CACHE_BYTES) -> None:
        self.archive = archive
        self.answers = _LruBytes(cache_bytes)  # (base, scope, uids, digest[, gzip]) -> JSON array
        self.counters = _counters(archive)

    # --- index access --------------------------------------------------------------

    @staticmethod
    def _target(stmt, study: str, series_uid: str | None, sop: str | None):  # type: ignore[no-untyped-def]
        stmt = stmt.where(studies.c.study_instance_uid == study)
        if series_uid is not None:
            stmt = stmt.where(series.c.series_instance_uid == series_uid)
        if sop is not None:
            stmt = stmt.where(instances.c.sop_instance_uid == sop)
        return stmt

    def listed(self, scope: Scope, study: str, series_uid: str | None, sop: str | None) -> list[_Listed]:
        """The instances of the target, in primary-key order (cheap: no headers)."""
        stmt = (
            select(
                instances.c.pk,
                instances.c.sha256,
                studies.c.study_instance_uid,
                series.c.series_instance_uid,
                instances.c.sop_instance_uid,
            )
            .select_from(instances_with_parents())
            .order_by(instances.c.pk)
        )
        with self.archive.engine.connect() as conn:
            return [_Listed(*row) for row in conn.execute(self._target(stmt, study, series_uid, sop))]

    def _prepared(self, uids: tuple[str, ...]) -> dict[int, tuple[str, bytes]]:
        """pk -> (sha256, compressed JSON) of the target's prepared rows, in one query."""
        stmt = select(instance_json.c.instance_pk, instance_json.c.sha256, instance_json.c.data).select_from(
            instances_with_parents().join(instance_json, instance_json.c.instance_pk == instances.c.pk)
        )
        study, series_uid, sop = (*uids, None, None)[:3]
        with self.archive.engine.connect() as conn:
            return {pk: (sha, data) for pk, sha, data in conn.execute(self._target(stmt, study, series_uid, sop))}

    def _headers(self, pks: Sequence[int]) -> dict[int, tuple[str, bytes | None]]:
        """pk -> (sha256, compressed header) for ``pks``."""
        found: dict[int, tuple[str, bytes | None]] = {}
        with self.archive.engine.connect() as conn:
            for start in range(0, len(pks), 500):
                chunk = list(pks[start : start + 500])
                stmt = select(instances.c.pk, instances.c.sha256, instances.c.metadata).where(
                    instances.c.pk.in_(chunk)
                )
                for pk, sha, blob in conn.execute(stmt):
                    found[pk] = (sha, bytes(blob) if blob is not None else None)
        return found

    # --- assembly ------------------------------------------------------------------

    def parts_of(self, uids: tuple[str, ...], listed: list[_Listed]) -> tuple[list[bytes], bool]:
        """Each instance's JSON in order; and whether they are exactly the listed versions.
        Instances without a prepared row for their object are converted now and
        their rows written (write-through)."""
        prepared = self._prepared(uids)
        out: dict[int, bytes] = {}
        missing = []
        for item in listed:
            row = prepared.get(item.pk)
            if row is not None and row[0] == item.sha256:
                out[item.pk] = zlib.decompress(row[1])
            else:
                missing.append(item)
        consistent = True
        if missing:
            headers = self._headers([item.pk for item in missing])
            made = []
            for item in missing:
                if item.pk not in headers:
                    consistent = False  # deleted meanwhile
                    continue
                sha, header = headers[item.pk]
                consistent &= sha == item.sha256
                self.counters.conversions.inc()
                out[item.pk] = instance_json_text(self.archive, item, header)
                made.append((item.pk, sha, zlib.compress(out[item.pk], 1)))
            try:
                self.archive.catalog.save_instance_json(made)
            except SQLAlchemyError as exc:  # the answer stands; the next request converts again
                log.warning("could not keep prepared metadata: %s", exc)
        return [out[item.pk] for item in listed if item.pk in out], consistent

    def answer(self, base: str, scope: Scope, uids: tuple[str, ...], listed: list[_Listed]) -> bytes:
        """The JSON array for the target, from the cache when nothing changed."""
        key = (base, scope, uids, _digest(listed))
        cached = self.answers.get(key)
        self.counters.answered.labels("cached" if cached is not None else "built").inc()
        if cached is not None:
            return cached
        parts, consistent = self.parts_of(uids, listed)
        body = b"[" + b",".join(parts) + b"]"
        # the request's root in front of every BulkDataURI path (JSON-escaped)
        root = json.dumps(base)[1:-1].encode("utf-8")
        body = body.replace(_BULK_PATH, b'"BulkDataURI":"' + root + b"/studies/")
        if consistent:
            self.answers.put(key, body)
        return body

    def gzipped(self, base: str, scope: Scope, uids: tuple[str, ...], listed: list[_Listed], body: bytes) -> bytes:
        key = (base, scope, uids, _digest(listed), "gzip")
        cached = self.answers.get(key)
        if cached is None:
            cached = gzip.compress(body, compresslevel=6, mtime=0)
            self.answers.put(key, cached)
        return cached


def _digest(listed: list[_Listed]) -> str:
    return hashlib.sha256("\n".join(f"{i.pk}:{i.sha256}" for i in listed).encode()).hexdigest()


def _parse(header: bytes) -> Dataset | None:
    try:
        return dcmread(BytesIO(header), force=True)
    except Exception:  # noqa: BLE001 - an unreadable header: read the object instead
        return None


def _omitted(ds: Dataset) -> list[tuple[int, str]] | None:
    """The (tag, VR) the header copy left out, from its trace; None when it has none."""
    creator = ds._dict.get(_TRACE_TAGS[0])
    trace = ds._dict.get(_TRACE_TAGS[1])
    if creator is None or trace is None:
        return _inferred_omissions(ds)
    name = creator.value.decode("ascii", "replace") if isinstance(creator.value, bytes) else str(creator.value)
    if name.strip(" \x00") != OMITTED_CREATOR:
        return _inferred_omissions(ds)
    text = trace.value.decode("ascii", "replace") if isinstance(trace.value, bytes) else str(trace.value)
    found = []
    for record in text.split():
        tag_hex, _sep, rest = record.partition(":")
        vr = rest.partition(":")[0]
        try:
            tag = int(tag_hex, 16)
        except ValueError:
            continue
        found.append((tag, vr if len(vr) == 2 else _implicit_vr(tag)))
    return found


def _implicit_vr(tag: int) -> str:
    """The VR of an implicit VR element left out of the header (PS3.5 A.1: Pixel Data is OW)."""
    if tag == PIXEL_DATA:
        return "OW"
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return "UN"
    if len(vr) == 2:
        return vr
    return "OW" if "OW" in vr else vr[:2]


def _inferred_omissions(ds: Dataset) -> list[tuple[int, str]]:
    """Headers without a trace (stored before it existed, or read from the object):
    Pixel Data is assumed where the Image Pixel module is, and an Encapsulated
    Document where the SOP Class has one."""
    found = []
    if "Rows" in ds and "Columns" in ds and not ({0x7FE00008, 0x7FE00009, PIXEL_DATA} & set(ds._dict)):
        bits = ds.get("BitsAllocated", 16)
        found.append((PIXEL_DATA, "OW" if isinstance(bits, int) and bits > 8 else "OB"))
    if str(ds.get("SOPClassUID", "")).startswith("1.2.840.10008.5.1.4.1.1.104.") and _ENCAPSULATED_DOCUMENT not in ds:
        found.append((_ENCAPSULATED_DOCUMENT, "OB"))
    return found


# --- HTTP ------------------------------------------------------------------------------


def dicomweb_base(request: Request, archive: Archive) -> str:
    """The DICOMweb root as the client reached it (for BulkDataURI and RetrieveURL)."""
    return str(request.base_url).rstrip("/") + "/" + archive.settings.dicomweb_root.strip("/")


_OFFERED = {"json": json_accepted, "xml": xml_accepted}


def _respond(
    service: MetadataService, request: Request, scope: Scope, study: str, series_uid: str | None = None, sop: str | None = None
) -> Response:
    accept = request.query_params.get("accept") or request.headers.get("accept")
    representation = choose(accept, _OFFERED)
    if representation is None:
        raise DicomWebError(
            406, "metadata is available as application/dicom+json or multipart/related; type=\"application/dicom+xml\""
        )
    authorise_study(service.archive, request, "view", study)  # 403 before anything is looked up
    listed = service.listed(scope, study, series_uid, sop)
    if not listed:
        raise DicomWebError(404, f"no such {scope.value} in this archive")
    base = dicomweb_base(request, service.archive)
    uids = tuple(u for u in (study, series_uid, sop) if u is not None)
    body = service.answer(base, scope, uids, listed)
    if representation == "xml":
        return _xml_response(json.loads(body))
    headers = {"Vary": "Accept, Accept-Encoding"}
    if "gzip" in request.headers.get("accept-encoding", "") and len(body) > 1024:
        headers["Content-Encoding"] = "gzip"
        return Response(service.gzipped(base, scope, uids, listed, body), media_type=DICOM_JSON, headers=headers)
    return Response(body, media_type=DICOM_JSON, headers=headers)


def _xml_response(datasets: list[dict[str, Any]]) -> StreamingResponse:
    boundary = uuid.uuid4().hex

    def documents() -> Iterator[bytes]:
        for dataset in datasets:
            yield xml_document(dataset)

    media_type = f'multipart/related; type="{DICOM_XML}"; boundary={boundary}'
    return StreamingResponse(multipart_parts(documents(), boundary, DICOM_XML), media_type=media_type)


def create_router(archive: Archive) -> APIRouter:
    service = MetadataService(archive)
    router = APIRouter()
    router.metadata_service = service  # type: ignore[attr-defined]  # tests and benchmarks look at it

    @router.get("/studies/{study}/metadata", tags=["WADO-RS"])
    def study_metadata(study: str, request: Request) -> Response:
        """Metadata of every instance of a study (PS3.18 10.4.1.1.2)."""
        return _respond(service, request, Scope.STUDY, study)

    @router.get("/studies/{study}/series/{series_uid}/metadata", tags=["WADO-RS"])
    def series_metadata(study: str, series_uid: str, request: Request) -> Response:
        """Metadata of every instance of a series (PS3.18 10.4.1.1.2)."""
        return _respond(service, request, Scope.SERIES, study, series_uid)

    @router.get("/studies/{study}/series/{series_uid}/instances/{sop}/metadata", tags=["WADO-RS"])
    def instance_metadata(study: str, series_uid: str, sop: str, request: Request) -> Response:
        """Metadata of one instance (PS3.18 10.4.1.1.2)."""
        return _respond(service, request, Scope.INSTANCE, study, series_uid, sop)

    return router
