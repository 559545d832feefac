"""DICOMweb clients for the benchmark: STOW-RS, QIDO-RS, WADO-RS (httpx).

Every call checks its answer (instances stored, studies found, parts
received), so a fast wrong answer is never reported as a result. Bodies are
built before the clock starts; the clock covers sending the request and
reading the whole answer.
"""

from __future__ import annotations

import gzip
import json
import random
import secrets
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .dicom import BenchError, latency_stats

DICOM_JSON = "application/dicom+json"
REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
TIMEOUT = httpx.Timeout(600.0, connect=30.0)

# Study-level return keys, as in the C-FIND benchmark (most are QIDO-RS defaults anyway).
QIDO_INCLUDE = (
    "PatientName", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate", "StudyTime",
    "AccessionNumber", "StudyID", "StudyDescription", "ReferringPhysicianName",
)  # fmt: skip
RETRIEVE_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
RETRIEVE_ACCEPT_PLAIN = 'multipart/related; type="application/dicom"'


# DICOMweb root -> the headers that authenticate to it (samarkiv's bearer token; Orthanc needs none)
CREDENTIALS: dict[str, dict[str, str]] = {}


def client(base: str = "") -> httpx.Client:
    """One keep-alive HTTP/1.1 connection's worth of client, with ``base``'s credentials."""
    return httpx.Client(
        timeout=TIMEOUT, limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        headers=CREDENTIALS.get(base.rstrip("/"), {}),
    )  # fmt: skip


# --- STOW-RS -------------------------------------------------------------------------


@dataclass
class StowBody:
    """One STOW-RS request body: ``count`` Part 10 files as multipart/related (RFC 2387)."""

    content: bytes
    content_type: str
    count: int


def stow_bodies(files: Sequence[Path], per_request: int) -> list[StowBody]:
    """PS3.18 10.5: multipart/related; type="application/dicom", ``per_request`` files each."""
    bodies = []
    for start in range(0, len(files), per_request):
        chunk = files[start : start + per_request]
        boundary = f"bench-{secrets.token_hex(12)}"
        parts = []
        for path in chunk:
            parts += [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), path.read_bytes(), b"\r\n"]
        parts.append(f"--{boundary}--\r\n".encode())
        bodies.append(StowBody(b"".join(parts), f'multipart/related; type="application/dicom"; boundary={boundary}', len(chunk)))
    return bodies


def _check_stow(response: httpx.Response, expected: int) -> None:
    if response.status_code != 200:
        raise BenchError(f"STOW-RS answered {response.status_code}: {response.text[:500]}")
    answer = response.json()
    stored = len((answer.get(REFERENCED_SOP_SEQUENCE) or {}).get("Value") or [])
    failed = len((answer.get(FAILED_SOP_SEQUENCE) or {}).get("Value") or [])
    if stored != expected or failed:
        raise BenchError(f"STOW-RS stored {stored}/{expected} instances, {failed} failed")


def _stow_some(base: str, bodies: Sequence[StowBody], start: threading.Barrier | None = None) -> None:
    with client(base) as http:
        if start is not None:
            start.wait(timeout=60)
        for body in bodies:
            response = http.post(f"{base}/studies", content=body.content,
                                 headers={"Content-Type": body.content_type, "Accept": DICOM_JSON})  # fmt: skip
            _check_stow(response, body.count)


def stow(base: str, bodies: Sequence[StowBody], clients: int = 1) -> float:
    """POST every body; with ``clients`` > 1, that many threads each with its
    own connection share the bodies round-robin. Seconds until the last answer."""
    if clients <= 1:
        started = time.perf_counter()
        _stow_some(base, bodies)
        return time.perf_counter() - started
    shares = [list(bodies[k::clients]) for k in range(clients)]
    barrier = threading.Barrier(clients + 1)
    errors: list[BaseException] = []

    def work(share: list[StowBody]) -> None:
        try:
            _stow_some(base, share, barrier)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(share,), daemon=True) for share in shares]
    for thread in threads:
        thread.start()
    try:
        barrier.wait(timeout=60)  # every client has its connection object; go
    except threading.BrokenBarrierError:
        pass
    started = time.perf_counter()
    for thread in threads:
        thread.join(900)
    elapsed = time.perf_counter() - started
    if errors:
        raise BenchError(f"STOW-RS ({clients} clients): {type(errors[0]).__name__}: {errors[0]}")
    if any(thread.is_alive() for thread in threads):
        raise BenchError(f"STOW-RS ({clients} clients): timed out")
    return elapsed


# --- QIDO-RS ------------------------------------------------------------------------------


@dataclass
class QidoRun:
    latencies_ms: list[float] = field(default_factory=list)
    matches: int = 0
    wrong_counts: int = 0
    wrong_examples: list[str] = field(default_factory=list)
    capped: bool = False

    def merge(self, other: QidoRun) -> None:
        self.latencies_ms += other.latencies_ms
        self.matches += other.matches
        self.wrong_counts += other.wrong_counts
        self.wrong_examples = (self.wrong_examples + other.wrong_examples)[:5]
        self.capped = self.capped or other.capped

    def as_dict(self) -> dict[str, Any]:
        return {**latency_stats(self.latencies_ms), "matches": self.matches, "wrong_counts": self.wrong_counts,
                "wrong_examples": self.wrong_examples, "time_capped": self.capped}  # fmt: skip


class QidoClient:
    """QIDO-RS study search by Patient ID over one keep-alive connection;
    ``patients`` maps a Patient ID to its number of studies, and every answer's
    count is checked against it."""

    def __init__(self, base: str, patients: dict[str, int]) -> None:
        self.base = base
        self.patients = patients
        self.ids = sorted(patients)
        self.http = client(base)
        self.include = ",".join(QIDO_INCLUDE)

    def close(self) -> None:
        self.http.close()

    def query(self, patient_id: str) -> tuple[float, int]:
        """(seconds, studies found) for one search (PS3.18 10.6, Search Studies)."""
        params = {"PatientID": patient_id, "includefield": self.include}
        t0 = time.perf_counter()
        response = self.http.get(f"{self.base}/studies", params=params, headers={"Accept": DICOM_JSON})
        body = response.content
        elapsed = time.perf_counter() - t0
        if response.status_code == 204:
            return elapsed, 0
        if response.status_code != 200:
            raise BenchError(f"QIDO-RS answered {response.status_code}: {body[:500]!r}")
        return elapsed, len(json.loads(body))

    def run(self, queries: int, *, warmup: int = 0, seed: int = 7, max_seconds: float | None = None, min_queries: int = 20) -> QidoRun:
        rng = random.Random(seed)
        run = QidoRun()
        started = time.perf_counter()
        for n in range(warmup + queries):
            if max_seconds is not None and n >= warmup + min_queries and time.perf_counter() - started > max_seconds:
                run.capped = True
                break
            pid = rng.choice(self.ids)
            elapsed, found = self.query(pid)
            if n < warmup:
                continue
            run.latencies_ms.append(round(elapsed * 1000, 4))
            run.matches += found
            if found != self.patients[pid]:
                run.wrong_counts += 1
                if len(run.wrong_examples) < 5:
                    run.wrong_examples.append(f"{pid}: {found} studies, expected {self.patients[pid]}")
        return run


# --- WADO-RS -------------------------------------------------------------------------------------


def series_metadata(http: httpx.Client, base: str, study: str, series: str, expected: int, encoding: str) -> dict[str, Any]:
    """One WADO-RS series metadata request (PS3.18 10.4.1.1.2), with
    ``Accept-Encoding: encoding``; the JSON is decoded and its length checked
    outside the timed part."""
    headers = {"Accept": DICOM_JSON, "Accept-Encoding": encoding}
    t0 = time.perf_counter()
    with http.stream("GET", f"{base}/studies/{study}/series/{series}/metadata", headers=headers) as response:
        raw = b"".join(response.iter_raw())
    elapsed = time.perf_counter() - t0
    if response.status_code != 200:
        raise BenchError(f"series metadata answered {response.status_code}: {raw[:300]!r}")
    content_encoding = response.headers.get("content-encoding", "identity")
    items = json.loads(_decode(raw, content_encoding))
    if len(items) != expected:
        raise BenchError(f"series metadata listed {len(items)} instances, expected {expected}")
    return {"seconds": elapsed, "wire_bytes": len(raw), "content_encoding": content_encoding}


def retrieve_study(http: httpx.Client, base: str, study: str, expected: int, accept: str = RETRIEVE_ACCEPT) -> dict[str, Any]:
    """One WADO-RS study retrieve (PS3.18 10.4.1.1.1) read to the end; the parts are counted."""
    headers = {"Accept": accept, "Accept-Encoding": "identity"}
    t0 = time.perf_counter()
    with http.stream("GET", f"{base}/studies/{study}", headers=headers) as response:
        body = b"".join(response.iter_raw())
    elapsed = time.perf_counter() - t0
    if response.status_code != 200:
        raise BenchError(f"study retrieve answered {response.status_code}: {body[:300]!r}")
    content_type = response.headers.get("content-type", "")
    boundary = _boundary(content_type)
    if boundary is None:
        raise BenchError(f"study retrieve answered {content_type!r}, not multipart/related")
    parts = body.count(b"--" + boundary.encode()) - 1  # the closing delimiter also starts with --boundary
    if parts != expected:
        raise BenchError(f"study retrieve returned {parts} parts, expected {expected}")
    return {"seconds": elapsed, "bytes": len(body), "parts": parts, "content_type": content_type}


def _decode(raw: bytes, content_encoding: str) -> bytes:
    """The body without its HTTP content coding (RFC 9110 8.4.1)."""
    coding = content_encoding.strip().lower()
    if coding in ("", "identity"):
        return raw
    if coding == "gzip":
        return gzip.decompress(raw)
    if coding == "deflate":
        try:
            return zlib.decompress(raw)
        except zlib.error:
            return zlib.decompress(raw, -zlib.MAX_WBITS)  # raw deflate, as some servers send
    raise BenchError(f"unexpected Content-Encoding {content_encoding!r}")


def _boundary(content_type: str) -> str | None:
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "boundary":
            return value.strip().strip('"')
    return None
