"""Audit events and their canonical encoding (the input of the hash chain).

An :class:`AuditEvent` is what a door hands to ``AuditTrail.record``: cheap
to build (a dataclass; the principal's fields are read later, on the writer
thread). :func:`row_of` turns it into the column values of ``audit_events``;
:func:`chain_hash` hashes a row: SHA-256 over ``prev_hash``, a newline and the
canonical JSON (sorted keys, no spaces, UTF-8) of every hashed column. The
time is encoded as ISO 8601 UTC with microseconds, so SQLite (naive) and
PostgreSQL (aware) round trips hash alike.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..access.principal import Principal

# What is audited (issue 5): every access to patient data, and the security events around it.
ACTIONS = (
    "query", "retrieve", "view", "download", "export", "store", "delete", "share", "break-glass",
    "link", "merge", "unlink", "unmerge", "login", "logout", "review", "audit-read", "fixity",
)  # fmt: skip
OUTCOMES = ("allowed", "denied", "error")

# HL7 v3 PurposeOfUse (FHIR R4 v3-PurposeOfUse, code system v3-ActReason) codes used.
PURPOSES = {
    "TREAT": "treatment",
    "ETREAT": "emergency treatment",
    "HOPERAT": "healthcare operations",
    "PATRQT": "patient request",
    "HRESCH": "research",
    "HSYSADMIN": "system administration",
    "HLEGAL": "legal",
    "HCOMPL": "compliance",
}

# Columns covered by the hash, in the canonical encoding's key names.
HASHED = (
    "seq", "time", "action", "outcome", "outcome_detail", "principal_kind", "user_name", "user_pk",
    "org_code", "roles", "auth_method", "address", "patient_keys", "owner_org", "study_uid", "series_uid",
    "instance_uid", "object_count", "purpose", "care_relationship", "reason", "detail", "flagged",
)  # fmt: skip

# Column widths (audit_schema); longer values are clipped before hashing.
_WIDTH = {
    "action": 32, "outcome": 16, "principal_kind": 16, "user_name": 255, "org_code": 64, "roles": 255,
    "auth_method": 32, "address": 128, "patient_keys": 255, "owner_org": 64, "study_uid": 64,
    "series_uid": 64, "instance_uid": 64, "purpose": 16,
}  # fmt: skip


class AuditError(ValueError):
    """An audit event or request is malformed."""


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class AuditEvent:
    """One audited access: who (``principal``), what, why, outcome.

    ``patient_keys`` are persons of the master patient index; ``count`` the
    number of objects (instances) concerned; ``purpose`` an HL7 v3
    PurposeOfUse code; ``reason`` the free-text why (mandatory for
    break-glass). ``flagged`` events (and every break-glass) await review.
    """

    action: str
    principal: Principal | None = None
    outcome: str = "allowed"
    outcome_detail: str = ""
    patient_keys: Iterable[int] = ()
    owner_org: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    instance_uid: str | None = None
    count: int | None = None
    purpose: str | None = None
    care_relationship: int | None = None
    reason: str = ""
    detail: Mapping[str, Any] | None = None
    flagged: bool = False
    time: datetime = field(default_factory=_now)


def _clip(name: str, value: Any) -> Any:
    width = _WIDTH.get(name)
    if width is not None and isinstance(value, str) and len(value) > width:
        return value[:width]
    return value


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def row_of(event: AuditEvent) -> dict[str, Any]:
    """The ``audit_events`` values of ``event`` (without seq and hashes).

    Raises :class:`AuditError` for an unknown action or outcome, or a
    break-glass without a reason."""
    if event.action not in ACTIONS:
        raise AuditError(f"unknown audit action {event.action!r}; known: {', '.join(ACTIONS)}")
    if event.outcome not in OUTCOMES:
        raise AuditError(f"unknown audit outcome {event.outcome!r}; known: {', '.join(OUTCOMES)}")
    if event.action == "break-glass" and not event.reason.strip():
        raise AuditError("a break-glass event needs a reason")
    p = event.principal
    keys = sorted({int(k) for k in event.patient_keys})
    row = {
        "time": _utc(event.time),
        "action": event.action,
        "outcome": event.outcome,
        "outcome_detail": event.outcome_detail or "",
        "principal_kind": p.kind if p else "",
        "user_name": p.name if p else "",
        "user_pk": p.user_pk if p else None,
        "org_code": p.org_code if p else None,
        "roles": ",".join(sorted(p.roles)) if p else "",
        "auth_method": p.auth_method if p else "",
        "address": p.address if p else None,
        "patient_keys": ",".join(map(str, keys)),
        "owner_org": event.owner_org,
        "study_uid": event.study_uid,
        "series_uid": event.series_uid,
        "instance_uid": event.instance_uid,
        "object_count": event.count,
        "purpose": event.purpose,
        "care_relationship": event.care_relationship,
        "reason": event.reason or "",
        "detail": json.dumps(dict(event.detail), sort_keys=True, separators=(",", ":"), default=str)
        if event.detail
        else "",
        "flagged": bool(event.flagged or event.action == "break-glass"),
    }
    row = {k: _clip(k, v) for k, v in row.items()}
    row["review_status"] = "pending" if row["flagged"] else None
    return row


def canonical(row: Mapping[str, Any]) -> bytes:
    """The canonical encoding of a record's hashed columns (from an insert dict or a fetched row)."""
    values: dict[str, Any] = {}
    for name in HASHED:
        value = row[name]
        if name == "time":
            value = _utc(value).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        elif name == "flagged":
            value = bool(value)
        elif value is not None and name in ("seq", "user_pk", "object_count", "care_relationship"):
            value = int(value)
        values[name] = value
    return json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def chain_hash(prev_hash: str, row: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of ``prev_hash`` + newline + the canonical encoding."""
    return hashlib.sha256(prev_hash.encode("ascii") + b"\n" + canonical(row)).hexdigest()


def patient_keys_of(row: Mapping[str, Any]) -> list[int]:
    text = row["patient_keys"] or ""
    return [int(k) for k in text.split(",") if k]
