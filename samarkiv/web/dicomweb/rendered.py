"""Rendered and thumbnail resources (PS3.18 10.4.1.1.4, 10.4.1.1.5; parameters 8.3.5).

An image frame goes through the grayscale or colour pipeline of PS3.4 N.2:
Modality LUT (rescale, also per frame in enhanced objects), VOI (the
``window`` parameter, else the object's window or VOI LUT, else the frame's
range; linear, linear exact or sigmoid, PS3.3 C.11.2.1.2), MONOCHROME1
inverted, palette and YBR converted to RGB. Then the source region and the
viewport (8.3.5.1.3) crop and scale it, and it is encoded as JPEG, PNG or GIF.

Objects that are not images render as what they are: a video as its stream
(remuxed into MP4 by ffmpeg when installed, so a browser plays it), an
Encapsulated PDF (or other document) as the document.
"""

from __future__ import annotations

import io
import logging
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi_lut,
    convert_color_space,
)

from ...core.archive import Archive
from ...index.catalog import StoredInstance
from . import multipart
from .accept import BULK_MEDIA_TYPE, VIDEO_TRANSFER_SYNTAXES, Acceptable, describe
from .errors import DicomWebError
from .frames import FrameError, StoredObject, open_stored, parse_frame_list
from .wado import (
    INSTANCE,
    acceptable_or_400,
    open_stream,
    owned,
    resolve_for,
    value_response,
)

log = logging.getLogger(__name__)

IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif")
_PIL_FORMAT = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF"}
DEFAULT_QUALITY = 90
THUMBNAIL_SIZE = 128
ENCAPSULATED_DOCUMENT = 0x00420011
_H264 = {f"1.2.840.10008.1.2.4.{n}" for n in range(102, 107)}
_HEVC = {"1.2.840.10008.1.2.4.107", "1.2.840.10008.1.2.4.108"}


# --- parameters ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """VOI window (PS3.18 8.3.5.1.4; PS3.3 C.11.2.1.2)."""

    center: float
    width: float
    function: str = "LINEAR"  # LINEAR, LINEAR_EXACT or SIGMOID


@dataclass(frozen=True)
class Viewport:
    """``vw,vh[,sx,sy,sw,sh]`` (PS3.18 8.3.5.1.3); None: not given."""

    width: int | None
    height: int | None
    sx: float | None = None
    sy: float | None = None
    sw: float | None = None
    sh: float | None = None


@dataclass(frozen=True)
class RenderParams:
    window: Window | None = None
    viewport: Viewport | None = None
    quality: int | None = None
    region: tuple[float, float, float, float] | None = None  # WADO-URI, normalised


def _number(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DicomWebError(400, f"{name} must be a number, not {text[:24]!r}") from None
    if not np.isfinite(value):
        raise DicomWebError(400, f"{name} must be a finite number")
    return value


def parse_window(text: str) -> Window:
    pieces = [p.strip() for p in text.split(",")]
    if len(pieces) not in (2, 3):
        raise DicomWebError(400, "window is center,width[,function]")
    center, width = _number(pieces[0], "the window center"), _number(pieces[1], "the window width")
    function = (pieces[2] if len(pieces) == 3 and pieces[2] else "linear").upper().replace("-", "_")
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        raise DicomWebError(400, "the window function is linear, linear-exact or sigmoid")
    if width <= 0 or (function == "LINEAR" and width < 1):
        raise DicomWebError(400, "the window width must be positive (at least 1 for linear)")
    return Window(center, width, function)


def _size(text: str, name: str) -> int | None:
    if text == "":
        return None
    value = _number(text, name)
    if value != int(value) or not 1 <= value <= 8192:
        raise DicomWebError(400, f"{name} must be a whole number of pixels from 1 to 8192")
    return int(value)


def parse_viewport(text: str) -> Viewport:
    pieces = [p.strip() for p in text.split(",")]
    if len(pieces) not in (2, 6):
        raise DicomWebError(400, "viewport is vw,vh or vw,vh,sx,sy,sw,sh")
    width, height = _size(pieces[0], "the viewport width"), _size(pieces[1], "the viewport height")
    if width is None and height is None:
        raise DicomWebError(400, "the viewport needs a width or a height")
    region = [None if p == "" else _number(p, "a viewport source value") for p in pieces[2:]]
    return Viewport(width, height, *region)


def parse_quality(text: str) -> int:
    value = _number(text, "quality")
    if value != int(value) or not 1 <= value <= 100:
        raise DicomWebError(400, "quality is a whole number from 1 to 100")
    return int(value)


def params_from_query(query) -> RenderParams:  # type: ignore[no-untyped-def]
    """The rendering query parameters of a WADO-RS request (PS3.18 Table 8.3.5-1)."""
    window = query.get("window")
    viewport = query.get("viewport")
    quality = query.get("quality")
    return RenderParams(
        window=parse_window(window) if window else None,
        viewport=parse_viewport(viewport) if viewport else None,
        quality=parse_quality(quality) if quality else None,
    )


# --- the pixel pipeline -------------------------------------------------------------------


def _functional(ds: Dataset, index: int, sequence: str) -> Dataset | None:
    """The first item of a functional group macro for frame ``index`` (PS3.3 C.7.6.16)."""
    for groups, position in (("PerFrameFunctionalGroupsSequence", index), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups)
        if items and position < len(items):
            macro = items[position].get(sequence)
            if macro:
                return macro[0]
    return None


def _first(value) -> float | None:  # type: ignore[no-untyped-def]
    if value is None or value == "":
        return None
    try:
        return float(value[0] if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else value)
    except (TypeError, ValueError, IndexError):
        return None


def modality_values(frame: np.ndarray, ds: Dataset, index: int) -> np.ndarray:
    """Stored values to modality values (PS3.3 C.11.1): Modality LUT or rescale."""
    if "ModalityLUTSequence" in ds:
        try:
            return apply_modality_lut(frame, ds).astype(np.float64)
        except (ValueError, KeyError, AttributeError, IndexError):
            pass
    source = _functional(ds, index, "PixelValueTransformationSequence") or ds
    slope = _first(source.get("RescaleSlope"))
    intercept = _first(source.get("RescaleIntercept"))
    values = frame.astype(np.float64)
    if slope is not None and slope != 0:
        values = values * slope
    if intercept:
        values = values + intercept
    return values


def dataset_window(ds: Dataset, index: int) -> Window | None:
    source = _functional(ds, index, "FrameVOILUTSequence") or ds
    center, width = _first(source.get("WindowCenter")), _first(source.get("WindowWidth"))
    if center is None or width is None or width <= 0:
        return None
    function = str(source.get("VOILUTFunction") or "LINEAR").upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID") or (function == "LINEAR" and width < 1):
        function = "LINEAR_EXACT"
    return Window(center, width, function)


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """Modality values to 0..1 (PS3.3 C.11.2.1.2.1, C.11.2.1.3.1, C.11.2.1.3.2)."""
    c, w = window.center, window.width
    if window.function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - c) / w))
    if window.function == "LINEAR_EXACT":
        return np.clip((values - c) / w + 0.5, 0.0, 1.0)
    return np.clip((values - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0) if w > 1 else (values > c - 0.5).astype(float)


def _voi_lut(frame: np.ndarray, ds: Dataset, index: int) -> np.ndarray | None:
    """The object's VOI LUT applied, as 0..1 (PS3.3 C.11.2.1.1), if it has one."""
    if "VOILUTSequence" not in ds:
        return None
    try:
        out = apply_voi_lut(frame, ds, index=0, prefer_lut=True).astype(np.float64)
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
    except (ValueError, KeyError, AttributeError, IndexError, TypeError):
        return None
    return np.clip(out / float((1 << bits) - 1), 0.0, 1.0)


def to_display(frame: np.ndarray, description: dict, ds: Dataset, index: int, window: Window | None) -> Image.Image:
    """A decoded frame as an 8-bit grayscale or RGB picture (PS3.4 N.2)."""
    interpretation = str(description.get("photometric_interpretation") or ds.get("PhotometricInterpretation", ""))
    samples = int(description.get("samples_per_pixel") or 1)
    if samples == 1 and interpretation == "PALETTE COLOR":
        try:
            rgb = apply_color_lut(frame, ds)
        except (ValueError, KeyError, AttributeError) as exc:
            raise FrameError(f"the palette cannot be applied: {exc}") from None
        if rgb.dtype != np.uint8 and rgb.size and rgb.max() > 255:
            rgb = rgb.astype(np.float64) / 257.0  # 16-bit palette entries
        return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    if samples > 1:
        if interpretation.startswith("YBR") and interpretation not in ("YBR_ICT", "YBR_RCT"):
            frame = convert_color_space(frame, interpretation, "RGB")
        bits = int(description.get("bits_stored") or 8)
        if bits > 8:
            frame = frame.astype(np.float64) / ((1 << bits) - 1) * 255.0
        return Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8)[..., :3], "RGB")
    values = modality_values(frame, ds, index)
    window = window or dataset_window(ds, index)
    if window is not None:
        scaled = apply_window(values, window)
    else:
        scaled = _voi_lut(frame, ds, index)
        if scaled is None:
            low, high = float(values.min()), float(values.max())
            scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    if interpretation == "MONOCHROME1":
        scaled = 1.0 - scaled
    return Image.fromarray(np.round(scaled * 255.0).astype(np.uint8), "L")


def fit(image: Image.Image, width: int | None, height: int | None) -> Image.Image:
    """Scale ``image`` to fit ``width`` x ``height``, keeping its aspect ratio."""
    if width is None and height is None:
        return image
    scale = min(
        width / image.width if width else float("inf"),
        height / image.height if height else float("inf"),
    )
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image if size == image.size else image.resize(size, Image.Resampling.LANCZOS)


def apply_viewport(image: Image.Image, viewport: Viewport | None) -> Image.Image:
    """Crop the source region (negative sizes flip) and fit it to the viewport."""
    if viewport is None:
        return image
    sx = viewport.sx or 0.0
    sy = viewport.sy or 0.0
    sw = viewport.sw if viewport.sw is not None else image.width - sx
    sh = viewport.sh if viewport.sh is not None else image.height - sy
    left, right = sorted((sx, sx + sw))
    top, bottom = sorted((sy, sy + sh))
    box = (max(0, round(left)), max(0, round(top)), min(image.width, round(right)), min(image.height, round(bottom)))
    if box[2] <= box[0] or box[3] <= box[1]:
        raise DicomWebError(400, "the viewport's source region lies outside the image")
    if box != (0, 0, image.width, image.height):
        image = image.crop(box)
    if sw < 0:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if sh < 0:
        image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    return fit(image, viewport.width, viewport.height)


def apply_region(image: Image.Image, region: tuple[float, float, float, float] | None) -> Image.Image:
    """WADO-URI ``region`` (PS3.18 9.5.1.2.4): normalised xmin,ymin,xmax,ymax."""
    if region is None:
        return image
    xmin, ymin, xmax, ymax = region
    box = (round(xmin * image.width), round(ymin * image.height), round(xmax * image.width), round(ymax * image.height))
    if box[2] <= box[0] or box[3] <= box[1]:
        raise DicomWebError(400, "the region is empty")
    return image.crop(box)


def encode_image(image: Image.Image, media_type: str, quality: int | None) -> bytes:
    out = io.BytesIO()
    if media_type == "image/jpeg":
        image.save(out, "JPEG", quality=quality or DEFAULT_QUALITY)
    elif media_type == "image/gif":
        image.convert("P", palette=Image.Palette.ADAPTIVE).save(out, "GIF")
    else:
        image.save(out, "PNG")
    return out.getvalue()


def render_frame(obj: StoredObject, index: int, params: RenderParams, media_type: str) -> bytes:
    """Frame ``index`` (0-based) of an image object, rendered and encoded."""
    frame, description = obj.decode_frame(index)
    image = to_display(frame, description, obj.dataset, index, params.window)
    image = apply_region(image, params.region)
    image = apply_viewport(image, params.viewport)
    return encode_image(image, media_type, params.quality)


def placeholder(label: str, params: RenderParams, media_type: str, size: int = 256) -> bytes:
    """A plain picture naming the kind of object, for what has no frame to show."""
    image = Image.new("L", (size, size), 48)
    draw = ImageDraw.Draw(image)
    draw.rectangle((8, 8, size - 9, size - 9), outline=160, width=2)
    left, top, right, bottom = draw.textbbox((0, 0), label)
    draw.text(((size - (right - left)) / 2, (size - (bottom - top)) / 2), label, fill=230)
    return encode_image(apply_viewport(image, params.viewport), media_type, params.quality)


# --- what an object renders as -----------------------------------------------------------------


def natural_kind(obj: StoredObject) -> str:
    """image, video, document or other."""
    if obj.pixel_data is not None:
        return "video" if obj.transfer_syntax in VIDEO_TRANSFER_SYNTAXES else "image"
    if ENCAPSULATED_DOCUMENT in obj.dataset:
        return "document"
    return "other"


def video_media_type(syntax: str) -> str:
    if syntax in _H264 | _HEVC and shutil.which("ffmpeg"):
        return "video/mp4"
    return BULK_MEDIA_TYPE.get(syntax, "video/mpeg")


def choose(entries: list[Acceptable], offered: list[str]) -> str | None:
    """The first offered media type an entry accepts (``*/*`` takes the first offer)."""
    for entry in entries:
        if entry.multipart:
            continue
        for media_type in offered:
            if entry.matches(media_type):
                return media_type
    return None


def video_chunks(obj: StoredObject, stream: BinaryIO) -> Iterator[bytes]:
    """The video stream, remuxed into fragmented MP4 when it is H.264/HEVC and
    ffmpeg is installed (DICOM holds the bare elementary stream, PS3.5 8.2.7)."""
    syntax = obj.transfer_syntax
    ffmpeg = shutil.which("ffmpeg")
    if not ffmpeg or syntax not in _H264 | _HEVC:
        with stream:
            yield from obj.all_fragment_chunks()
        return
    rate = _first(obj.dataset.get("CineRate"))
    frame_time = _first(obj.dataset.get("FrameTime"))
    fps = rate or (1000.0 / frame_time if frame_time else 25.0)
    command = [
        ffmpeg, "-nostdin", "-loglevel", "error", "-f", "hevc" if syntax in _HEVC else "h264",
        "-framerate", f"{fps:g}", "-i", "pipe:0", "-c", "copy", "-f", "mp4",
        "-movflags", "frag_keyframe+empty_moov+default_base_moof", "pipe:1",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert process.stdin is not None and process.stdout is not None

    def feed() -> None:
        try:
            with stream:
                for chunk in obj.all_fragment_chunks():
                    process.stdin.write(chunk)  # type: ignore[union-attr]
        except (OSError, FrameError):
            pass
        finally:
            try:
                process.stdin.close()  # type: ignore[union-attr]
            except OSError:
                pass

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        while chunk := process.stdout.read(1 << 16):
            yield chunk
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        feeder.join(timeout=5)


def video_thumbnail(obj: StoredObject, stream: BinaryIO) -> Image.Image | None:
    """The first picture of a video, grabbed by ffmpeg (None without ffmpeg or on failure)."""
    ffmpeg = shutil.which("ffmpeg")
    if not ffmpeg:
        return None
    data = b"".join(obj.all_fragment_chunks())
    try:
        done = subprocess.run(
            [ffmpeg, "-nostdin", "-loglevel", "error", "-i", "pipe:0", "-frames:v", "1", "-f", "image2pipe",
             "-vcodec", "png", "pipe:1"],
            input=data, capture_output=True, timeout=60,
        )  # fmt: skip
        if done.returncode != 0 or not done.stdout:
            return None
        return Image.open(io.BytesIO(done.stdout)).convert("RGB")
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None


# --- responses ---------------------------------------------------------------------------------


def _open(archive: Archive, stored: StoredInstance) -> tuple[BinaryIO, StoredObject]:
    stream = open_stream(archive, stored)
    try:
        return stream, open_stored(stream)
    except FrameError as exc:
        stream.close()
        raise DicomWebError(500, str(exc)) from None


def _entries(request: Request) -> list[Acceptable]:
    return acceptable_or_400(request)


def _image_or_406(obj: StoredObject, index: int, params: RenderParams, media_type: str) -> bytes:
    try:
        return render_frame(obj, index, params, media_type)
    except FrameError as exc:
        raise DicomWebError(406, f"the frame cannot be rendered: {exc}") from None


def rendered_instance(
    archive: Archive,
    request: Request,
    stored: StoredInstance,
    frames: str | None,
    *,
    entries: list[Acceptable] | None = None,
    params: RenderParams | None = None,
) -> Response:
    """One instance (or some of its frames) in its natural rendered form.

    ``entries`` and ``params`` default to the request's Accept and query (WADO-URI
    passes its own)."""
    entries = _entries(request) if entries is None else entries
    params = params_from_query(request.query_params) if params is None else params
    stream, obj = _open(archive, stored)
    handed_over = False
    try:
        kind = natural_kind(obj)
        if kind == "video" and frames is None:
            media = video_media_type(obj.transfer_syntax)
            chosen = choose(entries, [media, "application/octet-stream"])
            if chosen is not None:
                handed_over = True
                return StreamingResponse(video_chunks(obj, stream), media_type=media)
            image_type = choose(entries, list(IMAGE_TYPES))
            picture = video_thumbnail(obj, stream) if image_type else None
            if picture is None or image_type is None:
                raise DicomWebError(406, f"a video renders as {media}; asked: {describe(entries)}")
            picture = apply_viewport(picture, params.viewport)
            return Response(encode_image(picture, image_type, params.quality), media_type=image_type)
        if kind == "document":
            document_type = str(obj.dataset.get("MIMETypeOfEncapsulatedDocument") or "application/octet-stream")
            chosen = choose(entries, [document_type])
            if chosen is None:
                raise DicomWebError(406, f"this document renders as {document_type}; asked: {describe(entries)}")
            location = obj.locate(ENCAPSULATED_DOCUMENT)
            if location is None or location.length is None:
                value = obj.dataset[ENCAPSULATED_DOCUMENT].value
                return Response(_document_bytes(value, document_type), media_type=document_type)
            location = _trim_document(obj, location, document_type)
            handed_over = True
            return value_response(request, obj, location, owned(stream), document_type, False)
        if kind != "image":
            raise DicomWebError(406, "this kind of object (no pixel data, no document) has no rendered form here")
        media_type = choose(entries, list(IMAGE_TYPES))
        if media_type is None:
            raise DicomWebError(406, f"images render as {', '.join(IMAGE_TYPES)}; asked: {describe(entries)}")
        if frames is None:
            return Response(_image_or_406(obj, 0, params, media_type), media_type=media_type)
        try:
            indices = parse_frame_list(frames, obj.number_of_frames)
        except IndexError as exc:
            raise DicomWebError(404, str(exc)) from None
        except ValueError as exc:
            raise DicomWebError(400, str(exc)) from None
        if len(indices) == 1:
            return Response(_image_or_406(obj, indices[0], params, media_type), media_type=media_type)
        pictures = [_image_or_406(obj, i, params, media_type) for i in indices]
        boundary = multipart.new_boundary()
        body = b"".join(multipart.write_parts((multipart.Part(media_type, [p]) for p in pictures), boundary))
        return Response(body, media_type=multipart.content_type(media_type, boundary))
    finally:
        if not handed_over:
            stream.close()


def _document_bytes(value: bytes, media_type: str) -> bytes:
    """The document without the padding byte PS3.5 7.1 adds to odd lengths."""
    return value[:-1] if media_type == "application/pdf" and value.endswith(b"\x00") else value


def _trim_document(obj: StoredObject, location, media_type: str):  # type: ignore[no-untyped-def]
    from dataclasses import replace

    if media_type == "application/pdf" and location.length:
        obj.stream.seek(location.offset + location.length - 1)
        if obj.stream.read(1) == b"\x00":
            return replace(location, length=location.length - 1)
    return location


def rendered_many(archive: Archive, request: Request, instances: list[StoredInstance]) -> Response:
    """A study or series rendered: one part per image instance (its first frame)."""
    entries = [e for e in _entries(request)]
    params = params_from_query(request.query_params)
    media_type = None
    for entry in entries:
        media_type = next((m for m in IMAGE_TYPES if entry.matches(m)), None)
        if media_type:
            break
    if media_type is None:
        raise DicomWebError(406, f"a study or series renders as images; asked: {describe(entries)}")

    def parts() -> Iterator[multipart.Part]:
        for stored in instances:
            try:
                stream, obj = _open(archive, stored)
            except DicomWebError:
                continue
            with stream:
                if natural_kind(obj) != "image":
                    continue
                try:
                    picture = render_frame(obj, 0, params, media_type)
                except (FrameError, DicomWebError) as exc:
                    log.warning("rendered: instance pk=%s left out: %s", stored.pk, exc)
                    continue
            yield multipart.Part(media_type, [picture])

    boundary = multipart.new_boundary()
    return StreamingResponse(
        multipart.write_parts(parts(), boundary), media_type=multipart.content_type(media_type, boundary)
    )


def _representative(instances: list[StoredInstance]) -> list[StoredInstance]:
    """Candidates for a thumbnail: the middle instance of each series first."""
    by_series: dict[str, list[StoredInstance]] = {}
    for stored in instances:
        by_series.setdefault(stored.series_instance_uid, []).append(stored)
    middles = [group[len(group) // 2] for group in by_series.values()]
    rest = [s for s in instances if s not in middles]
    return middles + rest[:8]


def thumbnail(archive: Archive, request: Request, instances: list[StoredInstance], frame: str | None = None) -> Response:
    """A small picture of a study, series, instance or frame (PS3.18 10.4.1.1.5)."""
    entries = _entries(request)
    media_type = choose(entries, list(IMAGE_TYPES))
    if media_type is None:
        raise DicomWebError(406, f"thumbnails are {', '.join(IMAGE_TYPES)}; asked: {describe(entries)}")
    params = params_from_query(request.query_params)
    if params.viewport is None:
        params = RenderParams(params.window, Viewport(THUMBNAIL_SIZE, THUMBNAIL_SIZE), params.quality)
    fallback = None
    for stored in _representative(instances) if len(instances) > 1 else instances:
        stream, obj = _open(archive, stored)
        with stream:
            kind = natural_kind(obj)
            if kind == "image":
                index = 0 if frame is None else _single_frame(frame, obj)
                if frame is None and obj.number_of_frames > 1:
                    index = obj.number_of_frames // 2
                try:
                    return Response(render_frame(obj, index, params, media_type), media_type=media_type)
                except FrameError as exc:
                    log.info("thumbnail: instance pk=%s not decodable: %s", stored.pk, exc)
                    fallback = fallback or "IMAGE"
                    continue
            if kind == "video":
                picture = video_thumbnail(obj, stream)
                if picture is not None:
                    image = apply_viewport(picture, params.viewport)
                    return Response(encode_image(image, media_type, params.quality), media_type=media_type)
                fallback = fallback or "VIDEO"
            elif kind == "document":
                mime = str(obj.dataset.get("MIMETypeOfEncapsulatedDocument") or "")
                fallback = fallback or ("PDF" if mime == "application/pdf" else "DOCUMENT")
            else:
                fallback = fallback or str(obj.dataset.get("Modality") or "DICOM")
    return Response(placeholder(fallback or "DICOM", params, media_type), media_type=media_type)


def _single_frame(text: str, obj: StoredObject) -> int:
    try:
        indices = parse_frame_list(text, obj.number_of_frames)
    except IndexError as exc:
        raise DicomWebError(404, str(exc)) from None
    except ValueError as exc:
        raise DicomWebError(400, str(exc)) from None
    if len(indices) != 1:
        raise DicomWebError(400, "a thumbnail shows one frame")
    return indices[0]


# --- routes ------------------------------------------------------------------------------------


def create_router(archive: Archive) -> APIRouter:
    router = APIRouter(tags=["WADO-RS rendered"])

    @router.get("/studies/{study}/rendered", summary="Rendered study (PS3.18 10.4.1.1.4)")
    def study_rendered(request: Request, study: str) -> Response:
        return rendered_many(archive, request, resolve_for(archive, request, "view", study))

    @router.get("/studies/{study}/series/{series}/rendered", summary="Rendered series")
    def series_rendered(request: Request, study: str, series: str) -> Response:
        return rendered_many(archive, request, resolve_for(archive, request, "view", study, series))

    @router.get(INSTANCE + "/rendered", summary="Rendered instance")
    def instance_rendered(request: Request, study: str, series: str, sop: str) -> Response:
        return rendered_instance(archive, request, resolve_for(archive, request, "view", study, series, sop)[0], None)

    @router.get(INSTANCE + "/frames/{frames}/rendered", summary="Rendered frames")
    def frames_rendered(request: Request, study: str, series: str, sop: str, frames: str) -> Response:
        return rendered_instance(archive, request, resolve_for(archive, request, "view", study, series, sop)[0], frames)

    @router.get("/studies/{study}/thumbnail", summary="Study thumbnail (PS3.18 10.4.1.1.5)")
    def study_thumbnail(request: Request, study: str) -> Response:
        return thumbnail(archive, request, resolve_for(archive, request, "view", study))

    @router.get("/studies/{study}/series/{series}/thumbnail", summary="Series thumbnail")
    def series_thumbnail(request: Request, study: str, series: str) -> Response:
        return thumbnail(archive, request, resolve_for(archive, request, "view", study, series))

    @router.get(INSTANCE + "/thumbnail", summary="Instance thumbnail")
    def instance_thumbnail(request: Request, study: str, series: str, sop: str) -> Response:
        return thumbnail(archive, request, resolve_for(archive, request, "view", study, series, sop))

    @router.get(INSTANCE + "/frames/{frames}/thumbnail", summary="Frame thumbnail")
    def frame_thumbnail(request: Request, study: str, series: str, sop: str, frames: str) -> Response:
        return thumbnail(archive, request, resolve_for(archive, request, "view", study, series, sop), frames)

    return router


