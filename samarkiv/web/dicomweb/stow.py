"""STOW-RS (PS3.18 10.5): store instances sent as multipart/related.

``type="application/dicom"``: each part is a Part 10 file. The body is read as
it arrives and split at the boundaries here (RFC 2046 5.1.1); a part is kept
in memory up to the archive's inline size and otherwise written to a staging
file. Parts in memory are stored :data:`GROUP` at a time with one commit
(:meth:`Archive.store_batch`; a commit per part had cost STOW-RS a third of its
rate), a large part from its file (:meth:`Archive.store_file`): the same
checks, durability and duplicate rules as C-STORE, while the next parts are
still being received. The response is sent once every part is committed.

``type="application/dicom+json"``: parts of DICOM JSON (PS3.18 F.2) and bulk
data parts named by their Content-Location, referenced by BulkDataURI; each
data set becomes a Part 10 file (pydicom) in Explicit VR Little Endian, or in
the transfer syntax its Pixel Data part names (``transfer-syntax=``
parameter, one frame per part, encapsulated here).

The response is the Store Instances Response Module (PS3.18 10.5.3, Annex I)
as application/dicom+json, or application/dicom+xml when the Accept header
asks: 200 all stored, 202 some failed or carry warnings, 409 none stored,
400 malformed multipart, 415 a media type other than these.

Access (issue 5): a new study is the caller's own (its organisation owns what
it stores); storing into a study that exists needs the gate's ``store``
decision (the annotate right: the owner, a care relationship, a share or
share link with annotate, break-glass). Each study is decided once per
request, when its first instance arrives, and audited once (``store``,
allowed or denied); a refused instance fails with 0124 (Refused: Not
Authorized, PS3.7 C.5), and ``POST /studies/{study}`` naming a refused study
is 403 before the body is read.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request, Response
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from starlette.concurrency import run_in_threadpool

from ...access.gate import study_facts
from ...access.http import organisation_of
from ...access.principal import Principal
from ...audit import AuditEvent
from ...core.archive import Archive, RejectReason, StoreOutcome, StoreResult
from ...identity.organisations import Organisation
from .dicomjson import (
    DICOM_JSON,
    DICOM_XML,
    choose,
    json_accepted,
    media_params,
    xml_document,
)
from .errors import DicomWebError
from .guard import DENIED, caller
from .metadata import dicomweb_base

log = logging.getLogger(__name__)

# Failure Reason (0008,1197) per rejection: the statuses C-STORE answers
# (docs/conformance.md), PS3.18 Table I.2-2.
FAILURE_FOR_REASON = {
    RejectReason.INVALID: 0xC000,  # Error: cannot understand
    RejectReason.PATIENT_CONFLICT: 0xC001,  # the study is filed under another Patient ID
    RejectReason.DUPLICATE_CONFLICT: 0x0111,  # a different object has this SOP Instance UID
    RejectReason.OUT_OF_RESOURCES: 0xA700,  # Refused: out of resources
}
STUDY_MISMATCH = 0xC409  # the instance belongs to another study than the target's
UNSUPPORTED_SYNTAX = 0xC122  # Referenced Transfer Syntax not supported
PROCESSING_FAILURE = 0x0110  # an unexpected error while storing
GROUP = 16  # parts held in memory are stored this many at a time, with one commit
NOT_AUTHORISED = 0x0124  # Refused: Not Authorized (PS3.7 C.5): the caller may not add to this study
# Roles that may start a study of their organisation's (researchers, auditors and patients may not).
_STORING_ROLES = frozenset({"radiologist", "clinician", "technologist", "administrator", "service"})
# Warning Reason (0008,1196), implementation-specific (PS3.18 I.2.1 allows them)
WARNING_FOR_OUTCOME = {
    StoreOutcome.DUPLICATE: 0xB010,  # an identical object was already stored: nothing changed
    StoreOutcome.REPLACED: 0xB011,  # replaced an earlier, different object (duplicate policy keep-new)
    StoreOutcome.VERSIONED: 0xB012,  # stored beside an earlier, different object (keep-both)
}

_MAX_HEADER_BYTES = 16 << 10
_MAX_JSON_BYTES = 64 << 20
_UID_TAGS = ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"]


class MalformedMultipart(ValueError):
    """The body is not the multipart/related message its Content-Type announces."""


# --- multipart/related, read as it arrives (RFC 2046 5.1.1) ---------------------------


@dataclass
class PartStart:
    headers: dict[str, str]


@dataclass
class PartData:
    data: bytes


@dataclass
class PartEnd:
    pass


class MultipartReader:
    """Incremental parser: :meth:`feed` bytes, get events (PartStart, PartData*, PartEnd)."""

    def __init__(self, boundary: str) -> None:
        self.delimiter = b"\r\n--" + boundary.encode("latin-1")
        self.buf = bytearray(b"\r\n")  # the first delimiter may start the body
        self.state = "preamble"
        self.parts = 0

    def feed(self, chunk: bytes) -> list[PartStart | PartData | PartEnd]:
        self.buf += chunk
        events: list[PartStart | PartData | PartEnd] = []
        while True:
            if self.state == "preamble":
                at = self.buf.find(self.delimiter)
                if at < 0:
                    del self.buf[: max(0, len(self.buf) - len(self.delimiter))]
                    return events
                del self.buf[: at + len(self.delimiter)]
                self.state = "delimiter"
            elif self.state == "delimiter":
                if len(self.buf) < 2:
                    return events
                if self.buf.startswith(b"--"):
                    self.state = "epilogue"
                    continue
                end = self.buf.find(b"\r\n")
                if end < 0:
                    if len(self.buf) > 1024:
                        raise MalformedMultipart("a boundary line is not terminated")
                    return events
                if self.buf[:end].strip(b" \t"):
                    raise MalformedMultipart("unexpected characters after a boundary")
                del self.buf[: end + 2]
                self.state = "headers"
            elif self.state == "headers":
                if self.buf.startswith(b"\r\n"):
                    block, size = b"", 2
                else:
                    end = self.buf.find(b"\r\n\r\n")
                    if end < 0:
                        if len(self.buf) > _MAX_HEADER_BYTES:
                            raise MalformedMultipart("part headers too long")
                        return events
                    block, size = bytes(self.buf[:end]), end + 4
                del self.buf[:size]
                events.append(PartStart(_part_headers(block)))
                self.parts += 1
                self.state = "body"
            elif self.state == "body":
                at = self.buf.find(self.delimiter)
                if at < 0:
                    keep = len(self.delimiter) - 1
                    if len(self.buf) > keep:
                        events.append(PartData(bytes(self.buf[: len(self.buf) - keep])))
                        del self.buf[: len(self.buf) - keep]
                    return events
                if at:
                    events.append(PartData(bytes(self.buf[:at])))
                events.append(PartEnd())
                del self.buf[: at + len(self.delimiter)]
                self.state = "delimiter"
            else:  # epilogue: ignored
                self.buf.clear()
                return events

    def close(self) -> None:
        """Check that the body ended with the close delimiter."""
        if self.state != "epilogue":
            if self.parts == 0:
                raise MalformedMultipart("no part found (boundary not in the body)")
            raise MalformedMultipart("the body ends before the closing boundary")


def _part_headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    if not block:
        return headers
    for line in block.decode("latin-1").split("\r\n"):
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise MalformedMultipart("malformed part header line")
        headers[name.strip().lower()] = value.strip()
    return headers


# --- results and the response ----------------------------------------------------------


@dataclass
class Outcome:
    """What became of one instance (or of a part that was not one)."""

    sop_class: str = ""
    sop_instance: str = ""
    study: str = ""
    series: str = ""
    failure: int | None = None
    warning: int | None = None
    reason: str = ""

    @property
    def stored(self) -> bool:
        return self.failure is None


def _uids(source: Path | bytes) -> dict[str, str]:
    """The four UIDs of a Part 10 file, as far as they can be read."""
    try:
        ds = dcmread(BytesIO(source) if isinstance(source, bytes) else source, stop_before_pixels=True, specific_tags=_UID_TAGS)
        return {k: str(ds.get(k, "") or "") for k in _UID_TAGS}
    except Exception:  # noqa: BLE001 - the store itself reports what is wrong
        return {k: "" for k in _UID_TAGS}


def _outcome(uids: dict[str, str], result: StoreResult) -> Outcome:
    outcome = Outcome(
        uids["SOPClassUID"], result.sop_instance_uid or uids["SOPInstanceUID"], uids["StudyInstanceUID"], uids["SeriesInstanceUID"]
    )
    if result.outcome is StoreOutcome.REJECTED:
        outcome.failure = FAILURE_FOR_REASON.get(result.reason or RejectReason.INVALID, 0xC000)
        outcome.reason = result.message
    else:
        outcome.warning = WARNING_FOR_OUTCOME.get(result.outcome)
    return outcome


def response_dataset(base: str, outcomes: list[Outcome]) -> dict[str, Any]:
    """The Store Instances Response Module (PS3.18 Table 10.5.3-2 / I.1-1) in DICOM JSON."""

    def ui(value: str) -> dict[str, Any]:
        return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}

    out: dict[str, Any] = {}
    studies = {o.study for o in outcomes if o.stored}
    if len(studies) == 1:
        out["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{studies.pop()}"]}
    failed = [
        {"00081150": ui(o.sop_class), "00081155": ui(o.sop_instance), "00081197": {"vr": "US", "Value": [o.failure]}}
        for o in outcomes
        if not o.stored
    ]
    referenced = []
    for o in outcomes:
        if not o.stored:
            continue
        item: dict[str, Any] = {"00081150": ui(o.sop_class), "00081155": ui(o.sop_instance)}
        url = f"{base}/studies/{o.study}/series/{o.series}/instances/{o.sop_instance}"
        item["00081190"] = {"vr": "UR", "Value": [url]}
        if o.warning is not None:
            item["00081196"] = {"vr": "US", "Value": [o.warning]}
        referenced.append(item)
    if failed:
        out["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        out["00081199"] = {"vr": "SQ", "Value": referenced}
    return out


def http_status(outcomes: list[Outcome]) -> int:
    """PS3.18 Table 10.5.3-1."""
    stored = [o for o in outcomes if o.stored]
    if not stored:
        return 409
    if len(stored) == len(outcomes) and all(o.warning is None for o in stored):
        return 200
    return 202


# --- the service -----------------------------------------------------------------------


@dataclass
class StowTarget:
    """What a STOW-RS request stores into: the study of ``POST /studies/{study}``
    (None: any), the authenticated caller's organisation, owner of what it
    stores, and the caller, with the store decision made for each study so far."""

    study: str | None
    owner: Organisation | None
    principal: Principal | None = None
    decided: dict[str, bool] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class _Received:
    """One part as received: in memory, or (when large) in a staging file."""

    headers: dict[str, str]
    memory: bytearray = field(default_factory=bytearray)
    path: Path | None = None
    size: int = 0
    handle: Any = None

    def content(self) -> bytes:
        if self.path is None:
            return bytes(self.memory)
        return self.path.read_bytes()

    def discard(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)


class StowService:
    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.in_memory = int(getattr(archive.settings, "inline_max_bytes", 0))
        self.workers = max(1, int(getattr(archive.settings, "store_workers", 4)))

    async def store(self, request: Request, study: str | None) -> Response:
        representation = choose(request.headers.get("accept"), {"json": json_accepted, "xml": _xml_only})
        if representation is None:
            raise DicomWebError(406, "the store response is available as application/dicom+json or application/dicom+xml")
        kind, params = media_params(request.headers.get("content-type", ""))
        if kind != "multipart/related":
            raise DicomWebError(415, 'STOW-RS takes multipart/related; type="application/dicom" (or application/dicom+json)')
        root_type = params.get("type", "").lower()
        if root_type not in ("application/dicom", DICOM_JSON, ""):
            raise DicomWebError(415, f"unsupported multipart type {root_type!r}: use application/dicom or application/dicom+json")
        boundary = params.get("boundary")
        if not boundary:
            raise DicomWebError(400, "the Content-Type has no boundary parameter")
        base = dicomweb_base(request, self.archive)
        target = StowTarget(study, organisation_of(request), caller(request))
        if study is not None and not await run_in_threadpool(self.may_store, target, study):
            raise DicomWebError(403, DENIED, title="Forbidden")
        outcomes = await self._receive(request.stream(), boundary, root_type or "application/dicom", target)
        status = http_status(outcomes)
        body = response_dataset(base, outcomes)
        failures = sum(1 for o in outcomes if not o.stored)
        if failures:
            log.info("STOW-RS: %d of %d instance(s) not stored", failures, len(outcomes))
        if representation == "xml":
            return Response(xml_document(body), status_code=status, media_type=DICOM_XML)
        return Response(json.dumps(body).encode("utf-8"), status_code=status, media_type=DICOM_JSON)

    async def _receive(self, stream: AsyncIterator[bytes], boundary: str, root_type: str, target: StowTarget) -> list[Outcome]:
        reader = MultipartReader(boundary)
        slots = asyncio.Semaphore(self.workers)
        tasks: list[asyncio.Task[list[Outcome]]] = []
        json_parts: list[_Received] = []
        bulk_parts: list[_Received] = []
        current: _Received | None = None
        malformed: str | None = None

        held: list[_Received] = []  # small parts waiting to be stored together

        async def store_held() -> None:
            await slots.acquire()
            tasks.append(asyncio.create_task(self._store_dicom_parts(list(held), target, slots)))
            held.clear()

        async def finish(part: _Received) -> None:
            part_type = media_params(part.headers.get("content-type", root_type))[0]
            if part_type == "application/dicom" and root_type == "application/dicom":
                held.append(part)
                if part.path is not None or len(held) >= GROUP:
                    await store_held()
            elif root_type == DICOM_JSON and part_type in (DICOM_JSON, "application/json"):
                json_parts.append(part)
            elif root_type == DICOM_JSON:
                bulk_parts.append(part)
            else:
                part.discard()
                tasks.append(_done([Outcome(failure=0xC000, reason=f"part of type {part_type!r} is not application/dicom")]))

        try:
            async for chunk in stream:
                for event in reader.feed(chunk):
                    if isinstance(event, PartStart):
                        current = _Received(event.headers)
                    elif isinstance(event, PartData) and current is not None:
                        self._append(current, event.data)
                    elif isinstance(event, PartEnd) and current is not None:
                        if current.handle is not None:
                            current.handle.close()
                            current.handle = None
                        await finish(current)
                        current = None
            reader.close()
            if held:
                await store_held()
        except MalformedMultipart as exc:
            malformed = str(exc)
        except BaseException:  # the client went away: let the stores under way finish
            await asyncio.gather(*tasks, return_exceptions=True)
            for part in json_parts + bulk_parts + held:
                part.discard()
            raise
        finally:
            if current is not None:
                current.discard()
        outcomes: list[Outcome] = []
        for task in tasks:
            outcomes.extend(await task)
        if json_parts:
            outcomes.extend(await run_in_threadpool(self._store_json_parts, json_parts, bulk_parts, target))
        for part in json_parts + bulk_parts:
            part.discard()
        if malformed is not None:
            if not any(o.stored for o in outcomes):
                raise DicomWebError(400, f"malformed multipart/related body: {malformed}")
            outcomes.append(Outcome(failure=0xC000, reason=malformed))
        if not outcomes:
            raise DicomWebError(400, "the request holds no instance to store")
        return outcomes

    def _append(self, part: _Received, data: bytes) -> None:
        part.size += len(data)
        if part.path is None and part.size <= self.in_memory:
            part.memory += data
            return
        if part.path is None:
            part.path = self.archive.new_staging_file()
            part.path.parent.mkdir(parents=True, exist_ok=True)
            part.handle = open(part.path, "wb")  # noqa: SIM115 - closed when the part ends
            part.handle.write(part.memory)
            part.memory = bytearray()
        part.handle.write(data)

    async def _store_dicom_parts(self, parts: list[_Received], target: StowTarget, slots: asyncio.Semaphore) -> list[Outcome]:
        try:
            return await run_in_threadpool(self._store_dicom, parts, target)
        except Exception:  # noqa: BLE001 - these parts' trouble is their failure
            log.exception("STOW-RS: storing %d part(s) failed", len(parts))
            return [Outcome(failure=PROCESSING_FAILURE, reason="processing failure") for _ in parts]
        finally:
            for part in parts:
                part.discard()
            slots.release()

    def _store_dicom(self, parts: list[_Received], target: StowTarget) -> list[Outcome]:
        """Store Part 10 parts (blocking: runs in the thread pool): those held in
        memory with one commit (Archive.store_batch), a large one from its file."""
        outcomes: list[Outcome | None] = []
        batch: list[tuple[int, dict[str, str], bytes]] = []
        for part in parts:
            source: Path | bytes = part.path if part.path is not None else bytes(part.memory)
            uids = _uids(source) if part.size else {}
            outcomes.append(self._checked(part, target, uids))
            if outcomes[-1] is not None:
                continue
            if isinstance(source, Path):
                outcomes[-1] = _outcome(uids, self._store_source(source, target.owner))
            else:
                batch.append((len(outcomes) - 1, uids, source))
        if batch:
            results = self.archive.store_batch(
                [(data, uids["SOPInstanceUID"] or None, uids["SOPClassUID"] or None) for _n, uids, data in batch],
                owner=target.owner,
            )
            for (n, uids, _data), result in zip(batch, results, strict=True):
                outcomes[n] = _outcome(uids, result)
        return [o for o in outcomes if o is not None]  # every part has its outcome now

    def _store_source(self, source: Path | bytes, owner: Organisation | None) -> StoreResult:
        if isinstance(source, bytes):
            return self.archive.store_bytes(source, owner=owner)
        return self.archive.store_file(source, owner=owner)

    def _checked(self, part: _Received, target: StowTarget, uids: dict[str, str]) -> Outcome | None:
        """The failure of a part that is not to be stored, else None."""
        if part.size == 0:
            return Outcome(failure=0xC000, reason="empty part")
        if target.study is not None and uids["StudyInstanceUID"] != target.study:
            return Outcome(uids["SOPClassUID"], uids["SOPInstanceUID"], failure=STUDY_MISMATCH,
                           reason="the instance belongs to another study than the request's")  # fmt: skip
        return self._refused(target, uids)

    # --- access ---------------------------------------------------------------------

    def may_store(self, target: StowTarget, study_uid: str) -> bool:
        """Whether the caller may store into ``study_uid``: decided (and audited) at
        the request's first instance of the study, remembered for the rest."""
        with target.lock:
            known = target.decided.get(study_uid)
            if known is None:
                known = target.decided[study_uid] = self._decide(target.principal, study_uid)
            return known

    def _decide(self, principal: Principal | None, study_uid: str) -> bool:
        if principal is None:
            return False
        with self.archive.engine.connect() as conn:
            owners = study_facts(conn, [study_uid])[study_uid].owner_org_pks
        if owners:
            return study_uid in self.archive.gate.authorise(principal, "store", [study_uid]).allowed
        # a new study: the caller's organisation's own
        allowed = principal.org_pk is not None and principal.kind != "share-link" and bool(principal.roles & _STORING_ROLES)
        self.archive.gate.audit(
            AuditEvent("store", principal, outcome="allowed" if allowed else "denied", study_uid=study_uid,
                       owner_org=principal.org_code, purpose="TREAT" if allowed else None,
                       outcome_detail="" if allowed else "this caller may not start a study")
        )  # fmt: skip
        return allowed

    def _refused(self, target: StowTarget, uids: dict[str, str]) -> Outcome | None:
        if not uids["StudyInstanceUID"] or self.may_store(target, uids["StudyInstanceUID"]):
            return None
        return Outcome(uids["SOPClassUID"], uids["SOPInstanceUID"], failure=NOT_AUTHORISED,
                       reason="not authorised to store into this study")  # fmt: skip

    # --- application/dicom+json -------------------------------------------------------

    def _store_json_parts(self, json_parts: list[_Received], bulk_parts: list[_Received], target: StowTarget) -> list[Outcome]:
        bulk = {}
        for part in bulk_parts:
            location = part.headers.get("content-location")
            if location:
                bulk[location] = part
        outcomes = []
        for part in json_parts:
            if part.size > _MAX_JSON_BYTES:
                outcomes.append(Outcome(failure=0xA700, reason="metadata part too large"))
                continue
            try:
                documents = json.loads(part.content())
            except (ValueError, UnicodeDecodeError):
                outcomes.append(Outcome(failure=0xC000, reason="a metadata part is not valid JSON"))
                continue
            for document in documents if isinstance(documents, list) else [documents]:
                outcomes.append(self._store_json_dataset(document, bulk, target))
        return outcomes

    def _store_json_dataset(self, document: Any, bulk: dict[str, _Received], target: StowTarget) -> Outcome:
        uids = {k: "" for k in _UID_TAGS}
        if isinstance(document, dict):
            for keyword, tag in (("SOPClassUID", "00080016"), ("SOPInstanceUID", "00080018"),
                                 ("StudyInstanceUID", "0020000D"), ("SeriesInstanceUID", "0020000E")):  # fmt: skip
                value = (document.get(tag) or {}).get("Value") or [""]
                uids[keyword] = str(value[0])
        if target.study is not None and uids["StudyInstanceUID"] != target.study:
            return Outcome(uids["SOPClassUID"], uids["SOPInstanceUID"], failure=STUDY_MISMATCH,
                           reason="the instance belongs to another study than the request's")  # fmt: skip
        try:
            data = part10_from_json(document, bulk)
        except UnsupportedSyntax as exc:
            return Outcome(uids["SOPClassUID"], uids["SOPInstanceUID"], failure=UNSUPPORTED_SYNTAX, reason=str(exc))
        except Exception as exc:  # noqa: BLE001 - a data set pydicom cannot build
            return Outcome(uids["SOPClassUID"], uids["SOPInstanceUID"], failure=0xC000,
                           reason=f"cannot build a DICOM object from the JSON: {type(exc).__name__}")  # fmt: skip
        if refused := self._refused(target, uids):
            return refused
        return _outcome(uids, self._store_source(data, target.owner))


async def _done_coroutine(value: list[Outcome]) -> list[Outcome]:
    return value


def _done(value: list[Outcome]) -> asyncio.Task[list[Outcome]]:
    return asyncio.create_task(_done_coroutine(value))


def _xml_only(kind: str, params: dict[str, str]) -> bool:
    return kind == DICOM_XML


class UnsupportedSyntax(ValueError):
    """A bulk data part names a transfer syntax this archive does not take."""


def _bulk_lookup(bulk: dict[str, _Received], uri: str) -> _Received:
    if uri in bulk:
        return bulk[uri]
    path = urlsplit(uri).path
    for location, part in bulk.items():
        if urlsplit(location).path == path and path:
            return part
    raise KeyError("no part has the Content-Location a BulkDataURI names")


def part10_from_json(document: dict[str, Any], bulk: dict[str, _Received]) -> bytes:
    """A Part 10 file from one DICOM JSON data set and its bulk data parts."""
    syntaxes: dict[str, str] = {}

    def bulk_data(tag: str, vr: str, uri: str) -> bytes:
        part = _bulk_lookup(bulk, uri)
        params = media_params(part.headers.get("content-type", "application/octet-stream"))[1]
        if "transfer-syntax" in params:
            syntaxes[tag.upper()] = params["transfer-syntax"]
        return part.content()

    meta_elements = {k: v for k, v in document.items() if k.upper().startswith("0002")}
    body = {k: v for k, v in document.items() if not k.upper().startswith("0002")}
    ds = Dataset.from_json(body, bulk_data_uri_handler=bulk_data)
    meta = FileMetaDataset(Dataset.from_json(meta_elements)) if meta_elements else FileMetaDataset()
    syntax = UID(str(meta.get("TransferSyntaxUID") or syntaxes.get("7FE00010") or ExplicitVRLittleEndian))
    if syntax == ImplicitVRLittleEndian:
        syntax = ExplicitVRLittleEndian  # the same values; explicit VR keeps the VRs the JSON gave
    if syntax.is_compressed:
        if "PixelData" not in ds:
            raise UnsupportedSyntax("a compressed transfer syntax needs Pixel Data")
        frame = ds.PixelData
        if not frame.startswith(b"\xfe\xff\x00\xe0"):  # not yet encapsulated: one frame per part
            ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    elif not syntax.is_transfer_syntax or syntax.is_deflated or not syntax.is_little_endian:
        raise UnsupportedSyntax(f"transfer syntax {syntax} is not supported for JSON uploads")
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    out = BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def create_router(archive: Archive) -> APIRouter:
    service = StowService(archive)
    router = APIRouter()

    @router.post("/studies", tags=["STOW-RS"])
    async def store_instances(request: Request) -> Response:
        """Store instances (PS3.18 10.5)."""
        return await service.store(request, None)

    @router.post("/studies/{study}", tags=["STOW-RS"])
    async def store_study_instances(study: str, request: Request) -> Response:
        """Store instances of one study; others fail with a reason (PS3.18 10.5)."""
        return await service.store(request, study)

    return router
