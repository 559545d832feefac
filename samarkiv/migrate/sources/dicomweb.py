"""A legacy DICOMweb archive: QIDO-RS to enumerate, WADO-RS to pull (PS3.18 10.6, 10.4).

Studies are searched in Study Date windows (``StudyDate=from-to``, 10.6.1.2)
and paged with ``limit``/``offset`` (10.6.1.2.2) until a page comes back
short. Each study is listed series by series, with the source's own instance
count per series (Number of Series Related Instances) checked against the
instances listed. Objects are retrieved as stored: ``multipart/related;
type="application/dicom"; transfer-syntax=*`` (8.7.3.5.2), read part by part.
Busy answers (429, 502, 503, 504) and connection errors are :class:`SourceBusy`,
which the runner retries with backoff. A bearer token is read from the
environment variable the job names, never stored with the job.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import date
from typing import Any

import httpx

from ...core.structure import inspect_buffer
from ..job import PlannedInstance, PlannedStudy
from .base import Deliver, SourceBusy, SourceError
from .dimse import _day, _windows
from .multipart import MultipartError, boundary_of, read_parts

ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
BUSY = frozenset({429, 502, 503, 504})
# DICOM JSON (PS3.18 F.2) attribute tags
STUDY_UID, SERIES_UID, SOP_UID, SOP_CLASS, STUDY_DATE = "0020000D", "0020000E", "00080018", "00080016", "00080020"
SERIES_COUNT = "00201209"  # Number of Series Related Instances


def _value(item: dict[str, Any], tag: str) -> str | None:
    values = (item.get(tag) or {}).get("Value") or []
    return str(values[0]) if values and values[0] is not None else None


class DicomWebSource:
    """Options: url, from_date/to_date (YYYYMMDD), window_days, page_size,
    token_env (name of the variable holding a bearer token), timeout, associations."""

    in_process = True

    def __init__(self, options: dict[str, Any]) -> None:
        url = str(options.get("url") or "").rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise SourceError(f"a DICOMweb source needs an http(s) URL, not {url!r}")
        self.url = url
        self.from_date: str | None = options.get("from_date")
        self.to_date: str | None = options.get("to_date")
        self.window_days = int(options.get("window_days") or 30)
        self.page_size = max(1, int(options.get("page_size") or 100))
        self.token_env: str | None = options.get("token_env") or None
        connections = max(1, int(options.get("associations") or 1))
        self.http = httpx.Client(
            auth=self._bearer,
            timeout=httpx.Timeout(float(options.get("timeout") or 30)),
            limits=httpx.Limits(max_connections=connections + 1, max_keepalive_connections=connections + 1),
        )

    # --- HTTP -------------------------------------------------------------------------------

    def _bearer(self, request: httpx.Request) -> httpx.Request:
        """Adds the bearer token (RFC 6750), read from the environment when the job runs."""
        if self.token_env:
            token = os.environ.get(self.token_env)
            if not token:
                raise SourceError(f"the environment variable {self.token_env} (bearer token) is not set")
            request.headers["Authorization"] = f"Bearer {token}"
        return request

    def _check(self, response: httpx.Response, what: str) -> None:
        if response.status_code in BUSY:
            raise SourceBusy(f"{what}: HTTP {response.status_code} (busy)")
        if response.status_code >= 400:
            raise SourceError(f"{what}: HTTP {response.status_code} {response.reason_phrase}".strip())

    def _qido(self, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        what = f"QIDO-RS {path}"
        try:
            response = self.http.get(f"{self.url}/{path}", params=params, headers={"Accept": "application/dicom+json"})
        except httpx.TransportError as exc:
            raise SourceBusy(f"{what}: {exc.__class__.__name__}: {exc}") from None
        if response.status_code == 204:
            return []
        self._check(response, what)
        try:
            answer = response.json()
        except ValueError:
            raise SourceError(f"{what}: the answer is not DICOM JSON") from None
        if not isinstance(answer, list):
            raise SourceError(f"{what}: the answer is not a list of results")
        return answer

    def _paged(self, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Every result of a search, page by page (limit/offset, PS3.18 8.3.4.4)."""
        offset = 0
        while True:
            page = self._qido(path, {**params, "limit": self.page_size, "offset": offset})
            yield from page
            if len(page) < self.page_size:
                return
            offset += len(page)

    def _retrieve(self, path: str, what: str) -> Iterator[bytes]:
        """The Part 10 objects of a WADO-RS retrieve, one by one, as the source stores them."""
        try:
            with self.http.stream("GET", f"{self.url}/{path}", headers={"Accept": ACCEPT_DICOM}) as response:
                if response.status_code == 404:
                    raise SourceError(f"{what}: not found at the source (HTTP 404)")
                self._check(response, what)
                boundary = boundary_of(response.headers.get("content-type", ""))
                for _headers, body in read_parts(response.iter_bytes(), boundary):
                    yield body
        except httpx.TransportError as exc:
            raise SourceBusy(f"{what}: {exc.__class__.__name__}: {exc}") from None
        except MultipartError as exc:
            raise SourceError(f"{what}: {exc}") from None

    # --- enumerate ------------------------------------------------------------------------------

    def studies(self) -> Iterator[tuple[str, str | None, str | None]]:
        fields = {"includefield": STUDY_DATE}
        if self.from_date or self.to_date:
            start = _day(self.from_date or "19000101")
            stop = _day(self.to_date) if self.to_date else date.today()
            searches: Iterator[dict[str, Any]] = (
                {**fields, "StudyDate": f"{a:%Y%m%d}-{b:%Y%m%d}"} for a, b in _windows(start, stop, self.window_days)
            )
        else:
            searches = iter([fields])
        seen: set[str] = set()
        for params in searches:
            for item in self._paged("studies", params):
                uid = _value(item, STUDY_UID)
                if uid and uid not in seen:  # pages may overlap when the source changes meanwhile
                    seen.add(uid)
                    yield uid, _value(item, STUDY_DATE), None

    def instances(self, study: PlannedStudy) -> list[PlannedInstance]:
        uid = study.study_instance_uid
        found: list[PlannedInstance] = []
        for series in self._paged(f"studies/{uid}/series", {"includefield": SERIES_COUNT}):
            series_uid = _value(series, SERIES_UID)
            if not series_uid:
                continue
            listed = {}
            for item in self._paged(f"studies/{uid}/series/{series_uid}/instances", {"includefield": SOP_CLASS}):
                sop = _value(item, SOP_UID)
                if sop:
                    listed[sop] = PlannedInstance(series_uid, sop, _value(item, SOP_CLASS))
            expected = _value(series, SERIES_COUNT)
            if expected is not None and expected.isdigit() and int(expected) != len(listed):
                raise SourceBusy(f"series {series_uid}: the source counts {expected} instances but lists {len(listed)}")
            found.extend(listed.values())
        return found

    # --- pull -------------------------------------------------------------------------------

    def _path(self, study: PlannedStudy, instance: PlannedInstance) -> str:
        return f"studies/{study.study_instance_uid}/series/{instance.series_instance_uid}/instances/{instance.sop_instance_uid}"

    def pull(self, study: PlannedStudy, wanted: list[PlannedInstance], everything: bool, deliver: Deliver) -> str:
        if everything:
            for data in self._retrieve(f"studies/{study.study_instance_uid}", f"WADO-RS study {study.study_instance_uid}"):
                deliver.defer(data)
            return ""
        gone = []
        for instance in wanted:
            try:
                for data in self._retrieve(self._path(study, instance), f"WADO-RS instance {instance.sop_instance_uid}"):
                    deliver.defer(data)
            except SourceBusy:
                raise
            except SourceError as exc:
                gone.append(str(exc))
        return f"{len(gone)} instance(s) not served: {gone[0]}" if gone else ""

    def fetch(self, study: PlannedStudy, instance: PlannedInstance) -> bytes | None:
        """WADO-RS the object again; its dataset bytes after the File Meta (PS3.10 7.1)."""
        for data in self._retrieve(self._path(study, instance), f"WADO-RS instance {instance.sop_instance_uid}"):
            try:
                return data[inspect_buffer(data).dataset_offset :]
            except ValueError as exc:  # MalformedDataset
                raise SourceError(f"the source sent a malformed object: {exc}") from None
        return None

