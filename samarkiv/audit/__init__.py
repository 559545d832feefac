"""The audit trail: who did what to which patient's data, when, from where, why, with what outcome.

Records are append-only and tamper-evident: each carries a dense ``seq`` and
``hash`` = SHA-256(prev_hash + canonical encoding), with periodic anchors
(tables in samarkiv/index/audit_schema.py).

Using it from a door (the whole API)::

    from samarkiv.audit import AuditEvent, open_trail

    trail = open_trail(archive.engine, archive.settings)   # once per process; trail.close() at exit
    trail.record(AuditEvent(
        "retrieve", principal,                   # samarkiv.access.principal.Principal
        outcome="allowed",                       # allowed, denied, error (+ outcome_detail)
        patient_keys=[person_pk],                # persons of the master patient index
        study_uid=..., series_uid=..., instance_uid=..., count=n_instances,
        owner_org="ks",                          # the organisation owning the data
        purpose="TREAT", care_relationship=rel_pk, reason="",
        detail={"query": {...}},                 # optional, kept as canonical JSON
    ))                                           # a few microseconds: queued, appended in batches

- ``record(event)`` never touches the database on the caller's thread;
  ``flush()`` waits for the queued events to commit (tests, shutdown).
- ``record_in(connection, events)`` appends inside the caller's transaction.
- Actions: ``events.ACTIONS`` (query, retrieve, view, download, export, store,
  delete, share, break-glass, link, merge, unlink, unmerge, login, logout,
  review, audit-read). A break-glass needs a ``reason`` and is flagged for
  review, as is any event with ``flagged=True``.

Modules: events.py (the event, canonical encoding, hash), trail.py (the
writer), verify.py (``audit verify``), review.py, access_log.py (the patient's
log in plain words), fhir.py (FHIR R4 AuditEvent), dicom.py (PS3.15 A.5 XML),
syslog.py (RFC 5424 over UDP / RFC 5425 over TLS), config.py (``[audit]``),
web.py (``/fhir/AuditEvent``, ``/api/patients/{id}/access-log``), cli.py.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine

from .events import ACTIONS, PURPOSES, AuditError, AuditEvent
from .trail import AuditTrail, AuditUnavailable


def open_trail(engine: Engine, settings: Any) -> AuditTrail:
    """The process's trail, forwarding to the ``[audit] syslog`` collector when one is configured."""
    from .config import audit_settings

    cfg = audit_settings(settings)
    forward = None
    if cfg.syslog:
        from .syslog import SyslogForwarder

        forward = SyslogForwarder(cfg, engine=engine, aet=getattr(settings, "aet", "SAMARKIV"))
    trail = AuditTrail.from_settings(engine, settings, forward=forward)
    return trail


__all__ = ["ACTIONS", "PURPOSES", "AuditError", "AuditEvent", "AuditTrail", "AuditUnavailable", "open_trail"]
