"""The DICOM JSON and XML models (PS3.18 Annex F, PS3.19 A.1) and media type choice.

:func:`dataset_json` turns a pydicom Dataset into the DICOM JSON Model. Values
still raw (as read from a stored header) are decoded here directly, which is
several times faster than pydicom's ``to_json_dict`` (the cost of series
metadata is this loop); anything unusual (implicit VR private elements,
ambiguous VRs, character sets other than the default, Latin-1 and UTF-8,
multiple values with an empty one) goes through pydicom, so the output
equals pydicom's for every element.

:func:`xml_document` writes the Native DICOM Model from the JSON form, so
both representations come from one conversion.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from .accept import AcceptError, parse_accept, parse_media_range
from .errors import DicomWebError

# A top-level element: (tag, VR, value length) -> BulkDataURI, or None to inline it.
BulkHandler = Callable[[int, str, int], "str | None"]

BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_TEXT_CHARSET_VRS = frozenset({"SH", "LO", "UC"})  # multi-valued, Specific Character Set applies
_SINGLE_TEXT_VRS = frozenset({"ST", "LT", "UT"})  # one value, backslash is not a delimiter
_PLAIN_VRS = frozenset({"AS", "CS", "DA", "DT", "TM", "UI"})
_NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}
# Specific Character Set values whose text decodes with one Python codec.
_CODECS = {"": "latin-1", "ISO_IR 6": "latin-1", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}
_CHARSET_TAG = 0x00080005


class _Fallback(Exception):
    """This element needs pydicom's conversion."""


def _charset(ds: Dataset, inherited: str | None) -> str | None:
    """The codec for text in ``ds``, or None when only pydicom can decode it."""
    raw = ds._dict.get(_CHARSET_TAG)
    if raw is None:
        return inherited
    value = raw.value
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace").strip(" \x00")
    elif not isinstance(value, str):  # several values: code extensions
        return None
    return _CODECS.get(value.strip())


def _split(text: str) -> list[str]:
    values = text.split("\\")
    if len(values) > 1 and any(v == "" for v in values):
        raise _Fallback  # pydicom has its own ideas about empty values among several
    return values


def _raw_value(vr: str, data: bytes, little: bool, codec: str | None) -> list[Any] | None:
    """The JSON "Value" of a raw element, None when empty; _Fallback when unsure."""
    if not data:
        return None
    if vr in _NUMBER_FORMATS:
        fmt = _NUMBER_FORMATS[vr]
        size = struct.calcsize("<" + fmt)
        if len(data) % size:
            raise _Fallback
        return list(struct.unpack(("<" if little else ">") + fmt * (len(data) // size), data))
    if vr == "AT":
        if len(data) % 4:
            raise _Fallback
        pairs = struct.unpack(("<" if little else ">") + "HH" * (len(data) // 4), data)
        return [f"{pairs[i]:04X}{pairs[i + 1]:04X}" for i in range(0, len(pairs), 2)]
    if vr in _PLAIN_VRS or vr in ("DS", "IS"):
        text = data.decode("latin-1").rstrip(" \x00")
        if not text:
            return None
        values = _split(text)
        if vr == "DS":
            return [float(v) for v in values]
        if vr == "IS":
            return [int(v) for v in values]
        return values
    if vr == "AE":
        values = [v.strip() for v in data.decode("latin-1").split("\\")]
        if len(values) == 1 and not values[0]:
            return None
        if len(values) > 1 and "" in values:
            raise _Fallback
        return values
    if codec is None:
        raise _Fallback
    if vr in _TEXT_CHARSET_VRS:
        values = [v.rstrip("\x00 ") for v in _split(data.decode(codec))]
        return None if values == [""] else values
    if vr in _SINGLE_TEXT_VRS:
        text = data.decode(codec).rstrip("\x00 ")
        return [text] if text else None
    if vr == "UR":
        text = data.decode("latin-1").rstrip()
        return [text] if text else None
    if vr == "PN":
        text = data.rstrip(b"\x00 ").decode(codec)
        if not text:
            return None
        if "=" in text:
            raise _Fallback  # ideographic/phonetic groups: pydicom splits them
        return [{"Alphabetic": name} for name in _split(text)]
    raise _Fallback


def _binary(json_element: dict[str, Any], data: bytes) -> dict[str, Any]:
    if data:
        json_element["InlineBinary"] = base64.b64encode(data).decode("ascii")
    return json_element


def _converted_json(elem: DataElement, codec: str | None) -> dict[str, Any]:
    """JSON of an element pydicom has converted (or must convert)."""
    if elem.VR == "SQ":
        return {"vr": "SQ", "Value": [dataset_json(item, codec=codec) for item in elem.value or []]}
    return elem.to_json_dict(None, 0)


_INT_VRS = frozenset({"IS", "US", "SS", "UL", "SL", "SV", "UV"})
_FLOAT_VRS = frozenset({"DS", "FL", "FD"})


def _simple_json(elem: DataElement) -> dict[str, Any] | None:
    """JSON of an already converted element with plain values (query results), else None."""
    vr, value = elem.VR, elem.value
    if value is None or value == "" or value == b"":
        return {"vr": vr}
    if vr == "SQ" or vr == "AT" or vr in BINARY_VRS or len(vr) != 2:
        return None
    values = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    if not values:
        return {"vr": vr}
    if vr == "PN":
        names = [str(v) for v in values]
        if any("=" in n for n in names):
            return None
        return {"vr": vr, "Value": [{"Alphabetic": n} for n in names]}
    if vr in _INT_VRS:
        return {"vr": vr, "Value": [int(v) for v in values]}
    if vr in _FLOAT_VRS:
        return {"vr": vr, "Value": [float(v) for v in values]}
    if all(isinstance(v, str) for v in values):
        return {"vr": vr, "Value": [str(v) for v in values]}
    return None


def _element_json(ds: Dataset, tag: int, codec: str | None) -> tuple[dict[str, Any], int]:
    """(JSON of element ``tag`` of ``ds``, its value length in bytes)."""
    raw = ds._dict[tag]
    if isinstance(raw, DataElement):
        try:
            simple = _simple_json(raw)
        except (TypeError, ValueError):
            simple = None
        if simple is not None:
            return simple, 0
    if isinstance(raw, RawDataElement) and raw.value is not None:
        vr = raw.VR
        if vr is None and not tag >> 16 & 1:  # implicit VR, public tag
            try:
                vr = dictionary_VR(tag)
            except KeyError:
                vr = None
        if vr is not None and vr != "SQ" and vr != "UN" and len(vr) == 2:
            data = raw.value
            if vr in BINARY_VRS:
                return _binary({"vr": vr}, data), len(data)
            try:
                value = _raw_value(vr, data, raw.is_little_endian, codec)
            except (_Fallback, ValueError, UnicodeDecodeError, struct.error):
                pass
            else:
                return ({"vr": vr, "Value": value} if value is not None else {"vr": vr}), len(data)
    try:
        elem = ds[tag]  # pydicom converts (and resolves VRs) here
        length = len(elem.value) if isinstance(elem.value, (bytes, bytearray)) else 0
        return _converted_json(elem, codec), length
    except Exception:  # noqa: BLE001 - a value nobody can decode is passed on as it is
        data = raw.value if isinstance(raw, RawDataElement) and isinstance(raw.value, bytes) else b""
        return _binary({"vr": "UN"}, data), len(data)


def dataset_json(
    ds: Dataset, *, bulk: BulkHandler | None = None, codec: str | None = "latin-1", skip: Iterable[int] = ()
) -> dict[str, Any]:
    """``ds`` in the DICOM JSON Model (PS3.18 F.2); group 0002 and ``skip`` left out.

    ``bulk`` decides, for each top-level binary element, whether it becomes a
    BulkDataURI; nested ones are always inline.
    """
    codec = _charset(ds, codec)
    skipped = set(skip)
    out: dict[str, Any] = {}
    for tag in sorted(ds._dict):
        if tag >> 16 == 0x0002 or tag in skipped:
            continue
        json_element, length = _element_json(ds, tag, codec)
        if bulk is not None and json_element["vr"] in BINARY_VRS and "InlineBinary" in json_element:
            uri = bulk(tag, json_element["vr"], length)
            if uri is not None:
                json_element = {"vr": json_element["vr"], "BulkDataURI": uri}
        out[f"{tag:08X}"] = json_element
    return out


# --- PS3.19 Native DICOM Model ---------------------------------------------------------

_PN_PARTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")
XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'


def _xml_person_name(number: int, value: dict[str, str] | None) -> str:
    out = [f'<PersonName number="{number}">']
    for group in ("Alphabetic", "Ideographic", "Phonetic"):
        text = (value or {}).get(group)
        if not text:
            continue
        out.append(f"<{group}>")
        for part, component in zip(_PN_PARTS, text.split("^"), strict=False):
            if component:
                out.append(f"<{part}>{escape(component)}</{part}>")
        out.append(f"</{group}>")
    out.append("</PersonName>")
    return "".join(out)


def _xml_attributes(dataset: dict[str, Any], out: list[str]) -> None:
    creators: dict[tuple[int, int], str] = {}
    for key, element in dataset.items():
        tag = int(key, 16)
        group, elem = tag >> 16, tag & 0xFFFF
        vr = element.get("vr", "UN")
        attrs = f"tag={quoteattr(key)} vr={quoteattr(vr)}"
        if group & 1:
            if 0x10 <= elem <= 0xFF:
                value = (element.get("Value") or [""])[0]
                creators[(group, elem)] = str(value)
            else:
                creator = creators.get((group, elem >> 8))
                if creator:
                    attrs += f" privateCreator={quoteattr(creator)}"
        else:
            keyword = keyword_for_tag(tag)
            if keyword:
                attrs += f" keyword={quoteattr(keyword)}"
        out.append(f"<DicomAttribute {attrs}>")
        if "BulkDataURI" in element:
            out.append(f"<BulkData uri={quoteattr(element['BulkDataURI'])}/>")
        elif "InlineBinary" in element:
            out.append(f"<InlineBinary>{element['InlineBinary']}</InlineBinary>")
        elif vr == "SQ":
            for number, item in enumerate(element.get("Value") or [], 1):
                out.append(f'<Item number="{number}">')
                _xml_attributes(item or {}, out)
                out.append("</Item>")
        elif vr == "PN":
            for number, value in enumerate(element.get("Value") or [], 1):
                out.append(_xml_person_name(number, value))
        else:
            for number, value in enumerate(element.get("Value") or [], 1):
                if value is None:
                    out.append(f'<Value number="{number}"/>')
                else:
                    out.append(f'<Value number="{number}">{escape(_xml_text(value))}</Value>')
        out.append("</DicomAttribute>")


def _xml_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return repr(value)
    return str(value)


def xml_document(dataset: dict[str, Any]) -> bytes:
    """One data set (in DICOM JSON form) as a Native DICOM Model document (PS3.19 A.1)."""
    out = ['<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM" xml:space="preserve">']
    _xml_attributes(dataset, out)
    out.append("</NativeDicomModel>")
    return XML_DECLARATION + "".join(out).encode("utf-8")


# --- media types ----------------------------------------------------------------------

DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
MULTIPART_XML = 'multipart/related; type="application/dicom+xml"'


def media_params(value: str) -> tuple[str, dict[str, str]]:
    """("type/subtype" lower-cased, {parameter: value}) of a media type (RFC 9110 8.3.1);
    ("", {}) when it cannot be parsed."""
    try:
        parsed = parse_media_range(value)
    except AcceptError:
        parsed = None
    return (parsed.media_type, dict(parsed.params)) if parsed is not None else ("", {})


def accepted(accept: str | None) -> Iterator[tuple[str, dict[str, str], float]]:
    """The media ranges of an Accept header (or ``accept`` query parameter), best
    first (accept.py parses; a malformed value is a 400)."""
    if not accept or not accept.strip():
        yield "*/*", {}, 1.0
        return
    try:
        ranges = [r for r in parse_accept([accept]) if r.q > 0]
    except AcceptError as exc:
        raise DicomWebError(400, f"malformed Accept: {exc}") from None
    for media_range in sorted(ranges, key=lambda r: -r.q):  # stable: request order within a quality
        yield media_range.media_type, dict(media_range.params), media_range.q


def choose(accept: str | None, offered: dict[str, Callable[[str, dict[str, str]], bool]]) -> str | None:
    """The first offered representation (name -> matcher(type, params)) the Accept header allows."""
    for kind, params, _quality in accepted(accept):
        for name, matches in offered.items():
            if matches(kind, params):
                return name
    return None


def json_accepted(kind: str, params: dict[str, str]) -> bool:
    return kind in (DICOM_JSON, "application/json", "*/*", "application/*")


def xml_accepted(kind: str, params: dict[str, str]) -> bool:
    """Multipart XML (PS3.18 8.7.3.3), also when asked for as application/dicom+xml alone."""
    if kind == DICOM_XML:
        return True
    return kind == "multipart/related" and params.get("type", "").lower() == DICOM_XML


def multipart_parts(parts: Iterable[bytes], boundary: str, content_type: str) -> Iterator[bytes]:
    """A multipart/related body (RFC 2387), one part per item, as it is produced."""
    for part in parts:
        yield f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode("ascii") + part + b"\r\n"
    yield f"--{boundary}--\r\n".encode("ascii")
