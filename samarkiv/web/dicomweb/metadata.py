"""WADO-RS metadata (PS3.18 10.4.1.1.2): study, series and instance metadata.

Answered from the header copies the archive keeps at store time (the
``instances.metadata`` column: each object without Pixel Data and without
other elements over 64 KiB), never from the stored objects themselves. What
the header left out is named in its trailing trace (core/structure.py) and
announced as a BulkDataURI, ``{base}/studies/{st}/series/{se}/instances/{sop}/bulk/{tag}``,
which the WADO-RS retrieve module serves. Top-level binary elements over
1 KiB become BulkDataURIs too; smaller ones and everything nested in
sequences stay inline.

Study and series answers are cached in memory, keyed on the (primary key,
SHA-256) list of their instances, which changes with every store, replacement
or deletion; each instance's JSON is cached on its own (primary key, SHA-256),
so a series that grows by one instance costs one conversion.

Exceptions (they read the stored object): objects stored with a deflated
transfer syntax, for which no header copy exists.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import threading
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from io import BytesIO
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from prometheus_client import Counter
from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from sqlalchemy import select

from ...core.archive import Archive
from ...core.structure import OMITTED_CREATOR, OMITTED_ELEMENT, OMITTED_GROUP, PIXEL_DATA
from ...index.schema import instances, series, studies
from .dicomjson import DICOM_JSON, DICOM_XML, choose, dataset_json, json_accepted, multipart_parts, xml_accepted, xml_document
from .errors import DicomWebError

log = logging.getLogger(__name__)

INLINE_BINARY_MAX = 1024  # top-level binary elements above this become BulkDataURIs
CACHE_BYTES = 256 << 20  # memory for cached metadata (instances and assembled answers)
_TRACE_TAGS = ((OMITTED_GROUP << 16) | 0x0010, (OMITTED_GROUP << 16) | OMITTED_ELEMENT)
# SOP Classes whose document lives in Encapsulated Document (0042,0011) (PS3.3 A.45)
_ENCAPSULATED_DOCUMENT = 0x00420011


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


class MetadataService:
    """Builds and caches metadata answers for one archive."""

    def __init__(self, archive: Archive, cache_bytes: int = CACHE_BYTES) -> None:
        self.archive = archive
        self.fragments = _LruBytes(cache_bytes // 2)  # (base, pk, sha256) -> instance JSON
        self.answers = _LruBytes(cache_bytes // 2)  # (base, scope, uids, digest[, gzip]) -> JSON array
        self.conversions, self.answered = _counters(archive)

    # --- index access --------------------------------------------------------------

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
            .select_from(instances.join(series, instances.c.series_pk == series.c.pk).join(
                studies, series.c.study_pk == studies.c.pk
            ))
            .where(studies.c.study_instance_uid == study)
            .order_by(instances.c.pk)
        )
        if series_uid is not None:
            stmt = stmt.where(series.c.series_instance_uid == series_uid)
        if sop is not None:
            stmt = stmt.where(instances.c.sop_instance_uid == sop)
        with self.archive.engine.connect() as conn:
            return [_Listed(*row) for row in conn.execute(stmt)]

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

    # --- conversion ----------------------------------------------------------------

    def instance_json(self, base: str, item: _Listed, header: bytes | None) -> dict[str, Any]:
        """The metadata of one instance in the DICOM JSON Model."""
        self.conversions.inc()
        prefix = f"{base}/studies/{item.study}/series/{item.series}/instances/{item.sop}/bulk/"

        def bulk(tag: int, vr: str, length: int) -> str | None:
            return f"{prefix}{tag:08X}" if length > INLINE_BINARY_MAX else None

        ds = _parse(header) if header is not None else None
        if ds is None:
            ds = self._read_stored(item.sop)
            omitted = _inferred_omissions(ds)
        else:
            omitted = _omitted(ds)
        out = dataset_json(ds, bulk=bulk, skip=_TRACE_TAGS)
        for tag, vr in omitted or []:
            out[f"{tag:08X}"] = {"vr": vr, "BulkDataURI": f"{prefix}{tag:08X}"}
        return dict(sorted(out.items()))

    def _read_stored(self, sop: str) -> Dataset:
        """The stored object's header, when no header copy was kept (deflated objects)."""
        stored = self.archive.catalog.instance(sop)
        if stored is None:
            raise DicomWebError(404, "the instance was deleted while its metadata was read")
        with self.archive.open_instance(stored) as f:
            return dcmread(f, stop_before_pixels=True)

    def fragment(self, base: str, item: _Listed, sha: str, header: bytes | None) -> bytes:
        key = (base, item.pk, sha)
        cached = self.fragments.get(key)
        if cached is None:
            raw = zlib.decompress(header) if header is not None else None
            cached = json.dumps(self.instance_json(base, item, raw), separators=(",", ":")).encode("utf-8")
            self.fragments.put(key, cached)
        return cached

    def fragments_of(self, base: str, listed: list[_Listed]) -> tuple[list[bytes], bool]:
        """Each instance's JSON in order; and whether they are exactly the listed versions."""
        out: dict[int, bytes] = {}
        missing = []
        for item in listed:
            cached = self.fragments.get((base, item.pk, item.sha256))
            if cached is not None:
                out[item.pk] = cached
            else:
                missing.append(item)
        consistent = True
        headers = self._headers([item.pk for item in missing]) if missing else {}
        for item in missing:
            if item.pk not in headers:
                consistent = False  # deleted meanwhile
                continue
            sha, header = headers[item.pk]
            consistent &= sha == item.sha256
            out[item.pk] = self.fragment(base, item, sha, header)
        return [out[item.pk] for item in listed if item.pk in out], consistent

    def answer(self, base: str, scope: Scope, uids: tuple[str, ...], listed: list[_Listed]) -> bytes:
        """The JSON array for the target, from the cache when nothing changed."""
        digest = hashlib.sha256("\n".join(f"{i.pk}:{i.sha256}" for i in listed).encode()).hexdigest()
        key = (base, scope, uids, digest)
        cached = self.answers.get(key)
        self.answered.labels("cached" if cached is not None else "built").inc()
        if cached is not None:
            return cached
        parts, consistent = self.fragments_of(base, listed)
        body = b"[" + b",".join(parts) + b"]"
        if consistent:
            self.answers.put(key, body)
        return body

    def gzipped(self, base: str, scope: Scope, uids: tuple[str, ...], listed: list[_Listed], body: bytes) -> bytes:
        digest = hashlib.sha256("\n".join(f"{i.pk}:{i.sha256}" for i in listed).encode()).hexdigest()
        key = (base, scope, uids, digest, "gzip")
        cached = self.answers.get(key)
        if cached is None:
            cached = gzip.compress(body, compresslevel=6, mtime=0)
            self.answers.put(key, cached)
        return cached


def _counters(archive: Archive) -> tuple[Counter, Counter]:
    """Metadata counters on the archive's /metrics registry (one set per registry)."""
    registry = archive.metrics.registry
    try:
        return (
            Counter("samarkiv_metadata_conversions", "Instance headers converted to DICOM JSON", registry=registry),
            Counter("samarkiv_metadata_answers", "Study/series/instance metadata answers", ["source"], registry=registry),
        )
    except ValueError:  # already registered (a second app on the same archive)
        return Counter("samarkiv_metadata_conversions", "", registry=None), Counter(
            "samarkiv_metadata_answers", "", ["source"], registry=None
        )


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
