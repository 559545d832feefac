"""HTTP: FHIR R4 AuditEvent search and export, and the patient's access log.

- ``GET /fhir/AuditEvent?patient=Patient/<id>&date=ge2024-01-01`` (also
  ``action``, ``outcome``, ``_count``, ``_offset``): a searchset Bundle.
- ``GET /fhir/AuditEvent/<seq>``: one AuditEvent.
- ``GET /fhir/AuditEvent/$export`` (same parameters, plus ``_since``):
  NDJSON (``application/fhir+ndjson``), streamed.
- ``GET /api/patients/{id}/access-log``: JSON ``{"patient", "entries": [...]}``,
  each entry with its plain-words ``text`` (samarkiv/audit/access_log.py);
  ``{id}`` is a person number, a national number or ``VALUE^ISSUER``.

Who may read: auditors and administrators everything; a patient
(``Principal.patient_key``) only their own records; anyone else gets 403.
Without ``request.state.principal`` (no authentication mounted) access is
not restricted. Each read is itself audited (``audit-read``) when the
archive carries a trail as ``archive.audit``.

``create_router`` returns one router with full paths: include it in the app
*before* the FHIR router, whose catch-all would otherwise answer
``/fhir/AuditEvent``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy import select

from ..access.principal import Principal
from ..identity.patients import IdentityError
from ..index.audit_schema import audit_events
from ..web.fhir.errors import FhirError, FhirRoute, fhir_json
from .access_log import access_log, resolve_patient
from .events import AuditEvent
from .fhir import SearchError, audit_event, ndjson, patient_key, search, searchset

MAX_COUNT = 1000


def _principal(request: Request) -> Principal | None:
    return getattr(request.state, "principal", None)


def _reads_all(p: Principal | None) -> bool:
    return p is None or p.kind == "system" or p.has_role("auditor", "administrator")


def _note_read(archive: Any, principal: Principal | None, person: int | None, outcome: str = "allowed") -> None:
    trail = getattr(archive, "audit", None)
    if trail is not None:
        trail.record(AuditEvent(
            "audit-read", principal, outcome=outcome, patient_keys=[person] if person is not None else [],
            purpose="PATRQT" if principal is not None and principal.patient_key is not None else "HCOMPL",
        ))  # fmt: skip


def _scope(archive: Any, request: Request, params: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], int | None]:
    """The parameters narrowed to what the caller may see, and the patient they name."""
    p = _principal(request)
    try:
        named = [patient_key(v) for k, v in params if k == "patient"]
    except SearchError as exc:
        raise FhirError(400, str(exc)) from None
    if _reads_all(p):
        return params, named[0] if named else None
    if p is not None and p.patient_key is not None and all(k == p.patient_key for k in named):
        return [*params, ("patient", str(p.patient_key))], p.patient_key
    _note_read(archive, p, None, "denied")
    raise FhirError(403, "reading audit events needs the auditor role", code="forbidden")


def create_router(archive: Any) -> APIRouter:
    """The audit routes (full paths; see the module docstring)."""
    router = APIRouter()
    fhir = APIRouter(route_class=FhirRoute)

    def params_of(request: Request) -> list[tuple[str, str]]:
        return [(k, v) for k, v in request.query_params.multi_items() if k not in ("_format",)]

    @fhir.get("/fhir/AuditEvent", include_in_schema=False)
    def search_audit_events(request: Request) -> Response:
        params, person = _scope(archive, request, params_of(request))
        try:
            count = min(int(request.query_params.get("_count", "100")), MAX_COUNT)
            offset = max(int(request.query_params.get("_offset", "0")), 0)
        except ValueError:
            raise FhirError(400, "_count and _offset must be integers") from None
        try:
            with archive.engine.connect() as conn:
                total, records = search(conn, params, count=max(count, 0), offset=offset)
        except SearchError as exc:
            raise FhirError(400, str(exc)) from None
        _note_read(archive, _principal(request), person)
        base = str(request.base_url).rstrip("/") + "/fhir"
        return fhir_json(searchset(base, params, total, [audit_event(r) for r in records], count, offset))

    @fhir.get("/fhir/AuditEvent/$export", include_in_schema=False)
    def export_audit_events(request: Request) -> Response:
        params, person = _scope(archive, request, params_of(request))
        since = None
        if "_since" in request.query_params:
            try:
                since = datetime.fromisoformat(request.query_params["_since"].replace("Z", "+00:00"))
            except ValueError:
                raise FhirError(400, "_since must be a FHIR instant") from None
        try:
            from .fhir import conditions

            conditions(params)  # bad parameters answer 400 before streaming starts
        except SearchError as exc:
            raise FhirError(400, str(exc)) from None
        _note_read(archive, _principal(request), person)

        def lines():  # type: ignore[no-untyped-def]
            with archive.engine.connect() as conn:
                yield from ndjson(conn, params, since=since)

        return StreamingResponse(lines(), media_type="application/fhir+ndjson")

    @fhir.get("/fhir/AuditEvent/{seq}", include_in_schema=False)
    def read_audit_event(seq: str, request: Request) -> Response:
        if not seq.isdigit():
            raise FhirError(404, f"no AuditEvent {seq!r}")
        with archive.engine.connect() as conn:
            row = conn.execute(select(audit_events).where(audit_events.c.seq == int(seq))).first()
        p = _principal(request)
        if row is None:
            raise FhirError(404, f"no AuditEvent {seq}")
        keys = [int(k) for k in (row.patient_keys or "").split(",") if k]
        if not _reads_all(p) and not (p is not None and p.patient_key is not None and p.patient_key in keys):
            raise FhirError(404, f"no AuditEvent {seq}")  # no hint of what exists
        _note_read(archive, p, keys[0] if keys else None)
        return fhir_json(audit_event(row._mapping))

    @router.get("/api/patients/{patient}/access-log", tags=["audit"])
    def patient_access_log(patient: str, request: Request) -> Response:
        """Who accessed this patient's data, when and why, in plain words (for the patient portal)."""
        p = _principal(request)
        try:
            with archive.engine.connect() as conn:
                person = resolve_patient(conn, patient)
                allowed = _reads_all(p) or (p is not None and p.patient_key == person)
                entries = access_log(conn, person) if allowed else []
        except IdentityError as exc:
            if not _reads_all(p):
                return JSONResponse({"error": "forbidden"}, status_code=403)
            return JSONResponse({"error": str(exc)}, status_code=404)
        if not allowed:
            _note_read(archive, p, None, "denied")
            return JSONResponse({"error": "forbidden"}, status_code=403)
        _note_read(archive, p, person)
        return JSONResponse({"patient": person, "entries": [e.as_dict() for e in entries]})

    router.include_router(fhir)
    return router
