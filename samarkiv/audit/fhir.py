"""Audit records as FHIR R4 AuditEvent resources (FHIR R4 auditevent.html).

One record is one AuditEvent (``id`` = seq): ``type`` the DICOM audit event
ID (PS3.16 CID 400), ``subtype`` samarkiv's action, ``action`` C/R/U/D/E,
``recorded`` the time, ``outcome`` 0/4/8, ``purposeOfEvent`` the HL7 v3
PurposeOfUse, one requestor ``agent`` (user, organisation, roles, network
address), ``source`` this archive, and ``entity`` entries for the patient
(``Patient/<person>``, the FHIR door's Patient ids) and the study, series or
instance (DICOM UIDs as ``urn:oid:``). Searching (``patient``, ``date`` with
prefixes eq/ge/gt/le/lt, ``_count``, ``_offset``) answers a searchset Bundle;
``$export`` streams NDJSON (FHIR Bulk Data's format, one resource a line).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, ColumnElement, func, select

from ..index.audit_schema import audit_events, audit_patients
from .codes import DCM, OUTCOME_CODES, event_codes
from .events import PURPOSES

V3_PURPOSE = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
SAMARKIV_ACTION = "urn:samarkiv:audit-action"
SAMARKIV_ROLE = "urn:samarkiv:role"
DICOM_UID = "urn:dicom:uid"


class SearchError(ValueError):
    """A search parameter the AuditEvent search cannot use."""


def _instant(moment: datetime) -> str:
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _uid_entity(uid: str, what: str) -> dict[str, Any]:
    return {
        "what": {"identifier": {"system": DICOM_UID, "value": f"urn:oid:{uid}"}, "display": what},
        "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
        "role": {"system": OBJECT_ROLE, "code": "3", "display": "Report"},
    }


def audit_event(record: Mapping[str, Any], source: str = "samarkiv") -> dict[str, Any]:
    """The FHIR R4 AuditEvent of one audit record."""
    code, meaning, action, subtype = event_codes(record["action"])
    subtypes = [{"system": SAMARKIV_ACTION, "code": record["action"]}]
    if subtype:
        subtypes.insert(0, {"system": DCM, "code": subtype[0], "display": subtype[1]})
    who: dict[str, Any] = {"display": record["user_name"] or source}
    if record["user_name"]:
        who["identifier"] = {"system": "urn:samarkiv:user", "value": record["user_name"]}
    agent: dict[str, Any] = {"who": who, "requestor": True}
    roles = [r for r in (record["roles"] or "").split(",") if r]
    if roles:
        agent["role"] = [{"coding": [{"system": SAMARKIV_ROLE, "code": r}]} for r in roles]
    if record["user_name"]:
        agent["name"] = record["user_name"]
    if record["org_code"]:
        agent["location"] = {"display": f"organisation {record['org_code']}"}
    if record["address"]:
        agent["network"] = {"address": record["address"], "type": "2"}
    if record["purpose"]:
        agent["purposeOfUse"] = [
            {"coding": [{"system": V3_PURPOSE, "code": record["purpose"], "display": PURPOSES.get(record["purpose"], record["purpose"])}]}
        ]  # fmt: skip
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(record["seq"]),
        "type": {"system": DCM, "code": code, "display": meaning},
        "subtype": subtypes,
        "action": action,
        "recorded": _instant(record["time"]),
        "outcome": OUTCOME_CODES.get(record["outcome"], "8"),
        "agent": [agent],
        "source": {
            "observer": {"display": source},
            "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}],
        },
    }
    if record["outcome_detail"]:
        resource["outcomeDesc"] = record["outcome_detail"]
    if record["purpose"]:
        resource["purposeOfEvent"] = agent["purposeOfUse"]
    entities = []
    for key in (k for k in (record["patient_keys"] or "").split(",") if k):
        entities.append({
            "what": {"reference": f"Patient/{key}"},
            "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
            "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"},
        })  # fmt: skip
    for column, what in (("study_uid", "study"), ("series_uid", "series"), ("instance_uid", "instance")):
        if record[column]:
            entities.append(_uid_entity(record[column], what))
    why = (record["reason"] or "").strip()
    if why or record["care_relationship"]:
        detail = []
        if why:
            detail.append({"type": "reason", "valueString": why})
        if record["care_relationship"]:
            detail.append({"type": "care-relationship", "valueString": str(record["care_relationship"])})
        entities.append({"what": {"display": "why"}, "detail": detail})
    if record["object_count"] and entities:
        first = entities[-1] if record["study_uid"] else entities[0]
        first.setdefault("detail", []).append({"type": "count", "valueString": str(record["object_count"])})
    if entities:
        resource["entity"] = entities
    resource["extension"] = [
        {"url": "urn:samarkiv:audit-chain", "extension": [
            {"url": "seq", "valueInteger": int(record["seq"])},
            {"url": "prev_hash", "valueString": record["prev_hash"]},
            {"url": "hash", "valueString": record["hash"]},
        ]},
    ]  # fmt: skip
    return resource


# --- search ---------------------------------------------------------------------------------------

_PREFIXES = ("eq", "ge", "gt", "le", "lt")


def _date_range(value: str) -> tuple[datetime, datetime]:
    """[start, end) of a FHIR date/dateTime value (its precision's range)."""
    text = value.strip()
    try:
        if len(text) == 4:
            start = datetime(int(text), 1, 1, tzinfo=UTC)
            return start, start.replace(year=start.year + 1)
        if len(text) == 7:
            y, m = int(text[:4]), int(text[5:7])
            start = datetime(y, m, 1, tzinfo=UTC)
            return start, (start.replace(year=y + 1, month=1) if m == 12 else start.replace(month=m + 1))
        if len(text) == 10:
            start = datetime.fromisoformat(text).replace(tzinfo=UTC)
            return start, start + timedelta(days=1)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
        return moment, moment + timedelta(seconds=1)
    except ValueError:
        raise SearchError(f"date: {value!r} is not a FHIR date or dateTime") from None


def date_condition(value: str) -> ColumnElement[bool]:
    """``date=[prefix]value`` (FHIR R4 search.html#date) on the record time."""
    prefix = value[:2] if value[:2] in _PREFIXES else "eq"
    start, end = _date_range(value[2:] if value[:2] in _PREFIXES else value)
    t = audit_events.c.time
    return {
        "eq": (t >= start) & (t < end),
        "ge": t >= start,
        "gt": t >= end,
        "le": t < end,
        "lt": t < start,
    }[prefix]


def patient_key(value: str) -> int:
    """``patient=Patient/5`` or ``patient=5``."""
    text = value.strip()
    if text.startswith("Patient/"):
        text = text[8:]
    if not text.isdigit():
        raise SearchError(f"patient: {value!r} is not a Patient reference (Patient/<id>)")
    return int(text)


def conditions(params: list[tuple[str, str]]) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    for name, value in params:
        if name in ("patient", "entity") or name == "subject":
            key = patient_key(value)
            where.append(
                audit_events.c.seq.in_(select(audit_patients.c.seq).where(audit_patients.c.patient_key == key))
            )
        elif name == "date":
            where.append(date_condition(value))
        elif name == "action":
            where.append(audit_events.c.action == value)
        elif name == "outcome":
            inverse = {v: k for k, v in OUTCOME_CODES.items()}
            where.append(audit_events.c.outcome == inverse.get(value, value))
        elif name not in ("_count", "_offset", "_format", "_since"):
            raise SearchError(f"unknown AuditEvent search parameter {name!r}; supported: patient, date, action, outcome")
    return where


def search(conn: Connection, params: list[tuple[str, str]], *, count: int, offset: int) -> tuple[int, list[dict[str, Any]]]:
    """(total, records of this page), oldest first."""
    where = conditions(params)
    total = conn.execute(select(func.count()).select_from(audit_events).where(*where)).scalar_one()
    rows = conn.execute(select(audit_events).where(*where).order_by(audit_events.c.seq).limit(count).offset(offset))
    return int(total), [dict(r._mapping) for r in rows]


def searchset(base: str, params: list[tuple[str, str]], total: int, resources: list[dict[str, Any]], count: int, offset: int) -> dict[str, Any]:
    from urllib.parse import urlencode

    kept = [(k, v) for k, v in params if k not in ("_count", "_offset")]

    def url(at: int) -> str:
        return f"{base}/AuditEvent?{urlencode([*kept, ('_count', str(count)), ('_offset', str(at))])}"

    links = [{"relation": "self", "url": url(offset)}, {"relation": "first", "url": url(0)}]
    if offset > 0:
        links.append({"relation": "previous", "url": url(max(offset - count, 0))})
    if offset + count < total:
        links.append({"relation": "next", "url": url(offset + count)})
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": total, "link": links}
    if resources:
        bundle["entry"] = [
            {"fullUrl": f"{base}/AuditEvent/{r['id']}", "resource": r, "search": {"mode": "match"}} for r in resources
        ]
    return bundle


def ndjson(conn: Connection, params: list[tuple[str, str]], *, since: datetime | None = None, batch: int = 2000) -> Iterator[bytes]:
    """Every matching record as one AuditEvent JSON line (streamed, oldest first)."""
    where = conditions(params)
    if since is not None:
        where.append(audit_events.c.time >= since)
    rows = conn.execution_options(yield_per=batch).execute(select(audit_events).where(*where).order_by(audit_events.c.seq))
    for row in rows:
        yield json.dumps(audit_event(row._mapping), separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
