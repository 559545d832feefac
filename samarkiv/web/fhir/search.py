"""Parsing FHIR R4 search requests (FHIR R4 search.html, http.html#search).

- The query string and, for ``POST [type]/_search``, the form body are read
  as one list of parameters (search.html#2.21.1.1).
- Values are split on unescaped commas (OR, search.html#combining) and
  tokens on the first unescaped ``|`` (search.html#token); ``\\,``, ``\\|``,
  ``\\$`` and ``\\\\`` are escapes (search.html#escaping).
- Parameters the resource does not support are ignored, and reported in an
  OperationOutcome entry of the Bundle, unless the client sent
  ``Prefer: handling=strict``: then they are an error, 400 (search.html#errors).
- ``_count`` (default 20, at most 200), ``_offset`` (the paging links' own
  parameter), ``_summary=count``, ``_total``, ``_format`` and ``_pretty`` are
  the result parameters understood.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any
from urllib.parse import parse_qsl

from fastapi import Request
from sqlalchemy import ColumnElement, and_, not_

from .errors import FhirError

DEFAULT_COUNT = 20
MAX_COUNT = 200

# _format values (FHIR R4 http.html#mime-type) that mean JSON, and those that mean XML.
_JSON_FORMATS = {"json", "application/json", "application/fhir+json", "text/json"}
_XML_FORMATS = {"xml", "text/xml", "application/xml", "application/fhir+xml", "html", "text/html", "ttl", "text/turtle"}
_RESULT_PARAMETERS = {"_count", "_offset", "_summary", "_total", "_format", "_pretty"}


@dataclass(frozen=True)
class Token:
    """A token search value: ``system`` None when no ``|`` was given, '' for ``|code``."""

    system: str | None
    code: str


@dataclass
class SearchRequest:
    resource_type: str
    base: str  # the FHIR base URL, e.g. http://host:8080/fhir
    params: list[tuple[str, str]]  # the supported search parameters, in order
    count: int = DEFAULT_COUNT
    offset: int = 0
    summary_count: bool = False
    pretty: bool = False
    ignored: list[str] = field(default_factory=list)

    def values(self, name: str) -> list[list[str]]:
        """Each occurrence of ``name`` (AND) as its comma-separated values (OR),
        still escaped (see :func:`parse_token` and :func:`unescape`)."""
        return [split_values(value) for key, value in self.params if key == name]


def fhir_base(request: Request) -> str:
    """The absolute base URL of the FHIR endpoint, from the request's own URL."""
    return str(request.base_url).rstrip("/") + "/fhir"


def parse_token(value: str) -> Token:
    """``[system]|[code]`` or ``[code]`` (search.html#token)."""
    # Commas are already split; only the first unescaped | matters here.
    i = 0
    while i < len(value):
        if value[i] == "\\":
            i += 2
            continue
        if value[i] == "|":
            return Token(unescape(value[:i]), unescape(value[i + 1 :]))
        i += 1
    return Token(None, unescape(value))


def unescape(text: str) -> str:
    """Remove the search escapes (search.html#escaping)."""
    return re.sub(r"\\([\\,|$])", r"\1", text)


def split_values(value: str) -> list[str]:
    """Comma-separated values, keeping escapes for :func:`parse_token`."""
    out, current, i = [], [], 0
    while i < len(value):
        if value[i] == "\\" and i + 1 < len(value):
            current.append(value[i : i + 2])
            i += 2
            continue
        if value[i] == ",":
            out.append("".join(current))
            current = []
        else:
            current.append(value[i])
        i += 1
    out.append("".join(current))
    return out


async def request_parameters(request: Request) -> list[tuple[str, str]]:
    """The query parameters, plus the form body of a POST search (search.html#2.21.1.1)."""
    items = list(request.query_params.multi_items())
    if request.method == "POST":
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body = await request.body()
        if body:
            if content_type != "application/x-www-form-urlencoded":
                raise FhirError(400, "a search by POST takes an application/x-www-form-urlencoded body")
            try:
                items += parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
            except UnicodeDecodeError:
                raise FhirError(400, "the search body is not UTF-8") from None
    return items


def strict_handling(request: Request) -> bool:
    """Whether the client asked for ``Prefer: handling=strict`` (search.html#errors)."""
    for header in request.headers.getlist("prefer"):
        for token in header.split(","):
            name, _, value = token.strip().partition("=")
            if name.strip().lower() == "handling" and value.strip().strip('"').lower() == "strict":
                return True
    return False


def negotiate(request: Request, items: list[tuple[str, str]]) -> bool:
    """Check that JSON is acceptable (``_format`` wins over Accept, http.html#mime-type);
    406 otherwise. Returns whether ``_pretty=true`` was asked for."""
    formats = [value.strip().lower() for key, value in items if key == "_format"]
    for fmt in formats:
        base = fmt.split(";")[0].strip()
        if base in _XML_FORMATS or base not in _JSON_FORMATS:
            raise FhirError(406, f"_format={fmt!r} is not supported: this server answers JSON only")
    if not formats:
        accept = request.headers.get("accept", "")
        if accept and not _accepts_json(accept):
            raise FhirError(406, "this server answers application/fhir+json only")
    return any(key == "_pretty" and value.strip().lower() == "true" for key, value in items)


def _accepts_json(accept: str) -> bool:
    for part in accept.split(","):
        media, *params = part.strip().split(";")
        media = media.strip().lower()
        q = 1.0
        for p in params:
            k, _, v = p.strip().partition("=")
            if k.strip() == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        if q > 0 and (media in ("*/*", "application/*", "text/*") or media in _JSON_FORMATS):
            return True
    return False


def _int(name: str, value: str, minimum: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise FhirError(400, f"{name} must be an integer, not {value!r}") from None
    if number < minimum:
        raise FhirError(400, f"{name} must be at least {minimum}")
    return number


def parse_search(
    request: Request, resource_type: str, supported: set[str], items: list[tuple[str, str]]
) -> SearchRequest:
    """Split ``items`` into supported search parameters and result parameters;
    unsupported ones are ignored (lenient) or rejected (strict)."""
    strict = strict_handling(request)
    pretty = negotiate(request, items)
    search = SearchRequest(resource_type, fhir_base(request), [], pretty=pretty)
    for key, value in items:
        if key in supported:
            if value == "":
                continue  # an empty value is ignored (search.html#2.21.1.1)
            search.params.append((key, value))
        elif key == "_count":
            search.count = min(_int("_count", value, 0), MAX_COUNT)
        elif key == "_offset":
            search.offset = _int("_offset", value, 0)
        elif key == "_summary" and value in ("count", "false"):
            search.summary_count = search.summary_count or value == "count"
        elif key == "_total" and value in ("none", "estimate", "accurate"):
            pass  # the total is always counted exactly
        elif key in ("_format", "_pretty"):
            pass
        else:
            what = f"{key}={value}" if key in _RESULT_PARAMETERS else key
            if strict:
                raise FhirError(400, f"search parameter {what} is not supported for {resource_type}")
            search.ignored.append(what if key in _RESULT_PARAMETERS else key)
    return search


# --- dates ----------------------------------------------------------------------------

_DATE = re.compile(
    r"(?P<prefix>eq|ne|gt|lt|ge|le|sa|eb|ap)?"
    r"(?P<year>\d{4})(-(?P<month>\d{2})(-(?P<day>\d{2})"
    r"(T\d{2}(:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?"
)


@dataclass(frozen=True)
class DateRange:
    """A date search value as ``prefix`` and the half-open range of days
    [``low``, ``high``) it names, both ``YYYYMMDD`` (search.html#date)."""

    prefix: str
    low: str
    high: str


def parse_date(name: str, value: str) -> DateRange:
    """A date parameter value, to the precision of a day (the catalogue keeps
    DICOM dates; a time of day in the value is accepted and not compared)."""
    match = _DATE.fullmatch(value.strip())
    if match is None:
        raise FhirError(400, f"{name}: {value!r} is not a FHIR date (e.g. 2024, 2024-03, ge2024-03-01)")
    year, month, day = int(match["year"]), match["month"], match["day"]
    try:
        if day is not None:
            start = date(year, int(month), int(day))
            end = start + timedelta(days=1)
        elif month is not None:
            start = date(year, int(month), 1)
            end = date(year + (start.month == 12), start.month % 12 + 1, 1)
        else:
            start, end = date(year, 1, 1), date(year + 1, 1, 1)
    except ValueError:
        raise FhirError(400, f"{name}: {value!r} is not a calendar date") from None
    return DateRange(match["prefix"] or "eq", f"{start:%Y%m%d}", f"{end:%Y%m%d}")


def date_condition(column: Any, name: str, value: str) -> ColumnElement[bool]:
    """SQL for a date search value on a DICOM DA column (search.html#prefix);
    ``ap`` is taken as ``eq``, ``sa``/``eb`` as ``gt``/``lt`` (a DA is one day)."""
    r = parse_date(name, value)
    low, high = column >= r.low, column < r.high
    match r.prefix:
        case "eq" | "ap":
            return and_(low, high)
        case "ne":
            return and_(column.isnot(None), not_(and_(low, high)))
        case "gt" | "sa":
            return column >= r.high
        case "lt" | "eb":
            return column < r.low
        case "ge":
            return low
        case _:  # le
            return high
