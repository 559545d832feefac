"""WADO-URI (PS3.18 section 9): ``GET /wado?requestType=WADO&...`` for older EPRs.

One instance per request, named by ``studyUID``, ``seriesUID`` and
``objectUID``; ``contentType`` picks the answer: ``application/dicom``
(9.4; with ``transferSyntax``), a rendered image (9.5; ``image/jpeg``,
``image/png``, ``image/gif`` with ``frameNumber``, ``rows``, ``columns``,
``region``, ``windowCenter``/``windowWidth``, ``imageQuality``), or an
object's own document or video type (``application/pdf``, ``video/mp4``).
Mounted at the application root, not under the DICOMweb root.

Access (guard.py): ``application/dicom`` (the object itself) needs the
download right, a rendered image or document the view right; the study is
authorised (and audited) before anything is looked up, a refusal is 403.
"""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from ...core.archive import Archive
from ...core.transcode import TranscodeError, can_decode, can_encode
from .accept import (
    DICOM,
    Acceptable,
    AcceptError,
    media_type_matches,
    parse_media_range,
)
from .errors import DicomWebError
from .guard import authorise_study
from .multipart import file_chunks, part_content_type
from .rendered import (
    IMAGE_TYPES,
    RenderParams,
    Viewport,
    Window,
    natural_kind,
    parse_quality,
    rendered_instance,
)
from .wado import (
    NOT_ON_THE_WEB,
    check_uid,
    instance_target,
    open_object,
    open_stream,
    resolve,
    transcoded,
)

# Parameters of the rendered form only (PS3.18 Table 9.5.1-1): not with application/dicom.
_RENDER_ONLY = ("frameNumber", "rows", "columns", "region", "windowCenter", "windowWidth", "imageQuality", "annotation")


def _param(request: Request, name: str) -> str | None:
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise DicomWebError(400, f"{name} is given more than once")
    return values[0].strip() if values else None


def _content_types(text: str | None) -> list[str]:
    """contentType: one or more media types, most preferred first (9.3.2.1)."""
    if not text:
        return []
    try:
        found = [parse_media_range(piece) for piece in text.split(",")]
    except AcceptError as exc:
        raise DicomWebError(400, f"contentType: {exc}") from None
    return [f.media_type for f in sorted((f for f in found if f), key=lambda f: -f.q)]


def _positive_int(text: str, name: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise DicomWebError(400, f"{name} must be a positive integer")
    return int(text)


def _render_params(request: Request) -> tuple[RenderParams, int | None]:
    center, width = _param(request, "windowCenter"), _param(request, "windowWidth")
    if (center is None) != (width is None):
        raise DicomWebError(400, "windowCenter and windowWidth go together")
    window = None
    if center is not None and width is not None:
        try:
            window = Window(float(center), float(width), "LINEAR")
        except ValueError:
            raise DicomWebError(400, "windowCenter and windowWidth must be numbers") from None
        if window.width < 1:
            raise DicomWebError(400, "windowWidth must be at least 1")
    rows, columns = _param(request, "rows"), _param(request, "columns")
    viewport = None
    if rows or columns:
        viewport = Viewport(
            _positive_int(columns, "columns") if columns else None, _positive_int(rows, "rows") if rows else None
        )
    region = None
    if (text := _param(request, "region")) is not None:
        try:
            values = tuple(float(v) for v in text.split(","))
        except ValueError:
            raise DicomWebError(400, "region is xmin,ymin,xmax,ymax between 0.0 and 1.0") from None
        if len(values) != 4 or not all(0.0 <= v <= 1.0 for v in values) or values[0] >= values[2] or values[1] >= values[3]:
            raise DicomWebError(400, "region is xmin,ymin,xmax,ymax between 0.0 and 1.0, min below max")
        region = values  # type: ignore[assignment]
    quality_text = _param(request, "imageQuality")
    quality = parse_quality(quality_text) if quality_text else None
    frame_text = _param(request, "frameNumber")
    frame = _positive_int(frame_text, "frameNumber") if frame_text else None
    return RenderParams(window=window, viewport=viewport, quality=quality, region=region), frame  # type: ignore[arg-type]


def create_router(archive: Archive) -> APIRouter:
    router = APIRouter(tags=["WADO-URI"])

    @router.get("/wado", summary="WADO-URI (PS3.18 9)")
    def wado(request: Request) -> Response:
        if _param(request, "requestType") != "WADO":
            raise DicomWebError(400, "requestType=WADO is required")
        study, series, sop = (_param(request, name) for name in ("studyUID", "seriesUID", "objectUID"))
        for value, name in ((study, "studyUID"), (series, "seriesUID"), (sop, "objectUID")):
            if not value:
                raise DicomWebError(400, f"{name} is required")
            check_uid(value, name)
        anonymize = _param(request, "anonymize")
        if anonymize and anonymize.lower() != "no":
            raise DicomWebError(400, "anonymize=yes is not supported by this archive")
        wanted = _content_types(_param(request, "contentType"))
        syntax = _param(request, "transferSyntax")
        as_dicom = bool(wanted and wanted[0] == DICOM or (not wanted and syntax))
        authorise_study(archive, request, "download" if as_dicom else "view", study)  # type: ignore[arg-type]
        stored = resolve(archive, study, series, sop)[0]  # type: ignore[arg-type]

        if as_dicom:
            present = [name for name in _RENDER_ONLY if _param(request, name) is not None]
            if present:
                raise DicomWebError(400, f"{', '.join(present)} cannot be used with contentType=application/dicom")
            return _dicom(archive, stored, syntax)
        if syntax:
            raise DicomWebError(400, "transferSyntax goes only with contentType=application/dicom")
        params, frame = _render_params(request)
        stream = open_stream(archive, stored)
        with stream:
            obj = open_object(stream)
            kind = natural_kind(obj)
            if frame is not None and (kind != "image" or frame > obj.number_of_frames):
                raise DicomWebError(400, f"frameNumber {frame} does not name a frame of this object")
        if kind == "other":
            if not wanted or DICOM in wanted:
                authorise_study(archive, request, "download", stored.study_instance_uid)
                return _dicom(archive, stored, None)  # no rendered form: the object itself
            raise DicomWebError(406, "this object has no rendered form; ask for contentType=application/dicom")
        if not wanted:
            wanted = ["image/jpeg"] if kind == "image" else ["*/*"]
        if kind == "image" and not any(_matches(w, list(IMAGE_TYPES)) for w in wanted):
            raise DicomWebError(406, f"contentType {', '.join(wanted)} is not available for an image")
        entries = [Acceptable(media_type, None, False) for media_type in wanted]
        return rendered_instance(
            archive, request, stored, None if frame is None else str(frame), entries=entries, params=params
        )

    return router


def _matches(pattern: str, offered: list[str]) -> bool:
    return any(media_type_matches(pattern, media) for media in offered)


def _dicom(archive: Archive, stored, syntax: str | None) -> Response:  # type: ignore[no-untyped-def]
    """The instance itself, single part (PS3.18 9.4)."""
    if syntax is not None:
        if syntax in NOT_ON_THE_WEB:
            raise DicomWebError(406, "Implicit VR Little Endian and Explicit VR Big Endian are not used on the web (PS3.18 8.7.3)")
        if syntax != stored.transfer_syntax_uid and not (can_decode(stored.transfer_syntax_uid) and can_encode(syntax)):
            raise DicomWebError(406, f"the instance cannot be given in transfer syntax {syntax[:64]}")
    target = instance_target(stored.transfer_syntax_uid, syntax)
    if target is None:
        def body() -> Iterator[bytes]:
            with open_stream(archive, stored) as stream:
                yield from file_chunks(stream)

        return StreamingResponse(
            body(),
            media_type=part_content_type(DICOM, stored.transfer_syntax_uid),
            headers={"Content-Length": str(stored.size)},
        )
    try:
        data = transcoded(archive, stored, target)
    except TranscodeError as exc:
        raise DicomWebError(406, f"the instance cannot be given in transfer syntax {target}: {exc}") from None
    return Response(data, media_type=part_content_type(DICOM, target))
