"""WADO-RS retrieve (PS3.18 10.4): instances, frames and bulk data.

- Study, series and instance resources answer ``multipart/related;
  type="application/dicom"`` (10.4.1.1.1), streamed file by file from the
  blob store, each part in the stored transfer syntax unless the Accept value
  asks for another one (8.7.3.5).
- Frames (10.4.1.1.6) answer the stored fragments of each frame as they are
  when the stored syntax is acceptable, else decoded (and re-encoded).
- Bulk data (10.4.1.1.3) is any top-level element of an instance, Pixel Data
  included, at ``.../instances/{sop}/bulk/{tag}``; Range requests are honoured
  on its bytes (RFC 9110 14).

Rendered and thumbnail resources live in rendered.py.

Access (guard.py): the objects themselves (``application/dicom``, zip) need
the download right, frames and bulk data the view right; a refused study is 403.
"""

from __future__ import annotations

import io
import logging
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from ...core.archive import Archive
from ...core.ingest import is_valid_uid
from ...core.transcode import (
    TranscodeError,
    can_decode,
    can_encode,
    encode_frame,
    transcode,
)
from ...index.catalog import StoredInstance
from ...index.retrieval import RetrieveRequest
from . import multipart
from .accept import (
    BULK_MEDIA_TYPE,
    DEFAULT_TRANSFER_SYNTAX,
    DICOM,
    LOSSY_TRANSFER_SYNTAXES,
    OCTET_STREAM,
    VIDEO_TRANSFER_SYNTAXES,
    Acceptable,
    AcceptError,
    acceptable_from_request,
    describe,
)
from .errors import DicomWebError
from .frames import PIXEL_DATA, FrameError, StoredObject, open_stored, parse_frame_list
from .guard import authorise_study

log = logging.getLogger(__name__)

INSTANCE = "/studies/{study}/series/{series}/instances/{sop}"
ZIP = "application/zip"
# PS3.18 8.7.3: these two transfer syntaxes shall not be used with Web Services.
NOT_ON_THE_WEB = frozenset({ImplicitVRLittleEndian, ExplicitVRBigEndian})


# --- looking up ------------------------------------------------------------------------


def check_uid(value: str, name: str) -> str:
    if not is_valid_uid(value):
        raise DicomWebError(400, f"{name} is not a valid UID")
    return value


def resolve(archive: Archive, study: str, series: str | None = None, sop: str | None = None) -> list[StoredInstance]:
    """The stored instances of a study, series or instance resource (404 when none).

    A series or instance that exists under another study is not found here.
    """
    check_uid(study, "the Study Instance UID")
    if series is not None:
        check_uid(series, "the Series Instance UID")
    if sop is not None:
        check_uid(sop, "the SOP Instance UID")
    level = "IMAGE" if sop else "SERIES" if series else "STUDY"
    request = RetrieveRequest(
        level=level,
        study_uids=(study,),
        series_uids=(series,) if series else (),
        sop_uids=(sop,) if sop else (),
    )
    found = archive.find_instances(request)
    if not found:
        what = {"STUDY": "study", "SERIES": "series in this study", "IMAGE": "instance in this series and study"}
        raise DicomWebError(404, f"no {what[level]} with this UID is stored")
    return found


def resolve_for(
    archive: Archive, request: Request, action: str, study: str, series: str | None = None, sop: str | None = None
) -> list[StoredInstance]:
    """:func:`resolve` after the gate allowed ``action`` on the study (guard.py):
    a refused study is 403 whether it exists or not; 404 only inside an allowed one."""
    check_uid(study, "the Study Instance UID")
    if series is not None:
        check_uid(series, "the Series Instance UID")
    if sop is not None:
        check_uid(sop, "the SOP Instance UID")
    authorise_study(archive, request, action, study)
    return resolve(archive, study, series, sop)


@contextmanager
def opened(archive: Archive, stored: StoredInstance) -> Iterator[BinaryIO]:
    """The stored bytes of ``stored``; a vanished blob is a 404, not a traceback."""
    try:
        stream = archive.open_instance(stored)
    except FileNotFoundError:
        log.error("stored object of instance pk=%s is missing", stored.pk)
        raise DicomWebError(404, "the instance's stored data is missing") from None
    with stream:
        yield stream


def open_object(stream: BinaryIO) -> StoredObject:
    try:
        return open_stored(stream)
    except FrameError as exc:
        raise DicomWebError(500, str(exc)) from None


def acceptable_or_400(request: Request) -> list[Acceptable]:
    try:
        return acceptable_from_request(request)
    except AcceptError as exc:
        raise DicomWebError(400, f"invalid Accept value: {exc}") from None


def not_acceptable(entries: Iterable[Acceptable], what: str) -> DicomWebError:
    return DicomWebError(406, f"none of the acceptable media types ({describe(entries)}) can be given for {what}")


# --- instances -------------------------------------------------------------------------


def instance_target(stored_syntax: str, requested: str | None) -> str | None:
    """The transfer syntax to send a stored instance in; None: as stored (PS3.18 8.7.3.5).

    No transfer syntax asked means Explicit VR Little Endian, except for objects
    the archive holds only in lossy form, or cannot decode: those go as stored.
    """
    if requested == "*" or requested == stored_syntax:
        return None
    if requested is None:
        if stored_syntax == ExplicitVRLittleEndian or stored_syntax in LOSSY_TRANSFER_SYNTAXES:
            return None
        return ExplicitVRLittleEndian if can_decode(stored_syntax) else None
    return requested


def _instance_entry(entries: list[Acceptable], instances: list[StoredInstance]) -> Acceptable | None:
    """The first acceptable entry every instance can be sent in."""
    for entry in entries:
        if not entry.matches(DICOM):
            continue
        if entry.multipart is False and len(instances) > 1:
            continue
        syntax = entry.transfer_syntax
        if syntax in NOT_ON_THE_WEB:
            continue
        if syntax not in (None, "*") and not can_encode(syntax):
            if not all(s.transfer_syntax_uid == syntax for s in instances):
                continue
        if syntax not in (None, "*") and not all(
            s.transfer_syntax_uid == syntax or can_decode(s.transfer_syntax_uid) for s in instances
        ):
            continue
        return entry
    return None


def _dicom_part(archive: Archive, stored: StoredInstance, requested: str | None) -> multipart.Part:
    target = instance_target(stored.transfer_syntax_uid, requested)
    if target is None:
        def stored_bytes() -> Iterator[bytes]:  # the size the index knows, which the message length counts
            with opened(archive, stored) as stream:
                yield from multipart.file_chunks(stream, 0, stored.size)

        return multipart.Part(multipart.part_content_type(DICOM, stored.transfer_syntax_uid), stored_bytes())
    data = transcoded(archive, stored, target)
    return multipart.Part(multipart.part_content_type(DICOM, target), [data])


def transcoded(archive: Archive, stored: StoredInstance, target: str) -> bytes:
    with opened(archive, stored) as stream:
        return transcode(stream, target)


def _instances_parts(
    archive: Archive, instances: list[StoredInstance], requested: str | None, first: multipart.Part | None
) -> Iterator[multipart.Part]:
    sent = archive.metrics.retrieved.labels("sent")
    for number, stored in enumerate(instances):
        if number == 0 and first is not None:
            part = first
        else:
            try:
                part = _dicom_part(archive, stored, requested)
            except (TranscodeError, DicomWebError) as exc:
                # the answer has begun: leave this instance out and say why in the log
                log.warning("retrieve: instance pk=%s left out: %s", stored.pk, exc)
                archive.metrics.retrieved.labels("failed").inc()
                continue
        sent.inc()
        archive.metrics.retrieved_bytes.inc(stored.size)
        yield part


class _Sink(io.RawIOBase):
    """Where zipfile writes: collects the bytes for the streaming body."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.position = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[no-untyped-def,override]
        self.chunks.append(bytes(data))
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def drain(self) -> Iterator[bytes]:
        chunks, self.chunks = self.chunks, []
        yield from chunks


def zip_chunks(archive: Archive, instances: list[StoredInstance]) -> Iterator[bytes]:
    """The stored instances as a ZIP file (PS3.18 8.7.3.4 application/zip), streamed."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive_zip:
        for stored in instances:
            name = f"{stored.study_instance_uid}/{stored.series_instance_uid}/{stored.sop_instance_uid}.dcm"
            try:
                with opened(archive, stored) as stream, archive_zip.open(name, "w", force_zip64=stored.size > 1 << 31) as entry:
                    for chunk in multipart.file_chunks(stream):
                        entry.write(chunk)
                        yield from sink.drain()
            except DicomWebError as exc:
                log.warning("retrieve: instance pk=%s left out of the zip: %s", stored.pk, exc)
            yield from sink.drain()
    yield from sink.drain()


def _wants_zip(entries: list[Acceptable]) -> bool:
    """Whether application/zip is asked before anything DICOM (PS3.18 Table 8.7.3-2)."""
    for entry in entries:
        if entry.media_type == ZIP and not entry.multipart:
            return True
        if entry.matches(DICOM):
            return False
    return False


def retrieve_instances(archive: Archive, request: Request, instances: list[StoredInstance], what: str) -> Response:
    """Answer a study, series or instance retrieve (PS3.18 10.4.1.1.1)."""
    entries = acceptable_or_400(request)
    if _wants_zip(entries):
        return StreamingResponse(zip_chunks(archive, instances), media_type=ZIP)
    remaining = list(entries)
    while True:
        entry = _instance_entry(remaining, instances)
        if entry is None:
            raise not_acceptable(entries, what)
        remaining = remaining[remaining.index(entry) + 1 :]
        try:  # the first part is made before answering, so its failure is a 406
            first = _dicom_part(archive, instances[0], entry.transfer_syntax)
        except TranscodeError as exc:
            log.info("retrieve: %s", exc)
            if not remaining:
                raise DicomWebError(406, f"cannot be given in the asked transfer syntax: {exc}") from None
            continue
        break
    if entry.multipart is False:  # one instance, single part (PS3.18 8.7.3.2)
        return StreamingResponse(iter(first.body), media_type=first.content_type)
    boundary = multipart.new_boundary()
    parts = _instances_parts(archive, instances, entry.transfer_syntax, first)
    headers = {}
    if all(instance_target(i.transfer_syntax_uid, entry.transfer_syntax) is None for i in instances):
        # all as stored: the length is known, and a Content-Length spares the chunked framing
        sizes = ((multipart.part_content_type(DICOM, i.transfer_syntax_uid), i.size) for i in instances)
        headers["Content-Length"] = str(multipart.message_length(sizes, boundary))
    return StreamingResponse(
        multipart.write_parts(parts, boundary), media_type=multipart.content_type(DICOM, boundary), headers=headers
    )


# --- frames ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FramePlan:
    """How frames go out: media type, transfer syntax and how each is produced."""

    media_type: str
    transfer_syntax: str
    mode: str  # "stored": as stored; "encode": decoded, then encoded in transfer_syntax
    multipart: bool


def plan_frames(entries: list[Acceptable], obj: StoredObject, count: int) -> FramePlan | None:
    """The first acceptable representation of ``count`` frames of ``obj`` (PS3.18 8.7.3.3)."""
    stored = obj.transfer_syntax
    native = not obj.encapsulated
    stored_media = OCTET_STREAM if native else BULK_MEDIA_TYPE.get(stored)
    stored_syntax = ExplicitVRLittleEndian if native else stored
    decodable = native or can_decode(stored)
    for entry in entries:
        if entry.multipart is False and count > 1:
            continue
        as_multipart = entry.multipart is not False
        asked = entry.transfer_syntax

        def plan(media: str, syntax: str, mode: str) -> FramePlan:
            return FramePlan(media, syntax, mode, as_multipart)  # noqa: B023

        wildcard = "*" in entry.media_type
        if entry.media_type == OCTET_STREAM or (wildcard and asked in (None, ExplicitVRLittleEndian)):
            if asked == "*" and stored_media:
                return plan(stored_media, stored_syntax, "stored")
            if asked in (None, "*", ExplicitVRLittleEndian):
                if native:
                    return plan(OCTET_STREAM, ExplicitVRLittleEndian, "stored")
                # PS3.18 8.7.3.3: a lossy original may go as stored when no syntax is asked
                if wildcard and asked is None and stored in LOSSY_TRANSFER_SYNTAXES and stored_media:
                    return plan(stored_media, stored_syntax, "stored")
                if decodable:
                    return plan(OCTET_STREAM, ExplicitVRLittleEndian, "encode")
            continue
        if asked == "*" or (asked is None and wildcard):
            if stored_media and entry.matches(stored_media):
                return plan(stored_media, stored_syntax, "stored")
            default = DEFAULT_TRANSFER_SYNTAX.get(entry.media_type)
            if default and decodable and can_encode(default):
                return plan(entry.media_type, default, "encode")
            continue
        syntax = asked or DEFAULT_TRANSFER_SYNTAX.get(entry.media_type)
        if asked is None and stored_media and entry.media_type == stored_media:
            return plan(stored_media, stored_syntax, "stored")  # e.g. image/jpeg for a baseline JPEG
        if syntax is None:
            continue
        media = BULK_MEDIA_TYPE.get(syntax, OCTET_STREAM if syntax == ExplicitVRLittleEndian else None)
        if media is None or not entry.matches(media):
            continue
        if syntax == stored_syntax:
            return plan(media, syntax, "stored")
        if decodable and can_encode(syntax):
            return plan(media, syntax, "encode")
    return None


def frame_producer(obj: StoredObject, plan: FramePlan) -> Callable[[int], list[bytes]]:
    """A function giving frame ``index`` (0-based) as a list of chunks."""

    def produce(index: int) -> list[bytes]:
        if plan.mode == "stored":
            return [obj.native_frame(index)] if not obj.encapsulated else list(obj.frame_chunks(index))
        frame, description = obj.decode_frame(index)
        return [encode_frame(frame, description, plan.transfer_syntax)]

    return produce


def frames_response(
    obj: StoredObject, stream_owner: Callable[[], Iterator[BinaryIO]] | None, plan: FramePlan, indices: list[int]
) -> Response:
    produce = frame_producer(obj, plan)
    content_type = multipart.part_content_type(plan.media_type, plan.transfer_syntax)
    try:
        first = produce(indices[0])  # a failure is still an HTTP error
    except (FrameError, TranscodeError) as exc:
        raise DicomWebError(406, f"the frame cannot be given as {plan.media_type}: {exc}") from None
    if not plan.multipart:
        return Response(b"".join(first), media_type=content_type)

    def parts() -> Iterator[multipart.Part]:
        owner = stream_owner() if stream_owner else None
        try:
            if owner is not None:
                next(owner)
            for number, index in enumerate(indices):
                chunks = first if number == 0 else produce(index)
                yield multipart.Part(content_type, chunks)
        finally:
            if owner is not None:
                owner.close()

    boundary = multipart.new_boundary()
    return StreamingResponse(
        multipart.write_parts(parts(), boundary),
        media_type=multipart.content_type(plan.media_type, boundary),
    )


def owned(stream: BinaryIO) -> Callable[[], Iterator[BinaryIO]]:
    """Hand the open stream's lifetime to the streaming body."""

    def owner() -> Iterator[BinaryIO]:
        with stream:
            yield stream

    return owner


# --- bulk data ----------------------------------------------------------------------------

_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


def parse_range(header: str | None, length: int) -> tuple[int, int] | None:
    """A single byte range ``(start, end_exclusive)`` (RFC 9110 14.1.2), or None to
    send everything. Several ranges, or a malformed value, are ignored (14.2)."""
    if not header:
        return None
    match = _RANGE.match(header)
    if not match or not any(match.groups()):
        return None
    first, last = match.groups()
    if first:
        start = int(first)
        end = min(int(last) + 1, length) if last else length
        if last and int(last) < start:
            return None  # invalid: ignored
    else:  # suffix range: the last N bytes
        suffix = int(last)
        if suffix == 0:
            raise DicomWebError(416, "the range is empty", headers={"Content-Range": f"bytes */{length}"})
        start, end = max(0, length - suffix), length
    if start >= length:
        raise DicomWebError(
            416, f"the range starts beyond the {length} bytes of the value", headers={"Content-Range": f"bytes */{length}"}
        )
    return start, end


def parse_tag(text: str) -> int:
    if not re.fullmatch(r"[0-9A-Fa-f]{8}", text):
        raise DicomWebError(400, "a bulk data tag is 8 hexadecimal digits (e.g. 7FE00010)")
    return int(text, 16)


def _bulk_media(entries: list[Acceptable], extra: str | None) -> tuple[str, bool] | None:
    """(media type, multipart) for a value sent as bytes: octet-stream, or the
    document's own media type (e.g. application/pdf) when that is asked."""
    for entry in entries:
        if entry.transfer_syntax not in (None, "*", ExplicitVRLittleEndian):
            continue
        if extra and entry.media_type == extra:
            return extra, entry.multipart is True
        if entry.matches(OCTET_STREAM):
            return OCTET_STREAM, entry.multipart is not False
    return None


def value_response(
    request: Request, obj: StoredObject, location, owner, media_type: str, as_multipart: bool
) -> Response:
    """The bytes of one element's value, with Range support."""
    length = location.length
    byte_range = parse_range(request.headers.get("range"), length)
    start, end = byte_range or (0, length)
    headers = {"Accept-Ranges": "bytes"}
    status = 200
    if byte_range is not None:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{length}"

    def chunks() -> Iterator[bytes]:
        handle = owner()
        next(handle)
        try:
            yield from obj.element_chunks(location, start, end)
        finally:
            handle.close()

    if not as_multipart:
        headers["Content-Length"] = str(end - start)
        return StreamingResponse(chunks(), status_code=status, media_type=media_type, headers=headers)
    boundary = multipart.new_boundary()
    parts = [multipart.Part(media_type, chunks())]
    return StreamingResponse(
        multipart.write_parts(parts, boundary),
        status_code=status,
        media_type=multipart.content_type(media_type, boundary),
        headers=headers,
    )


def retrieve_bulk(archive: Archive, request: Request, stored: StoredInstance, tag: int) -> Response:
    entries = acceptable_or_400(request)
    stream = open_stream(archive, stored)
    try:
        obj = open_object(stream)
        location = obj.locate(tag)
        if tag == PIXEL_DATA and obj.pixel_data is not None:
            response = _pixel_bulk(request, obj, entries, stream)
            if response is not None:
                if isinstance(response, StreamingResponse):
                    stream = None  # the response's body closes it
                return response
            raise not_acceptable(entries, "this pixel data")
        if location is None or location.length is None:
            value = obj.dataset.get(tag)
            if value is None or not isinstance(value.value, bytes):
                raise DicomWebError(404, f"the instance has no bulk data element ({tag >> 16:04X},{tag & 0xFFFF:04X})")
            choice = _bulk_media(entries, None)
            if choice is None:
                raise not_acceptable(entries, "this bulk data")
            return _bytes_response(value.value, *choice)
        document_type = None
        if tag == 0x00420011:  # Encapsulated Document: its own media type may be asked
            document_type = str(obj.dataset.get("MIMETypeOfEncapsulatedDocument", "") or "") or None
        choice = _bulk_media(entries, document_type)
        if choice is None:
            raise not_acceptable(entries, "this bulk data")
        response = value_response(request, obj, location, owned(stream), *choice)
        stream = None
        return response
    finally:
        if stream is not None:
            stream.close()


def _bytes_response(data: bytes, media_type: str, as_multipart: bool) -> Response:
    if not as_multipart:
        return Response(data, media_type=media_type, headers={"Accept-Ranges": "none"})
    boundary = multipart.new_boundary()
    body = b"".join(multipart.write_parts([multipart.Part(media_type, [data])], boundary))
    return Response(body, media_type=multipart.content_type(media_type, boundary))


def _pixel_bulk(request: Request, obj: StoredObject, entries: list[Acceptable], stream: BinaryIO) -> Response | None:
    """Pixel Data as bulk data: native bytes (Range allowed when stored so), or
    one part per frame in a compressed media type."""
    location = obj.pixel_data
    assert location is not None
    stored_le = not obj.encapsulated and obj.transfer_syntax != ExplicitVRBigEndian
    if obj.transfer_syntax in VIDEO_TRANSFER_SYNTAXES:
        for entry in entries:
            media = BULK_MEDIA_TYPE[obj.transfer_syntax]
            if entry.matches(media) or entry.matches(OCTET_STREAM) and entry.transfer_syntax == "*":
                return _video_stream(obj, stream, media, obj.transfer_syntax, entry.multipart is not False)
        return None
    count = obj.number_of_frames
    plan = plan_frames(entries, obj, 1)  # native: all frames in one value
    if plan is None:
        return None
    if plan.media_type != OCTET_STREAM and count > 1 and not plan.multipart:
        plan = FramePlan(plan.media_type, plan.transfer_syntax, plan.mode, True)  # a part per frame
    if plan.mode == "stored" and plan.media_type == OCTET_STREAM and stored_le:
        return value_response(request, obj, location, owned(stream), OCTET_STREAM, plan.multipart)
    if plan.media_type == OCTET_STREAM:
        # all frames in one part, decoded one at a time
        produce = frame_producer(obj, plan)
        content_type = multipart.part_content_type(OCTET_STREAM, ExplicitVRLittleEndian)

        def native() -> Iterator[bytes]:
            with stream:
                for index in range(count):
                    yield from produce(index)

        if not plan.multipart:
            return StreamingResponse(native(), media_type=content_type)
        boundary = multipart.new_boundary()
        return StreamingResponse(
            multipart.write_parts([multipart.Part(content_type, native())], boundary),
            media_type=multipart.content_type(OCTET_STREAM, boundary),
        )
    return frames_response(obj, owned(stream), plan, list(range(count)))


def _video_stream(obj: StoredObject, stream: BinaryIO, media: str, syntax: str, as_multipart: bool) -> Response:
    def body() -> Iterator[bytes]:
        with stream:
            yield from obj.all_fragment_chunks()

    content_type = multipart.part_content_type(media, syntax)
    if not as_multipart:
        return StreamingResponse(body(), media_type=media)
    boundary = multipart.new_boundary()
    return StreamingResponse(
        multipart.write_parts([multipart.Part(content_type, body())], boundary),
        media_type=multipart.content_type(media, boundary),
    )


def open_stream(archive: Archive, stored: StoredInstance) -> BinaryIO:
    try:
        return archive.open_instance(stored)
    except FileNotFoundError:
        log.error("stored object of instance pk=%s is missing", stored.pk)
        raise DicomWebError(404, "the instance's stored data is missing") from None


# --- routes --------------------------------------------------------------------------------


def create_router(archive: Archive) -> APIRouter:
    router = APIRouter(tags=["WADO-RS"])

    @router.get("/studies/{study}", summary="Retrieve a study (PS3.18 10.4)")
    def retrieve_study(request: Request, study: str) -> Response:
        return retrieve_instances(archive, request, resolve_for(archive, request, "download", study), "this study")

    @router.get("/studies/{study}/series/{series}", summary="Retrieve a series (PS3.18 10.4)")
    def retrieve_series(request: Request, study: str, series: str) -> Response:
        return retrieve_instances(
            archive, request, resolve_for(archive, request, "download", study, series), "this series"
        )

    @router.get(INSTANCE, summary="Retrieve an instance (PS3.18 10.4)")
    def retrieve_instance(request: Request, study: str, series: str, sop: str) -> Response:
        return retrieve_instances(
            archive, request, resolve_for(archive, request, "download", study, series, sop), "this instance"
        )

    @router.get(INSTANCE + "/frames/{frame_list}", summary="Retrieve frames (PS3.18 10.4.1.1.6)")
    def retrieve_frames(request: Request, study: str, series: str, sop: str, frame_list: str) -> Response:
        stored = resolve_for(archive, request, "view", study, series, sop)[0]
        entries = acceptable_or_400(request)
        stream = open_stream(archive, stored)
        try:
            obj = open_object(stream)
            if obj.pixel_data is None:
                raise DicomWebError(400, "the instance has no pixel data, so no frames")
            if obj.transfer_syntax in VIDEO_TRANSFER_SYNTAXES:
                raise DicomWebError(
                    400, "a video's frames are not retrievable one by one; retrieve its bulk data or rendered form"
                )
            try:
                indices = parse_frame_list(frame_list, obj.number_of_frames)
            except IndexError as exc:
                raise DicomWebError(404, str(exc)) from None
            except ValueError as exc:
                raise DicomWebError(400, str(exc)) from None
            plan = plan_frames(entries, obj, len(indices))
            if plan is None:
                raise not_acceptable(entries, "these frames")
            response = frames_response(obj, owned(stream), plan, indices)
            if isinstance(response, StreamingResponse):
                stream = None  # closed by the body when done
            return response
        finally:
            if stream is not None:
                stream.close()

    @router.get(INSTANCE + "/bulk/{tag}", summary="Retrieve bulk data (PS3.18 10.4.1.1.3)")
    def retrieve_bulkdata(request: Request, study: str, series: str, sop: str, tag: str) -> Response:
        number = parse_tag(tag)
        stored = resolve_for(archive, request, "view", study, series, sop)[0]
        return retrieve_bulk(archive, request, stored, number)

    from . import rendered

    router.include_router(rendered.create_router(archive))
    return router
